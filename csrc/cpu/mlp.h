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

// How output 0 of the network becomes the step (model.py dt_from_output): scale-aware
// dt = out0 * tau * factor, absolute dt = out0 + offset; then capped at dt_max.
struct StepHead {
  bool scale_aware;
  const void* tau;  // [rows], scale-aware only
  double factor;
  double offset;
  double dt_max;  // +inf: no cap
};

// x [rows, layers[0].in] -> out [rows, layers.back().out], and dt [rows] when `head` and `dt`
// are given; all in the dtype chosen by double_precision, sums in double whatever the dtype.
void mlp_forward(bool double_precision, const void* x, void* out, int64_t rows,
                 const std::vector<DenseLayer>& layers, const StepHead* head = nullptr,
                 void* dt = nullptr);

// The symmetric step rule of simulate.py (SymmetricSteps) on rho = 1/h, for n systems: given
// f [n] and the previous rho [n] (updated in place), h = 1/rho with
// rho = clamp(2/f - rho_prev, 1/(2f), 2/f).
void symmetric_step(bool double_precision, const void* f, void* rho, void* h, int64_t n);

}  // namespace aits::cpu
