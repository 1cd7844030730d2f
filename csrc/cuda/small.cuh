// One thread per system for N = 2..8 (N a template parameter): the whole system lives in
// registers, every pair loop is unrolled at compile time (so j != i costs nothing), and `step`
// fuses all substeps in one launch. Included by small_float.cu and small_double.cu, which
// instantiate it for one precision each (the two compile in parallel).
//
// Global memory is [B, N, D] with one system per thread, i.e. each thread owns a run of N*D
// consecutive values: read directly, a warp's loads would be strided by N*D elements. Instead
// each block of kThreads systems moves its slab through shared memory ("Slab"): consecutive
// threads load consecutive elements (coalesced), the block transposes through a padded buffer
// (odd row stride: conflict-free), and each thread then reads its own system. Stores and the
// trajectory go the same way in reverse. This is what makes a 1-step call memory-bound at
// close to full HBM bandwidth rather than transaction-bound.
#pragma once

#include <type_traits>

#include "common.cuh"

namespace aits::cuda::detail {
namespace small {

constexpr int kThreads = 128;  // systems (threads) per block

// Moves [systems b0 .. b0 + nsys) x C values between global memory and per-thread registers.
template <typename T, int C>
struct Slab {
  static constexpr int kStride = C | 1;  // odd: thread t's row starts in bank (t * kStride) % 32

  // Coalesced: element e of the block's slab goes to thread e % kThreads, slot e / kThreads.
  __device__ static void load(const T* g, int64_t b0, int nsys, T (&tmp)[C]) {
    const T* base = g + b0 * C;
    const int nvalid = nsys * C;
#pragma unroll
    for (int k = 0; k < C; ++k) {
      const int e = k * kThreads + threadIdx.x;
      tmp[k] = e < nvalid ? base[e] : T(0);
    }
  }
  __device__ static void store(T* g, int64_t b0, int nsys, const T (&tmp)[C]) {
    T* base = g + b0 * C;
    const int nvalid = nsys * C;
#pragma unroll
    for (int k = 0; k < C; ++k) {
      const int e = k * kThreads + threadIdx.x;
      if (e < nvalid) base[e] = tmp[k];
    }
  }
  // Transpose load order -> this thread's system, through `smem` (kThreads * kStride values).
  __device__ static void to_system(T* smem, const T (&tmp)[C], T (&dst)[C]) {
    __syncthreads();  // the buffer's previous contents have been consumed
#pragma unroll
    for (int k = 0; k < C; ++k) {
      const int e = k * kThreads + threadIdx.x;
      smem[(e / C) * kStride + e % C] = tmp[k];
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < C; ++c) dst[c] = smem[threadIdx.x * kStride + c];
  }
  __device__ static void from_system(T* smem, const T (&src)[C], T (&tmp)[C]) {
    __syncthreads();
#pragma unroll
    for (int c = 0; c < C; ++c) smem[threadIdx.x * kStride + c] = src[c];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < C; ++k) {
      const int e = k * kThreads + threadIdx.x;
      tmp[k] = smem[(e / C) * kStride + e % C];
    }
  }
  __device__ static void read(T* smem, const T* g, int64_t b0, int nsys, T (&dst)[C]) {
    T tmp[C];
    load(g, b0, nsys, tmp);
    to_system(smem, tmp, dst);
  }
  __device__ static void write(T* smem, T* g, int64_t b0, int nsys, const T (&src)[C]) {
    T tmp[C];
    from_system(smem, src, tmp);
    store(g, b0, nsys, tmp);
  }
};

// Shared-memory words for a block whose largest slab has C values per system.
template <int C>
constexpr int slab_words() {
  return kThreads * (C | 1);
}

// ---- the physics of one system in registers -------------------------------------------------

template <typename T, int N, int D>
__device__ __forceinline__ void acceleration_of(const T (&x)[N * D], const T (&m)[N],
                                                const Params<T>& p, int i, T* a_i) {
  T raw[D];
#pragma unroll
  for (int c = 0; c < D; ++c) raw[c] = T(0);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j == i) continue;  // resolved at compile time: i and j are unrolled constants
    T r[D];
#pragma unroll
    for (int c = 0; c < D; ++c) r[c] = x[j * D + c] - x[i * D + c];
    pair_acceleration<T, D>(r, m[j], p.eps2, raw);
  }
  finish_acceleration<T, D>(raw, &x[i * D], p, a_i);
}

