// The aits::cuda entry points declared in kernels.h: argument checks the Python layer cannot
// make for us (D, integrator, steps), the float/double x D dispatch, and the choice of regime.
//
// Regimes (see common.cuh and docs/cuda-kernels.md):
//   N <= Small::max_n()                 one thread per system (fastest for tiny systems);
//   N <= 64, or N <= 256 with many      one thread per body, system in shared memory;
//     systems (B >= 2 x SMs)
//   otherwise                           tiled kernels; step/step_backward use the fused grouped
//                                       kernel up to N = 256 and the generic per-substep path above.
#include <stdexcept>
#include <string>
#include <type_traits>

#include "aitimestepper/dispatch.h"
#include "common.cuh"

namespace aits::cuda {
namespace detail {

namespace {
// Grouped single evaluations: always for N <= 64 (a tiled block would be mostly idle lanes); up
// to 256 bodies when there are enough systems to give every SM a few blocks.
bool grouped_for_one_evaluation(int64_t B, int64_t N) {
  if (N <= 64) return true;
  return N <= 256 && B >= 2 * int64_t(current_device().sm_count);
}
}  // namespace

template <typename T, int D>
void acceleration_any(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s) {
  if (Small<T, D>::acceleration(pos, mass, out, B, N, p, s)) return;
  if (grouped_for_one_evaluation(B, N)) {
    Grouped<T, D>::acceleration(pos, mass, out, B, N, p, s);
  } else {
    Tiled<T, D>::acceleration(pos, mass, out, B, N, p, s);
  }
}

template <typename T, int D>
void vjp_any(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
             const Params<T>& p, cudaStream_t s) {
  if (Small<T, D>::vjp(pos, mass, g, out, B, N, p, s)) return;
  if (grouped_for_one_evaluation(B, N)) {
    Grouped<T, D>::vjp(pos, mass, g, out, B, N, p, s);
  } else {
    Tiled<T, D>::vjp(pos, mass, g, out, B, N, p, s);
  }
}

template void acceleration_any<float, 2>(const float*, const float*, float*, int64_t, int64_t,
                                         const Params<float>&, cudaStream_t);
template void acceleration_any<float, 3>(const float*, const float*, float*, int64_t, int64_t,
                                         const Params<float>&, cudaStream_t);
template void acceleration_any<double, 2>(const double*, const double*, double*, int64_t,
                                          int64_t, const Params<double>&, cudaStream_t);
template void acceleration_any<double, 3>(const double*, const double*, double*, int64_t,
                                          int64_t, const Params<double>&, cudaStream_t);
template void vjp_any<float, 2>(const float*, const float*, const float*, float*, int64_t,
                                int64_t, const Params<float>&, cudaStream_t);
template void vjp_any<float, 3>(const float*, const float*, const float*, float*, int64_t,
                                int64_t, const Params<float>&, cudaStream_t);
template void vjp_any<double, 2>(const double*, const double*, const double*, double*, int64_t,
                                 int64_t, const Params<double>&, cudaStream_t);
template void vjp_any<double, 3>(const double*, const double*, const double*, double*, int64_t,
                                 int64_t, const Params<double>&, cudaStream_t);

}  // namespace detail

namespace {

using detail::Params;

Integrator checked_integrator(int integrator, int64_t steps) {
  if (integrator != int(Integrator::Leapfrog) && integrator != int(Integrator::Yoshida4)) {
    throw std::invalid_argument("aitimestepper CUDA: integrator must be 0 (leapfrog) or 1 (yoshida4), got " +
                                std::to_string(integrator));
  }
  if (steps < 0) {
    throw std::invalid_argument("aitimestepper CUDA: steps must be >= 0, got " +
                                std::to_string(steps));
  }
  return static_cast<Integrator>(integrator);
}

bool empty(const Shape& shape) { return shape.B <= 0 || shape.N <= 0; }

}  // namespace

void acceleration(bool double_precision, const void* pos, const void* mass, void* out_acc,
                  Shape shape, const Physics& physics, void* stream) {
  if (empty(shape)) return;
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    detail::acceleration_any<T, D>(static_cast<const T*>(pos), static_cast<const T*>(mass),
                                   static_cast<T*>(out_acc), shape.B, shape.N,
                                   detail::make_params<T>(physics),
                                   static_cast<cudaStream_t>(stream));
  });
}

