// Tiled all-pairs kernels for large N: acceleration, potential energy and the acceleration VJP.
//
// A block of kTile threads owns kTile * IPT bodies i of one system (thread t owns
// i = i0 + t + k * kTile, so loads and stores are coalesced) and sweeps the j bodies in tiles of
// kTile that the block stages in shared memory as (x, y, z, m) records. Every thread reads the
// same record at once (a broadcast), so one 16-byte shared load feeds IPT interactions; the
// IPT independent accumulators also give the scheduler independent work to hide the rsqrt.
//
// The self term j == i is excluded exactly without costing the hot loop: it can only occur in
// the IPT tiles that hold the block's own bodies ("diagonal" tiles), and those (plus a partial
// last tile) run a separate masked loop. Everything else runs the branch-free loop: 12 FP32
// instructions + 1 MUFU.RSQ per interaction in float (docs/cuda-kernels.md has the SASS).
//
// When B * (i-blocks) is too small to fill the GPU (one system of a few thousand bodies, say),
// the j range is split across blocks; each split writes raw partial sums to scratch memory and
// a second small kernel adds them in a fixed order (deterministic results, no atomics) and
// applies G and the tidal field. Potential energies always reduce through scratch per block.
#include <algorithm>

#include "common.cuh"

namespace aits::cuda::detail {
namespace {

constexpr int kTile = 128;  // threads per block = bodies per j-tile

// Bodies per thread: 4 in float amortizes the shared-memory load over 4 interactions; double
// is bound by the FP64 pipe, not by issue slots, and keeps register use moderate with 2.
template <typename T>
constexpr int ipt_large() {
  return sizeof(T) == 4 ? 4 : 2;
}

struct TilePlan {
  int64_t n_iblocks;        // blocks of kTile * IPT bodies per system
  int64_t n_tiles;          // j tiles per system
  int n_splits;             // j range split into this many block columns
  int64_t tiles_per_split;  // j tiles per split (the last split may have fewer)
};

// Where a block works: system b, i-block iblk, j-split `split`.
struct BlockCoord {
  int64_t b;
  int64_t iblk;
  int split;
};
__device__ __forceinline__ BlockCoord block_coord(int64_t n_iblocks, int n_splits) {
  int64_t idx = blockIdx.x;
  BlockCoord c;
  c.split = static_cast<int>(idx % n_splits);
  idx /= n_splits;
  c.iblk = idx % n_iblocks;
  c.b = idx / n_iblocks;
  return c;
}

// Choose the j split. Model: an SM runs its blocks at a throughput that saturates at `k_sat`
// resident blocks, so the time is ~ max(blocks per SM, k_sat) x (tiles per block). A split must
// win by 3% to be taken (each one adds a partial-sum pass).
TilePlan plan_tiles(int64_t B, int64_t N, int ipt, int sm_count, int occupancy) {
  TilePlan t{};
  t.n_iblocks = ceil_div(N, int64_t(kTile) * ipt);
  t.n_tiles = ceil_div(N, kTile);
  const int64_t base = B * t.n_iblocks;
  const int k_sat = std::max(1, std::min(occupancy, 8));
  const int s_max = static_cast<int>(std::clamp<int64_t>(t.n_tiles / 2, 1, 64));
  int best_s = 1;
  if (base < int64_t(sm_count) * k_sat * 4) {
    double best_cost = 0;
    for (int s = 1; s <= s_max; ++s) {
      const int64_t per = ceil_div(t.n_tiles, s);
      if (ceil_div(t.n_tiles, per) != s) continue;  // same partition as a smaller s
      const double per_sm = std::max<double>(double(ceil_div(base * s, sm_count)), k_sat);
      const double cost = per_sm * (double(per) + 0.25);
      if (s == 1 || cost < 0.97 * best_cost) {
        best_cost = cost;
        best_s = s;
      }
    }
  }
  t.tiles_per_split = ceil_div(t.n_tiles, best_s);
  t.n_splits = static_cast<int>(ceil_div(t.n_tiles, t.tiles_per_split));
  return t;
}

// Few bodies in all (N = 4096, B = 1): one body per thread gives 4x more blocks to spread.
bool use_one_body_per_thread(int64_t B, int64_t N, int sm_count) {
  const int64_t blocks = B * ceil_div(N, int64_t(kTile) * 4);
  const int64_t splits = std::clamp<int64_t>(ceil_div(N, kTile) / 2, 1, 64);
  return blocks * splits < int64_t(sm_count) * 16;
}

template <typename Kernel>
int blocks_per_sm(Kernel kernel) {
  int n = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kTile, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return std::max(n, 1);
}

// --------------------------------------------------------------------------------------------
// Acceleration. out is [B, N, D] (final) when n_splits == 1, else [n_splits, B, N, D] raw sums.
template <typename T, int D, int IPT>
__global__ void __launch_bounds__(kTile)
    tiled_acceleration_kernel(const T* __restrict__ pos, const T* __restrict__ mass,
                              T* __restrict__ out, int64_t B, int64_t N, int64_t n_iblocks,
                              int n_splits, int64_t tiles_per_split, Params<T> p) {
  __shared__ Vec4<T> tile[kTile];
  const BlockCoord bc = block_coord(n_iblocks, n_splits);
  const int tid = threadIdx.x;
  const T* xs = pos + bc.b * N * D;
  const T* ms = mass + bc.b * N;
  const int64_t i0 = bc.iblk * (int64_t(kTile) * IPT) + tid;  // body k is i0 + k * kTile

  T xi[IPT][D], acc[IPT][D];
#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
#pragma unroll
    for (int c = 0; c < D; ++c) {
      xi[k][c] = i < N ? xs[i * D + c] : T(0);
      acc[k][c] = T(0);
    }
  }

