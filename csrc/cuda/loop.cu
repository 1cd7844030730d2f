// The simulation loop's per-step kernels on CUDA (loop.h). At batch 1 a learned step in PyTorch
// is ~95 small kernels, ~55 of them the scaled features and the step time; each of these
// replaces its share with one launch, so the CUDA graph of a block of steps has few nodes.
//
// scaled_features is csrc/cpu/features.cpp's scaled_one_system with one thread per system, on
// the same per-system pieces (aitimestepper/state_stats.h: sums in double, NaN-propagating
// extrema, the block's columns). Each body's nearest neighbour is found by a loop over all other
// bodies instead of the CPU's scratch array (per-thread scratch indexed at run time would live in
// local memory); the distances are the same values, so tau is too. The CUDA build's fast-math
// flags touch only float arithmetic: the double sums, square roots and divisions here are IEEE,
// and the float division of the step rule is written as an IEEE intrinsic.
#include "loop.h"

#include <limits>

#include "aitimestepper/dispatch.h"
#include "aitimestepper/state_stats.h"
#include "common.cuh"

namespace aits::cuda {
namespace {

using detail::Params;

constexpr int kThreads = 128;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    scaled_features_kernel(const T* pos, const T* vel, const T* mass, const T* acc, T* out,
                           T* tau_out, int64_t B, int64_t N, double G, double eps, bool flyby) {
  const int64_t b = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= B) return;
  const T* x = pos + b * N * D;
  const T* v = vel + b * N * D;
  const T* a = acc + b * N * D;
  const T* m = mass + b * N;
  constexpr double kInf = std::numeric_limits<double>::infinity();

  const BodyStats stats = body_stats<T, D>(x, v, m, a, N);
  Moments d;  // pairs i < j: distances, the fly-by time and the softened potential
  double potential = 0, flyby_time = kInf;
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = i + 1; j < N; ++j) {
      const double d2 = squared_distance<T, D>(x, i, j);
      const double distance = sqrt(d2);
      d.add(distance);
      if (flyby) flyby_time = nan_min(flyby_time, distance / sqrt(squared_distance<T, D>(v, i, j)));
      potential += double(m[i]) * double(m[j]) / sqrt(d2 + eps * eps);
    }
  }
  potential *= G;

  const double floor = double(std::numeric_limits<T>::min());
  double tau = kInf;
  for (int64_t i = 0; i < N; ++i) {
    double nearest = kInf;
    for (int64_t j = 0; j < N; ++j) {
      if (j != i) {
        nearest = nan_min(nearest, sqrt(i < j ? squared_distance<T, D>(x, i, j)
                                              : squared_distance<T, D>(x, j, i)));
      }
    }
    double a2 = 0;
#pragma unroll
    for (int k = 0; k < D; ++k) a2 += double(a[i * D + k]) * double(a[i * D + k]);
    tau = nan_min(tau, body_time(nearest, a2, floor));
  }
  tau_out[b] = static_cast<T>(flyby ? nan_min(tau, flyby_time) : tau);
  if (out != nullptr) {
    scaled_columns(stats, d, tau, potential, G, eps, N, out + b * kScaledFeatures);
  }
}

// IEEE division whatever the fast-math flags (they make float `/` approximate).
__device__ __forceinline__ float exact_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double exact_div(double a, double b) { return a / b; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    symmetric_step_kernel(const T* f, T* rho, T* h, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  // The reference's operations in its order (csrc/cpu/mlp.cpp): inverse + (inverse - rho), then
  // clamp(., inverse / 2, 2 inverse), a NaN passing through as in torch.clamp.
  const T inverse = exact_div(T(1), f[i]);
  T r = inverse + (inverse - rho[i]);
  const T low = T(0.5) * inverse, high = T(2) * inverse;
  if (r < low) r = low;
  if (r > high) r = high;
  rho[i] = r;
  h[i] = exact_div(T(1), r);
}

// v += h/2 a and, with `drift`, x += h v, per body, with h = c dt_b (the substep of step_kernel).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    kick_kernel(T* pos, T* vel, const T* acc, const T* dt, int64_t N, int64_t BN, T c,
                bool drift) {
  const int64_t body = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (body >= BN) return;
  const T h = c * dt[body / N];
  const T half = T(0.5) * h;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    const T vk = detail::kick(vel[body * D + k], half, acc[body * D + k]);
    vel[body * D + k] = vk;
    if (drift) pos[body * D + k] = detail::drift(pos[body * D + k], h, vk);
  }
}

