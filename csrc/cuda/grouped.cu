// One thread per body, the bodies of a system side by side in shared memory: the regime for
// many systems of N = 9..256 (and for N <= 8 where no thread-per-system kernel is compiled).
//
// A block holds SPB systems of NP lanes each (NP = N rounded up to a power of two up to 32, to a
// multiple of 32 above; SPB * NP = 128 threads, or NP when NP > 128). Each thread keeps its own
// body's x, v, a in registers; a force evaluation publishes (x, m) to shared memory, waits at
// one barrier and sums over the system's N records, which all lanes of a group read at the same
// address (a broadcast). `step` fuses all substeps in one launch with two shared buffers used
// alternately, so one barrier per substep is enough: a buffer is rewritten only two substeps
// after it was read, and every thread has passed the barrier in between.
//
// The self term j == i is masked (eps^2 -> 1 for the self term, whose offset is exactly zero)
// only in the 32-record chunk that holds the warp's own bodies: 2 extra instructions on ~13
// there, none elsewhere (see for_each_j).
#include <algorithm>

#include "common.cuh"

namespace aits::cuda::detail {
namespace {

constexpr int kMaxThreads = 256;  // Grouped::kMaxN rounded up: NP <= 256

struct GroupLayout {
  int NP;       // lanes per system
  int SPB;      // systems per block
  int threads;  // NP * SPB
};

GroupLayout group_layout(int64_t N) {
  int NP = 1;
  if (N <= 32) {
    while (NP < N) NP <<= 1;
  } else {
    NP = static_cast<int>(ceil_div(N, 32) * 32);
  }
  const int SPB = std::max(1, 128 / NP);
  return {NP, SPB, NP * SPB};
}

// Where a thread works: body i of system b; `valid` is false for padding lanes and systems
// past B (they still take part in every barrier).
struct Lane {
  int local;  // system within the block
  int i;      // body
  int64_t b;  // system
  bool valid;
};
__device__ __forceinline__ Lane lane_of(int64_t B, int N, int NP, int SPB) {
  Lane l;
  l.local = threadIdx.x / NP;
  l.i = threadIdx.x - l.local * NP;
  l.b = int64_t(blockIdx.x) * SPB + l.local;
  l.valid = l.i < N && l.b < B;
  return l;
}

// Visits j = 0..N-1 in order as f(j, self). The self term j == i can only fall in the 32-record
// chunk of the thread's own warp (for NP >= 32 a warp's lanes are 32 consecutive bodies of one
// system), so only that chunk pays for the mask; each unrolled group of 8 compares against a
// per-group offset d = i - j with immediate operands (1 ISETP + 1 FSEL per masked
// interaction). Smaller groups (NP < 32) are masked throughout.
template <bool kMasked, typename F>
__device__ __forceinline__ void j_range(int j_begin, int j_end, int i, F&& f) {
  int j = j_begin;
  for (; j + 8 <= j_end; j += 8) {
    const int d = i - j;
#pragma unroll
    for (int u = 0; u < 8; ++u) f(j + u, kMasked && d == u);
  }
  for (; j < j_end; ++j) f(j, kMasked && j == i);
}

template <typename F>
__device__ __forceinline__ void for_each_j(int N, int NP, int i, F&& f) {
  if (NP >= 32) {
    const int own = i & ~31;  // warp-uniform
    j_range<false>(0, min(own, N), i, f);
    j_range<true>(own, min(own + 32, N), i, f);
    j_range<false>(own + 32, N, i, f);
  } else {
    j_range<true>(0, N, i, f);
  }
}

// Raw pair sum over the system's N records in shared memory. The self term gets eps^2 = 1:
// its offset is exactly zero, so a finite weight adds exactly 0 even when eps = 0.
template <typename T, int D>
__device__ __forceinline__ void group_force(const Vec4<T>* sys, int N, int NP, int i, const T* x,
                                            T eps2, T* raw) {
#pragma unroll
  for (int c = 0; c < D; ++c) raw[c] = T(0);
  for_each_j(N, NP, i, [&](int j, bool self) {
    const Vec4<T> pj = sys[j];
    T r[D];
    offset<T, D>(pj, x, r);
    pair_acceleration<T, D>(r, pj.w, self ? T(1) : eps2, raw);
  });
}

// Raw VJP sum; the self term gets zero masses (exactly zero w; with the masses, m_i g_i - m_i g_i
// would leave an FMA rounding residue) and eps^2 = 1 (finite 1/s).
template <typename T, int D>
__device__ __forceinline__ void group_vjp(const Vec4<T>* sys_x, const Vec4<T>* sys_g, int N,
                                          int NP, int i, const T* x, T m, const T* g, T eps2,
                                          T* raw) {
#pragma unroll
  for (int c = 0; c < D; ++c) raw[c] = T(0);
  for_each_j(N, NP, i, [&](int j, bool self) {
    const Vec4<T> pj = sys_x[j];
    T gj[D], r[D];
    unpack<T, D>(sys_g[j], gj);
    offset<T, D>(pj, x, r);
    pair_acceleration_vjp<T, D>(r, self ? T(0) : m, self ? T(0) : pj.w, g, gj,
                                self ? T(1) : eps2, raw);
  });
}

// Sum of v over the thread's system; valid in the system's first lane. Every thread of the
// block must call it (it may hold barriers); fixed order, so deterministic.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int NP, T* warp_sums) {
  if (NP <= 32) return group_sum_in_warp(v, NP);
  v = group_sum_in_warp(v, 32);
  __syncthreads();  // warp_sums may still be read from an earlier call
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x % NP == 0) {
    const int w0 = threadIdx.x >> 5;
    for (int w = 0; w < NP / 32; ++w) total += warp_sums[w0 + w];
  }
  return total;
}

