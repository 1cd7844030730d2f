// Row kernels of softened all-pairs gravity for one system held as structure of arrays.
//
// A system's positions are transposed from the AoS input [N, D] into component arrays
// x[k][j], so the loop over source bodies j runs on whole SIMD vectors (simd.h): each lane
// evaluates the pair math of physics.h for one j and keeps its own partial sum (a blocked sum,
// also kinder to float32 accuracy than one running sum). The self term is skipped by running
// the j-loop over [0, i) and (i, N), so softening 0 stays exact; the last, partial vector of each
// range drops its extra lanes bit-exactly, reading into the padding of the scratch arrays.
// Every function handles a block of target rows [i0, i1): a thread's share of the bodies.
#pragma once

#include <cstdint>

#include "aitimestepper/physics.h"
#include "common.h"
#include "simd.h"

namespace aits::cpu::detail {

// One system in structure-of-arrays form: component k of body j is x[k][j].
template <typename T, int D>
struct Soa {
  const T* x[D];
  const T* m;
  int64_t n;
};

// soa[k * ld + i] = aos[i * D + k] for bodies [i0, i1).
template <typename T, int D>
inline void aos_to_soa(const T* aos, int64_t i0, int64_t i1, int64_t ld, T* soa) {
  for (int64_t i = i0; i < i1; ++i)
    for (int k = 0; k < D; ++k) soa[k * ld + i] = aos[i * D + k];
}

template <typename T, int D>
inline void soa_to_aos(const T* soa, int64_t i0, int64_t i1, int64_t ld, T* aos) {
  for (int64_t i = i0; i < i1; ++i)
    for (int k = 0; k < D; ++k) aos[i * D + k] = soa[k * ld + i];
}

// acc += sum over j in [j0, j1) of m_j r_ij / s_ij^3 (without G). Full vectors of sources,
// then one vector whose lanes past j1 (the self term or the padding) are dropped.
template <typename T, int D>
inline void sum_acceleration(const Soa<T, D>& s, int64_t j0, int64_t j1, const T* xi, T eps2,
                             T* acc) {
  using V = Vec<T, kSimdWidth<T>>;
  constexpr int W = V::width;
  V xv[D], av[D];
  for (int k = 0; k < D; ++k) {
    xv[k] = V(xi[k]);
    av[k] = V(T(0));
  }
  const V e2(eps2);
  int64_t j = j0;
  for (; j + W <= j1; j += W) {
    V r[D];
    for (int k = 0; k < D; ++k) r[k] = V::load(s.x[k] + j) - xv[k];
    pair_acceleration<V, D>(r, V::load(s.m + j), e2, av);
  }
  if (j < j1) {
    V r[D], f[D];
    for (int k = 0; k < D; ++k) {
      r[k] = V::load(s.x[k] + j) - xv[k];
      f[k] = V(T(0));
    }
    pair_acceleration<V, D>(r, V::load(s.m + j), e2, f);
    for (int k = 0; k < D; ++k) av[k] += V::first(f[k], int(j1 - j));
  }
  for (int k = 0; k < D; ++k) acc[k] += hsum(av[k]);
}

// Accelerations (G and the tidal field included) of bodies [i0, i1); body i's component k goes
// to out[i * row_stride + k * comp_stride] (AoS: D, 1; SoA: 1, ld).
template <typename T, int D>
void acceleration_rows(const Soa<T, D>& s, const Params<T>& p, int64_t i0, int64_t i1, T* out,
                       int64_t row_stride, int64_t comp_stride) {
  for (int64_t i = i0; i < i1; ++i) {
    T xi[D], acc[D] = {};
    for (int k = 0; k < D; ++k) xi[k] = s.x[k][i];
    sum_acceleration<T, D>(s, 0, i, xi, p.eps2, acc);
    sum_acceleration<T, D>(s, i + 1, s.n, xi, p.eps2, acc);
    for (int k = 0; k < D; ++k) acc[k] *= p.G;
    if (p.field_on) tidal_acceleration<T, D>(xi, p.gm, p.R, acc);
    for (int k = 0; k < D; ++k) out[i * row_stride + k * comp_stride] = acc[k];
  }
}

// Body i's share of the potential energy: -G m_i sum_{j>i} m_j / s_ij + m_i Phi(x_i). Summing
// these over i gives U; only j > i is visited, so each pair costs one evaluation.
template <typename T, int D>
T potential_row(const Soa<T, D>& s, const Params<T>& p, int64_t i) {
  using V = Vec<T, kSimdWidth<T>>;
  constexpr int W = V::width;
  T xi[D];
  V xv[D];
  for (int k = 0; k < D; ++k) {
    xi[k] = s.x[k][i];
    xv[k] = V(xi[k]);
  }
  const V e2(p.eps2);
  V sum(T(0));
  int64_t j = i + 1;
  for (; j + W <= s.n; j += W) {
    V r[D];
    for (int k = 0; k < D; ++k) r[k] = V::load(s.x[k] + j) - xv[k];
    sum += V::load(s.m + j) * pair_inverse_distance<V, D>(r, e2);
  }
  if (j < s.n) {
    V r[D];
    for (int k = 0; k < D; ++k) r[k] = V::load(s.x[k] + j) - xv[k];
    sum += V::first(V::load(s.m + j) * pair_inverse_distance<V, D>(r, e2), int(s.n - j));
  }
  T row = -p.G * s.m[i] * hsum(sum);
  if (p.field_on) row += s.m[i] * tidal_potential<T, D>(xi, p.gm, p.R);
  return row;
}

// grad_k += sum over j in [j0, j1) of J(r_kj) (m_k g_j - m_j g_k) (without G), vectorised
// like sum_acceleration.
template <typename T, int D>
inline void sum_acceleration_vjp(const Soa<T, D>& s, const T* const* g, int64_t j0, int64_t j1,
                                 const T* xk, T mk, const T* gk, T eps2, T* grad) {
  using V = Vec<T, kSimdWidth<T>>;
  constexpr int W = V::width;
  V xv[D], gv[D], av[D];
  for (int c = 0; c < D; ++c) {
    xv[c] = V(xk[c]);
    gv[c] = V(gk[c]);
    av[c] = V(T(0));
  }
  const V e2(eps2), mv(mk);
  int64_t j = j0;
  for (; j + W <= j1; j += W) {
    V r[D], gj[D];
    for (int c = 0; c < D; ++c) {
      r[c] = V::load(s.x[c] + j) - xv[c];
      gj[c] = V::load(g[c] + j);
    }
    pair_acceleration_vjp<V, D>(r, mv, V::load(s.m + j), gv, gj, e2, av);
  }
  if (j < j1) {
    V r[D], gj[D], t[D];
    for (int c = 0; c < D; ++c) {
      r[c] = V::load(s.x[c] + j) - xv[c];
      gj[c] = V::load(g[c] + j);
      t[c] = V(T(0));
    }
    pair_acceleration_vjp<V, D>(r, mv, V::load(s.m + j), gv, gj, e2, t);
    for (int c = 0; c < D; ++c) av[c] += V::first(t[c], int(j1 - j));
  }
  for (int c = 0; c < D; ++c) grad[c] += hsum(av[c]);
}

// (d acc / d pos)^T g for bodies [i0, i1), where g[c][j] is the cotangent of body j's
// acceleration; body k's component c goes to out[k * row_stride + c * comp_stride], either
// overwritten or (accumulate) added to.
template <typename T, int D>
void acceleration_vjp_rows(const Soa<T, D>& s, const T* const* g, const Params<T>& p, int64_t i0,
                           int64_t i1, T* out, int64_t row_stride, int64_t comp_stride,
                           bool accumulate) {
  for (int64_t k = i0; k < i1; ++k) {
    T xk[D], gk[D], grad[D] = {};
    for (int c = 0; c < D; ++c) {
      xk[c] = s.x[c][k];
      gk[c] = g[c][k];
    }
    sum_acceleration_vjp<T, D>(s, g, 0, k, xk, s.m[k], gk, p.eps2, grad);
    sum_acceleration_vjp<T, D>(s, g, k + 1, s.n, xk, s.m[k], gk, p.eps2, grad);
    for (int c = 0; c < D; ++c) grad[c] *= p.G;
    if (p.field_on) tidal_acceleration_vjp<T, D>(xk, p.gm, p.R, gk, grad);
    for (int c = 0; c < D; ++c) {
      T& o = out[k * row_stride + c * comp_stride];
      o = accumulate ? o + grad[c] : grad[c];
    }
  }
}

}  // namespace aits::cpu::detail