  const int64_t n_tiles = (N + kTile - 1) / kTile;
  const int64_t t_begin = int64_t(bc.split) * tiles_per_split;
  const int64_t t_end = min(n_tiles, t_begin + tiles_per_split);
  const int64_t diag_begin = bc.iblk * IPT;  // the tiles that hold this block's own bodies
  for (int64_t jt = t_begin; jt < t_end; ++jt) {
    const int64_t j0 = jt * kTile;
    const int64_t j = j0 + tid;
    __syncthreads();  // every thread is done reading the previous tile
    tile[tid] = j < N ? pack<T, D>(xs + j * D, ms[j]) : Vec4<T>{T(0), T(0), T(0), T(0)};
    __syncthreads();
    const bool partial = j0 + kTile > N;
    const bool diagonal = jt >= diag_begin && jt < diag_begin + IPT;
    if (!partial && !diagonal) {
      // Hot loop: no self term possible, no bounds.
#pragma unroll 8
      for (int u = 0; u < kTile; ++u) {
        const Vec4<T> pj = tile[u];
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          T r[D];
          offset<T, D>(pj, xi[k], r);
          pair_acceleration<T, D>(r, pj.w, p.eps2, acc[k]);
        }
      }
    } else {
      // Masked loop: j < N only, and the self term gets eps^2 = 1 so that its (zero) offset
      // times a finite weight adds exactly 0 even when eps = 0.
      const int jn = static_cast<int>(min(int64_t(kTile), N - j0));
      for (int u = 0; u < jn; ++u) {
        const Vec4<T> pj = tile[u];
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          const bool self = j0 + u == i0 + int64_t(k) * kTile;
          T r[D];
          offset<T, D>(pj, xi[k], r);
          pair_acceleration<T, D>(r, pj.w, self ? T(1) : p.eps2, acc[k]);
        }
      }
    }
  }

#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
    if (i >= N) continue;
    const int64_t body = bc.b * N + i;
    if (n_splits == 1) {
      T a[D];
      finish_acceleration<T, D>(acc[k], xi[k], p, a);
#pragma unroll
      for (int c = 0; c < D; ++c) out[body * D + c] = a[c];
    } else {
      T* dst = out + (int64_t(bc.split) * B * N + body) * D;
#pragma unroll
      for (int c = 0; c < D; ++c) dst[c] = acc[k][c];
    }
  }
}