template <typename T, int D>
__device__ __forceinline__ void load_vec(const T* g, int64_t body, T* v) {
#pragma unroll
  for (int c = 0; c < D; ++c) v[c] = g[body * D + c];
}
template <typename T, int D>
__device__ __forceinline__ void store_vec(T* g, int64_t body, const T* v) {
#pragma unroll
  for (int c = 0; c < D; ++c) g[body * D + c] = v[c];
}

// Dynamic shared memory, aligned for Vec4<double>.
template <typename T>
__device__ __forceinline__ Vec4<T>* shared_records() {
  extern __shared__ __align__(32) unsigned char grouped_smem[];
  return reinterpret_cast<Vec4<T>*>(grouped_smem);
}

// ---- kernels -----------------------------------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads)
    acceleration_kernel(const T* pos, const T* mass, T* out, int64_t B, int N, int NP, int SPB,
                        Params<T> p) {
  Vec4<T>* sys = shared_records<T>() + (threadIdx.x / NP) * NP;
  const Lane l = lane_of(B, N, NP, SPB);
  const int64_t body = l.b * N + l.i;
  T x[D] = {};
  if (l.valid) {
    load_vec<T, D>(pos, body, x);
    sys[l.i] = pack<T, D>(x, mass[body]);
  }
  __syncthreads();
  if (l.valid) {
    T raw[D], a[D];
    group_force<T, D>(sys, N, NP, l.i, x, p.eps2, raw);
    finish_acceleration<T, D>(raw, x, p, a);
    store_vec<T, D>(out, body, a);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads)
    potential_kernel(const T* pos, const T* mass, T* out, int64_t B, int N, int NP, int SPB,
                     Params<T> p) {
  __shared__ T warp_sums[kMaxThreads / 32];
  Vec4<T>* sys = shared_records<T>() + (threadIdx.x / NP) * NP;
  const Lane l = lane_of(B, N, NP, SPB);
  const int64_t body = l.b * N + l.i;
  T x[D] = {};
  T m = T(0);
  if (l.valid) {
    load_vec<T, D>(pos, body, x);
    m = mass[body];
    sys[l.i] = pack<T, D>(x, m);
  }
  __syncthreads();
  T mine = T(0);
  if (l.valid) {
    T e = T(0);
    for_each_j(N, NP, l.i, [&](int j, bool self) {
      const Vec4<T> pj = sys[j];
      T r[D];
      offset<T, D>(pj, x, r);
      e += (self ? T(0) : pj.w) * pair_inverse_distance<T, D>(r, self ? T(1) : p.eps2);
    });
    // Each pair is seen from both ends: -G/2 sum_i m_i sum_{j != i} m_j / s_ij.
    mine = T(-0.5) * p.G * m * e;
    if (p.field) mine += m * tidal_potential<T, D>(x, p.gm, p.R);
  }
  const T total = group_sum(mine, NP, warp_sums);
  if (l.i == 0 && l.b < B) out[l.b] = total;
}

template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads)
    vjp_kernel(const T* pos, const T* mass, const T* grad_acc, T* out, int64_t B, int N, int NP,
               int SPB, Params<T> p) {
  Vec4<T>* records = shared_records<T>();
  Vec4<T>* sys_x = records + (threadIdx.x / NP) * NP;
  Vec4<T>* sys_g = sys_x + blockDim.x;
  const Lane l = lane_of(B, N, NP, SPB);
  const int64_t body = l.b * N + l.i;
  T x[D] = {}, g[D] = {};
  T m = T(0);
  if (l.valid) {
    load_vec<T, D>(pos, body, x);
    load_vec<T, D>(grad_acc, body, g);
    m = mass[body];
    sys_x[l.i] = pack<T, D>(x, m);
    sys_g[l.i] = pack<T, D>(g, T(0));
  }
  __syncthreads();
  if (l.valid) {
    T raw[D], o[D];
    group_vjp<T, D>(sys_x, sys_g, N, NP, l.i, x, m, g, p.eps2, raw);
    finish_vjp<T, D>(raw, x, g, p, o);
    store_vec<T, D>(out, body, o);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads)
    step_kernel(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos, T* out_vel,
                T* traj, int64_t B, int N, int NP, int SPB, int64_t steps, int integrator,
                Params<T> p) {
  Vec4<T>* records = shared_records<T>();
  const int offset_in_block = (threadIdx.x / NP) * NP;
  // Two buffers picked with a select, not an array: a run-time index would put the pointer
  // pair in local memory.
  Vec4<T>* const buffer0 = records + offset_in_block;
  Vec4<T>* const buffer1 = records + blockDim.x + offset_in_block;
  const Lane l = lane_of(B, N, NP, SPB);
  const int64_t body = l.b * N + l.i;
  const int64_t slab = B * N * D;

  T x[D] = {}, v[D] = {}, a[D] = {};
  T m = T(0), dtb = T(0);
  if (l.valid) {
    load_vec<T, D>(pos, body, x);
    load_vec<T, D>(vel, body, v);
    m = mass[body];
    dtb = dt[l.b];
    buffer0[l.i] = pack<T, D>(x, m);
  }
  __syncthreads();
  if (l.valid) {
    T raw[D];
    group_force<T, D>(buffer0, N, NP, l.i, x, p.eps2, raw);
    finish_acceleration<T, D>(raw, x, p, a);
    if (traj != nullptr) {
      store_vec<T, D>(traj + 0 * slab, body, x);
      store_vec<T, D>(traj + 1 * slab, body, v);
      store_vec<T, D>(traj + 2 * slab, body, a);
    }
  }
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);
  int which = 1;  // buffer for the next force evaluation
  int64_t boundary = 0;
  for (int64_t st = 0; st < steps; ++st) {
    for (int sub = 0; sub < S1; ++sub) {
      const T h = sub == 1 ? h_mid : h_outer;
      const T half = T(0.5) * h;
      Vec4<T>* sys = which ? buffer1 : buffer0;
      if (l.valid) {
#pragma unroll
        for (int c = 0; c < D; ++c) {
          v[c] = kick(v[c], half, a[c]);
          x[c] = drift(x[c], h, v[c]);
        }
        sys[l.i] = pack<T, D>(x, m);
      }
      __syncthreads();
      ++boundary;
      if (l.valid) {
        T raw[D];
        group_force<T, D>(sys, N, NP, l.i, x, p.eps2, raw);
        finish_acceleration<T, D>(raw, x, p, a);
#pragma unroll
        for (int c = 0; c < D; ++c) v[c] = kick(v[c], half, a[c]);
        if (traj != nullptr) {
          T* base = traj + boundary * 3 * slab;
          store_vec<T, D>(base, body, x);
          store_vec<T, D>(base + slab, body, v);
          store_vec<T, D>(base + 2 * slab, body, a);
        }
      }
      which ^= 1;
    }
  }
  if (l.valid) {
    store_vec<T, D>(out_pos, body, x);
    store_vec<T, D>(out_vel, body, v);
  }
}

