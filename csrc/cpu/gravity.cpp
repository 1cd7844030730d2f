// Softened all-pairs gravity on the CPU: aits::cpu::acceleration, potential_energy and
// acceleration_vjp for float and double, D = 2 and 3.
//
// Batches of small systems (N <= 64) go through the lane kernels of lanes.h: W systems per
// SIMD vector, each pair once. Otherwise each system is transposed into a structure-of-arrays
// scratch block and handed to the row kernels of rows.h, whose loop over source bodies is a
// clean SIMD loop over the pair math of physics.h. Threads take whole systems when there are many, or share the rows of one system
// when there are few large ones (common.h, choose_split). Every row is computed by one thread
// alone and energies are summed row by row, the rows combined by a pairwise sum in a fixed
// order, so results do not depend on the thread count or on which thread took which row.
#include <cstdint>

#include "common.h"
#include "kernels.h"
#include "lanes.h"
#include "rows.h"
#include "simd.h"

namespace aits::cpu {
namespace {

using detail::kLaneMaxN;
using detail::kLaneWidth;
using detail::LaneParams;
using detail::Params;
using detail::Soa;
using detail::Team;
using detail::Vec;

// Runs block(b0, valid, n, lane_params) over blocks of W systems with the body count fixed at
// compile time where lanes.h has an instantiation for it (NF > 0), for batches of small systems.
template <typename T, int D, typename Block>
void for_each_small_block(int64_t B, int64_t N, const Params<T>& p, const Block& block) {
  constexpr int W = kLaneWidth<T>;
  const LaneParams<T, W> lp(p);
  detail::dispatch_lane_n(N, [&](auto nf) {
    detail::for_each_lane_block<W>(B, N, 1, [&](int64_t b0, int valid) {
      block(nf, b0, valid, lp);
    });
  });
}

// Runs body for every system with `arrays` padded length-N arrays of scratch per system.
template <typename T, typename Body>
void for_each_system(int64_t B, int64_t N, int arrays, const Body& body) {
  detail::for_each_system<T>(B, detail::choose_split(B, N), arrays * detail::padded(N), body);
}

// Views the first D + 1 arrays of a scratch block as positions and masses, filling this
// thread's rows from the AoS input; the caller waits at a barrier before reading other rows.
template <typename T, int D>
Soa<T, D> load_system(const T* pos, const T* mass, int64_t N, T* scratch, const Team& team) {
  const int64_t ld = detail::padded(N);
  const int64_t i0 = team.begin(N), i1 = team.end(N);
  detail::aos_to_soa<T, D>(pos, i0, i1, ld, scratch);
  T* m = scratch + D * ld;
  for (int64_t i = i0; i < i1; ++i) m[i] = mass[i];
  Soa<T, D> s;
  for (int k = 0; k < D; ++k) s.x[k] = scratch + k * ld;
  s.m = m;
  s.n = N;
  return s;
}

template <typename T, int D>
void acceleration_impl(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                       const Params<T>& p) {
  if (detail::use_lanes<T>(B, N)) {
    for_each_small_block<T, D>(B, N, p, [&](auto nf, int64_t b0, int valid, const auto& lp) {
      constexpr int NF = decltype(nf)::value, W = kLaneWidth<T>;
      constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
      const int n = int(N);
      Vec<T, W> x[kCap][D], a[kCap][D], m[kCap];
      detail::gather<T, D, W>(pos + b0 * N * D, n, valid, x);
      detail::gather_mass<T, W>(mass + b0 * N, n, valid, m);
      detail::lane_acceleration<T, D, W, NF>(n, x, m, a, lp);
      detail::scatter<T, D, W>(a, n, valid, out + b0 * N * D);
    });
    return;
  }
  for_each_system<T>(B, N, D + 1, [&](int64_t b, T* scratch, const Team& team) {
    const Soa<T, D> s = load_system<T, D>(pos + b * N * D, mass + b * N, N, scratch, team);
    team.barrier();
    team.rows(N, detail::row_chunk(N), [&](int64_t i0, int64_t i1) {
      detail::acceleration_rows<T, D>(s, p, i0, i1, out + b * N * D, D, 1);
    });
  });
}

template <typename T, int D>
void potential_energy_impl(const T* pos, const T* mass, T* out, int64_t B, int64_t N,
                           const Params<T>& p) {
  if (detail::use_lanes<T>(B, N)) {
    for_each_small_block<T, D>(B, N, p, [&](auto nf, int64_t b0, int valid, const auto& lp) {
      constexpr int NF = decltype(nf)::value, W = kLaneWidth<T>;
      constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
      const int n = int(N);
      Vec<T, W> x[kCap][D], m[kCap];
      detail::gather<T, D, W>(pos + b0 * N * D, n, valid, x);
      detail::gather_mass<T, W>(mass + b0 * N, n, valid, m);
      const Vec<T, W> energy = detail::lane_potential<T, D, W, NF>(n, x, m, lp);
      for (int w = 0; w < valid; ++w) out[b0 + w] = energy[w];
    });
    return;
  }
  for_each_system<T>(B, N, D + 2, [&](int64_t b, T* scratch, const Team& team) {
    const Soa<T, D> s = load_system<T, D>(pos + b * N * D, mass + b * N, N, scratch, team);
    T* rows = scratch + (D + 1) * detail::padded(N);
    team.barrier();
    // Row i visits N - 1 - i partners; chunks on demand also balance the triangle.
    team.rows(N, 2 * detail::row_chunk(N), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) rows[i] = detail::potential_row<T, D>(s, p, i);
    });
    team.barrier();
    if (team.id == 0) out[b] = detail::pairwise_sum(rows, N);
  });
}