// --------------------------------------------------------------------------------------------
// Acceleration VJP: grad_k = G sum_j J(x_j - x_k)(m_k g_j - m_j g_k) (+ tidal), physics.h's
// pair_acceleration_vjp. Same tiling; the tile also carries g_j.
template <typename T, int D, int IPT>
__global__ void __launch_bounds__(kTile)
    tiled_vjp_kernel(const T* __restrict__ pos, const T* __restrict__ mass,
                     const T* __restrict__ grad_acc, T* __restrict__ out, int64_t B, int64_t N,
                     int64_t n_iblocks, int n_splits, int64_t tiles_per_split, Params<T> p) {
  __shared__ Vec4<T> tile_x[kTile];
  __shared__ Vec4<T> tile_g[kTile];
  const BlockCoord bc = block_coord(n_iblocks, n_splits);
  const int tid = threadIdx.x;
  const T* xs = pos + bc.b * N * D;
  const T* gs = grad_acc + bc.b * N * D;
  const T* ms = mass + bc.b * N;
  const int64_t i0 = bc.iblk * (int64_t(kTile) * IPT) + tid;

  T xi[IPT][D], gi[IPT][D], mi[IPT], grad[IPT][D];
#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
    mi[k] = i < N ? ms[i] : T(0);
#pragma unroll
    for (int c = 0; c < D; ++c) {
      xi[k][c] = i < N ? xs[i * D + c] : T(0);
      gi[k][c] = i < N ? gs[i * D + c] : T(0);
      grad[k][c] = T(0);
    }
  }

  const int64_t n_tiles = (N + kTile - 1) / kTile;
  const int64_t t_begin = int64_t(bc.split) * tiles_per_split;
  const int64_t t_end = min(n_tiles, t_begin + tiles_per_split);
  const int64_t diag_begin = bc.iblk * IPT;
  for (int64_t jt = t_begin; jt < t_end; ++jt) {
    const int64_t j0 = jt * kTile;
    const int64_t j = j0 + tid;
    __syncthreads();
    if (j < N) {
      tile_x[tid] = pack<T, D>(xs + j * D, ms[j]);
      tile_g[tid] = pack<T, D>(gs + j * D, T(0));
    } else {
      tile_x[tid] = Vec4<T>{T(0), T(0), T(0), T(0)};
      tile_g[tid] = Vec4<T>{T(0), T(0), T(0), T(0)};
    }
    __syncthreads();
    const bool partial = j0 + kTile > N;
    const bool diagonal = jt >= diag_begin && jt < diag_begin + IPT;
    if (!partial && !diagonal) {
#pragma unroll 4
      for (int u = 0; u < kTile; ++u) {
        const Vec4<T> pj = tile_x[u];
        T gj[D];
        unpack<T, D>(tile_g[u], gj);
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          T r[D];
          offset<T, D>(pj, xi[k], r);
          pair_acceleration_vjp<T, D>(r, mi[k], pj.w, gi[k], gj, p.eps2, grad[k]);
        }
      }
    } else {
      // Self term: both masses 0 make w = 0 exactly (with them, m_k g_k - m_k g_k would leave
      // an FMA rounding residue), and eps^2 = 1 keeps 1/s finite.
      const int jn = static_cast<int>(min(int64_t(kTile), N - j0));
      for (int u = 0; u < jn; ++u) {
        const Vec4<T> pj = tile_x[u];
        T gj[D];
        unpack<T, D>(tile_g[u], gj);
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          const bool self = j0 + u == i0 + int64_t(k) * kTile;
          T r[D];
          offset<T, D>(pj, xi[k], r);
          pair_acceleration_vjp<T, D>(r, self ? T(0) : mi[k], self ? T(0) : pj.w, gi[k], gj,
                                      self ? T(1) : p.eps2, grad[k]);
        }
      }
    }
  }

#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
    if (i >= N) continue;
    const int64_t body = bc.b * N + i;
    if (n_splits == 1) {
      T o[D];
      finish_vjp<T, D>(grad[k], xi[k], gi[k], p, o);
#pragma unroll
      for (int c = 0; c < D; ++c) out[body * D + c] = o[c];
    } else {
      T* dst = out + (int64_t(bc.split) * B * N + body) * D;
#pragma unroll
      for (int c = 0; c < D; ++c) dst[c] = grad[k][c];
    }
  }
}

