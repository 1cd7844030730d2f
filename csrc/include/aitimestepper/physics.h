// The physics of aitimestepper, stated once for the C++ and CUDA kernels.
//
// Every kernel (CPU and CUDA, forward and backward) builds on these inline functions, so the
// softened pair interaction, the tidal field and the integrator coefficients have exactly one
// definition in compiled code. python/aitimestepper/ops/reference.py states the same formulas in
// PyTorch (the oracle the tests compare against) and the Triton kernels follow them.
//
// Conventions: r = x_j - x_i is the offset from body i to body j, s2 = |r|^2 + eps^2, and the
// arrays below have exactly D entries (D = 2 or 3 is a template parameter so loops unroll).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define AITS_HD __host__ __device__ __forceinline__
#else
#define AITS_HD inline
#endif

namespace aits {

// 1/sqrt(x): one MUFU.RSQ (+ a Newton step for double) on the GPU, sqrt+div on the CPU (which
// vectorizes to vsqrtps/vdivps; an approximate rsqrt would cost float32 accuracy there).
AITS_HD float inv_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(x);
#else
  return 1.0f / std::sqrt(x);
#endif
}
AITS_HD double inv_sqrt(double x) {
#if defined(__CUDA_ARCH__)
  return rsqrt(x);
#else
  return 1.0 / std::sqrt(x);
#endif
}

// Softened pair pull: acc += m_j * r / s2^{3/2}   (the caller multiplies by G once per body).
// FLOPs (D = 3, counting FMA as 2): 3 sub + 3 FMA (|r|^2 + eps^2 seeded with eps^2) = 9,
// rsqrt = 1, inv^3 = 2 mul, m_j * inv^3 = 1 mul, 3 FMA = 6: 19 flops + rsqrt, i.e. the usual
// "20 flops per interaction". The self term (r = 0) contributes 0 when eps > 0; kernels skip
// j == i explicitly so eps = 0 is exact.
template <typename T, int D>
AITS_HD void pair_acceleration(const T* r, T m_j, T eps2, T* acc) {
  T s2 = eps2;
#pragma unroll
  for (int k = 0; k < D; ++k) s2 += r[k] * r[k];
  const T inv = inv_sqrt(s2);
  const T w = m_j * inv * inv * inv;
#pragma unroll
  for (int k = 0; k < D; ++k) acc[k] += w * r[k];
}

// Each pair once (Newton's third law): the pull of pair_acceleration on both bodies, sharing
// s^-3: acc_i += m_j r / s2^{3/2}, acc_j -= m_i r / s2^{3/2}. D = 3: 16 FP32 instructions + 1
// rsqrt serve two interactions (3 sub, 3 FMA, 2 mul for s^-3, 2 mul for the masses, 6 FMA).
template <typename T, int D>
AITS_HD void pair_acceleration_both(const T* r, T m_i, T m_j, T eps2, T* acc_i, T* acc_j) {
  T s2 = eps2;
#pragma unroll
  for (int k = 0; k < D; ++k) s2 += r[k] * r[k];
  const T inv = inv_sqrt(s2);
  const T inv3 = inv * inv * inv;
  const T w_i = m_j * inv3;
  const T w_j = m_i * inv3;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    acc_i[k] += w_i * r[k];
    acc_j[k] -= w_j * r[k];
  }
}

// Softened pair potential 1/s for the pair (i, j); U = -G sum_{i<j} m_i m_j / s.
template <typename T, int D>
AITS_HD T pair_inverse_distance(const T* r, T eps2) {
  T s2 = eps2;
#pragma unroll
  for (int k = 0; k < D; ++k) s2 += r[k] * r[k];
  return inv_sqrt(s2);
}

