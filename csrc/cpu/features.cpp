// aits::cpu::state_features: the basic/rich state block of features.py for every system in one
// pass. A simulated step at batch 1 spends ~100 us in the ~23 small torch calls of the PyTorch
// formula (each a few microseconds of dispatch for a handful of numbers); this is ~1 us.
//
// The formula is Featurizer.state_block_reference in python/aitimestepper/features.py, kept as
// the float64 reference (tests/test_features.py compares the two): with COM/VCOM the
// mass-weighted centres, r_i = |x_i - COM|, s_i = |v_i - VCOM|, alpha_i = |a_i| and d_ij the pair
// distances (i < j). Sums are accumulated in double whatever the dtype (so a float32 block is
// rounded once, at the end), and min/max propagate NaN as torch's amin/amax do: a diverged
// system gives NaN features, hence a NaN dt, which the simulation turns into a stop.
#include "features.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "common.h"

namespace aits::cpu {
namespace {

// NaN-propagating running min/max (std::min/max would drop a NaN that arrives second).
inline double nan_min(double a, double b) { return (b < a || std::isnan(b)) ? b : a; }
inline double nan_max(double a, double b) { return (b > a || std::isnan(b)) ? b : a; }

// mean, min, max and rms of n values fed one at a time.
struct Moments {
  double sum = 0, sum_sq = 0;
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  void add(double q) {
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

// |x_i - x_j|^2 in double.
template <typename T, int D>
double squared_distance(const T* x, int64_t i, int64_t j) {
  double d2 = 0;
  for (int k = 0; k < D; ++k) {
    const double dx = double(x[i * D + k]) - double(x[j * D + k]);
    d2 += dx * dx;
  }
  return d2;
}

template <typename T, int D>
BodyStats body_stats(const T* x, const T* v, const T* m, const T* a, int64_t N) {
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

template <typename T, int D>
void one_system(const T* x, const T* v, const T* m, const T* a, const T* scale, T* out,
                int64_t N, bool rich, double tail) {
  const BodyStats b = body_stats<T, D>(x, v, m, a, N);
  const double total = b.total;
  const Moments &mass = b.mass, &r = b.r, &s = b.s, &alpha = b.alpha;
  Moments d;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = i + 1; j < N; ++j) {
      d.add(std::sqrt(squared_distance<T, D>(x, i, j)));
    }
  const double per_body = 1.0 / double(N);
  const double per_pair = 1.0 / double(N * (N - 1) / 2);
  int c = 0;
  auto put = [&](double value) {
    out[c] = static_cast<T>(value * double(scale[c]));
    ++c;
  };
  put(double(N));
  put(double(D));
  put(total);
  if (rich) {
    for (const Moments* q : {&mass, &r, &s, &alpha}) {
      put(q->sum * per_body);
      put(q->low);
      put(q->high);
      put(std::sqrt(q->sum_sq * per_body));
    }
    put(d.low);
    put(d.sum * per_pair);
    put(d.high);
    out[c] = static_cast<T>(tail);
  } else {
    for (const Moments* q : {&r, &s, &alpha}) {
      put(q->sum * per_body);
      put(q->high);
    }
    put(d.low);
    put(d.sum * per_pair);
  }
}

template <typename T, int D>
void run(const T* pos, const T* vel, const T* mass, const T* acc, const T* scale, T* out, Shape s,
         bool rich, double tail) {
  const int64_t F = rich ? kRichFeatures : kBasicFeatures;
  const int64_t state = s.N * D;
  // Threads only for many systems with enough pairs between them: at batch 1 (the simulation's
  // single system) no parallel region is ever opened.
  const bool parallel = detail::choose_split(s.B, s.N) != detail::Split::Serial &&
                        s.B >= 2 * int64_t(detail::max_threads());
  (void)parallel;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < s.B; ++b)
    one_system<T, D>(pos + b * state, vel + b * state, mass + b * s.N, acc + b * state, scale,
                     out + b * F, s.N, rich, tail);
}

}  // namespace

void state_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                    const void* acc, const void* column_scale, void* out, Shape shape, bool rich,
                    double tail) {
  detail::dispatch(double_precision, shape.D, [&](auto zero, auto dim) {
    using T = decltype(zero);
    run<T, decltype(dim)::value>(static_cast<const T*>(pos), static_cast<const T*>(vel),
                                 static_cast<const T*>(mass), static_cast<const T*>(acc),
                                 static_cast<const T*>(column_scale), static_cast<T*>(out), shape,
                                 rich, tail);
  });
}

}  // namespace aits::cpu

