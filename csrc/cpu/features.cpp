// aits::cpu::state_features: the basic/rich state block of features.py for every system in one
// pass. A simulated step at batch 1 spends ~100 us in the ~23 small torch calls of the PyTorch
// formula (each a few microseconds of dispatch for a handful of numbers); this is ~1 us.
//
// The formula is Featurizer.state_block_reference in python/aitimestepper/features.py, kept as
// the float64 reference (tests/test_features.py compares the two): with COM/VCOM the
// mass-weighted centres, r_i = |x_i - COM|, s_i = |v_i - VCOM|, alpha_i = |a_i| and d_ij the pair
// distances (i < j). The per-system statistics (sums in double, NaN-propagating extrema) are
// aitimestepper/state_stats.h, shared with the CUDA kernel of the scaled block.
#include "features.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "aitimestepper/state_stats.h"
#include "common.h"

namespace aits::cpu {
namespace {

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
  const double floor = double(std::numeric_limits<T>::min());
  double tau = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < N; ++i) {
    double a2 = 0;
    for (int k = 0; k < D; ++k) a2 += double(a[i * D + k]) * double(a[i * D + k]);
    tau = nan_min(tau, body_time(nearest[i], a2, floor));
  }
  *tau_out = static_cast<T>(flyby ? nan_min(tau, flyby_time) : tau);
  if (out != nullptr) scaled_columns(b, d, tau, potential, G, eps, N, out);
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
                              out == nullptr ? nullptr : out + b * aits::kScaledFeatures, tau + b,
                              s.N, G, eps, flyby, nearest.data());
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