template <typename T, int D>
void acceleration_vjp_impl(const T* pos, const T* mass, const T* grad_acc, T* out, int64_t B,
                           int64_t N, const Params<T>& p) {
  if (detail::use_lanes<T>(B, N)) {
    for_each_small_block<T, D>(B, N, p, [&](auto nf, int64_t b0, int valid, const auto& lp) {
      constexpr int NF = decltype(nf)::value, W = kLaneWidth<T>;
      constexpr int kCap = NF > 0 ? NF : kLaneMaxN;
      const int n = int(N);
      Vec<T, W> x[kCap][D], g[kCap][D], grad[kCap][D], m[kCap];
      detail::gather<T, D, W>(pos + b0 * N * D, n, valid, x);
      detail::gather<T, D, W>(grad_acc + b0 * N * D, n, valid, g);
      detail::gather_mass<T, W>(mass + b0 * N, n, valid, m);
      for (int i = 0; i < n; ++i)
        for (int k = 0; k < D; ++k) grad[i][k] = Vec<T, W>(T(0));
      detail::lane_acceleration_vjp<T, D, W, NF>(n, x, m, g, grad, lp);
      detail::scatter<T, D, W>(grad, n, valid, out + b0 * N * D);
    });
    return;
  }
  for_each_system<T>(B, N, 2 * D + 1, [&](int64_t b, T* scratch, const Team& team) {
    const Soa<T, D> s = load_system<T, D>(pos + b * N * D, mass + b * N, N, scratch, team);
    const int64_t ld = detail::padded(N);
    T* g = scratch + (D + 1) * ld;
    detail::aos_to_soa<T, D>(grad_acc + b * N * D, team.begin(N), team.end(N), ld, g);
    const T* gs[D];
    for (int k = 0; k < D; ++k) gs[k] = g + k * ld;
    team.barrier();
    team.rows(N, detail::row_chunk(N), [&](int64_t i0, int64_t i1) {
      detail::acceleration_vjp_rows<T, D>(s, gs, p, i0, i1, out + b * N * D, D, 1, false);
    });
  });
}

}  // namespace

void acceleration(bool double_precision, const void* pos, const void* mass, void* out_acc,
                  Shape shape, const Physics& physics) {
  if (shape.B <= 0 || shape.N <= 0) return;
  detail::dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    acceleration_impl<T, decltype(d)::value>(static_cast<const T*>(pos),
                                             static_cast<const T*>(mass), static_cast<T*>(out_acc),
                                             shape.B, shape.N, detail::make_params<T>(physics));
  });
}

void potential_energy(bool double_precision, const void* pos, const void* mass, void* out_energy,
                      Shape shape, const Physics& physics) {
  if (shape.B <= 0 || shape.N <= 0) return;
  detail::dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    potential_energy_impl<T, decltype(d)::value>(
        static_cast<const T*>(pos), static_cast<const T*>(mass), static_cast<T*>(out_energy),
        shape.B, shape.N, detail::make_params<T>(physics));
  });
}

void acceleration_vjp(bool double_precision, const void* pos, const void* mass,
                      const void* grad_acc, void* out_grad_pos, Shape shape,
                      const Physics& physics) {
  if (shape.B <= 0 || shape.N <= 0) return;
  detail::dispatch(double_precision, shape.D, [&](auto t, auto d) {
    using T = decltype(t);
    acceleration_vjp_impl<T, decltype(d)::value>(
        static_cast<const T*>(pos), static_cast<const T*>(mass), static_cast<const T*>(grad_acc),
        static_cast<T*>(out_grad_pos), shape.B, shape.N, detail::make_params<T>(physics));
  });
}

}  // namespace aits::cpu
