// Large-N acceleration with each pair computed once (Newton's third law).
//
// The plain tiled kernel (tiled.cu) evaluates every pair twice, once from each end: 12 FP32
// instructions + 1 rsqrt per interaction, 13.4 issue slots with its loads and loop. Here one
// evaluation serves both bodies (physics.h pair_acceleration_both: 16 FP32 + 1 rsqrt per pair),
// which with the data movement below is ~9 issue slots per interaction.
//
// Work split. A system's bodies are cut into blocks of P; a CUDA block takes one task, a pair of
// blocks (a, c) with a <= c, and computes every pair (i in a, j in c) once (i < j when a == c).
// Each of its 8 warps holds an i-group of 32 x IPT bodies in registers and sweeps block c in
// chunks of 32 j-bodies: the chunk's (x, m) records sit in a per-warp ring in shared memory,
// written twice so that lane l reads record l + s at rotation step s without a wrap. At each of
// the 32 steps a lane pairs its IPT i-bodies with j-body (l + s) mod 32, adds the pull to its
// i-accumulators and the opposite pull to the j-accumulator it carries, then hands that
// accumulator to lane l - 1 with one shuffle per coordinate. After 32 steps every
// j-accumulator is back in its own lane.
//
// Determinism without atomics. The j-accumulators of block c live in shared memory (P x D).
// At sweep iteration k warp w works on chunk (k + w C/8) mod C, so no two warps touch one chunk
// in the same iteration, and a barrier separates iterations. A task writes one partial sum per
// body: the i-bodies of block a into slot c, the j-bodies of block c into slot a (a == c: both
// sums into slot a). So every body has exactly one partial in each slot 0..nblk-1, and
// tiled.cu's split_finish_kernel adds them in slot order and applies G and the tidal field:
// the same input gives bitwise the same output.
//
// Padding. Bodies past N are placed far away (2^60 in float, 2^400 in double) with mass 0: their
// s^-3 against any real body underflows to exactly 0, so they add exactly nothing; what they
// compute for themselves (NaN at eps = 0 among two padded bodies) is never written.
//
// Scratch: nblk x B x N x D values, under kMaxScratchBytes; see plan() for when this kernel runs.
#include <atomic>

#include "common.cuh"