// Vector-Jacobian product of the pair interaction, summed over both orderings of the pair.
// With J(r) = s^-3 I - 3 s^-5 r r^T (symmetric, even in r) and w = m_k g_j - m_j g_k, the
// gradient of sum_i g_i . a_i with respect to x_k is G sum_{j != k} J(r_kj) w. This adds the
// j term (without G) to grad_k. FLOPs (D = 3): ~40.
template <typename T, int D>
AITS_HD void pair_acceleration_vjp(const T* r, T m_k, T m_j, const T* g_k, const T* g_j, T eps2,
                                   T* grad_k) {
  T s2 = eps2;
#pragma unroll
  for (int c = 0; c < D; ++c) s2 += r[c] * r[c];
  const T inv = inv_sqrt(s2);
  const T inv3 = inv * inv * inv;
  T w[D];
  T rw = 0;
#pragma unroll
  for (int c = 0; c < D; ++c) {
    w[c] = m_k * g_j[c] - m_j * g_k[c];
    rw += r[c] * w[c];
  }
  const T coef = T(3) * rw * inv3 * inv * inv;
#pragma unroll
  for (int c = 0; c < D; ++c) grad_k[c] += inv3 * w[c] - coef * r[c];
}

// External tidal field of a point mass M fixed at R (docs/kernel-contract.md, "Physics"):
//   a(x) = G M [ (R - x)/|R - x|^3 - R/|R|^3 ]
//   Phi(x) = -G M [ 1/|R - x| - 1/|R| - x.R/|R|^3 ]
// `gm` is G*M; field_mass == 0 means "no field" and callers skip these calls.
template <typename T, int D>
AITS_HD void tidal_acceleration(const T* x, T gm, const T* R, T* acc) {
  T u[D];
  T u2 = 0, R2 = 0;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    u[k] = R[k] - x[k];
    u2 += u[k] * u[k];
    R2 += R[k] * R[k];
  }
  const T iu = inv_sqrt(u2), iR = inv_sqrt(R2);
  const T iu3 = iu * iu * iu, iR3 = iR * iR * iR;
#pragma unroll
  for (int k = 0; k < D; ++k) acc[k] += gm * (u[k] * iu3 - R[k] * iR3);
}

template <typename T, int D>
AITS_HD T tidal_potential(const T* x, T gm, const T* R) {
  T u2 = 0, R2 = 0, xR = 0;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    const T u = R[k] - x[k];
    u2 += u * u;
    R2 += R[k] * R[k];
    xR += x[k] * R[k];
  }
  const T iu = inv_sqrt(u2), iR = inv_sqrt(R2);
  return -gm * (iu - iR - xR * iR * iR * iR);
}

// grad_x += (d a_tidal / d x)^T g  with d a/dx = -G M (|u|^-3 I - 3 u u^T |u|^-5), u = R - x.
template <typename T, int D>
AITS_HD void tidal_acceleration_vjp(const T* x, T gm, const T* R, const T* g, T* grad) {
  T u[D];
  T u2 = 0, ug = 0;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    u[k] = R[k] - x[k];
    u2 += u[k] * u[k];
    ug += u[k] * g[k];
  }
  const T iu = inv_sqrt(u2);
  const T iu3 = iu * iu * iu;
  const T coef = T(3) * ug * iu3 * iu * iu;
#pragma unroll
  for (int k = 0; k < D; ++k) grad[k] -= gm * (g[k] * iu3 - coef * u[k]);
}

// Integrators as sequences of kick-drift-kick leapfrog substeps with step c_s * dt.
// leapfrog: one substep (c = 1). yoshida4: three substeps with the Yoshida (1990) weights
// w1 = 1/(2 - 2^(1/3)), w0 = -2^(1/3) w1, i.e. (w1, w0, w1). Adjacent half kicks share one
// force evaluation, so a step of S substeps costs S force evaluations.
enum class Integrator : int { Leapfrog = 0, Yoshida4 = 1 };

constexpr double kYoshidaW1 = 1.3512071919596576340476878089715;   // 1/(2 - 2^(1/3))
constexpr double kYoshidaW0 = -1.7024143839193152680953756179429;  // -2^(1/3)/(2 - 2^(1/3))

AITS_HD int substeps_per_step(Integrator integrator) {
  return integrator == Integrator::Yoshida4 ? 3 : 1;
}
AITS_HD double substep_weight(Integrator integrator, int substep) {
  if (integrator == Integrator::Yoshida4) return substep == 1 ? kYoshidaW0 : kYoshidaW1;
  return 1.0;
}

}  // namespace aits
