// What the feature kernels reduce one system's state to, one definition for the CPU
// (csrc/cpu/features.cpp) and CUDA (csrc/cuda/loop.cu) kernels: NaN-propagating running
// extrema and moments, the per-body statistics about the centres of mass and velocity, the
// squared distance of a pair, and the columns of the `scaled` block. The formulas are those of
// python/aitimestepper/features.py (Featurizer.state_block_reference, Featurizer.scaled_block),
// the float64 references the kernels are tested against. Sums are accumulated in double whatever
// the storage type, so a float32 block is rounded once, at the end.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "physics.h"  // AITS_HD

namespace aits {

// Running min/max that propagate NaN as torch's amin/amax do (std::min/max would drop a NaN
// that arrives second): a diverged system gives NaN features, hence a NaN dt, which the
// simulation turns into a stop.
AITS_HD double nan_min(double a, double b) { return (b < a || std::isnan(b)) ? b : a; }
AITS_HD double nan_max(double a, double b) { return (b > a || std::isnan(b)) ? b : a; }

// Mean, min, max and rms of n values fed one at a time.
struct Moments {
  double sum = 0, sum_sq = 0;
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  AITS_HD void add(double q) {
    sum += q;
    sum_sq += q * q;
    low = nan_min(low, q);
    high = nan_max(high, q);
  }
};

// Per-body statistics of one system about its centre of mass and of velocity (weights m_i / M,
// the reference's order): total mass, mass m_i, r_i = |x_i - COM|, s_i = |v_i - VCOM|,
// alpha_i = |a_i|, and the kinetic energy about the VCOM.
struct BodyStats {
  double total = 0, kinetic = 0;
  Moments mass, r, s, alpha;
};

template <typename T, int D>
AITS_HD BodyStats body_stats(const T* x, const T* v, const T* m, const T* a, int64_t N) {
  BodyStats b;
  for (int64_t i = 0; i < N; ++i) b.total += double(m[i]);
  double com[D] = {}, vcom[D] = {};
  for (int64_t i = 0; i < N; ++i) {
    const double w = double(m[i]) / b.total;
    for (int k = 0; k < D; ++k) {
      com[k] += w * double(x[i * D + k]);
      vcom[k] += w * double(v[i * D + k]);
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    double r2 = 0, s2 = 0, a2 = 0;
    for (int k = 0; k < D; ++k) {
      const double dx = double(x[i * D + k]) - com[k];
      const double dv = double(v[i * D + k]) - vcom[k];
      const double da = double(a[i * D + k]);
      r2 += dx * dx;
      s2 += dv * dv;
      a2 += da * da;
    }
    b.mass.add(double(m[i]));
    b.r.add(std::sqrt(r2));
    b.s.add(std::sqrt(s2));
    b.alpha.add(std::sqrt(a2));
    b.kinetic += 0.5 * double(m[i]) * s2;
  }
  return b;
}

// |x_i - x_j|^2 in double, x [N, D].
template <typename T, int D>
AITS_HD double squared_distance(const T* x, int64_t i, int64_t j) {
  double d2 = 0;
  for (int k = 0; k < D; ++k) {
    const double dx = double(x[i * D + k]) - double(x[j * D + k]);
    d2 += dx * dx;
  }
  return d2;
}

// sqrt(d / max(|a|, floor)): one body's term of the dynamical time tau = min_i sqrt(d_i / |a_i|),
// d its nearest-neighbour distance, a2 = |a|^2, |a| floored at the dtype's smallest normal (the
// reference clamps it so) and a NaN magnitude kept.
AITS_HD double body_time(double nearest, double a2, double floor) {
  const double magnitude = std::sqrt(a2);
  return std::sqrt(nearest / (magnitude > floor || std::isnan(magnitude) ? magnitude : floor));
}

constexpr int kScaledFeatures = 13;

// The `scaled` block of a system of N bodies from its statistics: b, the pair distances d, its
// dynamical time tau and its softened potential energy |U| (G included), in the units of
// Featurizer.scaled_block (M the total mass, l the mean pair distance, T = sqrt(l^3 / (G M)),
// V = l / T, A = l / T^2). `out` gets kScaledFeatures values.
template <typename T>
AITS_HD void scaled_columns(const BodyStats& b, const Moments& d, double tau, double potential,
                            double G, double eps, int64_t N, T* out) {
  const double per_body = 1.0 / double(N);
  const double length = d.sum / double(N * (N - 1) / 2);
  const double gm = G * b.total;
  const double velocity = std::sqrt(gm / length);
  const double time = length / velocity;
  const double acceleration = gm / (length * length);
  const double columns[kScaledFeatures] = {
      b.mass.low / b.total, b.mass.high / b.total, d.low / length, d.high / length,
      b.r.sum * per_body / length, b.r.high / length, b.s.sum * per_body / velocity,
      b.s.high / velocity, b.alpha.sum * per_body / acceleration, b.alpha.high / acceleration,
      tau / time, b.kinetic / potential, eps / length};
  for (int c = 0; c < kScaledFeatures; ++c) out[c] = static_cast<T>(columns[c]);
}

}  // namespace aits
