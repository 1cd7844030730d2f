// Turning a call's runtime dtype and dimension into template arguments, once for the C++ and
// CUDA entry points (host code only).
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

namespace aits {

// Calls fn(T{}, std::integral_constant<int, D>{}) for the call's dtype (double when
// double_precision, else float) and dimension D (2 or 3).
template <typename Fn>
void dispatch(bool double_precision, int D, Fn&& fn) {
  if (D != 2 && D != 3)
    throw std::invalid_argument("aitimestepper: D must be 2 or 3, got " + std::to_string(D));
  if (double_precision) {
    if (D == 2) fn(double{}, std::integral_constant<int, 2>{});
    else fn(double{}, std::integral_constant<int, 3>{});
  } else {
    if (D == 2) fn(float{}, std::integral_constant<int, 2>{});
    else fn(float{}, std::integral_constant<int, 3>{});
  }
}

}  // namespace aits
