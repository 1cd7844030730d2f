// One thread per system for N = 2..8 (N a template parameter): the whole system lives in
// registers, every pair loop is unrolled at compile time (so j != i costs nothing), and `step`
// fuses all substeps in one launch. Included by small_float.cu and small_double.cu, which
// instantiate it for one precision each (the two compile in parallel).
//
// Global memory is [B, N, D] with one system per thread, i.e. each thread owns a run of N*D
// consecutive values: read directly, a warp's loads would be strided by N*D elements. Instead
// each block of kThreads systems moves its slab through shared memory ("Slab"): consecutive
// threads load consecutive 16-byte vectors (or consecutive elements, see Slab), the block
// transposes through a buffer whose rows are read conflict-free, and each thread then reads its
// own system. Stores and the trajectory go the same way in reverse. This is what makes a 1-step
// call memory-bound at close to full HBM bandwidth rather than transaction-bound.
#pragma once

#include <type_traits>

#include "common.cuh"

namespace aits::cuda::detail {
namespace small {

constexpr int kThreads = 128;  // systems (threads) per block

// The block's systems: [b0, b0 + nsys).
struct Block {
  int64_t b0;
  int nsys;  // kThreads except in the last block
  __device__ explicit Block(int64_t B)
      : b0(int64_t(blockIdx.x) * kThreads),
        nsys(static_cast<int>(min(int64_t(kThreads), B - b0))) {}
  __device__ bool active() const { return int(threadIdx.x) < nsys; }
};

// K consecutive values of T as CUDA's vector type: one 8- or 16-byte access (K = 1: T itself).
// Vector accesses go through these types, not through a struct of K values: NVVM splits the
// load of such a struct into scalar loads.
template <typename T, int K>
struct Packed;
template <typename T>
struct Packed<T, 1> {
  using type = T;
  __device__ static T pack(const T* v) { return v[0]; }
  __device__ static void unpack(T x, T* v) { v[0] = x; }
};
template <>
struct Packed<float, 2> {
  using type = float2;
  __device__ static float2 pack(const float* v) { return make_float2(v[0], v[1]); }
  __device__ static void unpack(float2 x, float* v) { v[0] = x.x, v[1] = x.y; }
};
template <>
struct Packed<float, 4> {
  using type = float4;
  __device__ static float4 pack(const float* v) { return make_float4(v[0], v[1], v[2], v[3]); }
  __device__ static void unpack(float4 x, float* v) {
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  }
};
template <>
struct Packed<double, 2> {
  using type = double2;
  __device__ static double2 pack(const double* v) { return make_double2(v[0], v[1]); }
  __device__ static void unpack(double2 x, double* v) { v[0] = x.x, v[1] = x.y; }
};

// Moves a block's slab, [b0, b0 + nsys) x C values, between global memory and per-thread
// registers: load() issues the global loads into registers (call it for every input before the
// first to_system, so that all loads are in flight together), to_system() transposes through
// `smem` (kWords values); write() is the reverse of both. Rows of the systems past nsys read
// zeros.
//
// Vector = false (scalar; the fallback for inputs that vector_io() rejects): thread t moves elements t, t + kThreads, ... of the slab (coalesced
// 4/8-byte accesses); in shared memory rows have the odd stride C | 1, so both the element side
// and the row side are conflict-free.
//
// Vector = true: thread t moves 16-byte vectors t, t + kThreads, ... (one LDG/STG.128 each; a
// warp covers 512 contiguous bytes): a quarter of the memory instructions for float, half for
// double. The slab starts b0 * C * sizeof(T) bytes into the tensor, a multiple of 16 (b0 is a
// multiple of kThreads), so a 16-byte aligned base suffices; vector_io() checks that, and that
// the last block holds at least one whole vector of every slab. In shared memory each row is read
// with the widest access that divides it (16, 8 or sizeof(T) bytes) at an odd stride in those
// units (a row of an even number of 16-byte vectors gets one vector of padding): the row side is
// conflict-free, the vector side too unless that padding splits a quarter-warp's 8 vectors
// (then 2-way).
//
// Both place element e of the slab (system e / C, coordinate e % C) in row e / C: every thread
// gets bitwise the same values either way. One instantiation per mode rather than a run-time
// flag, and no load under a condition in the vector path: ptxas serves both outcomes of such a
// branch (step_backward float N=4 D=3 with both paths: 163 registers, against 112 scalar-only
// and 101 vector-only).
template <typename T, int C, bool Vector>
class Slab {
  static constexpr int kW = 16 / sizeof(T);        // values per 16-byte vector
  static constexpr int kVecs = kThreads * C / kW;  // vectors in a full slab
  static constexpr int kRounds = (kVecs + kThreads - 1) / kThreads;  // vectors per thread
  using Vec = Packed<T, kW>;
  // Scalar layout: row stride C | 1 (odd: thread t's row starts in bank (t * kStride) % 32).
  static constexpr int kStride = C | 1;
  // Vector layout: rows read in pieces of kP values, row stride kRow (an odd number of pieces).
  static constexpr int kP =
      (C * sizeof(T)) % 16 == 0 ? kW : (C * sizeof(T)) % 8 == 0 ? 8 / int(sizeof(T)) : 1;
  static constexpr int kRow = kP == kW && (C / kW) % 2 == 0 ? C + kW : C;
  using Row = Packed<T, kP>;

