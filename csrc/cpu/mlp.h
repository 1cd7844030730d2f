// Inference of the step network (model.py FullyConnectedNN) for a few rows at a time: the
// simulation evaluates it on one system per step, where the per-operator dispatch of a PyTorch
// forward costs more than its arithmetic. PyTorch's forward is the reference it is tested against.
#pragma once

#include <cstdint>
#include <vector>

namespace aits::cpu {

enum class Activation : int { Identity = 0, Tanh = 1, ReLU = 2, Sigmoid = 3, SiLU = 4, Softplus = 5 };

// One Linear layer followed by an activation: weight [out, in] (row-major), bias [out].
struct DenseLayer {
  const void* weight;
  const void* bias;
  int64_t in;
  int64_t out;
  Activation activation;
};

// x [rows, layers[0].in] -> out [rows, layers.back().out], all in the dtype chosen by
// double_precision; sums in double whatever the dtype.
void mlp_forward(bool double_precision, const void* x, void* out, int64_t rows,
                 const std::vector<DenseLayer>& layers);

}  // namespace aits::cpu
