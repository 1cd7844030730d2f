// The one-thread-per-system kernels (small.cuh) in float32; small_double.cu holds float64, so
// the two largest translation units compile in parallel.
#include "small.cuh"

namespace aits::cuda::detail {
template struct Small<float, 2>;
template struct Small<float, 3>;
}  // namespace aits::cuda::detail