template <typename T, int N, int D>
__device__ __forceinline__ void system_acceleration(const T (&x)[N * D], const T (&m)[N],
                                                    const Params<T>& p, T (&a)[N * D]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acceleration_of<T, N, D>(x, m, p, i, &a[i * D]);
}

// (d a / d x)^T g for body i: G sum_j J(x_j - x_i)(m_i g_j - m_j g_i) + tidal.
template <typename T, int N, int D>
__device__ __forceinline__ void vjp_of(const T (&x)[N * D], const T (&m)[N], const T (&g)[N * D],
                                       const Params<T>& p, int i, T* out_i) {
  T raw[D];
#pragma unroll
  for (int c = 0; c < D; ++c) raw[c] = T(0);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j == i) continue;
    T r[D];
#pragma unroll
    for (int c = 0; c < D; ++c) r[c] = x[j * D + c] - x[i * D + c];
    pair_acceleration_vjp<T, D>(r, m[i], m[j], &g[i * D], &g[j * D], p.eps2, raw);
  }
  finish_vjp<T, D>(raw, &x[i * D], &g[i * D], p, out_i);
}

// U = -G sum_{i<j} m_i m_j / s_ij + sum_i m_i Phi(x_i).
template <typename T, int N, int D>
__device__ __forceinline__ T system_potential(const T (&x)[N * D], const T (&m)[N],
                                              const Params<T>& p) {
  T pairs = T(0);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    T row = T(0);
#pragma unroll
    for (int j = i + 1; j < N; ++j) {
      T r[D];
#pragma unroll
      for (int c = 0; c < D; ++c) r[c] = x[j * D + c] - x[i * D + c];
      row += m[j] * pair_inverse_distance<T, D>(r, p.eps2);
    }
    pairs += m[i] * row;
  }
  T energy = -p.G * pairs;
  if (p.field) {
#pragma unroll
    for (int i = 0; i < N; ++i) energy += m[i] * tidal_potential<T, D>(&x[i * D], p.gm, p.R);
  }
  return energy;
}

// ---- kernels ---------------------------------------------------------------------------------
// Threads past the last system (b >= B) run on zeros and store nothing; they must stay alive
// for the block's barriers inside Slab.

template <typename T, int N, int D>
__global__ void __launch_bounds__(kThreads)
    acceleration_kernel(const T* pos, const T* mass, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  __shared__ T smem[slab_words<ND>()];
  const int64_t b0 = int64_t(blockIdx.x) * kThreads;
  const int nsys = static_cast<int>(min(int64_t(kThreads), B - b0));
  T x[ND], m[N], a[ND];
  {
    T tx[ND], tm[N];
    Slab<T, ND>::load(pos, b0, nsys, tx);
    Slab<T, N>::load(mass, b0, nsys, tm);
    Slab<T, ND>::to_system(smem, tx, x);
    Slab<T, N>::to_system(smem, tm, m);
  }
  system_acceleration<T, N, D>(x, m, p, a);
  Slab<T, ND>::write(smem, out, b0, nsys, a);
}