 public:
  static constexpr int kWords = kThreads * (Vector ? kRow : kStride);

  __device__ void load(const T* g, const Block& blk) {
    base_ = g + blk.b0 * C;
    nvalid_ = blk.nsys * C;
    if constexpr (Vector) {
      // Vectors past the last whole one (a partial last round; the last block) load that one
      // again and to_system drops them: cheaper than a load under a condition.
      const int last = nvalid_ / kW - 1;  // >= 0: vector_io()
#pragma unroll
      for (int k = 0; k < kRounds; ++k) {
        const int v = min(k * kThreads + int(threadIdx.x), last);
        Vec::unpack(reinterpret_cast<const typename Vec::type*>(base_)[v], &reg_[k * kW]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < C; ++k) {
        const int e = k * kThreads + threadIdx.x;
        reg_[k] = e < nvalid_ ? base_[e] : T(0);
      }
    }
  }

  __device__ void to_system(T* smem, T (&dst)[C]) const {
    __syncthreads();  // the buffer's previous contents have been consumed
    if constexpr (Vector) {
      const int whole = nvalid_ / kW;
#pragma unroll
      for (int k = 0; k < kRounds; ++k) {
        const int v = k * kThreads + threadIdx.x;
        if (kVecs % kThreads != 0 && v >= kVecs) continue;
        using V = typename Vec::type;
        *reinterpret_cast<V*>(smem + vec_offset(v)) = v < whole ? Vec::pack(&reg_[k * kW]) : V{};
      }
      if constexpr (C % kW != 0) {
        // The last block's values may end inside a vector (only when C is not a multiple of kW:
        // then the layout is unpadded, element e at smem[e]); that vector's owner, which has just
        // written it as zeros, fills in the values.
        static_assert(kRow == C);
        if (int(threadIdx.x) == whole % kThreads) {
#pragma unroll
          for (int e = whole * kW, i = 0; i < kW - 1; ++i) {
            if (e + i < nvalid_) smem[e + i] = base_[e + i];
          }
        }
      }
      __syncthreads();
      const auto* row = reinterpret_cast<const typename Row::type*>(smem + threadIdx.x * kRow);
#pragma unroll
      for (int j = 0; j < C / kP; ++j) Row::unpack(row[j], &dst[j * kP]);
    } else {
#pragma unroll
      for (int k = 0; k < C; ++k) {
        const int e = k * kThreads + threadIdx.x;
        smem[(e / C) * kStride + e % C] = reg_[k];
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < C; ++c) dst[c] = smem[threadIdx.x * kStride + c];
    }
  }

  __device__ static void read(T* smem, const T* g, const Block& blk, T (&dst)[C]) {
    Slab slab;
    slab.load(g, blk);
    slab.to_system(smem, dst);
  }

  __device__ static void write(T* smem, T* g, const Block& blk, const T (&src)[C]) {
    T* base = g + blk.b0 * C;
    const int nvalid = blk.nsys * C;
    __syncthreads();
    if constexpr (Vector) {
      auto* row = reinterpret_cast<typename Row::type*>(smem + threadIdx.x * kRow);
#pragma unroll
      for (int j = 0; j < C / kP; ++j) row[j] = Row::pack(&src[j * kP]);
      __syncthreads();
      const int whole = nvalid / kW;
#pragma unroll
      for (int k = 0; k < kRounds; ++k) {
        using V = typename Vec::type;
        const int v = k * kThreads + threadIdx.x;
        if (v < whole) {
          reinterpret_cast<V*>(base)[v] = *reinterpret_cast<const V*>(smem + vec_offset(v));
        }
      }
      if constexpr (C % kW != 0) {
        if (int(threadIdx.x) == whole % kThreads) {
#pragma unroll
          for (int e = whole * kW, i = 0; i < kW - 1; ++i) {
            if (e + i < nvalid) base[e + i] = smem[e + i];
          }
        }
      }
    } else {
#pragma unroll
      for (int c = 0; c < C; ++c) smem[threadIdx.x * kStride + c] = src[c];
      __syncthreads();
#pragma unroll
      for (int k = 0; k < C; ++k) {
        const int e = k * kThreads + threadIdx.x;
        if (e < nvalid) base[e] = smem[(e / C) * kStride + e % C];
      }
    }
  }

 private:
  // Where vector v of the slab starts in the vector layout: the slab as in global memory, or
  // with each row padded by one vector (rows are then whole vectors).
  __device__ static int vec_offset(int v) {
    if constexpr (kRow == C) {
      return v * kW;
    } else {
      constexpr int kPerRow = C / kW;
      return (v / kPerRow) * kRow + (v % kPerRow) * kW;
    }
  }

  const T* base_;  // the block's slab
  int nvalid_;     // its values in this block: nsys * C
  // Vector: reg_[k * kW + i] = element (k * kThreads + t) * kW + i; scalar: reg_[k] = element
  // k * kThreads + t.
  T reg_[Vector ? kRounds * kW : C];
};

// Shared-memory values for a block whose slabs have C and C2 values per system.
template <typename T, int C, int C2, bool Vector>
constexpr int slab_words() {
  constexpr int a = Slab<T, C, Vector>::kWords, b = Slab<T, C2, Vector>::kWords;
  return a > b ? a : b;
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

// One kick-drift-kick substep of size h in registers: v += h/2 a, x += h v, a = a(x), v += h/2 a.
template <typename T, int N, int D>
__device__ __forceinline__ void substep(T (&x)[N * D], T (&v)[N * D], T (&a)[N * D],
                                        const T (&m)[N], T h, const Params<T>& p) {
  const T half = T(0.5) * h;
#pragma unroll
  for (int e = 0; e < N * D; ++e) {
    v[e] = kick(v[e], half, a[e]);
    x[e] = drift(x[e], h, v[e]);
  }
  system_acceleration<T, N, D>(x, m, p, a);
#pragma unroll
  for (int e = 0; e < N * D; ++e) v[e] = kick(v[e], half, a[e]);
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
// for the block's barriers inside Slab. Vector picks the Slab instantiation (vector_io).

template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    acceleration_kernel(const T* pos, const T* mass, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  T x[ND], m[N], a[ND];
  {
    Values sx;
    Masses sm;
    sx.load(pos, blk);
    sm.load(mass, blk);
    sx.to_system(smem, x);
    sm.to_system(smem, m);
  }
  system_acceleration<T, N, D>(x, m, p, a);
  Values::write(smem, out, blk, a);
}

template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    potential_kernel(const T* pos, const T* mass, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  T x[ND], m[N];
  {
    Values sx;
    Masses sm;
    sx.load(pos, blk);
    sm.load(mass, blk);
    sx.to_system(smem, x);
    sm.to_system(smem, m);
  }
  const T energy = system_potential<T, N, D>(x, m, p);
  if (blk.active()) out[blk.b0 + threadIdx.x] = energy;  // one value per thread: coalesced
}

template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    vjp_kernel(const T* pos, const T* mass, const T* grad_acc, T* out, int64_t B, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  T x[ND], m[N], g[ND], o[ND];
  {
    Values sx, sg;
    Masses sm;
    sx.load(pos, blk);
    sg.load(grad_acc, blk);
    sm.load(mass, blk);
    sx.to_system(smem, x);
    sg.to_system(smem, g);
    sm.to_system(smem, m);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) vjp_of<T, N, D>(x, m, g, p, i, &o[i * D]);
  Values::write(smem, out, blk, o);
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

template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos, T* out_vel,
                T* traj, int64_t B, int64_t steps, int integrator, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  const int64_t slab = B * ND;

  T x[ND], v[ND], m[N], a[ND];
  T dtb;
  {
    // Issue every global load before the first barrier so they are in flight together.
    Values sx, sv;
    Masses sm;
    sx.load(pos, blk);
    sv.load(vel, blk);
    sm.load(mass, blk);
    dtb = blk.active() ? dt[blk.b0 + threadIdx.x] : T(0);
    sx.to_system(smem, x);
    sv.to_system(smem, v);
    sm.to_system(smem, m);
  }
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  // Substeps 0 and 2 of yoshida4 share a weight: two step sizes cover every substep, kept in
  // scalars (a run-time index into a register array would spill it to local memory).
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);

  system_acceleration<T, N, D>(x, m, p, a);
  if (traj != nullptr) {
    Values::write(smem, traj_slab(traj, 0, 0, slab), blk, x);
    Values::write(smem, traj_slab(traj, 0, 1, slab), blk, v);
    Values::write(smem, traj_slab(traj, 0, 2, slab), blk, a);
  }
  int64_t boundary = 0;
  for (int64_t st = 0; st < steps; ++st) {
    for (int sub = 0; sub < S1; ++sub) {
      substep<T, N, D>(x, v, a, m, sub == 1 ? h_mid : h_outer, p);
      ++boundary;
      if (traj != nullptr) {
        Values::write(smem, traj_slab(traj, boundary, 0, slab), blk, x);
        Values::write(smem, traj_slab(traj, boundary, 1, slab), blk, v);
        Values::write(smem, traj_slab(traj, boundary, 2, slab), blk, a);
      }
    }
  }
  Values::write(smem, out_pos, blk, x);
  Values::write(smem, out_vel, blk, v);
}

// One step in place with the acceleration carried in and out (the simulation loop's step): the
// substeps of step_kernel from the stored a(x) instead of a fresh evaluation, then, with
// `energy`, T + U of the new state (kinetic as reference.kinetic_energy sums it).
template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    carried_step_kernel(T* pos, T* vel, T* acc, const T* mass, const T* dt, T* energy, int64_t B,
                        int integrator, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  T x[ND], v[ND], m[N], a[ND];
  T dtb;
  {
    Values sx, sv, sa;
    Masses sm;
    sx.load(pos, blk);
    sv.load(vel, blk);
    sa.load(acc, blk);
    sm.load(mass, blk);
    dtb = blk.active() ? dt[blk.b0 + threadIdx.x] : T(0);
    sx.to_system(smem, x);
    sv.to_system(smem, v);
    sa.to_system(smem, a);
    sm.to_system(smem, m);
  }
  const Integrator integ = static_cast<Integrator>(integrator);
  const T h_outer = substep_h<T>(integ, 0, dtb);
  const T h_mid = substep_h<T>(integ, 1, dtb);
  for (int sub = 0; sub < substeps_per_step(integ); ++sub) {
    substep<T, N, D>(x, v, a, m, sub == 1 ? h_mid : h_outer, p);
  }
  Values::write(smem, pos, blk, x);
  Values::write(smem, vel, blk, v);
  Values::write(smem, acc, blk, a);
  if (energy != nullptr) {
    T kinetic = T(0);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      T speed2 = T(0);
#pragma unroll
      for (int c = 0; c < D; ++c) speed2 += v[i * D + c] * v[i * D + c];
      kinetic += m[i] * speed2;
    }
    const T total = T(0.5) * kinetic + system_potential<T, N, D>(x, m, p);
    if (blk.active()) energy[blk.b0 + threadIdx.x] = total;
  }
}

// The adjoint loop of docs/kernel-contract.md, one system per thread.
template <typename T, int N, int D, bool Vector>
__global__ void __launch_bounds__(kThreads)
    step_backward_kernel(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                         const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                         int64_t steps, int integrator, Params<T> p) {
  constexpr int ND = N * D;
  using Values = Slab<T, ND, Vector>;  // [N, D] per system
  using Masses = Slab<T, N, Vector>;
  __shared__ __align__(16) T smem[slab_words<T, ND, N, Vector>()];
  const Block blk(B);
  const int64_t slab = B * ND;
  const Integrator integ = static_cast<Integrator>(integrator);
  const int S1 = substeps_per_step(integ);
  const int64_t S = steps * S1;

  T m[N], gx[ND], gv[ND], xb[ND], ab[ND];
  T dtb;
  {
    // Every load of this group before the first barrier: in flight together.
    Masses sm;
    Values sgx, sgv;
    sm.load(mass, blk);
    sgx.load(grad_pos, blk);
    sgv.load(grad_vel, blk);
    dtb = blk.active() ? dt[blk.b0 + threadIdx.x] : T(0);
    sm.to_system(smem, m);
    sgx.to_system(smem, gx);
    sgv.to_system(smem, gv);
  }
  Values::read(smem, traj_slab(traj, S, 0, slab), blk, xb);
  Values::read(smem, traj_slab(traj, S, 2, slab), blk, ab);
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
    Values::read(smem, traj_slab(traj, b - 1, 0, slab), blk, xb);
    Values::read(smem, traj_slab(traj, b - 1, 1, slab), blk, vs);
    Values::read(smem, traj_slab(traj, b - 1, 2, slab), blk, ab);
    const T half = T(0.5) * h_prev;
    T dot_xv = T(0);
#pragma unroll
    for (int e = 0; e < ND; ++e) dot_xv = fma(gx[e], kick(vs[e], half, ab[e]), dot_xv);
    gdt = fma(c_prev, dot_xv, gdt);
#pragma unroll
    for (int e = 0; e < ND; ++e) gv[e] = fma(h_prev, gx[e], gv[e]);
  }
  Values::write(smem, out_gpos, blk, gx);
  Values::write(smem, out_gvel, blk, gv);
  if (blk.active()) out_gdt[blk.b0 + threadIdx.x] = gdt;
}

// ---- launchers --------------------------------------------------------------------------------

inline unsigned blocks_for(int64_t B) { return grid_size(ceil_div(B, kThreads), "small kernels"); }

// Whether a launch can take the vector Slab instantiation. It needs every slab 16-byte aligned:
// the tensors' bases (torch's allocations are; a view at an odd offset may not be) and, with a
// trajectory, its [s, k] slabs of B * N * D values each; and the last block must hold a whole
// vector of its smallest slab (masses: not so when it has one float system of N < 4). Otherwise
// the scalar instantiation runs: the same values, one element per access.
template <typename T, typename... Ptrs>
bool vector_io(int64_t B, int64_t N, int64_t D, const T* traj, Ptrs... tensors) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const int64_t last = B % kThreads;
  if (last != 0 && last * N * int64_t(sizeof(T)) < 16) return false;
  if (traj != nullptr && (!aligned(traj) || (B * N * D * int64_t(sizeof(T))) % 16 != 0)) {
    return false;
  }
  return (aligned(tensors) && ...);
}

// Calls launch(std::bool_constant<vector>).
template <typename Launch>
void with_io(bool vector, Launch&& launch) {
  if (vector) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
}

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
// (docs/cuda-kernels.md), so larger double systems go to the grouped kernels instead.
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
    small::with_io(small::vector_io<T>(B, N, D, nullptr, pos, mass, out), [&](auto io) {
      small::acceleration_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, out, B, p);
    });
    check_launch("small acceleration_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                            const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::with_io(small::vector_io<T>(B, N, D, nullptr, pos, mass), [&](auto io) {
      small::potential_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, out, B, p);
    });
    check_launch("small potential_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::with_io(small::vector_io<T>(B, N, D, nullptr, pos, mass, g, out), [&](auto io) {
      small::vjp_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, mass, g, out, B, p);
    });
    check_launch("small vjp_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                       T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps,
                       Integrator integ, const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    const bool vector = small::vector_io<T>(B, N, D, traj, pos, vel, mass, out_pos, out_vel);
    small::with_io(vector, [&](auto io) {
      small::step_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, vel, mass, dt, out_pos, out_vel,
                                                            traj, B, steps, int(integ), p);
    });
    check_launch("small step_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                                const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt,
                                int64_t B, int64_t N, int64_t steps, Integrator integ,
                                const Params<T>& p, cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    const bool vector = small::vector_io<T>(B, N, D, traj, mass, grad_pos, grad_vel, out_gpos,
                                            out_gvel);
    small::with_io(vector, [&](auto io) {
      small::step_backward_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(traj, mass, dt, grad_pos, grad_vel,
                                                            out_gpos, out_gvel, out_gdt, B, steps,
                                                            int(integ), p);
    });
    check_launch("small step_backward_kernel");
  });
}

template <typename T, int D>
bool Small<T, D>::carried_step(T* pos, T* vel, T* acc, const T* mass, const T* dt, T* energy,
                               int64_t B, int64_t N, Integrator integ, const Params<T>& p,
                               cudaStream_t s) {
  return small::with_n<small_max_n<T>()>(N, [&](auto n) {
    small::with_io(small::vector_io<T>(B, N, D, nullptr, pos, vel, acc, mass), [&](auto io) {
      small::carried_step_kernel<T, decltype(n)::value, D, decltype(io)::value>
          <<<small::blocks_for(B), small::kThreads, 0, s>>>(pos, vel, acc, mass, dt, energy, B,
                                                            int(integ), p);
    });
    check_launch("small carried_step_kernel");
  });
}

}  // namespace aits::cuda::detail
