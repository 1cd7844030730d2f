// Kernels for many small systems: W systems side by side in the SIMD lanes (simd.h).
//
// One Vec<T, W> holds one quantity of W systems, e.g. x[i][k] is component k of body i in every
// system of a block, so the pair math of physics.h runs on W systems per instruction with no
// horizontal sums and no per-system loop overhead, and each pair is evaluated once for both
// bodies (Newton's third law). Blocks of W consecutive systems are independent; threads take
// blocks. Used by the fused integrator (integrate.cpp) and by the one-shot gravity kernels
// (gravity.cpp) whenever N <= kLaneMaxN; larger systems use the row kernels of rows.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "aitimestepper/physics.h"
#include "common.h"
#include "simd.h"

namespace aits::cpu::detail {

// Systems per lane block: one AVX2 register of T.
// (Two registers per lane vector was measured 2-3x slower: the block state no longer fits the
// register file and spills.)
template <typename T>
constexpr int kLaneWidth = kSimdWidth<T>;

// Largest N kept in SIMD lanes: state of 64 bodies is ~6 KB per array in double, so a block's
// forward and backward state stays in L1/L2; beyond that the row kernels vectorise over bodies.
constexpr int kLaneMaxN = 64;
// Below this N a lane block still wins when fewer than W systems fill it (padding lanes are
// cheap while the pair count is small); above it a lone system goes to the row kernels.
constexpr int kLaneMinFillN = 16;

// The call's physics broadcast to every lane.
template <typename T, int W>
struct LaneParams {
  using V = Vec<T, W>;
  V G, eps2, gm, R[3];
  bool field_on;
  explicit LaneParams(const Params<T>& p)
      : G(p.G), eps2(p.eps2), gm(p.gm), R{V(p.R[0]), V(p.R[1]), V(p.R[2])}, field_on(p.field_on) {}
};

// dst[i][k] lane w = body i, component k of system w; systems are contiguous [W, N, D] in src.
// Lanes past `valid` repeat system 0 so their arithmetic stays finite; they are never stored.
template <typename T, int D, int W>
inline void gather(const T* src, int n, int valid, Vec<T, W> (*dst)[D]) {
  for (int w = 0; w < W; ++w) {
    const T* sys = src + int64_t(w < valid ? w : 0) * n * D;
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) dst[i][k].v[w] = sys[i * D + k];
  }
}

template <typename T, int D, int W>
inline void scatter(const Vec<T, W> (*src)[D], int n, int valid, T* dst) {
  for (int w = 0; w < valid; ++w) {
    T* sys = dst + int64_t(w) * n * D;
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) sys[i * D + k] = src[i][k].v[w];
  }
}

// m[i] lane w = mass of body i of system b0 + w (system b0 again in lanes past `valid`).
template <typename T, int W>
inline void gather_mass(const T* mass_b0, int n, int valid, Vec<T, W>* m) {
  for (int w = 0; w < W; ++w) {
    const T* sys = mass_b0 + int64_t(w < valid ? w : 0) * n;
    for (int i = 0; i < n; ++i) m[i].v[w] = sys[i];
  }
}

// a = accelerations of x (G and tidal field included) for all W systems of the block.
// (Processing two rows per pass, sharing each source body's loads, measured no faster.)
template <typename T, int D, int W, int NF>
inline void lane_acceleration(int n_runtime, const Vec<T, W> (*x)[D], const Vec<T, W>* m,
                              Vec<T, W> (*a)[D], const LaneParams<T, W>& p) {
  using V = Vec<T, W>;
  const int n = NF > 0 ? NF : n_runtime;
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < D; ++k) a[i][k] = V(T(0));
  for (int i = 0; i < n; ++i) {
    V ai[D];
    for (int k = 0; k < D; ++k) ai[k] = V(T(0));
    for (int j = i + 1; j < n; ++j) {
      V r[D], f[D];
      for (int k = 0; k < D; ++k) {
        r[k] = x[j][k] - x[i][k];
        f[k] = V(T(0));
      }
      // Unit mass gives r / s^3 once for the pair; each side then takes the other's mass.
      pair_acceleration<V, D>(r, V(T(1)), p.eps2, f);
      for (int k = 0; k < D; ++k) {
        ai[k] += m[j] * f[k];
        a[j][k] -= m[i] * f[k];
      }
    }
    for (int k = 0; k < D; ++k) a[i][k] += ai[k];
  }
  for (int i = 0; i < n; ++i) {
    V acc[D];
    for (int k = 0; k < D; ++k) acc[k] = p.G * a[i][k];
    if (p.field_on) tidal_acceleration<V, D>(x[i], p.gm, p.R, acc);
    for (int k = 0; k < D; ++k) a[i][k] = acc[k];
  }
}