template <typename T, int N, int D>
__global__ void __launch_bounds__(kThreads)
    potential_kernel(const T* pos, const T* mass, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  __shared__ T smem[slab_words<ND>()];
  const int64_t b0 = int64_t(blockIdx.x) * kThreads;
  const int nsys = static_cast<int>(min(int64_t(kThreads), B - b0));
  T x[ND], m[N];
  {
    T tx[ND], tm[N];
    Slab<T, ND>::load(pos, b0, nsys, tx);
    Slab<T, N>::load(mass, b0, nsys, tm);
    Slab<T, ND>::to_system(smem, tx, x);
    Slab<T, N>::to_system(smem, tm, m);
  }
  const T energy = system_potential<T, N, D>(x, m, p);
  if (int(threadIdx.x) < nsys) out[b0 + threadIdx.x] = energy;  // one value per thread: coalesced
}

template <typename T, int N, int D>
__global__ void __launch_bounds__(kThreads)
    vjp_kernel(const T* pos, const T* mass, const T* grad_acc, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  __shared__ T smem[slab_words<ND>()];
  const int64_t b0 = int64_t(blockIdx.x) * kThreads;
  const int nsys = static_cast<int>(min(int64_t(kThreads), B - b0));
  T x[ND], m[N], g[ND], o[ND];
  {
    T tx[ND], tg[ND], tm[N];
    Slab<T, ND>::load(pos, b0, nsys, tx);
    Slab<T, ND>::load(grad_acc, b0, nsys, tg);
    Slab<T, N>::load(mass, b0, nsys, tm);
    Slab<T, ND>::to_system(smem, tx, x);
    Slab<T, ND>::to_system(smem, tg, g);
    Slab<T, N>::to_system(smem, tm, m);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) vjp_of<T, N, D>(x, m, g, p, i, &o[i * D]);
  Slab<T, ND>::write(smem, out, b0, nsys, o);
}

// The trajectory slab [s, k] of [S+1, 3, B, N, D].
template <typename T>
__device__ __forceinline__ T* traj_slab(T* traj, int64_t s, int k, int64_t slab) {
  return traj + (s * 3 + k) * slab;
}
template <typename T>
__device__ __forceinline__ const T* traj_slab(const T* traj, int64_t s, int k, int64_t slab) {
  return traj + (s * 3 + k) * slab;
}

template <typename T, int N, int D>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos, T* out_vel,
                T* traj, int64_t B, int64_t steps, int integrator, Params<T> p) {
  constexpr int ND = N * D;
  __shared__ T smem[slab_words<ND>()];
  const int64_t b0 = int64_t(blockIdx.x) * kThreads;
  const int nsys = static_cast<int>(min(int64_t(kThreads), B - b0));
  const bool active = int(threadIdx.x) < nsys;
  const int64_t slab = B * ND;

  T x[ND], v[ND], m[N], a[ND];
  {
    // Issue every global load before the first barrier so they are in flight together.
    T tx[ND], tv[ND], tm[N];
    Slab<T, ND>::load(pos, b0, nsys, tx);
    Slab<T, ND>::load(vel, b0, nsys, tv);
    Slab<T, N>::load(mass, b0, nsys, tm);
    Slab<T, ND>::to_system(smem, tx, x);
    Slab<T, ND>::to_system(smem, tv, v);
    Slab<T, N>::to_system(smem, tm, m);
  }
  const T dtb = active ? dt[b0 + threadIdx.x] : T(0);
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  // Substeps 0 and 2 of yoshida4 share a weight: two step sizes cover every substep, kept in
  // scalars (a run-time index into a register array would spill it to local memory).
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);

  system_acceleration<T, N, D>(x, m, p, a);
  if (traj != nullptr) {
    Slab<T, ND>::write(smem, traj_slab(traj, 0, 0, slab), b0, nsys, x);
    Slab<T, ND>::write(smem, traj_slab(traj, 0, 1, slab), b0, nsys, v);
    Slab<T, ND>::write(smem, traj_slab(traj, 0, 2, slab), b0, nsys, a);
  }
  int64_t boundary = 0;
  for (int64_t st = 0; st < steps; ++st) {
    for (int sub = 0; sub < S1; ++sub) {
      const T h = sub == 1 ? h_mid : h_outer;
      const T half = T(0.5) * h;
#pragma unroll
      for (int e = 0; e < ND; ++e) {
        v[e] = kick(v[e], half, a[e]);
        x[e] = drift(x[e], h, v[e]);
      }
      system_acceleration<T, N, D>(x, m, p, a);
#pragma unroll
      for (int e = 0; e < ND; ++e) v[e] = kick(v[e], half, a[e]);
      ++boundary;
      if (traj != nullptr) {
        Slab<T, ND>::write(smem, traj_slab(traj, boundary, 0, slab), b0, nsys, x);
        Slab<T, ND>::write(smem, traj_slab(traj, boundary, 1, slab), b0, nsys, v);
        Slab<T, ND>::write(smem, traj_slab(traj, boundary, 2, slab), b0, nsys, a);
      }
    }
  }
  Slab<T, ND>::write(smem, out_pos, b0, nsys, x);
  Slab<T, ND>::write(smem, out_vel, b0, nsys, v);
}

