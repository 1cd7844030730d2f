// aits::cpu::step and step_backward: `steps` fused kick-drift-kick steps per call (leapfrog or
// yoshida4 as substeps of c_s dt), per-system dt, an optional trajectory of every substep
// boundary, and the reverse adjoint of docs/kernel-contract.md over that trajectory.
//
// Two layouts, chosen by N:
// - Small systems (N <= kLaneMaxN), the regime of batched training: W systems side by side in
//   the SIMD lanes (lanes.h), the state of a block in local arrays for the whole call, so a
//   3-body step is three vector pair evaluations for W systems. Threads take blocks.
// - Large systems: one system at a time in structure-of-arrays form through the row kernels of
//   rows.h, threads taking whole systems or sharing one system's bodies (common.h).
// Each substep costs one force evaluation (the end acceleration opens the next substep), and
// the backward one VJP per substep boundary; nothing N x N is stored.
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "aitimestepper/physics.h"
#include "common.h"
#include "kernels.h"
#include "lanes.h"
#include "rows.h"
#include "simd.h"

namespace aits::cpu {
namespace {

using detail::gather;
using detail::gather_mass;
using detail::kLaneMaxN;
using detail::kLaneWidth;
using detail::LaneParams;
using detail::Params;
using detail::scatter;
using detail::Soa;
using detail::Split;
using detail::Team;
using detail::to_double;
using detail::Vec;

// Everything one call needs, in the kernel's precision.
template <typename T>
struct Call {
  const T* pos;
  const T* vel;
  const T* mass;
  const T* dt;
  T* out_pos;
  T* out_vel;
  T* trajectory;  // [S + 1, 3, B, N, D] or null
  // backward only
  const T* grad_pos;
  const T* grad_vel;
  T* out_grad_pos;
  T* out_grad_vel;
  T* out_grad_dt;
  int64_t B, N;
  int dim;  // D, for addressing the trajectory
  int64_t steps;
  Integrator integrator;
  Params<T> p;

  int64_t substeps() const { return steps * substeps_per_step(integrator); }
  // c_s of substep s (0 outside [0, S)): the boundary rules of the adjoint use c_{-1} = c_S = 0.
  double weight(int64_t s) const {
    if (s < 0 || s >= substeps()) return 0.0;
    return substep_weight(integrator, int(s % substeps_per_step(integrator)));
  }
  // Start of boundary s, quantity q (0 pos, 1 vel, 2 acc) of system b in the trajectory.
  T* traj(int64_t s, int q, int64_t b) const {
    return trajectory + ((s * 3 + q) * B + b) * N * dim;
  }
};

using detail::half_kick;

// ---------------------------------------------------------------------------------------------
// Small systems: W systems in the SIMD lanes (lanes.h); V = Vec<T, W> holds one quantity of W
// systems.

// acc += scale * (per-lane sum over bodies and components of u * v), in double: the dt gradient
// gathers (S + 1) N D terms and float32 running sums would lose digits the reference keeps.
template <typename T, int D, int W>
inline void lane_dot(int n, const Vec<T, W> (*u)[D], const Vec<T, W> (*v)[D], double scale,
                     Vec<double, W>& acc) {
  Vec<double, W> s(0.0);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < D; ++k) s += to_double(u[i][k]) * to_double(v[i][k]);
  acc += Vec<double, W>(scale) * s;
}

template <typename T, int D, int W, int NF>
void lane_step_block(const Call<T>& c, int64_t b0, int valid) {
  using V = Vec<T, W>;
  constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
  const int n = NF > 0 ? NF : int(c.N);
  const int64_t sys = b0 * c.N * D;
  const LaneParams<T, W> p(c.p);
  V x[kCap][D], v[kCap][D], a[kCap][D], m[kCap], dt;
  gather<T, D, W>(c.pos + sys, n, valid, x);
  gather<T, D, W>(c.vel + sys, n, valid, v);
  gather_mass<T, W>(c.mass + b0 * c.N, n, valid, m);
  for (int w = 0; w < W; ++w) dt.v[w] = c.dt[b0 + (w < valid ? w : 0)];
  detail::lane_acceleration<T, D, W, NF>(n, x, m, a, p);
  const auto save = [&](int64_t boundary) {
    if (!c.trajectory) return;
    scatter<T, D, W>(x, n, valid, c.traj(boundary, 0, b0));
    scatter<T, D, W>(v, n, valid, c.traj(boundary, 1, b0));
    scatter<T, D, W>(a, n, valid, c.traj(boundary, 2, b0));
  };
  save(0);
  const int64_t S = c.substeps();
  for (int64_t s = 0; s < S; ++s) {
    const V h = V(T(c.weight(s))) * dt, hh = V(T(0.5)) * h;
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) {
        v[i][k] = half_kick(v[i][k], hh, a[i][k]);
        x[i][k] += h * v[i][k];
      }
    detail::lane_acceleration<T, D, W, NF>(n, x, m, a, p);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) v[i][k] = half_kick(v[i][k], hh, a[i][k]);
    save(s + 1);
  }
  scatter<T, D, W>(x, n, valid, c.out_pos + sys);
  scatter<T, D, W>(v, n, valid, c.out_vel + sys);
}

