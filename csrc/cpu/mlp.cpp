// aits::cpu::mlp_forward: see mlp.h. Each layer is a dense matrix-vector product per row with
// the activation applied as the row is written; activations follow torch's definitions (softplus
// with its threshold 20: x itself above it).
#include "mlp.h"

#include <algorithm>
#include <cmath>

namespace aits::cpu {
namespace {

double activate(Activation kind, double x) {
  switch (kind) {
    case Activation::Tanh: return std::tanh(x);
    case Activation::ReLU: return x > 0 ? x : (std::isnan(x) ? x : 0.0);
    case Activation::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case Activation::SiLU: return x / (1.0 + std::exp(-x));
    case Activation::Softplus: return x > 20.0 ? x : std::log1p(std::exp(x));
    case Activation::Identity: break;
  }
  return x;
}

// w . a over n terms in double with four partial sums: one running sum would wait on the
// latency of each addition in turn.
template <typename T>
double dot(const T* w, const double* a, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += double(w[k]) * a[k];
    s1 += double(w[k + 1]) * a[k + 1];
    s2 += double(w[k + 2]) * a[k + 2];
    s3 += double(w[k + 3]) * a[k + 3];
  }
  for (; k < n; ++k) s0 += double(w[k]) * a[k];
  return (s0 + s1) + (s2 + s3);
}

template <typename T>
void forward(const T* x, T* out, int64_t rows, const std::vector<DenseLayer>& layers,
             const StepHead* head, T* dt) {
  int64_t widest = 0;
  for (const DenseLayer& layer : layers) widest = std::max({widest, layer.in, layer.out});
  std::vector<double> a(widest), b(widest);
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t in0 = layers.front().in;
    for (int64_t k = 0; k < in0; ++k) a[k] = double(x[row * in0 + k]);
    for (const DenseLayer& layer : layers) {
      const T* w = static_cast<const T*>(layer.weight);
      const T* bias = static_cast<const T*>(layer.bias);
      for (int64_t o = 0; o < layer.out; ++o) {
        const double sum = dot(w + o * layer.in, a.data(), layer.in);
        // Rounded to T after the bias and after the activation, as the reference's separate
        // operators round their outputs.
        const T linear = static_cast<T>(sum + double(bias[o]));
        b[o] = double(static_cast<T>(activate(layer.activation, double(linear))));
      }
      std::swap(a, b);
    }
    const int64_t width = layers.back().out;
    for (int64_t k = 0; k < width; ++k) out[row * width + k] = static_cast<T>(a[k]);
    if (head != nullptr && dt != nullptr) {
      const double o = double(out[row * width]);
      const double step = head->scale_aware
                              ? o * double(static_cast<const T*>(head->tau)[row]) * head->factor
                              : o + head->offset;
      dt[row] = static_cast<T>(step > head->dt_max ? head->dt_max : step);
    }
  }
}

template <typename T>
void symmetric(const T* f, T* rho, T* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    // The reference's operations in its order and precision: inverse + (inverse - rho), then
    // clamp(., inverse / 2, 2 inverse) (a NaN passes through, as in torch.clamp).
    const T inverse = T(1) / f[i];
    T r = inverse + (inverse - rho[i]);
    const T low = T(0.5) * inverse, high = T(2) * inverse;
    if (r < low) r = low;
    if (r > high) r = high;
    rho[i] = r;
    h[i] = T(1) / r;
  }
}

}  // namespace

void mlp_forward(bool double_precision, const void* x, void* out, int64_t rows,
                 const std::vector<DenseLayer>& layers, const StepHead* head, void* dt) {
  if (double_precision)
    forward<double>(static_cast<const double*>(x), static_cast<double*>(out), rows, layers, head,
                    static_cast<double*>(dt));
  else
    forward<float>(static_cast<const float*>(x), static_cast<float*>(out), rows, layers, head,
                   static_cast<float*>(dt));
}

void symmetric_step(bool double_precision, const void* f, void* rho, void* h, int64_t n) {
  if (double_precision)
    symmetric<double>(static_cast<const double*>(f), static_cast<double*>(rho), static_cast<double*>(h), n);
  else
    symmetric<float>(static_cast<const float*>(f), static_cast<float*>(rho), static_cast<float*>(h), n);
}

}  // namespace aits::cpu