// The adjoint loop of docs/kernel-contract.md, one system per thread.
template <typename T, int N, int D>
__global__ void __launch_bounds__(kThreads)
    step_backward_kernel(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                         const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                         int64_t steps, int integrator, Params<T> p) {
  constexpr int ND = N * D;
  __shared__ T smem[slab_words<ND>()];
  const int64_t b0 = int64_t(blockIdx.x) * kThreads;
  const int nsys = static_cast<int>(min(int64_t(kThreads), B - b0));
  const bool active = int(threadIdx.x) < nsys;
  const int64_t slab = B * ND;
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  const int64_t S = steps * S1;

  T m[N], gx[ND], gv[ND], xb[ND], ab[ND];
  {
    T tm[N], tgx[ND], tgv[ND];
    Slab<T, N>::load(mass, b0, nsys, tm);
    Slab<T, ND>::load(grad_pos, b0, nsys, tgx);
    Slab<T, ND>::load(grad_vel, b0, nsys, tgv);
    Slab<T, N>::to_system(smem, tm, m);
    Slab<T, ND>::to_system(smem, tgx, gx);
    Slab<T, ND>::to_system(smem, tgv, gv);
  }
  Slab<T, ND>::read(smem, traj_slab(traj, S, 0, slab), b0, nsys, xb);
  Slab<T, ND>::read(smem, traj_slab(traj, S, 2, slab), b0, nsys, ab);
  const T dtb = active ? dt[b0 + threadIdx.x] : T(0);
  const T c_outer = static_cast<T>(substep_weight(integ, 0));
  const T c_mid = static_cast<T>(substep_weight(integ, 1));
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);

  T gdt = T(0);
  for (int64_t b = S;; --b) {
    // Substep b-1 closes at this boundary and substep b opens here (absent ones weigh 0).
    const bool has_prev = b > 0, has_next = b < S;
    const bool prev_mid = has_prev && (b - 1) % S1 == 1;
    const bool next_mid = has_next && b % S1 == 1;
    const T c_prev = has_prev ? (prev_mid ? c_mid : c_outer) : T(0);
    const T c_next = has_next ? (next_mid ? c_mid : c_outer) : T(0);
    const T h_prev = has_prev ? (prev_mid ? h_mid : h_outer) : T(0);
    const T h_next = has_next ? (next_mid ? h_mid : h_outer) : T(0);
    const T k = T(0.5) * (h_prev + h_next);

    // gx += J(x_b)^T (k gv): the VJP is linear in g, so scale its result instead of gv.
    T o[D];
    T dot_va = T(0);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      vjp_of<T, N, D>(xb, m, gv, p, i, o);
#pragma unroll
      for (int c = 0; c < D; ++c) gx[i * D + c] = fma(k, o[c], gx[i * D + c]);
    }