// Sums the j-split partials of one body in split order, then applies G and the tidal term.
template <typename T, int D, bool kVjp>
__global__ void split_finish_kernel(const T* __restrict__ partial, const T* __restrict__ pos,
                                    const T* __restrict__ grad_acc, T* __restrict__ out,
                                    int64_t BN, int n_splits, Params<T> p) {
  const int64_t body = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (body >= BN) return;
  T raw[D], x[D], o[D];
#pragma unroll
  for (int c = 0; c < D; ++c) {
    raw[c] = T(0);
    x[c] = pos[body * D + c];
  }
  for (int s = 0; s < n_splits; ++s) {
#pragma unroll
    for (int c = 0; c < D; ++c) raw[c] += partial[(int64_t(s) * BN + body) * D + c];
  }
  if constexpr (kVjp) {
    T g[D];
#pragma unroll
    for (int c = 0; c < D; ++c) g[c] = grad_acc[body * D + c];
    finish_vjp<T, D>(raw, x, g, p, o);
  } else {
    finish_acceleration<T, D>(raw, x, p, o);
  }
#pragma unroll
  for (int c = 0; c < D; ++c) out[body * D + c] = o[c];
}

// --------------------------------------------------------------------------------------------
// Potential energy: each block writes its share of the system's energy,
//   sum_i [ -G/2 m_i sum_{j != i} m_j / s_ij  +  m_i Phi(x_i) (first split only) ],
// to partial[b, iblk * n_splits + split]; reduce_rows then adds a system's shares in order.
// 7 FP32 instructions + 1 MUFU per interaction: bound by the MUFU pipe (16/clk/SM).
template <typename T, int D, int IPT>
__global__ void __launch_bounds__(kTile)
    tiled_potential_kernel(const T* __restrict__ pos, const T* __restrict__ mass,
                           T* __restrict__ partial, int64_t N, int64_t n_iblocks, int n_splits,
                           int64_t tiles_per_split, Params<T> p) {
  __shared__ Vec4<T> tile[kTile];
  __shared__ T warp_sums[kTile / 32];
  const BlockCoord bc = block_coord(n_iblocks, n_splits);
  const int tid = threadIdx.x;
  const T* xs = pos + bc.b * N * D;
  const T* ms = mass + bc.b * N;
  const int64_t i0 = bc.iblk * (int64_t(kTile) * IPT) + tid;

  T xi[IPT][D], e[IPT];
#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
#pragma unroll
    for (int c = 0; c < D; ++c) xi[k][c] = i < N ? xs[i * D + c] : T(0);
    e[k] = T(0);
  }

  const int64_t n_tiles = (N + kTile - 1) / kTile;
  const int64_t t_begin = int64_t(bc.split) * tiles_per_split;
  const int64_t t_end = min(n_tiles, t_begin + tiles_per_split);
  const int64_t diag_begin = bc.iblk * IPT;
  for (int64_t jt = t_begin; jt < t_end; ++jt) {
    const int64_t j0 = jt * kTile;
    const int64_t j = j0 + tid;
    __syncthreads();
    tile[tid] = j < N ? pack<T, D>(xs + j * D, ms[j]) : Vec4<T>{T(0), T(0), T(0), T(0)};
    __syncthreads();
    const bool partial_tile = j0 + kTile > N;
    const bool diagonal = jt >= diag_begin && jt < diag_begin + IPT;
    if (!partial_tile && !diagonal) {
#pragma unroll 8
      for (int u = 0; u < kTile; ++u) {
        const Vec4<T> pj = tile[u];
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          T r[D];
          offset<T, D>(pj, xi[k], r);
          e[k] += pj.w * pair_inverse_distance<T, D>(r, p.eps2);
        }
      }
    } else {
      const int jn = static_cast<int>(min(int64_t(kTile), N - j0));
      for (int u = 0; u < jn; ++u) {
        const Vec4<T> pj = tile[u];
#pragma unroll
        for (int k = 0; k < IPT; ++k) {
          const bool self = j0 + u == i0 + int64_t(k) * kTile;
          T r[D];
          offset<T, D>(pj, xi[k], r);
          // Both the mass and eps^2 are replaced for the self term, so no inf is ever formed.
          e[k] += (self ? T(0) : pj.w) * pair_inverse_distance<T, D>(r, self ? T(1) : p.eps2);
        }
      }
    }
  }

  T mine = T(0);
