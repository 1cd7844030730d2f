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

template <typename T>
void forward(const T* x, T* out, int64_t rows, const std::vector<DenseLayer>& layers) {
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
        const T* w_row = w + o * layer.in;
        double sum = 0;
        for (int64_t k = 0; k < layer.in; ++k) sum += double(w_row[k]) * a[k];
        // Rounded to T after the bias and after the activation, as the reference's separate
        // operators round their outputs.
        const T linear = static_cast<T>(sum + double(bias[o]));
        b[o] = double(static_cast<T>(activate(layer.activation, double(linear))));
      }
      std::swap(a, b);
    }
    const int64_t width = layers.back().out;
    for (int64_t k = 0; k < width; ++k) out[row * width + k] = static_cast<T>(a[k]);
  }
}

}  // namespace

void mlp_forward(bool double_precision, const void* x, void* out, int64_t rows,
                 const std::vector<DenseLayer>& layers) {
  if (double_precision)
    forward<double>(static_cast<const double*>(x), static_cast<double*>(out), rows, layers);
  else
    forward<float>(static_cast<const float*>(x), static_cast<float*>(out), rows, layers);
}

}  // namespace aits::cpu