namespace aits::cuda::detail {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int64_t kMaxScratchBytes = int64_t(256) << 20;
constexpr int kMaxSharedBytes = 96 * 1024;  // beyond this, occupancy drops to 2 blocks per SM

// i-bodies per lane: 4 in float (the pair work dominates the per-step shuffles); 2 in double,
// where registers run out first.
template <typename T>
constexpr int ipt() {
  return sizeof(T) == 4 ? 4 : 2;
}

// Bodies per block must be a multiple of (i-bodies per warp pass) x warps.
template <typename T>
constexpr int min_block_bodies() {
  return 32 * ipt<T>() * kWarps;
}

template <typename T>
__device__ __forceinline__ T far_away();
template <>
__device__ __forceinline__ float far_away<float>() {
  return 1.152921504606846976e18f;  // 2^60: |r|^2 <= 3 x 2^120 < FLT_MAX, s^-3 ~ 2^-180 -> 0
}
template <>
__device__ __forceinline__ double far_away<double>() {
  return 2.5822498780869086e120;  // 2^400: |r|^2 ~ 2^800 < DBL_MAX, s^-3 ~ 2^-1200 -> 0
}

template <typename T, int D>
__device__ __forceinline__ Vec4<T> load_record(const T* xs, const T* ms, int64_t i, int64_t N) {
  if (i < N) return pack<T, D>(xs + i * D, ms[i]);
  const T far = far_away<T>();
  return Vec4<T>{far, far, D == 3 ? far : T(0), T(0)};
}

struct Task {
  int64_t b;  // system
  int a;      // i-block
  int c;      // j-block, a <= c
};

// Tasks of one system: the nblk (nblk - 1) / 2 off-diagonal ones (a < c, row by row) first,
// then the nblk diagonal ones, which have half the pairs and so fill the tail of the grid.
__device__ Task task_of_block(int nblk) {
  const int64_t per_system = int64_t(nblk) * (nblk + 1) / 2;
  const int64_t off_diagonal = int64_t(nblk) * (nblk - 1) / 2;
  Task t;
  t.b = int64_t(blockIdx.x) / per_system;
  int64_t k = int64_t(blockIdx.x) % per_system;
  if (k >= off_diagonal) {
    t.a = t.c = static_cast<int>(k - off_diagonal);
    return t;
  }
  int a = 0;
  while (k >= nblk - 1 - a) {
    k -= nblk - 1 - a;
    ++a;
  }
  t.a = a;
  t.c = a + 1 + static_cast<int>(k);
  return t;
}

// The warp's ring: records l and l + 32 both hold lane l's body, so step s reads ring[l + s].
template <typename T, int D>
__device__ __forceinline__ void fill_ring(Vec4<T>* ring, const Vec4<T>& mine, int lane) {
  __syncwarp();  // every lane is done reading the previous chunk
  ring[lane] = mine;
  ring[lane + 32] = mine;
  __syncwarp();
}

// One chunk against the warp's i-group, each pair once; aj returns home holding the chunk body's
// share of this i-group.
template <typename T, int D, int IPT>
__device__ __forceinline__ void sweep_both(const Vec4<T>* ring, const T (&xi)[IPT][D],
                                           const T (&mi)[IPT], T (&ai)[IPT][D], T (&aj)[D],
                                           T eps2, int lane) {
  const unsigned next = (lane + 1) & 31;
#pragma unroll 8
  for (int s = 0; s < 32; ++s) {
    const Vec4<T> pj = ring[lane + s];
#pragma unroll
    for (int k = 0; k < IPT; ++k) {
      T r[D];
      offset<T, D>(pj, xi[k], r);
      pair_acceleration_both<T, D>(r, mi[k], pj.w, eps2, ai[k], aj);
    }
#pragma unroll
    for (int c = 0; c < D; ++c) aj[c] = __shfl_sync(0xffffffffu, aj[c], next);
  }
}

// The i-group against its own chunk `kk` (diagonal tasks only), i side only: both orders of each
// pair inside the group come from the group's own sweeps. The self term is step 0, k == kk; it
// gets eps^2 = 1 so that its zero offset times a finite weight adds exactly 0 at eps = 0.
template <typename T, int D, int IPT, int KK>
__device__ __forceinline__ void sweep_own(const Vec4<T>* ring, const T (&xi)[IPT][D],
                                          T (&ai)[IPT][D], T eps2, int lane) {
  {
    const Vec4<T> pj = ring[lane];
#pragma unroll
    for (int k = 0; k < IPT; ++k) {
      T r[D];
      offset<T, D>(pj, xi[k], r);
      pair_acceleration<T, D>(r, pj.w, k == KK ? T(1) : eps2, ai[k]);
    }
  }
#pragma unroll 4
  for (int s = 1; s < 32; ++s) {
    const Vec4<T> pj = ring[lane + s];
#pragma unroll
    for (int k = 0; k < IPT; ++k) {
      T r[D];
      offset<T, D>(pj, xi[k], r);
      pair_acceleration<T, D>(r, pj.w, eps2, ai[k]);
    }
  }
}

template <typename T, int D, int IPT, int KK = 0>
__device__ __forceinline__ void sweep_own_all(Vec4<T>* ring, const T (&xi)[IPT][D],
                                              const T (&mi)[IPT], T (&ai)[IPT][D], T eps2,
                                              int lane) {
  if constexpr (KK < IPT) {
    fill_ring<T, D>(ring, pack<T, D>(xi[KK], mi[KK]), lane);
    sweep_own<T, D, IPT, KK>(ring, xi, ai, eps2, lane);
    sweep_own_all<T, D, IPT, KK + 1>(ring, xi, mi, ai, eps2, lane);
  }
}

// partial is [nblk, B, N, D] raw pair sums (slot-major), read by split_finish_kernel.
template <typename T, int D, int IPT>
__global__ void __launch_bounds__(kThreads)
    symmetric_acceleration_kernel(const T* __restrict__ pos, const T* __restrict__ mass,
                                  T* __restrict__ partial, int64_t B, int64_t N, int nblk, int P,
                                  T eps2) {
  extern __shared__ __align__(32) unsigned char smem[];
  Vec4<T>* rings = reinterpret_cast<Vec4<T>*>(smem);  // [kWarps][64]
  T* jacc = reinterpret_cast<T*>(rings + kWarps * 64);  // [P][D]: block c's j-accumulators

  const Task task = task_of_block(nblk);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  Vec4<T>* ring = rings + warp * 64;
  const T* xs = pos + task.b * N * D;
  const T* ms = mass + task.b * N;
  const int64_t BN = B * N;
  const int64_t i_first = int64_t(task.a) * P;
  const int64_t j_first = int64_t(task.c) * P;
  const bool diagonal = task.a == task.c;
  constexpr int kGroup = 32 * IPT;  // i-bodies per warp and pass: chunks IPT g .. IPT g + IPT-1
  const int chunks = P / 32;
  const int stagger = chunks / kWarps;
  const int passes = P / (kGroup * kWarps);

  for (int q = threadIdx.x; q < P * D; q += kThreads) jacc[q] = T(0);
  __syncthreads();

  for (int pass = 0; pass < passes; ++pass) {
    const int g = pass * kWarps + warp;
    T xi[IPT][D], mi[IPT], ai[IPT][D];
#pragma unroll
    for (int k = 0; k < IPT; ++k) {
      const Vec4<T> rec = load_record<T, D>(xs, ms, i_first + g * kGroup + k * 32 + lane, N);
      unpack<T, D>(rec, xi[k]);
      mi[k] = rec.w;
#pragma unroll
      for (int c = 0; c < D; ++c) ai[k][c] = T(0);
    }
    if (diagonal) sweep_own_all<T, D, IPT>(ring, xi, mi, ai, eps2, lane);

    const int first_chunk = diagonal ? (g + 1) * IPT : 0;  // diagonal: only chunks above the group
    for (int it = 0; it < chunks; ++it) {
      const int ch = (it + warp * stagger) % chunks;
      if (ch >= first_chunk) {
        fill_ring<T, D>(ring, load_record<T, D>(xs, ms, j_first + ch * 32 + lane, N), lane);
        T aj[D];
#pragma unroll
        for (int c = 0; c < D; ++c) aj[c] = T(0);
        sweep_both<T, D, IPT>(ring, xi, mi, ai, aj, eps2, lane);
        T* dst = jacc + (ch * 32 + lane) * D;
#pragma unroll
        for (int c = 0; c < D; ++c) dst[c] += aj[c];
      }
      __syncthreads();  // iteration it + 1 may give this chunk to another warp
    }

    if (diagonal) {
      // The group's bodies are block c's too: their i-sums join the j-sums in slot a.
#pragma unroll
      for (int k = 0; k < IPT; ++k) {
        T* dst = jacc + (g * kGroup + k * 32 + lane) * D;
#pragma unroll
        for (int c = 0; c < D; ++c) dst[c] += ai[k][c];
      }
      __syncthreads();  // before the next pass's sweep touches these chunks
    } else {
#pragma unroll
      for (int k = 0; k < IPT; ++k) {
        const int64_t i = i_first + g * kGroup + k * 32 + lane;
        if (i >= N) continue;
        T* dst = partial + (int64_t(task.c) * BN + task.b * N + i) * D;
#pragma unroll
        for (int c = 0; c < D; ++c) dst[c] = ai[k][c];
      }
    }
  }

  __syncthreads();
  for (int q = threadIdx.x; q < P; q += kThreads) {
    const int64_t j = j_first + q;
    if (j >= N) break;
    T* dst = partial + (int64_t(task.a) * BN + task.b * N + j) * D;
#pragma unroll
    for (int c = 0; c < D; ++c) dst[c] = jacc[q * D + c];
  }
}

size_t shared_bytes(int P, int D, size_t item) {
  return size_t(kWarps) * 64 * 4 * item + size_t(P) * D * item;
}

// AITS_CUDA_PAIRS: "auto" (the default: the symmetric kernel only where its tasks fill the GPU)
// or "symmetric" (whenever it can run, also at small N). A debug switch: it lets the tests reach
// every block layout of the symmetric kernel at sizes the float64 reference can check. Read once,
// at the first large-N force evaluation of the process (an invalid value throws every time).
bool force_symmetric() {
  static const bool forced = env_choice("AITS_CUDA_PAIRS", {"auto", "symmetric"}) == 1;
  return forced;
}

// Above 48 KB of dynamic shared memory a kernel must opt in before it is launched (or queried).
template <typename T, int D>
void allow_shared(size_t smem) {
  if (smem <= 48 * 1024) return;
  check(cudaFuncSetAttribute(symmetric_acceleration_kernel<T, D, ipt<T>()>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "cudaFuncSetAttribute (symmetric acceleration)");
}

// Resident blocks per SM with `smem` bytes of dynamic shared memory.
template <typename T, int D>
int occupancy(size_t smem) {
  const auto kernel = symmetric_acceleration_kernel<T, D, ipt<T>()>;
  allow_shared<T, D>(smem);
  int n = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor (symmetric acceleration)");
  return n;
}

// occupancy() per block size, queried once: plan() runs on every large-N force evaluation.
// (Devices of one process are assumed alike, as elsewhere in this module.)
template <typename T, int D>
int cached_occupancy(int P, size_t smem) {
  static std::atomic<int> cache[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
  int slot = 0;
  while ((min_block_bodies<T>() << slot) < P) ++slot;
  int n = cache[slot].load(std::memory_order_relaxed);
  if (n < 0) {
    n = occupancy<T, D>(smem);
    cache[slot].store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace

// Block size P. Forced ("symmetric"): the smallest P whose scratch fits the cap (most blocks, so
// tests reach every layout). Auto: the largest P whose scratch fits and whose tasks still fill
// the GPU three times over (larger blocks mean less scratch; three waves keep the tail short);
// none -> the plain kernel, whose j-splitting suits smaller problems.
template <typename T, int D>
SymmetricPlan Symmetric<T, D>::plan(int64_t B, int64_t N) {
  const bool forced = force_symmetric();
  if (B <= 0 || N <= 1) return {};
  SymmetricPlan best{};
  for (int64_t P = min_block_bodies<T>(); P <= 65536; P *= 2) {
    const size_t smem = shared_bytes(static_cast<int>(P), D, sizeof(T));
    if (smem > size_t(kMaxSharedBytes)) break;
    const int64_t nblk = ceil_div(N, P);
    if (nblk * B * N * D * int64_t(sizeof(T)) > kMaxScratchBytes) continue;
    const SymmetricPlan plan{static_cast<int>(P), static_cast<int>(nblk), smem};
    if (forced) return plan;
    const int64_t tasks = B * nblk * (nblk + 1) / 2;
    const int64_t slots =
        int64_t(current_device().sm_count) * cached_occupancy<T, D>(static_cast<int>(P), smem);
    if (slots <= 0 || tasks < 3 * slots) break;  // a larger P only has fewer tasks
    best = plan;
  }
  return best;
}

template <typename T, int D>
void Symmetric<T, D>::partials(const T* pos, const T* mass, T* partial, int64_t B, int64_t N,
                               const SymmetricPlan& plan, T eps2, cudaStream_t s) {
  const int64_t tasks = B * int64_t(plan.nblk) * (plan.nblk + 1) / 2;
  const auto kernel = symmetric_acceleration_kernel<T, D, ipt<T>()>;
  allow_shared<T, D>(plan.smem);
  kernel<<<grid_size(tasks, "symmetric acceleration"), kThreads, plan.smem, s>>>(
      pos, mass, partial, B, N, plan.nblk, plan.P, eps2);
  check_launch("symmetric_acceleration_kernel");
}

template struct Symmetric<float, 2>;
template struct Symmetric<float, 3>;
template struct Symmetric<double, 2>;
template struct Symmetric<double, 3>;

}  // namespace aits::cuda::detail