// The adjoint loop of docs/kernel-contract.md, one thread per body.
template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads)
    step_backward_kernel(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                         const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                         int N, int NP, int SPB, int64_t steps, int integrator, Params<T> p) {
  __shared__ T warp_sums[kMaxThreads / 32];
  Vec4<T>* records = shared_records<T>();
  const int offset_in_block = (threadIdx.x / NP) * NP;
  const int nt = blockDim.x;
  // Two (x, m) and two (g) buffers, used alternately as in step_kernel.
  Vec4<T>* const buf_x0 = records + offset_in_block;
  Vec4<T>* const buf_x1 = records + nt + offset_in_block;
  Vec4<T>* const buf_g0 = records + 2 * nt + offset_in_block;
  Vec4<T>* const buf_g1 = records + 3 * nt + offset_in_block;
  const Lane l = lane_of(B, N, NP, SPB);
  const int64_t body = l.b * N + l.i;
  const int64_t slab = B * N * D;
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  const int64_t S = steps * S1;

  T gx[D] = {}, gv[D] = {}, xb[D] = {}, ab[D] = {};
  T m = T(0), dtb = T(0);
  if (l.valid) {
    load_vec<T, D>(grad_pos, body, gx);
    load_vec<T, D>(grad_vel, body, gv);
    load_vec<T, D>(traj + (S * 3 + 0) * slab, body, xb);
    load_vec<T, D>(traj + (S * 3 + 2) * slab, body, ab);
    m = mass[body];
    dtb = dt[l.b];
  }
  const T c_outer = static_cast<T>(substep_weight(integ, 0));
  const T c_mid = static_cast<T>(substep_weight(integ, 1));
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);

  T gdt = T(0);
  int which = 0;
  for (int64_t b = S;; --b) {
    const bool has_prev = b > 0, has_next = b < S;
    const bool prev_mid = has_prev && (b - 1) % S1 == 1;
    const bool next_mid = has_next && b % S1 == 1;
    const T c_prev = has_prev ? (prev_mid ? c_mid : c_outer) : T(0);
    const T c_next = has_next ? (next_mid ? c_mid : c_outer) : T(0);
    const T h_prev = has_prev ? (prev_mid ? h_mid : h_outer) : T(0);
    const T h_next = has_next ? (next_mid ? h_mid : h_outer) : T(0);
    const T k = T(0.5) * (h_prev + h_next);

    Vec4<T>* const sys_x = which ? buf_x1 : buf_x0;
    Vec4<T>* const sys_g = which ? buf_g1 : buf_g0;
    if (l.valid) {
      sys_x[l.i] = pack<T, D>(xb, m);
      sys_g[l.i] = pack<T, D>(gv, T(0));
    }
    __syncthreads();
    if (l.valid) {
      // gx += J(x_b)^T (k gv), computed as k * (J^T gv).
      T raw[D], o[D];
      group_vjp<T, D>(sys_x, sys_g, N, NP, l.i, xb, m, gv, p.eps2, raw);
      finish_vjp<T, D>(raw, xb, gv, p, o);
      T dot_va = T(0);
#pragma unroll
      for (int c = 0; c < D; ++c) {
        gx[c] = fma(k, o[c], gx[c]);
        dot_va = fma(gv[c], ab[c], dot_va);
      }
      gdt = fma(T(0.5) * (c_prev + c_next), dot_va, gdt);
    }
    which ^= 1;
    if (!has_prev) break;
    if (l.valid) {
      // Substep s = b - 1: x_b = x_s + h_s v_half, v_half = v_s + h_s/2 a_s.
      const T* base = traj + (b - 1) * 3 * slab;
      T vs[D];
      load_vec<T, D>(base, body, xb);
      load_vec<T, D>(base + slab, body, vs);
      load_vec<T, D>(base + 2 * slab, body, ab);
      const T half = T(0.5) * h_prev;
      T dot_xv = T(0);
#pragma unroll
      for (int c = 0; c < D; ++c) dot_xv = fma(gx[c], kick(vs[c], half, ab[c]), dot_xv);
      gdt = fma(c_prev, dot_xv, gdt);
#pragma unroll
      for (int c = 0; c < D; ++c) gv[c] = fma(h_prev, gx[c], gv[c]);
    }
  }
  const T gdt_total = group_sum(gdt, NP, warp_sums);
  if (l.valid) {
    store_vec<T, D>(out_gpos, body, gx);
    store_vec<T, D>(out_gvel, body, gv);
    if (l.i == 0) out_gdt[l.b] = gdt_total;
  }
}