namespace aits::cpu {
namespace {

// The scaled block of one system and its step time: tau, or with `flyby` min(tau, the fly-by
// time min d_ij / |v_i - v_j|) (physics/timescale.py); the block's tau column is tau either way.
// Sums in double whatever T (rounded once at the end), min/max propagating NaN as torch's
// amin/amax do. `nearest` holds N doubles of scratch.
template <typename T, int D>
void scaled_one_system(const T* x, const T* v, const T* m, const T* a, T* out, T* tau_out,
                       int64_t N, double G, double eps, bool flyby, double* nearest) {
  const BodyStats b = body_stats<T, D>(x, v, m, a, N);
  const double total = b.total, kinetic = b.kinetic;
  const Moments &r = b.r, &s = b.s, &alpha = b.alpha;
  Moments d;
  for (int64_t i = 0; i < N; ++i) nearest[i] = std::numeric_limits<double>::infinity();
  double potential = 0;
  double flyby_time = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = i + 1; j < N; ++j) {
      const double d2 = squared_distance<T, D>(x, i, j);
      const double distance = std::sqrt(d2);
      d.add(distance);
      if (flyby) flyby_time = nan_min(flyby_time, distance / std::sqrt(squared_distance<T, D>(v, i, j)));
      potential += double(m[i]) * double(m[j]) / std::sqrt(d2 + eps * eps);
      nearest[i] = nan_min(nearest[i], distance);
      nearest[j] = nan_min(nearest[j], distance);
    }
  potential *= G;
  // |a_i| floored at the dtype's smallest normal, as the reference clamps it.
  const double floor = double(std::numeric_limits<T>::min());
  double tau = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < N; ++i) {
    double a2 = 0;
    for (int k = 0; k < D; ++k) a2 += double(a[i * D + k]) * double(a[i * D + k]);
    const double magnitude = std::sqrt(a2);
    tau = nan_min(tau, std::sqrt(nearest[i] / (magnitude > floor || std::isnan(magnitude) ? magnitude : floor)));
  }
  *tau_out = static_cast<T>(flyby ? nan_min(tau, flyby_time) : tau);
  if (out == nullptr) return;
  const double per_body = 1.0 / double(N);
  const double length = d.sum / double(N * (N - 1) / 2);
  const double gm = G * total;
  const double velocity = std::sqrt(gm / length);
  const double time = length / velocity;
  const double acceleration = gm / (length * length);
  const double columns[kScaledFeatures] = {
      b.mass.low / total, b.mass.high / total, d.low / length, d.high / length,
      r.sum * per_body / length, r.high / length, s.sum * per_body / velocity, s.high / velocity,
      alpha.sum * per_body / acceleration, alpha.high / acceleration, tau / time,
      kinetic / potential, eps / length};
  for (int c = 0; c < kScaledFeatures; ++c) out[c] = static_cast<T>(columns[c]);
}

template <typename T, int D>
void run_scaled(const T* pos, const T* vel, const T* mass, const T* acc, T* out, T* tau, Shape s,
                double G, double eps, bool flyby) {
  const int64_t state = s.N * D;
  const bool parallel = s.B >= 2 * int64_t(detail::max_threads()) && s.B * s.N * s.N >= 4096;
  (void)parallel;
#pragma omp parallel if (parallel)
  {
    std::vector<double> nearest(s.N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      scaled_one_system<T, D>(pos + b * state, vel + b * state, mass + b * s.N, acc + b * state,
                              out == nullptr ? nullptr : out + b * kScaledFeatures, tau + b, s.N, G,
                              eps, flyby, nearest.data());
  }
}

}  // namespace

void scaled_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                     const void* acc, void* out, void* tau, Shape shape, double G, double softening,
                     bool flyby) {
  detail::dispatch(double_precision, shape.D, [&](auto zero, auto dim) {
    using T = decltype(zero);
    run_scaled<T, decltype(dim)::value>(static_cast<const T*>(pos), static_cast<const T*>(vel),
                                        static_cast<const T*>(mass), static_cast<const T*>(acc),
                                        static_cast<T*>(out), static_cast<T*>(tau), shape, G,
                                        softening, flyby);
  });
}

}  // namespace aits::cpu
