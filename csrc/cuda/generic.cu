// step and step_backward for any N (used for N > Grouped::kMaxN): each substep is a launch of
// the force kernel (acceleration_any, i.e. the tiled kernels for large N) plus one small
// per-body "boundary" kernel. At large N the force evaluation is O(N^2) and dominates, so the
// extra launches and the O(N) traffic of the boundary kernels cost little.
//
// The boundary kernel fuses everything that happens at substep boundary b: the closing kick of
// substep b-1, the trajectory record of (x_b, v_b, a_b), and the opening kick and drift of
// substep b. The kicks are done one after the other (not as one kick with the summed weight) so
// that x, v and the trajectory round exactly as in the fused kernels.
#include "common.cuh"

namespace aits::cuda::detail {
namespace {

constexpr int kThreads = 256;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    boundary_kernel(T* x, T* v, const T* a, const T* dt, T* traj, int64_t N, int64_t BN,
                    int64_t boundary, T c_prev, T c_next, bool has_prev, bool has_next) {
  const int64_t body = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (body >= BN) return;
  const T dtb = dt[body / N];
  T xb[D], vb[D], ab[D];
#pragma unroll
  for (int c = 0; c < D; ++c) {
    xb[c] = x[body * D + c];
    vb[c] = v[body * D + c];
    ab[c] = a[body * D + c];
  }
  if (has_prev) {  // closing kick of substep b-1
    const T half = T(0.5) * (c_prev * dtb);
#pragma unroll
    for (int c = 0; c < D; ++c) vb[c] = kick(vb[c], half, ab[c]);
  }
  if (traj != nullptr) {
    const int64_t slab = BN * D;
    T* base = traj + boundary * 3 * slab + body * D;
#pragma unroll
    for (int c = 0; c < D; ++c) {
      base[c] = xb[c];
      base[slab + c] = vb[c];
      base[2 * slab + c] = ab[c];
    }
  }
  if (has_next) {  // opening kick and drift of substep b
    const T h = c_next * dtb;
    const T half = T(0.5) * h;
#pragma unroll
    for (int c = 0; c < D; ++c) {
      vb[c] = kick(vb[c], half, ab[c]);
      xb[c] = drift(xb[c], h, vb[c]);
    }
  }
#pragma unroll
  for (int c = 0; c < D; ++c) {
    x[body * D + c] = xb[c];
    v[body * D + c] = vb[c];
  }
}

// One boundary of the adjoint loop (docs/kernel-contract.md), per body; jg = J(x_b)^T gv was
// computed by the VJP kernel. gdt_body accumulates each body's share of d/d(dt).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    backward_boundary_kernel(T* gx, T* gv, const T* jg, const T* traj, const T* dt,
                             T* gdt_body, int64_t N, int64_t BN, int64_t boundary, T c_prev,
                             T c_next, bool has_prev) {
  const int64_t body = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (body >= BN) return;
  const int64_t slab = BN * D;
  const T dtb = dt[body / N];
  const T h_prev = c_prev * dtb;  // c_prev = 0 when there is no substep b-1, likewise c_next
  const T h_next = c_next * dtb;
  const T k = T(0.5) * (h_prev + h_next);
  const T* a_b = traj + (boundary * 3 + 2) * slab + body * D;
  T gxb[D], gvb[D];
  T dot_va = T(0);
#pragma unroll
  for (int c = 0; c < D; ++c) {
    gvb[c] = gv[body * D + c];
    gxb[c] = fma(k, jg[body * D + c], gx[body * D + c]);
    dot_va = fma(gvb[c], a_b[c], dot_va);
  }
  T gd = fma(T(0.5) * (c_prev + c_next), dot_va, gdt_body[body]);
  if (has_prev) {
    const T* base = traj + (boundary - 1) * 3 * slab + body * D;  // boundary s = b - 1
    const T half = T(0.5) * h_prev;
    T dot_xv = T(0);
#pragma unroll
    for (int c = 0; c < D; ++c) {
      dot_xv = fma(gxb[c], kick(base[slab + c], half, base[2 * slab + c]), dot_xv);
    }
    gd = fma(c_prev, dot_xv, gd);
#pragma unroll
    for (int c = 0; c < D; ++c) gvb[c] = fma(h_prev, gxb[c], gvb[c]);
  }
#pragma unroll
  for (int c = 0; c < D; ++c) {
    gx[body * D + c] = gxb[c];
    gv[body * D + c] = gvb[c];
  }
  gdt_body[body] = gd;
}

template <typename T>
void copy_device(T* dst, const T* src, int64_t count, cudaStream_t s) {
  if (dst == src) return;
  check(cudaMemcpyAsync(dst, src, size_t(count) * sizeof(T), cudaMemcpyDeviceToDevice, s),
        "cudaMemcpyAsync");
}

template <typename T>
T weight(Integrator integ, int64_t substep) {
  return static_cast<T>(substep_weight(integ, static_cast<int>(substep % substeps_per_step(integ))));
}

}  // namespace

