// One pass over a CPU batch for the value checks of ops/validate.py: finite positions,
// velocities, masses and dt, positive masses, dt >= 0, and (for small N) no two bodies of a
// system at exactly the same place. The training loop calls the ops thousands of times a
// second on systems of 2-3 bodies, where a dozen small torch reductions cost ~100 us and this
// costs ~1 us. It only answers which check failed; Python then builds the message (with the
// torch reductions, on the failing input only).
#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace aits::cpu {
namespace {

template <typename T>
bool all_finite(const T* x, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]);
  return ok;
}

template <typename T>
bool has_coincident(const T* pos, Shape s) {
  for (int64_t b = 0; b < s.B; ++b) {
    const T* x = pos + b * s.N * s.D;
    for (int64_t i = 0; i < s.N; ++i)
      for (int64_t j = i + 1; j < s.N; ++j) {
        bool same = true;
        for (int k = 0; k < s.D; ++k) same &= x[i * s.D + k] == x[j * s.D + k];
        if (same) return true;
      }
  }
  return false;
}

template <typename T>
ValueCheck check(const T* pos, const T* vel, const T* mass, const T* dt, Shape s,
                 bool coincident) {
  const int64_t states = s.B * s.N * s.D, bodies = s.B * s.N;
  if (!all_finite(pos, states)) return ValueCheck::PositionNotFinite;
  if (vel && !all_finite(vel, states)) return ValueCheck::VelocityNotFinite;
  if (!all_finite(mass, bodies)) return ValueCheck::MassNotFinite;
  for (int64_t i = 0; i < bodies; ++i)
    if (!(mass[i] > 0)) return ValueCheck::MassNotPositive;
  if (dt) {
    if (!all_finite(dt, s.B)) return ValueCheck::DtNotFinite;
    for (int64_t b = 0; b < s.B; ++b)
      if (dt[b] < 0) return ValueCheck::DtNegative;
  }
  if (coincident && has_coincident(pos, s)) return ValueCheck::CoincidentBodies;
  return ValueCheck::Ok;
}

}  // namespace

ValueCheck check_values(bool double_precision, const void* pos, const void* vel, const void* mass,
                        const void* dt, Shape shape, bool check_coincident) {
  if (double_precision)
    return check(static_cast<const double*>(pos), static_cast<const double*>(vel),
                 static_cast<const double*>(mass), static_cast<const double*>(dt), shape,
                 check_coincident);
  return check(static_cast<const float*>(pos), static_cast<const float*>(vel),
               static_cast<const float*>(mass), static_cast<const float*>(dt), shape,
               check_coincident);
}

}  // namespace aits::cpu