unsigned blocks_for(int64_t B, const GroupLayout& g) {
  return grid_size(ceil_div(B, g.SPB), "grouped kernels");
}

template <typename T>
size_t records_bytes(const GroupLayout& g, int buffers) {
  return size_t(buffers) * g.threads * sizeof(Vec4<T>);
}

}  // namespace

template <typename T, int D>
void Grouped<T, D>::acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                                 const Params<T>& p, cudaStream_t s) {
  const GroupLayout g = group_layout(N);
  acceleration_kernel<T, D><<<blocks_for(B, g), g.threads, records_bytes<T>(g, 1), s>>>(
      pos, mass, out, B, int(N), g.NP, g.SPB, p);
  check_launch("grouped acceleration_kernel");
}

template <typename T, int D>
void Grouped<T, D>::potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                              const Params<T>& p, cudaStream_t s) {
  const GroupLayout g = group_layout(N);
  potential_kernel<T, D><<<blocks_for(B, g), g.threads, records_bytes<T>(g, 1), s>>>(
      pos, mass, out, B, int(N), g.NP, g.SPB, p);
  check_launch("grouped potential_kernel");
}

template <typename T, int D>
void Grouped<T, D>::vjp(const T* pos, const T* mass, const T* grad_acc, T* out, int64_t B,
                        int64_t N, const Params<T>& p, cudaStream_t s) {
  const GroupLayout g = group_layout(N);
  vjp_kernel<T, D><<<blocks_for(B, g), g.threads, records_bytes<T>(g, 2), s>>>(
      pos, mass, grad_acc, out, B, int(N), g.NP, g.SPB, p);
  check_launch("grouped vjp_kernel");
}