template <typename T, int D, int W, int NF>
void lane_step_backward_block(const Call<T>& c, int64_t b0, int valid) {
  using V = Vec<T, W>;
  constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
  const int n = NF > 0 ? NF : int(c.N);
  const int64_t sys = b0 * c.N * D;
  const LaneParams<T, W> p(c.p);
  V x[kCap][D], a[kCap][D], v_prev[kCap][D], a_prev[kCap][D];
  V gx[kCap][D], gv[kCap][D], gacc[kCap][D], m[kCap], dt;
  Vec<double, W> gdt(0.0);
  gather<T, D, W>(c.grad_pos + sys, n, valid, gx);
  gather<T, D, W>(c.grad_vel + sys, n, valid, gv);
  gather_mass<T, W>(c.mass + b0 * c.N, n, valid, m);
  for (int w = 0; w < W; ++w) dt.v[w] = c.dt[b0 + (w < valid ? w : 0)];
  const int64_t S = c.substeps();
  gather<T, D, W>(c.traj(S, 2, b0), n, valid, a);
  for (int64_t b = S; b >= 0; --b) {
    const double c_prev = c.weight(b - 1), c_next = c.weight(b);
    gather<T, D, W>(c.traj(b, 0, b0), n, valid, x);
    // a_b closes substep b-1 and opens substep b: one cotangent (h_{b-1} + h_b)/2 gv.
    const V kick = V(T(0.5)) * (V(T(c_prev)) * dt + V(T(c_next)) * dt);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) gacc[i][k] = kick * gv[i][k];
    lane_dot<T, D, W>(n, gv, a, 0.5 * (c_prev + c_next), gdt);
    detail::lane_acceleration_vjp<T, D, W, NF>(n, x, m, gacc, gx, p);
    if (b == 0) break;
    // Substep s = b - 1: x_b = x_s + h_s v_half with v_half = v_s + h_s/2 a_s.
    gather<T, D, W>(c.traj(b - 1, 1, b0), n, valid, v_prev);
    gather<T, D, W>(c.traj(b - 1, 2, b0), n, valid, a_prev);
    const V h = V(T(c_prev)) * dt, hh = V(T(0.5)) * h;
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) v_prev[i][k] = half_kick(v_prev[i][k], hh, a_prev[i][k]);
    lane_dot<T, D, W>(n, gx, v_prev, c_prev, gdt);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < D; ++k) {
        gv[i][k] += h * gx[i][k];
        a[i][k] = a_prev[i][k];
      }
  }
  scatter<T, D, W>(gx, n, valid, c.out_grad_pos + sys);
  scatter<T, D, W>(gv, n, valid, c.out_grad_vel + sys);
  for (int w = 0; w < valid; ++w) c.out_grad_dt[b0 + w] = T(gdt[w]);
}

// ---------------------------------------------------------------------------------------------
// Large systems: one system at a time, structure of arrays, row kernels over bodies.