#pragma unroll
    for (int e = 0; e < ND; ++e) dot_va = fma(gv[e], ab[e], dot_va);
    gdt = fma(T(0.5) * (c_prev + c_next), dot_va, gdt);
    if (!has_prev) break;

    // Substep s = b - 1: x_b = x_s + h_s v_half with v_half = v_s + h_s/2 a_s.
    T vs[ND];
    Slab<T, ND>::read(smem, traj_slab(traj, b - 1, 0, slab), b0, nsys, xb);
    Slab<T, ND>::read(smem, traj_slab(traj, b - 1, 1, slab), b0, nsys, vs);
    Slab<T, ND>::read(smem, traj_slab(traj, b - 1, 2, slab), b0, nsys, ab);
    const T half = T(0.5) * h_prev;
    T dot_xv = T(0);
#pragma unroll
    for (int e = 0; e < ND; ++e) dot_xv = fma(gx[e], kick(vs[e], half, ab[e]), dot_xv);
    gdt = fma(c_prev, dot_xv, gdt);
#pragma unroll
    for (int e = 0; e < ND; ++e) gv[e] = fma(h_prev, gx[e], gv[e]);
  }
  Slab<T, ND>::write(smem, out_gpos, b0, nsys, gx);
  Slab<T, ND>::write(smem, out_gvel, b0, nsys, gv);
  if (active) out_gdt[b0 + threadIdx.x] = gdt;
}

// ---- launchers --------------------------------------------------------------------------------

inline unsigned blocks_for(int64_t B) { return grid_size(ceil_div(B, kThreads), "small kernels"); }

// Calls launch(std::integral_constant<int, n>) for n = N when 2 <= N <= MaxN; false otherwise.
template <int MaxN, typename Launch>
bool with_n(int64_t N, Launch&& launch) {
  switch (N) {
#define AITS_SMALL_CASE(n)                                              \
  case n:                                                               \
    if constexpr (n <= MaxN) {                                          \
      launch(std::integral_constant<int, n>{});                         \
      return true;                                                      \
    } else {                                                            \
      return false;                                                     \
    }
    AITS_SMALL_CASE(2)
    AITS_SMALL_CASE(3)
    AITS_SMALL_CASE(4)
    AITS_SMALL_CASE(5)
    AITS_SMALL_CASE(6)
    AITS_SMALL_CASE(7)
    AITS_SMALL_CASE(8)
#undef AITS_SMALL_CASE
    default:
      return false;
  }
}

}  // namespace small

// The largest N compiled for a precision. Float: every size up to 8. Double: each value takes
// two registers, and at N = 8, D = 3 the step_backward kernel's ~7 * N * D live values would spill
// (see NOTES.md), so larger double systems go to the grouped kernels instead.
template <typename T>
constexpr int small_max_n() {
  return sizeof(T) == 4 ? 8 : 6;
}

template <typename T, int D>
int Small<T, D>::max_n() {
  return small_max_n<T>();
}

template <typename T, int D>
bool Small<T, D>::acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                               const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::acceleration_kernel<T, decltype(n)::value, D>
        <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, out, B, p);
    check_launch("small acceleration_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                            const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::potential_kernel<T, decltype(n)::value, D>
        <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, out, B, p);
    check_launch("small potential_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::vjp_kernel<T, decltype(n)::value, D>
        <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, g, out, B, p);
    check_launch("small vjp_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                       T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps,
                       Integrator integ, const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::step_kernel<T, decltype(n)::value, D><<<small::blocks_for(B), small::kThreads, 0, s>>>(
        pos, vel, mass, dt, out_pos, out_vel, traj, B, steps, int(integ), p);
    check_launch("small step_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                                const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt,
                                int64_t B, int64_t N, int64_t steps, Integrator integ,
                                const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::step_backward_kernel<T, decltype(n)::value, D>
        <<<small::blocks_for(B), small::kThreads, 0, s>>>(traj, mass, dt, grad_pos, grad_vel,
                                                          out_gpos, out_gvel, out_gdt, B, steps,
                                                          int(integ), p);
    check_launch("small step_backward_kernel");
  });
}

}  // namespace aits::cuda::detail