template <typename T, int D>
void Generic<T, D>::step(const T* pos, const T* vel, const T* mass, const T* dt, T* out_pos,
                         T* out_vel, T* traj, int64_t B, int64_t N, int64_t steps,
                         Integrator integ, const Params<T>& p, cudaStream_t s) {
  const int64_t BN = B * N;
  copy_device(out_pos, pos, BN * D, s);
  copy_device(out_vel, vel, BN * D, s);
  Scratch<T> acc(size_t(BN) * D, s);
  const int64_t S = steps * substeps_per_step(integ);
  const unsigned grid = grid_size(ceil_div(BN, kThreads), "generic step");
  acceleration_any<T, D>(out_pos, mass, acc.get(), B, N, p, s);
  for (int64_t b = 0; b <= S; ++b) {
    const bool has_prev = b > 0, has_next = b < S;
    const T c_prev = has_prev ? weight<T>(integ, b - 1) : T(0);
    const T c_next = has_next ? weight<T>(integ, b) : T(0);
    boundary_kernel<T, D><<<grid, kThreads, 0, s>>>(out_pos, out_vel, acc.get(), dt, traj, N, BN,
                                                    b, c_prev, c_next, has_prev, has_next);
    check_launch("generic boundary_kernel");
    if (has_next) acceleration_any<T, D>(out_pos, mass, acc.get(), B, N, p, s);
  }
}

template <typename T, int D>
void Generic<T, D>::step_backward(const T* traj, const T* mass, const T* dt, const T* grad_pos,
                                  const T* grad_vel, T* out_gpos, T* out_gvel, T* out_gdt,
                                  int64_t B, int64_t N, int64_t steps, Integrator integ,
                                  const Params<T>& p, cudaStream_t s) {
  const int64_t BN = B * N;
  const int64_t slab = BN * D;
  copy_device(out_gpos, grad_pos, slab, s);
  copy_device(out_gvel, grad_vel, slab, s);
  Scratch<T> jg(size_t(slab), s);
  Scratch<T> gdt_body(size_t(BN), s);
  check(cudaMemsetAsync(gdt_body.get(), 0, size_t(BN) * sizeof(T), s), "cudaMemsetAsync");
  const int64_t S = steps * substeps_per_step(integ);
  const unsigned grid = grid_size(ceil_div(BN, kThreads), "generic step_backward");
  for (int64_t b = S; b >= 0; --b) {
    const bool has_prev = b > 0, has_next = b < S;
    const T c_prev = has_prev ? weight<T>(integ, b - 1) : T(0);
    const T c_next = has_next ? weight<T>(integ, b) : T(0);
    vjp_any<T, D>(traj + b * 3 * slab, mass, out_gvel, jg.get(), B, N, p, s);
    backward_boundary_kernel<T, D><<<grid, kThreads, 0, s>>>(out_gpos, out_gvel, jg.get(), traj,
                                                             dt, gdt_body.get(), N, BN, b, c_prev,
                                                             c_next, has_prev);
    check_launch("generic backward_boundary_kernel");
  }
  reduce_rows<T>(gdt_body.get(), out_gdt, B, N, s);
}

template struct Generic<float, 2>;
template struct Generic<float, 3>;
template struct Generic<double, 2>;
template struct Generic<double, 3>;

}  // namespace aits::cuda::detail
