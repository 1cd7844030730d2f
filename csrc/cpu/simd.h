// A minimal explicit SIMD vector for the CPU kernels, so the pair math of physics.h runs on W
// lanes at once by instantiating its templates with T = Vec<float or double, W>.
//
// Why not `#pragma omp simd`: physics.h passes small arrays by pointer, and gcc turns such arrays
// inside a simd loop into per-lane "omp simd arrays" that it then fails to vectorise (the loop
// silently stays scalar: vsqrtss instead of vsqrtps). GCC/Clang vector extensions make the
// vector width explicit instead; a 32-byte vector is one AVX2 register and is split into two
// SSE registers by the compiler on older targets. inv_sqrt below is found by argument-dependent
// lookup from physics.h's unqualified call, so physics.h stays the single statement of the math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace aits::cpu::detail {

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int64_t i64x4 __attribute__((vector_size(32)));
typedef int64_t i64x8 __attribute__((vector_size(64)));

// Native vector types (the attribute cannot be applied to a dependent type in a template).
template <typename T, int W>
struct Native;
template <>
struct Native<float, 8> {
  using type = f32x8;
  using mask = i32x8;
};
template <>
struct Native<float, 16> {
  using type = f32x16;
  using mask = i32x16;
};
template <>
struct Native<double, 4> {
  using type = f64x4;
  using mask = i64x4;
};
template <>
struct Native<double, 8> {
  using type = f64x8;
  using mask = i64x8;
};

// Lanes per AVX2 register: the natural width for the row kernels.
template <typename T>
constexpr int kSimdWidth = 32 / int(sizeof(T));

template <typename T, int W>
struct Vec {
  using native = typename Native<T, W>::type;
  using mask = typename Native<T, W>::mask;
  static constexpr int width = W;
  native v;

  Vec() = default;
  // Broadcast; implicit so that physics.h's `T s2 = eps2`, `T(3)` and `T rw = 0` work.
  // s - 0 is exactly s for every s (-0 and NaN included) and compiles to one broadcast.
  Vec(T s) : v(s - native{}) {}  // NOLINT(google-explicit-constructor)
  explicit Vec(native n) : v(n) {}

  static Vec load(const T* p) {
    Vec r;
    std::memcpy(&r.v, p, sizeof(native));
    return r;
  }
  void store(T* p) const { std::memcpy(p, &v, sizeof(native)); }
  T operator[](int l) const { return v[l]; }

  friend Vec operator+(Vec a, Vec b) { return Vec(a.v + b.v); }
  friend Vec operator-(Vec a, Vec b) { return Vec(a.v - b.v); }
  friend Vec operator*(Vec a, Vec b) { return Vec(a.v * b.v); }
  friend Vec operator/(Vec a, Vec b) { return Vec(a.v / b.v); }
  Vec operator-() const { return Vec(-v); }
  Vec& operator+=(Vec b) {
    v += b.v;
    return *this;
  }
  Vec& operator-=(Vec b) {
    v -= b.v;
    return *this;
  }
  Vec& operator*=(Vec b) {
    v *= b.v;
    return *this;
  }

  // Lanes [0, count) of a, the rest exactly +0 (a bitwise AND, so inf/NaN in dropped lanes,
  // e.g. the r = 0 self term at softening 0, cannot leak).
  static Vec first(Vec a, int count) {
    mask m;
    for (int l = 0; l < W; ++l) m[l] = l < count ? ~0 : 0;
    return Vec((native)((mask)a.v & m));  // same-size vector casts reinterpret the bits
  }
};

// 1/sqrt on every lane: vsqrtps/vdivps (or the pd forms), correctly rounded like the scalar path.
template <typename T, int W>
inline Vec<T, W> inv_sqrt(Vec<T, W> x) {
  typename Vec<T, W>::native s;
  for (int l = 0; l < W; ++l) s[l] = std::sqrt(x.v[l]);
  return Vec<T, W>(T(1)) / Vec<T, W>(s);
}

// Sum of the lanes by halving: W partial sums of a SIMD loop combined pairwise.
template <typename T, int W>
inline T hsum(Vec<T, W> a) {
  T buf[W];
  a.store(buf);
  for (int width = W / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) buf[l] += buf[l + width];
  return buf[0];
}

// Lane-wise conversion to double (identity for double).
template <int W>
inline Vec<double, W> to_double(Vec<double, W> a) {
  return a;
}
template <int W>
inline Vec<double, W> to_double(Vec<float, W> a) {
  return Vec<double, W>(__builtin_convertvector(a.v, typename Native<double, W>::type));
}

}  // namespace aits::cpu::detail