template <typename T, int D>
inline Soa<T, D> soa_view(const T* x, const T* m, int64_t N, int64_t ld) {
  Soa<T, D> s;
  for (int k = 0; k < D; ++k) s.x[k] = x + k * ld;
  s.m = m;
  s.n = N;
  return s;
}

template <typename T, int D>
void rows_step_system(const Call<T>& c, int64_t b, T* scratch, const Team& team) {
  const int64_t N = c.N, ld = detail::padded(N);
  const int64_t i0 = team.begin(N), i1 = team.end(N);
  T* x = scratch;
  T* v = x + D * ld;
  T* a = v + D * ld;
  T* m = a + D * ld;
  detail::aos_to_soa<T, D>(c.pos + b * N * D, i0, i1, ld, x);
  detail::aos_to_soa<T, D>(c.vel + b * N * D, i0, i1, ld, v);
  for (int64_t i = i0; i < i1; ++i) m[i] = c.mass[b * N + i];
  const Soa<T, D> s = soa_view<T, D>(x, m, N, ld);
  const auto save = [&](int64_t boundary) {
    if (!c.trajectory) return;
    detail::soa_to_aos<T, D>(x, i0, i1, ld, c.traj(boundary, 0, b));
    detail::soa_to_aos<T, D>(v, i0, i1, ld, c.traj(boundary, 1, b));
    detail::soa_to_aos<T, D>(a, i0, i1, ld, c.traj(boundary, 2, b));
  };
  const int64_t chunk = detail::row_chunk(N);
  const auto force = [&] {
    team.rows(N, chunk, [&](int64_t r0, int64_t r1) {
      detail::acceleration_rows<T, D>(s, c.p, r0, r1, a, 1, ld);
    });
  };
  team.barrier();
  force();
  team.barrier();  // all forces are in place, and every read of positions ended before drifts
  save(0);
  const T dt = c.dt[b];
  const int64_t S = c.substeps();
  for (int64_t sub = 0; sub < S; ++sub) {
    const T h = T(c.weight(sub)) * dt, hh = T(0.5) * h;
    for (int k = 0; k < D; ++k) {
      T* xk = x + k * ld;
      T* vk = v + k * ld;
      const T* ak = a + k * ld;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        vk[i] = half_kick(vk[i], hh, ak[i]);
        xk[i] += h * vk[i];
      }
    }
    team.barrier();  // every drift lands before anyone reads positions
    force();
    team.barrier();  // all forces are in place, and every read of positions ended before drifts
    for (int k = 0; k < D; ++k) {
      T* vk = v + k * ld;
      const T* ak = a + k * ld;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) vk[i] = half_kick(vk[i], hh, ak[i]);
    }
    save(sub + 1);
  }
  detail::soa_to_aos<T, D>(x, i0, i1, ld, c.out_pos + b * N * D);
  detail::soa_to_aos<T, D>(v, i0, i1, ld, c.out_vel + b * N * D);
}

// Sum over this thread's rows and all components of u * v, in double (see lane_dot).
template <typename T, int D>
inline double rows_dot(const T* u, const T* v, int64_t i0, int64_t i1, int64_t ld) {
  double s = 0;
  for (int k = 0; k < D; ++k)
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; ++i) s += double(u[k * ld + i]) * double(v[k * ld + i]);
  return s;
}

// Rows per block of the dt-gradient dot products (see rows_step_backward_system).
constexpr int64_t kDotRows = 64;

// Scratch: 7 D-component arrays, masses, then one double per block of kDotRows rows.
inline int64_t rows_backward_scratch(int D, int64_t N) { return (7 * D + 3) * detail::padded(N); }