// out += (d acc / d x)^T g for all W systems of the block (pair terms and tidal field).
template <typename T, int D, int W, int NF>
inline void lane_acceleration_vjp(int n_runtime, const Vec<T, W> (*x)[D], const Vec<T, W>* m,
                                  const Vec<T, W> (*g)[D], Vec<T, W> (*out)[D],
                                  const LaneParams<T, W>& p) {
  using V = Vec<T, W>;
  constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
  const int n = NF > 0 ? NF : n_runtime;
  V t[kCap][D];
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < D; ++k) t[i][k] = V(T(0));
  for (int i = 0; i < n; ++i) {
    V ti[D];
    for (int k = 0; k < D; ++k) ti[k] = V(T(0));
    for (int j = i + 1; j < n; ++j) {
      V r[D], q[D];
      for (int k = 0; k < D; ++k) {
        r[k] = x[j][k] - x[i][k];
        q[k] = V(T(0));
      }
      // J is even in r and w_ji = -w_ij: body j's term is the negative of body i's.
      pair_acceleration_vjp<V, D>(r, m[i], m[j], g[i], g[j], p.eps2, q);
      for (int k = 0; k < D; ++k) {
        ti[k] += q[k];
        t[j][k] -= q[k];
      }
    }
    for (int k = 0; k < D; ++k) t[i][k] += ti[k];
  }
  for (int i = 0; i < n; ++i) {
    V grad[D];
    for (int k = 0; k < D; ++k) grad[k] = p.G * t[i][k];
    if (p.field_on) tidal_acceleration_vjp<V, D>(x[i], p.gm, p.R, g[i], grad);
    for (int k = 0; k < D; ++k) out[i][k] += grad[k];
  }
}

// Potential energy of each of the W systems: rows -G m_i sum_{j>i} m_j / s_ij + m_i Phi(x_i)
// (the row kernels' formula, rows.h), combined by a pairwise sum over rows like theirs.
template <typename T, int D, int W, int NF>
inline Vec<T, W> lane_potential(int n_runtime, const Vec<T, W> (*x)[D], const Vec<T, W>* m,
                                const LaneParams<T, W>& p) {
  using V = Vec<T, W>;
  constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
  const int n = NF > 0 ? NF : n_runtime;
  V rows[kCap];
  for (int i = 0; i < n; ++i) {
    V sum(T(0));
    for (int j = i + 1; j < n; ++j) {
      V r[D];
      for (int k = 0; k < D; ++k) r[k] = x[j][k] - x[i][k];
      sum += m[j] * pair_inverse_distance<V, D>(r, p.eps2);
    }
    rows[i] = -p.G * m[i] * sum;
    if (p.field_on) rows[i] += m[i] * tidal_potential<V, D>(x[i], p.gm, p.R);
  }
  return pairwise_sum(rows, n);
}

// Runs block(b0, valid) over the batch in blocks of W systems, threads taking blocks.
template <int W, typename Block>
void for_each_lane_block(int64_t B, int64_t N, int64_t passes, const Block& block) {
  const int64_t blocks = (B + W - 1) / W;
  const bool parallel =
      blocks > 1 && choose_split(B, N, passes) != Split::Serial;
  const int64_t chunk = item_chunk(blocks);
#pragma omp parallel for schedule(dynamic, chunk) if (parallel)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t b0 = blk * W;
    block(b0, int(std::min<int64_t>(W, B - b0)));
  }
}

// Dispatches the body count to a fixed-N instantiation (fully unrolled pair loops) where the
// 2- to 4-body problems of training live, and to the runtime-N instantiation otherwise.
template <typename Fn>
void dispatch_lane_n(int64_t N, const Fn& fn) {
  switch (N) {
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}

// Whether a batch takes the lane kernels (see kLaneMaxN, kLaneMinFillN).
template <typename T>
bool use_lanes(int64_t B, int64_t N) {
  return N <= kLaneMaxN && (B >= kLaneWidth<T> || N <= kLaneMinFillN);
}

}  // namespace aits::cpu::detail
