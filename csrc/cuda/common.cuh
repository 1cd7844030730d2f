// Plumbing shared by the CUDA kernels: error checks, the physics constants in the kernel's
// precision, a 4-wide body record for shared-memory tiles, scratch memory, device facts, the
// kick/drift updates, and the launchers each regime exports to the dispatcher (api.cu).
//
// Three regimes cover every (B, N):
//   small   (small.cuh):   one thread per system, N = 2..8 a template parameter, all in registers;
//   grouped (grouped.cu):  one thread per body, a system's bodies in shared memory, N <= 256;
//   tiled   (tiled.cu):    large N, j-tiles in shared memory, j range split across blocks when the
//                          grid would not fill the GPU; step/step_backward via generic.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "aitimestepper/physics.h"
#include "kernels.h"

namespace aits::cuda::detail {

// ---------------------------------------------------------------------------------------------
// Errors: every CUDA failure becomes a std::runtime_error (pybind11 turns it into RuntimeError)
// naming what failed and CUDA's own message.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("aitimestepper CUDA: ") + what + " failed: " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}
// After a <<<>>> launch: configuration errors (and sticky errors of earlier kernels) surface here.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// ---------------------------------------------------------------------------------------------
// Physics of one call in the kernel's precision. Formed as the CPU kernels form it: eps^2 and
// G*M in double, then rounded once, so both backends see the same constants.
template <typename T>
struct Params {
  T G;
  T eps2;
  T gm;  // G * field_mass
  T R[3];
  bool field;  // field_mass != 0
};

template <typename T>
Params<T> make_params(const Physics& physics) {
  Params<T> p{};
  p.G = static_cast<T>(physics.G);
  p.eps2 = static_cast<T>(physics.softening * physics.softening);
  p.gm = static_cast<T>(physics.G * physics.field_mass);
  for (int k = 0; k < 3; ++k) p.R[k] = static_cast<T>(physics.field_pos[k]);
  p.field = physics.field_mass != 0.0;
  return p;
}

// ---------------------------------------------------------------------------------------------
// A body as (x, y, z, w) in shared memory: one 16-byte load for float (two for double) per
// interaction instead of D + 1 scalar loads. w holds the mass (or is unused for gradients).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T x, y, z, w;
};

template <typename T, int D>
__device__ __forceinline__ Vec4<T> pack(const T* v, T w) {
  Vec4<T> r;
  r.x = v[0];
  r.y = v[1];
  r.z = T(0);
  if constexpr (D == 3) r.z = v[2];
  r.w = w;
  return r;
}

// r = x_j - x_i, the offset convention of physics.h.
template <typename T, int D>
__device__ __forceinline__ void offset(const Vec4<T>& pj, const T* xi, T* r) {
  r[0] = pj.x - xi[0];
  r[1] = pj.y - xi[1];
  if constexpr (D == 3) r[2] = pj.z - xi[2];
}

template <typename T, int D>
__device__ __forceinline__ void unpack(const Vec4<T>& p, T* v) {
  v[0] = p.x;
  v[1] = p.y;
  if constexpr (D == 3) v[2] = p.z;
}

// ---------------------------------------------------------------------------------------------
// The per-body epilogues, shared by every regime so "raw pair sum -> physical result" has one
// definition: a = G * sum + tidal(x);  vjp = G * sum + tidal_vjp(x, g).
template <typename T, int D>
__device__ __forceinline__ void finish_acceleration(const T* raw, const T* x, const Params<T>& p,
                                                    T* a) {
#pragma unroll
  for (int c = 0; c < D; ++c) a[c] = p.G * raw[c];
  if (p.field) tidal_acceleration<T, D>(x, p.gm, p.R, a);
}

template <typename T, int D>
__device__ __forceinline__ void finish_vjp(const T* raw, const T* x, const T* g,
                                           const Params<T>& p, T* out) {
#pragma unroll
  for (int c = 0; c < D; ++c) out[c] = p.G * raw[c];
  if (p.field) tidal_acceleration_vjp<T, D>(x, p.gm, p.R, g, out);
}

// ---------------------------------------------------------------------------------------------
// Leapfrog pieces. Written as explicit fma so that the forward pass and step_backward (which
// recomputes v_half = v_s + h_s/2 a_s "exactly as the forward made it") round identically.
template <typename T>
__device__ __forceinline__ T kick(T v, T half_h, T a) {
  return fma(half_h, a, v);
}
template <typename T>
__device__ __forceinline__ T drift(T x, T h, T v) {
  return fma(h, v, x);
}
// h_s = c_s * dt in the kernel's precision (c_s rounded to T first, as torch does for
// `python_float * tensor`).
template <typename T>
__host__ __device__ __forceinline__ T substep_h(Integrator integ, int sub, T dt) {
  return static_cast<T>(substep_weight(integ, sub)) * dt;
}