template <typename T, int D>
void rows_step_backward_system(const Call<T>& c, int64_t b, T* scratch, const Team& team) {
  const int64_t N = c.N, ld = detail::padded(N);
  // The O(N) work goes out in whole blocks of kDotRows rows; each block keeps its own running
  // dt-gradient sum and the blocks are added in order at the end, so the result is the same for
  // every thread count (a per-thread partial sum would not be).
  const int64_t blocks = (N + kDotRows - 1) / kDotRows;
  const int64_t blk0 = team.begin(blocks), blk1 = team.end(blocks);
  const int64_t i0 = std::min(N, blk0 * kDotRows), i1 = std::min(N, blk1 * kDotRows);
  T* x = scratch;
  T* a = x + D * ld;
  T* v_prev = a + D * ld;
  T* a_prev = v_prev + D * ld;
  T* gx = a_prev + D * ld;
  T* gv = gx + D * ld;
  T* gacc = gv + D * ld;
  T* m = gacc + D * ld;
  double* block_gdt = reinterpret_cast<double*>(m + ld);  // 64-byte aligned: ld % 16 == 0
  for (int64_t blk = blk0; blk < blk1; ++blk) block_gdt[blk] = 0;
  const auto add_dot = [&](const T* u, const T* v, double scale) {
    for (int64_t blk = blk0; blk < blk1; ++blk)
      block_gdt[blk] +=
          scale * rows_dot<T, D>(u, v, blk * kDotRows, std::min(N, (blk + 1) * kDotRows), ld);
  };
  detail::aos_to_soa<T, D>(c.grad_pos + b * N * D, i0, i1, ld, gx);
  detail::aos_to_soa<T, D>(c.grad_vel + b * N * D, i0, i1, ld, gv);
  for (int64_t i = i0; i < i1; ++i) m[i] = c.mass[b * N + i];
  const Soa<T, D> s = soa_view<T, D>(x, m, N, ld);
  const T* g[D];
  for (int k = 0; k < D; ++k) g[k] = gacc + k * ld;
  const T dt = c.dt[b];
  const int64_t chunk = detail::row_chunk(N);
  const int64_t S = c.substeps();
  detail::aos_to_soa<T, D>(c.traj(S, 2, b), i0, i1, ld, a);
  for (int64_t bd = S; bd >= 0; --bd) {
    const double c_prev = c.weight(bd - 1), c_next = c.weight(bd);
    detail::aos_to_soa<T, D>(c.traj(bd, 0, b), i0, i1, ld, x);
    const T kick = T(0.5) * (T(c_prev) * dt + T(c_next) * dt);
    for (int64_t k = 0; k < D * ld; k += ld)
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) gacc[k + i] = kick * gv[k + i];
    add_dot(gv, a, 0.5 * (c_prev + c_next));
    team.barrier();  // positions and cotangents of every body are in place
    team.rows(N, chunk, [&](int64_t r0, int64_t r1) {
      detail::acceleration_vjp_rows<T, D>(s, g, c.p, r0, r1, gx, 1, ld, true);
    });
    team.barrier();  // all of gx is updated, and every VJP read ended before x, gacc change
    if (bd == 0) break;
    const T h = T(c_prev) * dt, hh = T(0.5) * h;
    detail::aos_to_soa<T, D>(c.traj(bd - 1, 1, b), i0, i1, ld, v_prev);
    detail::aos_to_soa<T, D>(c.traj(bd - 1, 2, b), i0, i1, ld, a_prev);
    for (int64_t k = 0; k < D * ld; k += ld)
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) v_prev[k + i] = half_kick(v_prev[k + i], hh, a_prev[k + i]);
    add_dot(gx, v_prev, c_prev);
    for (int64_t k = 0; k < D * ld; k += ld)
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        gv[k + i] += h * gx[k + i];
        a[k + i] = a_prev[k + i];
      }
  }
  detail::soa_to_aos<T, D>(gx, i0, i1, ld, c.out_grad_pos + b * N * D);
  detail::soa_to_aos<T, D>(gv, i0, i1, ld, c.out_grad_vel + b * N * D);
  // Every block's last update came before the final barrier of the loop.
  if (team.id == 0) {
    double total = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) total += block_gdt[blk];
    c.out_grad_dt[b] = T(total);
  }
}

// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void step_impl(const Call<T>& c) {
  const int64_t S = c.substeps();
  if (detail::use_lanes<T>(c.B, c.N)) {
    constexpr int W = kLaneWidth<T>;
    detail::dispatch_lane_n(c.N, [&](auto nf) {
      detail::for_each_lane_block<W>(c.B, c.N, S + 1, [&](int64_t b0, int valid) {
        lane_step_block<T, D, W, decltype(nf)::value>(c, b0, valid);
      });
    });
    return;
  }
  const Split split = detail::choose_split(c.B, c.N, S + 1);
  detail::for_each_system<T>(c.B, split, (3 * D + 1) * detail::padded(c.N),
                             [&](int64_t b, T* scratch, const Team& team) {
                               rows_step_system<T, D>(c, b, scratch, team);
                             });
}

template <typename T, int D>
void step_backward_impl(const Call<T>& c) {
  const int64_t S = c.substeps();
  if (detail::use_lanes<T>(c.B, c.N)) {
    constexpr int W = kLaneWidth<T>;
    detail::dispatch_lane_n(c.N, [&](auto nf) {
      detail::for_each_lane_block<W>(c.B, c.N, 2 * (S + 1), [&](int64_t b0, int valid) {
        lane_step_backward_block<T, D, W, decltype(nf)::value>(c, b0, valid);
      });
    });
    return;
  }
  const Split split = detail::choose_split(c.B, c.N, 2 * (S + 1));
  detail::for_each_system<T>(c.B, split, rows_backward_scratch(D, c.N),
                             [&](int64_t b, T* scratch, const Team& team) {
                               rows_step_backward_system<T, D>(c, b, scratch, team);
                             });
}

template <typename T>
Call<T> make_call(Shape shape, int64_t steps, int integrator, const Physics& physics) {
  if (integrator != int(Integrator::Leapfrog) && integrator != int(Integrator::Yoshida4))
    throw std::invalid_argument("aitimestepper: integrator must be 0 (leapfrog) or 1 (yoshida4)");
  if (steps < 0) throw std::invalid_argument("aitimestepper: steps must be >= 0");
  Call<T> c{};
  c.B = shape.B;
  c.N = shape.N;
  c.dim = shape.D;
  c.steps = steps;
  c.integrator = static_cast<Integrator>(integrator);
  c.p = detail::make_params<T>(physics);
  return c;
}

}  // namespace

void step(bool double_precision, const void* pos, const void* vel, const void* mass,
          const void* dt, void* out_pos, void* out_vel, void* trajectory, Shape shape,
          int64_t steps, int integrator, const Physics& physics) {
  if (shape.B <= 0 || shape.N <= 0) return;
  detail::dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    Call<T> c = make_call<T>(shape, steps, integrator, physics);
    c.pos = static_cast<const T*>(pos);
    c.vel = static_cast<const T*>(vel);
    c.mass = static_cast<const T*>(mass);
    c.dt = static_cast<const T*>(dt);
    c.out_pos = static_cast<T*>(out_pos);
    c.out_vel = static_cast<T*>(out_vel);
    c.trajectory = static_cast<T*>(trajectory);
    step_impl<T, decltype(d)::value>(c);
  });
}

void step_backward(bool double_precision, const void* trajectory, const void* mass,
                   const void* dt, const void* grad_pos, const void* grad_vel,
                   void* out_grad_pos, void* out_grad_vel, void* out_grad_dt, Shape shape,
                   int64_t steps, int integrator, const Physics& physics) {
  if (shape.B <= 0 || shape.N <= 0) return;
  if (!trajectory) throw std::invalid_argument("aitimestepper: step_backward needs the trajectory");
  detail::dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    Call<T> c = make_call<T>(shape, steps, integrator, physics);
    // The backward only reads the trajectory; Call keeps one non-const pointer for both passes.
    c.trajectory = const_cast<T*>(static_cast<const T*>(trajectory));
    c.mass = static_cast<const T*>(mass);
    c.dt = static_cast<const T*>(dt);
    c.grad_pos = static_cast<const T*>(grad_pos);
    c.grad_vel = static_cast<const T*>(grad_vel);
    c.out_grad_pos = static_cast<T*>(out_grad_pos);
    c.out_grad_vel = static_cast<T*>(out_grad_vel);
    c.out_grad_dt = static_cast<T*>(out_grad_dt);
    step_backward_impl<T, decltype(d)::value>(c);
  });
}

}  // namespace aits::cpu
