// aits::cpu::carried_step: kick-drift-kick substeps on state buffers the caller owns, with the
// acceleration carried in and out. A simulated step at batch 1 otherwise spends ~20-70 us in
// the three torch.addcmul of physics/integrators.kick_drift_kick (the PyTorch substep, this
// kernel's reference: tests/test_ops_bound.py compares them) and the ops layer around a 2 us
// force kernel; this is one call of ~3 us.
//
// The substep is the one of the fused step kernel (integrate.cpp), in the same order of
// operations and rounding: h = c_s dt, v += h/2 a, x += h v, a = a(x), v += h/2 a. The forces
// come from aits::cpu::acceleration on the whole batch.
#include "carried_step.h"

#include <cstdint>

#include "aitimestepper/physics.h"
#include "common.h"

namespace aits::cpu {
namespace {

// Below this many state values a kick/drift sweep stays on one thread (a parallel region costs
// microseconds to open; the sweep is a few flops per value).
constexpr int64_t kMinParallelValues = int64_t(1) << 16;

// v += hh a and, when drift, x += h v, for every system, with h = c dt_b and hh = h / 2.
template <typename T>
void kick(T* pos, T* vel, const T* acc, const T* dt, int64_t B, int64_t state, double c,
          bool drift) {
  const bool parallel = B * state >= kMinParallelValues && detail::max_threads() > 1;
  (void)parallel;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < B; ++b) {
    const T h = T(c) * dt[b], hh = T(0.5) * h;
    T* x = pos + b * state;
    T* v = vel + b * state;
    const T* a = acc + b * state;
    if (drift) {
#pragma omp simd
      for (int64_t j = 0; j < state; ++j) {
        v[j] = detail::half_kick(v[j], hh, a[j]);
        x[j] += h * v[j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < state; ++j) v[j] = detail::half_kick(v[j], hh, a[j]);
    }
  }
}

template <typename T>
void run(bool double_precision, T* pos, T* vel, T* acc, const T* mass, const T* dt, Shape s,
         Integrator integrator, const Physics& physics) {
  const int64_t state = s.N * s.D;
  for (int sub = 0; sub < substeps_per_step(integrator); ++sub) {
    const double c = substep_weight(integrator, sub);
    kick(pos, vel, acc, dt, s.B, state, c, true);
    acceleration(double_precision, pos, mass, acc, s, physics);
    kick(pos, vel, acc, dt, s.B, state, c, false);
  }
}

}  // namespace

void carried_step(bool double_precision, void* pos, void* vel, void* acc, const void* mass,
                  const void* dt, Shape shape, int integrator, const Physics& physics) {
  const Integrator which = static_cast<Integrator>(integrator);
  if (double_precision)
    run(true, static_cast<double*>(pos), static_cast<double*>(vel), static_cast<double*>(acc),
        static_cast<const double*>(mass), static_cast<const double*>(dt), shape, which, physics);
  else
    run(false, static_cast<float*>(pos), static_cast<float*>(vel), static_cast<float*>(acc),
        static_cast<const float*>(mass), static_cast<const float*>(dt), shape, which, physics);
}

}  // namespace aits::cpu