void potential_energy(bool double_precision, const void* pos, const void* mass, void* out_energy,
                      Shape shape, const Physics& physics, void* stream) {
  if (empty(shape)) return;
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    const T* x = static_cast<const T*>(pos);
    const T* m = static_cast<const T*>(mass);
    T* out = static_cast<T*>(out_energy);
    const Params<T> p = detail::make_params<T>(physics);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (detail::Small<T, D>::potential(x, m, out, shape.B, shape.N, p, s)) return;
    if (detail::grouped_for_one_evaluation(shape.B, shape.N)) {
      detail::Grouped<T, D>::potential(x, m, out, shape.B, shape.N, p, s);
    } else {
      detail::Tiled<T, D>::potential(x, m, out, shape.B, shape.N, p, s);
    }
  });
}

void acceleration_vjp(bool double_precision, const void* pos, const void* mass,
                      const void* grad_acc, void* out_grad_pos, Shape shape,
                      const Physics& physics, void* stream) {
  if (empty(shape)) return;
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    detail::vjp_any<T, D>(static_cast<const T*>(pos), static_cast<const T*>(mass),
                          static_cast<const T*>(grad_acc), static_cast<T*>(out_grad_pos),
                          shape.B, shape.N, detail::make_params<T>(physics),
                          static_cast<cudaStream_t>(stream));
  });
}

void step(bool double_precision, const void* pos, const void* vel, const void* mass,
          const void* dt, void* out_pos, void* out_vel, void* trajectory, Shape shape,
          int64_t steps, int integrator, const Physics& physics, void* stream) {
  const Integrator integ = checked_integrator(integrator, steps);
  if (empty(shape)) return;
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    const T* x = static_cast<const T*>(pos);
    const T* v = static_cast<const T*>(vel);
    const T* m = static_cast<const T*>(mass);
    const T* h = static_cast<const T*>(dt);
    T* ox = static_cast<T*>(out_pos);
    T* ov = static_cast<T*>(out_vel);
    T* traj = static_cast<T*>(trajectory);
    const Params<T> p = detail::make_params<T>(physics);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int64_t B = shape.B, N = shape.N;
    if (detail::Small<T, D>::step(x, v, m, h, ox, ov, traj, B, N, steps, integ, p, s)) return;
    if (N <= detail::Grouped<T, D>::kMaxN) {
      detail::Grouped<T, D>::step(x, v, m, h, ox, ov, traj, B, N, steps, integ, p, s);
    } else {
      detail::Generic<T, D>::step(x, v, m, h, ox, ov, traj, B, N, steps, integ, p, s);
    }
  });
}

void step_backward(bool double_precision, const void* trajectory, const void* mass,
                   const void* dt, const void* grad_pos, const void* grad_vel,
                   void* out_grad_pos, void* out_grad_vel, void* out_grad_dt, Shape shape,
                   int64_t steps, int integrator, const Physics& physics, void* stream) {
  const Integrator integ = checked_integrator(integrator, steps);
  if (empty(shape)) return;
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    const T* traj = static_cast<const T*>(trajectory);
    const T* m = static_cast<const T*>(mass);
    const T* h = static_cast<const T*>(dt);
    const T* gp = static_cast<const T*>(grad_pos);
    const T* gv = static_cast<const T*>(grad_vel);
    T* ogp = static_cast<T*>(out_grad_pos);
    T* ogv = static_cast<T*>(out_grad_vel);
    T* ogdt = static_cast<T*>(out_grad_dt);
    const Params<T> p = detail::make_params<T>(physics);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int64_t B = shape.B, N = shape.N;
    if (steps == 0) {
      // No substeps: the outputs are the inputs, and dt has no influence.
      const size_t bytes = size_t(B) * N * D * sizeof(T);
      if (ogp != gp) detail::check(cudaMemcpyAsync(ogp, gp, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
      if (ogv != gv) detail::check(cudaMemcpyAsync(ogv, gv, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
      detail::check(cudaMemsetAsync(ogdt, 0, size_t(B) * sizeof(T), s), "cudaMemsetAsync");
      return;
    }
    if (detail::Small<T, D>::step_backward(traj, m, h, gp, gv, ogp, ogv, ogdt, B, N, steps, integ,
                                           p, s)) {
      return;
    }
    if (N <= detail::Grouped<T, D>::kMaxN) {
      detail::Grouped<T, D>::step_backward(traj, m, h, gp, gv, ogp, ogv, ogdt, B, N, steps, integ,
                                           p, s);
    } else {
      detail::Generic<T, D>::step_backward(traj, m, h, gp, gv, ogp, ogv, ogdt, B, N, steps, integ,
                                           p, s);
    }
  });
}

}  // namespace aits::cuda