#pragma unroll
  for (int k = 0; k < IPT; ++k) {
    const int64_t i = i0 + int64_t(k) * kTile;
    if (i >= N) continue;
    const T mi = ms[i];
    mine += T(-0.5) * p.G * mi * e[k];
    if (p.field && bc.split == 0) mine += mi * tidal_potential<T, D>(xi[k], p.gm, p.R);
  }
  mine = group_sum_in_warp(mine, 32);
  if ((tid & 31) == 0) warp_sums[tid >> 5] = mine;
  __syncthreads();
  if (tid == 0) {
    T total = T(0);
#pragma unroll
    for (int w = 0; w < kTile / 32; ++w) total += warp_sums[w];
    partial[blockIdx.x] = total;  // blockIdx.x == (b * n_iblocks + iblk) * n_splits + split
  }
}

// --------------------------------------------------------------------------------------------
// Row sums in a fixed order: one thread per row for short rows, one block per row otherwise.
template <typename T>
__global__ void reduce_short_rows_kernel(const T* __restrict__ in, T* __restrict__ out,
                                         int64_t rows, int64_t cols) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  T s = T(0);
  for (int64_t c = 0; c < cols; ++c) s += in[r * cols + c];
  out[r] = s;
}

constexpr int kReduceThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_long_rows_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t cols) {
  __shared__ T warp_sums[kReduceThreads / 32];
  const T* row = in + int64_t(blockIdx.x) * cols;
  T s = T(0);
  for (int64_t c = threadIdx.x; c < cols; c += kReduceThreads) s += row[c];
  s = group_sum_in_warp(s, 32);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = T(0);
#pragma unroll
    for (int w = 0; w < kReduceThreads / 32; ++w) total += warp_sums[w];
    out[blockIdx.x] = total;
  }
}

// --------------------------------------------------------------------------------------------
// Launch helpers.

template <typename T, int D, int IPT>
void launch_acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                         const Params<T>& p, cudaStream_t s) {
  static const int occupancy = blocks_per_sm(tiled_acceleration_kernel<T, D, IPT>);
  const DeviceFacts& dev = current_device();
  const TilePlan plan = plan_tiles(B, N, IPT, dev.sm_count, occupancy);
  const unsigned grid = grid_size(B * plan.n_iblocks * plan.n_splits, "tiled acceleration");
  if (plan.n_splits == 1) {
    tiled_acceleration_kernel<T, D, IPT><<<grid, kTile, 0, s>>>(
        pos, mass, out, B, N, plan.n_iblocks, 1, plan.tiles_per_split, p);
    check_launch("tiled_acceleration_kernel");
    return;
  }
  Scratch<T> partial(size_t(plan.n_splits) * B * N * D, s);
  tiled_acceleration_kernel<T, D, IPT><<<grid, kTile, 0, s>>>(
      pos, mass, partial.get(), B, N, plan.n_iblocks, plan.n_splits, plan.tiles_per_split, p);
  check_launch("tiled_acceleration_kernel (split)");
  split_finish_kernel<T, D, false><<<grid_size(ceil_div(B * N, 256), "split finish"), 256, 0, s>>>(
      partial.get(), pos, nullptr, out, B * N, plan.n_splits, p);
  check_launch("split_finish_kernel");
}

template <typename T, int D, int IPT>
void launch_vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                const Params<T>& p, cudaStream_t s) {
  static const int occupancy = blocks_per_sm(tiled_vjp_kernel<T, D, IPT>);
  const DeviceFacts& dev = current_device();
  const TilePlan plan = plan_tiles(B, N, IPT, dev.sm_count, occupancy);
  const unsigned grid = grid_size(B * plan.n_iblocks * plan.n_splits, "tiled vjp");
  if (plan.n_splits == 1) {
    tiled_vjp_kernel<T, D, IPT><<<grid, kTile, 0, s>>>(pos, mass, g, out, B, N, plan.n_iblocks,
                                                       1, plan.tiles_per_split, p);
    check_launch("tiled_vjp_kernel");
    return;
  }
  Scratch<T> partial(size_t(plan.n_splits) * B * N * D, s);
  tiled_vjp_kernel<T, D, IPT><<<grid, kTile, 0, s>>>(pos, mass, g, partial.get(), B, N,
                                                     plan.n_iblocks, plan.n_splits,
                                                     plan.tiles_per_split, p);
  check_launch("tiled_vjp_kernel (split)");
  split_finish_kernel<T, D, true><<<grid_size(ceil_div(B * N, 256), "split finish"), 256, 0, s>>>(
      partial.get(), pos, g, out, B * N, plan.n_splits, p);
  check_launch("split_finish_kernel (vjp)");
}

