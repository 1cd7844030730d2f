// The simulation loop's per-step work on CUDA (python/aitimestepper/simulate.py, _Loop), each as
// one launch where PyTorch needs dozens of small kernels: the scaled feature block with the step
// time, the symmetric step rule, and the step carrying the acceleration with the energy after
// it. The CPU versions are csrc/cpu/features.h, mlp.h and carried_step.h; the float64 references
// are the PyTorch formulas they are tested against (tests/test_cuda_loop.py).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace aits::cuda {

// Systems of more bodies than this are left to the PyTorch formula by the Python layer: the
// kernel gives each system one thread, whose O(N^2) pair loops would serialise a large system.
constexpr int64_t kScaledFeaturesMaxN = 32;

// As aits::cpu::scaled_features (the `scaled` block out [B, 13], or out = null for the time
// only, and the step time tau [B]), on `stream`. Any N >= 2 is computed; see kScaledFeaturesMaxN.
void scaled_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                     const void* acc, void* out, void* tau, Shape shape, double G,
                     double softening, bool flyby, void* stream);

// As aits::cpu::symmetric_step: h [n] from f [n] and rho [n] (updated in place), on `stream`.
void symmetric_step(bool double_precision, const void* f, void* rho, void* h, int64_t n,
                    void* stream);

// As aits::cpu::carried_step (pos, vel, acc [B, N, D] in place, acc = a(pos) in and out), and,
// when `energy` is not null, the total energy T + U [B] of the state after the step, as
// potential_energy plus the kinetic energy. One launch for the systems of the one-thread-per-
// system kernels (N <= 8 float, 6 double); per-substep launches above.
void carried_step(bool double_precision, void* pos, void* vel, void* acc, const void* mass,
                  const void* dt, void* energy, Shape shape, int integrator,
                  const Physics& physics, void* stream);

}  // namespace aits::cuda
