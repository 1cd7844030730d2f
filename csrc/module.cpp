// pybind11 bindings of aitimestepper._core: the kernels of docs/kernel-contract.md as
// cpu_* (and, when compiled with CUDA, cuda_*) functions taking raw pointers (Python ints from
// tensor.data_ptr()), sizes and a physics tuple, plus cpu_check_values (the value checks of
// ops/validate.py in one compiled pass), cpu_state_features (the feature block of features.py),
// cpu_carried_step (one in-place step carrying the acceleration, for the simulation loop), their
// CUDA versions cuda_scaled_features, cuda_symmetric_step and cuda_carried_step (the last with
// the energy after the step), build_info() and cuda_device_count().
//
// Tensor validation (dtype, device, shape, contiguity, finiteness) is the Python layer's job and
// happens once there; these wrappers only refuse arguments that would make a kernel index out of
// bounds (bad D or sizes, unknown integrator, null pointers), then drop the GIL for the kernel.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/carried_step.h"
#include "cpu/features.h"
#include "cpu/mlp.h"
#include "kernels.h"
#ifdef AITS_HAVE_CUDA
#include "cuda/loop.h"
#endif

namespace py = pybind11;

namespace {

#ifndef AITS_VERSION
#define AITS_VERSION "dev"
#endif
#ifndef AITS_CXX_COMPILER
#define AITS_CXX_COMPILER "unknown"
#endif
#ifndef AITS_CUDA_ARCHITECTURES
#define AITS_CUDA_ARCHITECTURES ""
#endif

aits::Physics to_physics(const py::tuple& t) {
  if (t.size() != 6)
    throw py::value_error("physics must be a 6-tuple (G, softening, field_mass, Rx, Ry, Rz), got " +
                          std::to_string(t.size()) + " items");
  aits::Physics p{};
  p.G = t[0].cast<double>();
  p.softening = t[1].cast<double>();
  p.field_mass = t[2].cast<double>();
  for (int k = 0; k < 3; ++k) p.field_pos[k] = t[3 + k].cast<double>();
  return p;
}

aits::Shape to_shape(int64_t B, int64_t N, int64_t D) {
  if (D != 2 && D != 3) throw py::value_error("D must be 2 or 3, got " + std::to_string(D));
  if (B < 0 || N < 0)
    throw py::value_error("B and N must be >= 0, got B=" + std::to_string(B) +
                          ", N=" + std::to_string(N));
  return aits::Shape{B, N, static_cast<int>(D)};
}

bool empty(const aits::Shape& s) { return s.B == 0 || s.N == 0; }

void check_steps(int64_t steps, int64_t integrator) {
  if (steps < 0) throw py::value_error("steps must be >= 0, got " + std::to_string(steps));
  if (integrator != 0 && integrator != 1)
    throw py::value_error("integrator must be 0 (leapfrog) or 1 (yoshida4), got " +
                          std::to_string(integrator));
}

// A zero pointer where data is required would crash the process; only the trajectory of
// `step` may be 0 (not requested).
void require(std::uintptr_t ptr, const char* name) {
  if (ptr == 0) throw py::value_error(std::string(name) + " is a null pointer");
}

template <typename P = void>
P* ptr(std::uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

// Binds the five kernels of one backend. `Extra...` is empty for the CPU and the stream
// (an int: torch.cuda.current_stream().cuda_stream) for CUDA; Kernels supplies the functions.
template <typename Kernels, typename... Extra>
void bind_kernels(py::module_& m, const std::string& prefix, const Kernels& k,
                  const char* extra_name = nullptr) {
  auto extra_args = [&](auto... args) {
    if constexpr (sizeof...(Extra) == 0) return std::make_tuple(args...);
    else return std::make_tuple(args..., py::arg(extra_name));
  };
  using U = std::uintptr_t;
  std::apply(
      [&](auto... a) {
        m.def((prefix + "acceleration").c_str(),
              [k](U pos, U mass, U out_acc, int64_t B, int64_t N, int64_t D, py::tuple physics,
                  bool double_precision, Extra... extra) {
                const aits::Shape s = to_shape(B, N, D);
                const aits::Physics p = to_physics(physics);
                if (empty(s)) return;
                require(pos, "pos");
                require(mass, "mass");
                require(out_acc, "out_acc");
                py::gil_scoped_release nogil;
                k.acceleration(double_precision, ptr(pos), ptr(mass), ptr(out_acc), s, p, extra...);
              },
              "Softened gravity (+ tidal field): out_acc[B,N,D].", a...);
      },
      extra_args(py::arg("pos"), py::arg("mass"), py::arg("out_acc"), py::arg("B"), py::arg("N"),
                 py::arg("D"), py::arg("physics"), py::arg("double_precision")));
  std::apply(
      [&](auto... a) {
        m.def((prefix + "potential_energy").c_str(),
              [k](U pos, U mass, U out_energy, int64_t B, int64_t N, int64_t D, py::tuple physics,
                  bool double_precision, Extra... extra) {
                const aits::Shape s = to_shape(B, N, D);
                const aits::Physics p = to_physics(physics);
                if (empty(s)) return;
                require(pos, "pos");
                require(mass, "mass");
                require(out_energy, "out_energy");
                py::gil_scoped_release nogil;
                k.potential_energy(double_precision, ptr(pos), ptr(mass), ptr(out_energy), s, p,
                                   extra...);
              },
              "Potential energy (pairs + tidal field): out_energy[B].", a...);
      },
      extra_args(py::arg("pos"), py::arg("mass"), py::arg("out_energy"), py::arg("B"),
                 py::arg("N"), py::arg("D"), py::arg("physics"), py::arg("double_precision")));
  std::apply(
      [&](auto... a) {
        m.def((prefix + "acceleration_vjp").c_str(),
              [k](U pos, U mass, U grad_acc, U out_grad_pos, int64_t B, int64_t N, int64_t D,
                  py::tuple physics, bool double_precision, Extra... extra) {
                const aits::Shape s = to_shape(B, N, D);
                const aits::Physics p = to_physics(physics);
                if (empty(s)) return;
                require(pos, "pos");
                require(mass, "mass");
                require(grad_acc, "grad_acc");
                require(out_grad_pos, "out_grad_pos");
                py::gil_scoped_release nogil;
                k.acceleration_vjp(double_precision, ptr(pos), ptr(mass), ptr(grad_acc),
                                   ptr(out_grad_pos), s, p, extra...);
              },
              "(d acc / d pos)^T grad_acc: out_grad_pos[B,N,D].", a...);
      },
      extra_args(py::arg("pos"), py::arg("mass"), py::arg("grad_acc"), py::arg("out_grad_pos"),
                 py::arg("B"), py::arg("N"), py::arg("D"), py::arg("physics"),
                 py::arg("double_precision")));
  std::apply(
      [&](auto... a) {
        m.def((prefix + "step").c_str(),
              [k](U pos, U vel, U mass, U dt, U out_pos, U out_vel, U trajectory, int64_t B,
                  int64_t N, int64_t D, int64_t steps, int64_t integrator, py::tuple physics,
                  bool double_precision, Extra... extra) {
                const aits::Shape s = to_shape(B, N, D);
                const aits::Physics p = to_physics(physics);
                check_steps(steps, integrator);
                if (empty(s)) return;
                require(pos, "pos");
                require(vel, "vel");
                require(mass, "mass");
                require(dt, "dt");
                require(out_pos, "out_pos");
                require(out_vel, "out_vel");
                py::gil_scoped_release nogil;
                k.step(double_precision, ptr(pos), ptr(vel), ptr(mass), ptr(dt), ptr(out_pos),
                       ptr(out_vel), ptr(trajectory), s, steps, static_cast<int>(integrator), p,
                       extra...);
              },
              "`steps` fused steps: out_pos, out_vel [B,N,D]; trajectory [S+1,3,B,N,D] unless 0.",
              a...);
      },
      extra_args(py::arg("pos"), py::arg("vel"), py::arg("mass"), py::arg("dt"),
                 py::arg("out_pos"), py::arg("out_vel"), py::arg("trajectory"), py::arg("B"),
                 py::arg("N"), py::arg("D"), py::arg("steps"), py::arg("integrator"),
                 py::arg("physics"), py::arg("double_precision")));
  std::apply(
      [&](auto... a) {
        m.def((prefix + "step_backward").c_str(),
              [k](U trajectory, U mass, U dt, U grad_pos, U grad_vel, U out_grad_pos,
                  U out_grad_vel, U out_grad_dt, int64_t B, int64_t N, int64_t D, int64_t steps,
                  int64_t integrator, py::tuple physics, bool double_precision, Extra... extra) {
                const aits::Shape s = to_shape(B, N, D);
                const aits::Physics p = to_physics(physics);
                check_steps(steps, integrator);
                if (empty(s)) return;
                require(trajectory, "trajectory");
                require(mass, "mass");
                require(dt, "dt");
                require(grad_pos, "grad_pos");
                require(grad_vel, "grad_vel");
                require(out_grad_pos, "out_grad_pos");
                require(out_grad_vel, "out_grad_vel");
                require(out_grad_dt, "out_grad_dt");
                py::gil_scoped_release nogil;
                k.step_backward(double_precision, ptr(trajectory), ptr(mass), ptr(dt),
                                ptr(grad_pos), ptr(grad_vel), ptr(out_grad_pos),
                                ptr(out_grad_vel), ptr(out_grad_dt), s, steps,
                                static_cast<int>(integrator), p, extra...);
              },
              "Adjoint of step over its trajectory: out_grad_pos, out_grad_vel [B,N,D], "
              "out_grad_dt [B].",
              a...);
      },
      extra_args(py::arg("trajectory"), py::arg("mass"), py::arg("dt"), py::arg("grad_pos"),
                 py::arg("grad_vel"), py::arg("out_grad_pos"), py::arg("out_grad_vel"),
                 py::arg("out_grad_dt"), py::arg("B"), py::arg("N"), py::arg("D"),
                 py::arg("steps"), py::arg("integrator"), py::arg("physics"),
                 py::arg("double_precision")));
}

struct CpuKernels {
  template <typename... A>
  void acceleration(A&&... a) const { aits::cpu::acceleration(std::forward<A>(a)...); }
  template <typename... A>
  void potential_energy(A&&... a) const { aits::cpu::potential_energy(std::forward<A>(a)...); }
  template <typename... A>
  void acceleration_vjp(A&&... a) const { aits::cpu::acceleration_vjp(std::forward<A>(a)...); }
  template <typename... A>
  void step(A&&... a) const { aits::cpu::step(std::forward<A>(a)...); }
  template <typename... A>
  void step_backward(A&&... a) const { aits::cpu::step_backward(std::forward<A>(a)...); }
};

#ifdef AITS_HAVE_CUDA
// The stream arrives as a Python int (cudaStream_t value); 0 is the legacy default stream.
struct CudaKernels {
  template <typename... A>
  void acceleration(A&&... a) const { aits::cuda::acceleration(cast_stream(std::forward<A>(a))...); }
  template <typename... A>
  void potential_energy(A&&... a) const {
    aits::cuda::potential_energy(cast_stream(std::forward<A>(a))...);
  }
  template <typename... A>
  void acceleration_vjp(A&&... a) const {
    aits::cuda::acceleration_vjp(cast_stream(std::forward<A>(a))...);
  }
  template <typename... A>
  void step(A&&... a) const { aits::cuda::step(cast_stream(std::forward<A>(a))...); }
  template <typename... A>
  void step_backward(A&&... a) const {
    aits::cuda::step_backward(cast_stream(std::forward<A>(a))...);
  }

  template <typename X>
  static decltype(auto) cast_stream(X&& x) {
    if constexpr (std::is_same_v<std::decay_t<X>, std::uintptr_t>)
      return reinterpret_cast<void*>(x);
    else
      return std::forward<X>(x);
  }
};
#endif

int cuda_device_count() noexcept {
#ifdef AITS_HAVE_CUDA
  try {
    return aits::cuda::device_count();
  } catch (...) {
    return 0;
  }
#else
  return 0;
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = AITS_VERSION;
  info["compiler"] = AITS_CXX_COMPILER;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
#ifdef AITS_HAVE_CUDA
  info["cuda"] = true;
  int runtime = 0;
  try {
    runtime = aits::cuda::runtime_version();
  } catch (...) {
    runtime = 0;
  }
  info["cuda_runtime_version"] = runtime;
#else
  info["cuda"] = false;
  info["cuda_runtime_version"] = 0;
#endif
  info["cuda_architectures"] = AITS_CUDA_ARCHITECTURES;
  // What the CPU kernels were vectorised for: -march=native builds run only where they were built.
#if defined(__AVX512F__)
  info["cpu_simd"] = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  info["cpu_simd"] = "avx2+fma";
#elif defined(__AVX__)
  info["cpu_simd"] = "avx";
#elif defined(__SSE2__)
  info["cpu_simd"] = "sse2";
#else
  info["cpu_simd"] = "none";
#endif
  return info;
}

// The value checks of ops/validate.py for a CPU batch in one pass: 0 when all pass, else the
// aits::ValueCheck number of the first that failed (vel and dt may be 0: not part of the op).
int cpu_check_values(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t mass,
                     std::uintptr_t dt, int64_t B, int64_t N, int64_t D, bool check_coincident,
                     bool double_precision) {
  const aits::Shape s = to_shape(B, N, D);
  if (empty(s)) return 0;
  require(pos, "pos");
  require(mass, "mass");
  py::gil_scoped_release nogil;
  return static_cast<int>(aits::cpu::check_values(double_precision, ptr(pos), ptr(vel), ptr(mass),
                                                  ptr(dt), s, check_coincident));
}

// The basic (rich = false, out [B, 11]) or rich (out [B, 23]) state block of features.py for a
// CPU batch; column_scale points at the per-column factors (1 / scale) in the batch's dtype.
void cpu_state_features(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t mass,
                        std::uintptr_t acc, std::uintptr_t column_scale, std::uintptr_t out,
                        int64_t B, int64_t N, int64_t D, bool rich, double tail,
                        bool double_precision) {
  const aits::Shape s = to_shape(B, N, D);
  if (s.B == 0) return;
  if (N < 2) throw py::value_error("state features need N >= 2 bodies, got N=" + std::to_string(N));
  require(pos, "pos");
  require(vel, "vel");
  require(mass, "mass");
  require(acc, "acc");
  require(column_scale, "column_scale");
  require(out, "out");
  py::gil_scoped_release nogil;
  aits::cpu::state_features(double_precision, ptr(pos), ptr(vel), ptr(mass), ptr(acc),
                            ptr(column_scale), ptr(out), s, rich, tail);
}

// The checked shape of a scaled-features call (CPU or CUDA); B = 0: nothing to compute.
aits::Shape scaled_features_shape(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t mass,
                                  std::uintptr_t acc, std::uintptr_t tau, int64_t B, int64_t N,
                                  int64_t D) {
  const aits::Shape s = to_shape(B, N, D);
  if (s.B == 0) return s;
  if (N < 2) throw py::value_error("scaled features need N >= 2 bodies, got N=" + std::to_string(N));
  require(pos, "pos");
  require(vel, "vel");
  require(mass, "mass");
  require(acc, "acc");
  require(tau, "tau");
  return s;
}

// The checked shape and physics of a carried-step call (CPU or CUDA); an empty shape: no work.
std::pair<aits::Shape, aits::Physics> carried_step_arguments(
    std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t acc, std::uintptr_t mass,
    std::uintptr_t dt, int64_t B, int64_t N, int64_t D, int64_t integrator,
    const py::tuple& physics) {
  const aits::Shape s = to_shape(B, N, D);
  const aits::Physics p = to_physics(physics);
  check_steps(1, integrator);
  if (!empty(s)) {
    require(pos, "pos");
    require(vel, "vel");
    require(acc, "acc");
    require(mass, "mass");
    require(dt, "dt");
  }
  return {s, p};
}

// The scaled feature block (out [B, 13]; out = 0: none) and the step time tau [B] of a CPU
// batch (the dynamical time, or with flyby the encounter time), both in the batch's dtype.
void cpu_scaled_features(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t mass,
                         std::uintptr_t acc, std::uintptr_t out, std::uintptr_t tau, int64_t B,
                         int64_t N, int64_t D, double G, double softening, bool double_precision,
                         bool flyby) {
  const aits::Shape s = scaled_features_shape(pos, vel, mass, acc, tau, B, N, D);
  if (s.B == 0) return;
  py::gil_scoped_release nogil;
  aits::cpu::scaled_features(double_precision, ptr(pos), ptr(vel), ptr(mass), ptr(acc),
                             out == 0 ? nullptr : ptr(out), ptr(tau), s, G, softening, flyby);
}

// The step network's forward for a few rows: x [rows, in] -> out [rows, width of the last layer];
// layers is a sequence of (weight ptr, bias ptr, in, out, activation code of aits::cpu::Activation).
void cpu_mlp_forward(std::uintptr_t x, std::uintptr_t out, int64_t rows, py::sequence layers,
                     bool double_precision, std::uintptr_t dt, bool scale_aware, std::uintptr_t tau,
                     double factor, double offset, double dt_max) {
  require(x, "x");
  require(out, "out");
  std::vector<aits::cpu::DenseLayer> dense;
  for (py::handle item : layers) {
    auto t = item.cast<py::tuple>();
    if (t.size() != 5) throw py::value_error("each layer is (weight, bias, in, out, activation)");
    const auto weight = t[0].cast<std::uintptr_t>(), bias = t[1].cast<std::uintptr_t>();
    require(weight, "weight");
    require(bias, "bias");
    const int code = t[4].cast<int>();
    if (code < 0 || code > 5) throw py::value_error("unknown activation code " + std::to_string(code));
    dense.push_back({ptr(weight), ptr(bias), t[2].cast<int64_t>(), t[3].cast<int64_t>(),
                     static_cast<aits::cpu::Activation>(code)});
  }
  if (dense.empty()) throw py::value_error("the network needs at least one layer");
  for (size_t i = 1; i < dense.size(); ++i)
    if (dense[i].in != dense[i - 1].out) throw py::value_error("layer widths do not chain");
  if (rows <= 0) return;
  if (dt != 0 && scale_aware) require(tau, "tau");
  const aits::cpu::StepHead head{scale_aware, ptr(tau), factor, offset, dt_max};
  py::gil_scoped_release nogil;
  aits::cpu::mlp_forward(double_precision, ptr(x), ptr(out), rows, dense, dt != 0 ? &head : nullptr,
                         dt != 0 ? ptr(dt) : nullptr);
}

// The symmetric step rule: h [n] from f [n] and rho [n] (1/previous h, updated in place).
void cpu_symmetric_step(std::uintptr_t f, std::uintptr_t rho, std::uintptr_t h, int64_t n,
                        bool double_precision) {
  require(f, "f");
  require(rho, "rho");
  require(h, "h");
  if (n <= 0) return;
  aits::cpu::symmetric_step(double_precision, ptr(f), ptr(rho), ptr(h), n);
}

// One step of `integrator` applied in place to pos, vel, acc [B,N,D] (acc = a(pos) in and out).
void cpu_carried_step(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t acc,
                      std::uintptr_t mass, std::uintptr_t dt, int64_t B, int64_t N, int64_t D,
                      int64_t integrator, py::tuple physics, bool double_precision) {
  const auto [s, p] = carried_step_arguments(pos, vel, acc, mass, dt, B, N, D, integrator, physics);
  if (empty(s)) return;
  py::gil_scoped_release nogil;
  aits::cpu::carried_step(double_precision, ptr(pos), ptr(vel), ptr(acc), ptr(mass), ptr(dt), s,
                          static_cast<int>(integrator), p);
}

#ifdef AITS_HAVE_CUDA
void* cuda_stream(std::uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// cpu_scaled_features on CUDA tensors, on `stream` (torch.cuda.current_stream().cuda_stream).
void cuda_scaled_features(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t mass,
                          std::uintptr_t acc, std::uintptr_t out, std::uintptr_t tau, int64_t B,
                          int64_t N, int64_t D, double G, double softening, bool double_precision,
                          bool flyby, std::uintptr_t stream) {
  const aits::Shape s = scaled_features_shape(pos, vel, mass, acc, tau, B, N, D);
  if (s.B == 0) return;
  py::gil_scoped_release nogil;
  aits::cuda::scaled_features(double_precision, ptr(pos), ptr(vel), ptr(mass), ptr(acc),
                              out == 0 ? nullptr : ptr(out), ptr(tau), s, G, softening, flyby,
                              cuda_stream(stream));
}

// cpu_symmetric_step on CUDA tensors.
void cuda_symmetric_step(std::uintptr_t f, std::uintptr_t rho, std::uintptr_t h, int64_t n,
                         bool double_precision, std::uintptr_t stream) {
  require(f, "f");
  require(rho, "rho");
  require(h, "h");
  if (n <= 0) return;
  py::gil_scoped_release nogil;
  aits::cuda::symmetric_step(double_precision, ptr(f), ptr(rho), ptr(h), n, cuda_stream(stream));
}

// cpu_carried_step on CUDA tensors; energy (0: none) [B] receives T + U after the step.
void cuda_carried_step(std::uintptr_t pos, std::uintptr_t vel, std::uintptr_t acc,
                       std::uintptr_t mass, std::uintptr_t dt, std::uintptr_t energy, int64_t B,
                       int64_t N, int64_t D, int64_t integrator, py::tuple physics,
                       bool double_precision, std::uintptr_t stream) {
  const auto [s, p] = carried_step_arguments(pos, vel, acc, mass, dt, B, N, D, integrator, physics);
  if (empty(s)) return;
  py::gil_scoped_release nogil;
  aits::cuda::carried_step(double_precision, ptr(pos), ptr(vel), ptr(acc), ptr(mass), ptr(dt),
                           energy == 0 ? nullptr : ptr(energy), s, static_cast<int>(integrator),
                           p, cuda_stream(stream));
}
#endif

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "aitimestepper compiled kernels (see docs/kernel-contract.md)";
  bind_kernels(m, "cpu_", CpuKernels{});
  m.def("cpu_check_values", &cpu_check_values, "Value checks of a CPU batch: 0 or a ValueCheck.",
        py::arg("pos"), py::arg("vel"), py::arg("mass"), py::arg("dt"), py::arg("B"), py::arg("N"),
        py::arg("D"), py::arg("check_coincident"), py::arg("double_precision"));
  m.def("cpu_state_features", &cpu_state_features,
        "The basic/rich state feature block of features.py: out[B,11] or out[B,23].",
        py::arg("pos"), py::arg("vel"), py::arg("mass"), py::arg("acc"), py::arg("column_scale"),
        py::arg("out"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("rich"), py::arg("tail"),
        py::arg("double_precision"));
  m.def("cpu_scaled_features", &cpu_scaled_features,
        "The scaled feature block of features.py (out[B,13], or none for out = 0) and the step "
        "time tau[B] (with flyby: the encounter time).",
        py::arg("pos"), py::arg("vel"), py::arg("mass"), py::arg("acc"), py::arg("out"),
        py::arg("tau"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("G"),
        py::arg("softening"), py::arg("double_precision"), py::arg("flyby") = false);
  m.def("cpu_mlp_forward", &cpu_mlp_forward,
        "The step network's forward for a few rows (layers: (weight, bias, in, out, activation)); "
        "with dt != 0 also the step of each row (model.py dt_from_output).",
        py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("layers"), py::arg("double_precision"),
        py::arg("dt") = 0, py::arg("scale_aware") = false, py::arg("tau") = 0, py::arg("factor") = 1.0,
        py::arg("offset") = 0.0, py::arg("dt_max") = std::numeric_limits<double>::infinity());
  m.def("cpu_symmetric_step", &cpu_symmetric_step,
        "The symmetric step rule of simulate.py: h[n] from f[n] and rho[n] = 1/previous h (in place).",
        py::arg("f"), py::arg("rho"), py::arg("h"), py::arg("n"), py::arg("double_precision"));
  m.def("cpu_carried_step", &cpu_carried_step,
        "One step in place on pos, vel, acc [B,N,D], carrying the acceleration (acc = a(pos)).",
        py::arg("pos"), py::arg("vel"), py::arg("acc"), py::arg("mass"), py::arg("dt"),
        py::arg("B"), py::arg("N"), py::arg("D"), py::arg("integrator"), py::arg("physics"),
        py::arg("double_precision"));
#ifdef AITS_HAVE_CUDA
  bind_kernels<CudaKernels, std::uintptr_t>(m, "cuda_", CudaKernels{}, "stream");
  m.def("cuda_scaled_features", &cuda_scaled_features,
        "cpu_scaled_features for CUDA tensors, on `stream`.", py::arg("pos"), py::arg("vel"),
        py::arg("mass"), py::arg("acc"), py::arg("out"), py::arg("tau"), py::arg("B"),
        py::arg("N"), py::arg("D"), py::arg("G"), py::arg("softening"),
        py::arg("double_precision"), py::arg("flyby"), py::arg("stream"));
  m.attr("CUDA_SCALED_FEATURES_MAX_N") = aits::cuda::kScaledFeaturesMaxN;
  m.def("cuda_symmetric_step", &cuda_symmetric_step,
        "cpu_symmetric_step for CUDA tensors, on `stream`.", py::arg("f"), py::arg("rho"),
        py::arg("h"), py::arg("n"), py::arg("double_precision"), py::arg("stream"));
  m.def("cuda_carried_step", &cuda_carried_step,
        "cpu_carried_step for CUDA tensors, on `stream`; energy (0: none) [B] receives the total "
        "energy after the step.",
        py::arg("pos"), py::arg("vel"), py::arg("acc"), py::arg("mass"), py::arg("dt"),
        py::arg("energy"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("integrator"),
        py::arg("physics"), py::arg("double_precision"), py::arg("stream"));
#endif
  m.def("build_info", &build_info, "What this build of the compiled module contains.");
  m.def("cuda_device_count", &cuda_device_count,
        "Number of visible CUDA devices; 0 without CUDA support, GPU or driver (never raises).");
}
