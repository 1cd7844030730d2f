// The one-thread-per-system kernels (small.cuh) in float64; see small_float.cu.
#include "small.cuh"

namespace aits::cuda::detail {
template struct Small<double, 2>;
template struct Small<double, 3>;
}  // namespace aits::cuda::detail