template <typename T, int D, int IPT>
void launch_potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s) {
  static const int occupancy = blocks_per_sm(tiled_potential_kernel<T, D, IPT>);
  const DeviceFacts& dev = current_device();
  const TilePlan plan = plan_tiles(B, N, IPT, dev.sm_count, occupancy);
  const int64_t per_system = plan.n_iblocks * plan.n_splits;
  const unsigned grid = grid_size(B * per_system, "tiled potential");
  Scratch<T> partial(size_t(B) * per_system, s);
  tiled_potential_kernel<T, D, IPT><<<grid, kTile, 0, s>>>(
      pos, mass, partial.get(), N, plan.n_iblocks, plan.n_splits, plan.tiles_per_split, p);
  check_launch("tiled_potential_kernel");
  reduce_rows<T>(partial.get(), out, B, per_system, s);
}

}  // namespace

template <typename T>
void reduce_rows(const T* in, T* out, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows <= 0) return;
  if (cols <= 32) {
    reduce_short_rows_kernel<T><<<grid_size(ceil_div(rows, 128), "reduce rows"), 128, 0, s>>>(
        in, out, rows, cols);
    check_launch("reduce_short_rows_kernel");
  } else {
    reduce_long_rows_kernel<T><<<grid_size(rows, "reduce rows"), kReduceThreads, 0, s>>>(
        in, out, cols);
    check_launch("reduce_long_rows_kernel");
  }
}

template <typename T, int D>
void Tiled<T, D>::acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                               const Params<T>& p, cudaStream_t s) {
  const SymmetricPlan sym = Symmetric<T, D>::plan(B, N);
  if (sym.P > 0) {  // each pair once (symmetric.cu), then the slots added in order
    Scratch<T> partial(size_t(sym.nblk) * B * N * D, s);
    Symmetric<T, D>::partials(pos, mass, partial.get(), B, N, sym, p.eps2, s);
    split_finish_kernel<T, D, false><<<grid_size(ceil_div(B * N, 256), "split finish"), 256, 0, s>>>(
        partial.get(), pos, nullptr, out, B * N, sym.nblk, p);
    check_launch("split_finish_kernel (symmetric)");
    return;
  }
  if (use_one_body_per_thread(B, N, current_device().sm_count)) {
    launch_acceleration<T, D, 1>(pos, mass, out, B, N, p, s);
  } else {
    launch_acceleration<T, D, ipt_large<T>()>(pos, mass, out, B, N, p, s);
  }
}

template <typename T, int D>
void Tiled<T, D>::vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s) {
  if (use_one_body_per_thread(B, N, current_device().sm_count)) {
    launch_vjp<T, D, 1>(pos, mass, g, out, B, N, p, s);
  } else {
    launch_vjp<T, D, ipt_large<T>()>(pos, mass, g, out, B, N, p, s);
  }
}

template <typename T, int D>
void Tiled<T, D>::potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                            const Params<T>& p, cudaStream_t s) {
  if (use_one_body_per_thread(B, N, current_device().sm_count)) {
    launch_potential<T, D, 1>(pos, mass, out, B, N, p, s);
  } else {
    launch_potential<T, D, ipt_large<T>()>(pos, mass, out, B, N, p, s);
  }
}

template void reduce_rows<float>(const float*, float*, int64_t, int64_t, cudaStream_t);
template void reduce_rows<double>(const double*, double*, int64_t, int64_t, cudaStream_t);
template struct Tiled<float, 2>;
template struct Tiled<float, 3>;
template struct Tiled<double, 2>;
template struct Tiled<double, 3>;

}  // namespace aits::cuda::detail