// energy[b] (the potential) += the kinetic energy of system b, summed as reference.kinetic_energy.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    add_kinetic_kernel(const T* vel, const T* mass, T* energy, int64_t B, int64_t N) {
  const int64_t b = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= B) return;
  T kinetic = T(0);
  for (int64_t i = 0; i < N; ++i) {
    T speed2 = T(0);
#pragma unroll
    for (int k = 0; k < D; ++k) speed2 += vel[(b * N + i) * D + k] * vel[(b * N + i) * D + k];
    kinetic += mass[b * N + i] * speed2;
  }
  energy[b] = T(0.5) * kinetic + energy[b];
}

unsigned blocks(int64_t count, const char* what) {
  return detail::grid_size(detail::ceil_div(count, kThreads), what);
}

}  // namespace

void scaled_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                     const void* acc, void* out, void* tau, Shape shape, double G,
                     double softening, bool flyby, void* stream) {
  if (shape.B <= 0) return;
  if (shape.N < 2) throw std::invalid_argument("aitimestepper CUDA: scaled features need N >= 2");
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    scaled_features_kernel<T, D>
        <<<blocks(shape.B, "scaled_features"), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            static_cast<const T*>(pos), static_cast<const T*>(vel), static_cast<const T*>(mass),
            static_cast<const T*>(acc), static_cast<T*>(out), static_cast<T*>(tau), shape.B,
            shape.N, G, softening, flyby);
    detail::check_launch("scaled_features_kernel");
  });
}

void symmetric_step(bool double_precision, const void* f, void* rho, void* h, int64_t n,
                    void* stream) {
  if (n <= 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  if (double_precision) {
    symmetric_step_kernel<double><<<blocks(n, "symmetric_step"), kThreads, 0, s>>>(
        static_cast<const double*>(f), static_cast<double*>(rho), static_cast<double*>(h), n);
  } else {
    symmetric_step_kernel<float><<<blocks(n, "symmetric_step"), kThreads, 0, s>>>(
        static_cast<const float*>(f), static_cast<float*>(rho), static_cast<float*>(h), n);
  }
  detail::check_launch("symmetric_step_kernel");
}

void carried_step(bool double_precision, void* pos, void* vel, void* acc, const void* mass,
                  const void* dt, void* energy, Shape shape, int integrator,
                  const Physics& physics, void* stream) {
  if (integrator != int(Integrator::Leapfrog) && integrator != int(Integrator::Yoshida4)) {
    throw std::invalid_argument(
        "aitimestepper CUDA: integrator must be 0 (leapfrog) or 1 (yoshida4), got " +
        std::to_string(integrator));
  }
  if (shape.B <= 0 || shape.N <= 0) return;
  const Integrator integ = static_cast<Integrator>(integrator);
  dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    T* x = static_cast<T*>(pos);
    T* v = static_cast<T*>(vel);
    T* a = static_cast<T*>(acc);
    const T* m = static_cast<const T*>(mass);
    const T* h = static_cast<const T*>(dt);
    T* e = static_cast<T*>(energy);
    const Params<T> p = detail::make_params<T>(physics);
    const auto s = static_cast<cudaStream_t>(stream);
    const int64_t B = shape.B, N = shape.N;
    if (detail::Small<T, D>::carried_step(x, v, a, m, h, e, B, N, integ, p, s)) return;
    // Larger systems: the substep as kick-drift, a force evaluation of the regime that fits
    // (O(N^2), it dominates) and the closing kick.
    const int64_t BN = B * N;
    const unsigned grid = blocks(BN, "carried_step");
    for (int sub = 0; sub < substeps_per_step(integ); ++sub) {
      const T c = static_cast<T>(substep_weight(integ, sub));
      kick_kernel<T, D><<<grid, kThreads, 0, s>>>(x, v, a, h, N, BN, c, true);
      detail::check_launch("kick_kernel");
      detail::acceleration_any<T, D>(x, m, a, B, N, p, s);
      kick_kernel<T, D><<<grid, kThreads, 0, s>>>(x, v, a, h, N, BN, c, false);
      detail::check_launch("kick_kernel");
    }
    if (e == nullptr) return;
    potential_energy(double_precision, x, m, e, shape, physics, stream);
    add_kinetic_kernel<T, D><<<blocks(B, "carried_step"), kThreads, 0, s>>>(v, m, e, B, N);
    detail::check_launch("add_kinetic_kernel");
  });
}

}  // namespace aits::cuda