// Warp sum over aligned groups of `width` lanes (a power of two <= 32); every lane of the warp
// must call it. Fixed shuffle order: deterministic.
template <typename T>
__device__ __forceinline__ T group_sum_in_warp(T v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct DeviceFacts {
  int device;
  int sm_count;
};
// Facts about the current device, cached per device.
const DeviceFacts& current_device();

// A kernel switch from the environment (runtime.cu): the index in `allowed` of variable `name`'s
// value, 0 (the default) when it is unset or empty; any other value throws std::runtime_error
// naming the variable, the value and the allowed ones. Callers read it once per process (a
// function-local static), not per launch.
int env_choice(const char* name, std::initializer_list<const char*> allowed);

// Stream-ordered scratch memory from a private pool (runtime.cu): allocation is cheap once the
// pool is warm, and the pool keeps a bounded amount of memory between calls.
void* scratch_alloc(size_t bytes, cudaStream_t stream);
void scratch_free(void* ptr, cudaStream_t stream) noexcept;

template <typename T>
class Scratch {
 public:
  Scratch(size_t count, cudaStream_t stream)
      : ptr_(count ? static_cast<T*>(scratch_alloc(count * sizeof(T), stream)) : nullptr),
        stream_(stream) {}
  ~Scratch() {
    if (ptr_) scratch_free(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_;
  cudaStream_t stream_;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid sizes are 1-D with blockIdx.x < 2^31; bigger problems are refused rather than truncated.
inline unsigned grid_size(int64_t blocks, const char* what) {
  if (blocks > 0x7fffffffLL) {
    throw std::runtime_error(std::string("aitimestepper CUDA: ") + what +
                             ": problem too large for one launch (" + std::to_string(blocks) +
                             " blocks)");
  }
  return static_cast<unsigned>(blocks);
}

// ---------------------------------------------------------------------------------------------
// Launchers of each regime (explicitly instantiated for float/double and D = 2, 3 in their
// files). Pointers are device pointers of the shapes in docs/kernel-contract.md.

// small.cuh: returns false when N is not one of its compiled sizes.
template <typename T, int D>
struct Small {
  static int max_n();
  static bool acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                           const Params<T>& p, cudaStream_t s);
  static bool potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                        const Params<T>& p, cudaStream_t s);
  static bool vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                  const Params<T>& p, cudaStream_t s);
  static bool step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                   T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps, Integrator integ,
                   const Params<T>& p, cudaStream_t s);
  static bool step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                            const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                            int64_t N, int64_t steps, Integrator integ, const Params<T>& p,
                            cudaStream_t s);
  // One step in place carrying the acceleration (loop.h carried_step); energy may be null.
  static bool carried_step(T* pos, T* vel, T* acc, const T* mass, const T* dt, T* energy,
                           int64_t B, int64_t N, Integrator integ, const Params<T>& p,
                           cudaStream_t s);
};

// grouped.cu: any N <= Grouped::kMaxN.
template <typename T, int D>
struct Grouped {
  static constexpr int kMaxN = 256;
  static void acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                           const Params<T>& p, cudaStream_t s);
  static void potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                        const Params<T>& p, cudaStream_t s);
  static void vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                  const Params<T>& p, cudaStream_t s);
  static void step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                   T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps, Integrator integ,
                   const Params<T>& p, cudaStream_t s);
  static void step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                            const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                            int64_t N, int64_t steps, Integrator integ, const Params<T>& p,
                            cudaStream_t s);
};

// tiled.cu: any N (meant for large N).
template <typename T, int D>
struct Tiled {
  static void acceleration(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                           const Params<T>& p, cudaStream_t s);
  static void potential(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                        const Params<T>& p, cudaStream_t s);
  static void vjp(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
                  const Params<T>& p, cudaStream_t s);
};

// symmetric.cu: large-N acceleration with each pair computed once. plan() says whether it runs
// (P = 0: no) and with which block size; partials() writes nblk raw partial sums per body,
// [nblk, B, N, D], which tiled.cu adds in order (split_finish_kernel).
struct SymmetricPlan {
  int P = 0;        // bodies per block
  int nblk = 0;     // blocks per system = partial slots per body
  size_t smem = 0;  // dynamic shared memory per CUDA block
};
template <typename T, int D>
struct Symmetric {
  static SymmetricPlan plan(int64_t B, int64_t N);
  static void partials(const T* pos, const T* mass, T* partial, int64_t B, int64_t N,
                       const SymmetricPlan& plan, T eps2, cudaStream_t s);
};

// generic.cu: step and step_backward for any N as per-substep launches of the force kernels.
template <typename T, int D>
struct Generic {
  static void step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                   T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps, Integrator integ,
                   const Params<T>& p, cudaStream_t s);
  static void step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                            const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt, int64_t B,
                            int64_t N, int64_t steps, Integrator integ, const Params<T>& p,
                            cudaStream_t s);
};

// api.cu: the regime choice for one force evaluation (used by generic.cu too).
template <typename T, int D>
void acceleration_any(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                      const Params<T>& p, cudaStream_t s);
template <typename T, int D>
void vjp_any(const T* pos, const T* mass, const T* g, T* out, int64_t B, int64_t N,
             const Params<T>& p, cudaStream_t s);

// tiled.cu also provides: out[r] = sum_c in[r * cols + c] in a fixed order (deterministic).
template <typename T>
void reduce_rows(const T* in, T* out, int64_t rows, int64_t cols, cudaStream_t s);

}  // namespace aits::cuda::detail