template <typename T, int D>
void Grouped<T, D>::step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                         T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps,
                         Integrator integ, const Params<T>& p, cudaStream_t s) {
  const GroupLayout g = group_layout(N);
  step_kernel<T, D><<<blocks_for(B, g), g.threads, records_bytes<T>(g, 2), s>>>(
      pos, vel, mass, dt, out_pos, out_vel, traj, B, int(N), g.NP, g.SPB, steps, int(integ), p);
  check_launch("grouped step_kernel");
}

template <typename T, int D>
void Grouped<T, D>::step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                                  const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt,
                                  int64_t B, int64_t N, int64_t steps, Integrator integ,
                                  const Params<T>& p, cudaStream_t s) {
  const GroupLayout g = group_layout(N);
  step_backward_kernel<T, D><<<blocks_for(B, g), g.threads, records_bytes<T>(g, 4), s>>>(
      traj, mass, dt, grad_pos, grad_vel, out_gpos, out_gvel, out_gdt, B, int(N), g.NP, g.SPB,
      steps, int(integ), p);
  check_launch("grouped step_backward_kernel");
}

template struct Grouped<float, 2>;
template struct Grouped<float, 3>;
template struct Grouped<double, 2>;
template struct Grouped<double, 3>;

}  // namespace aits::cuda::detail
