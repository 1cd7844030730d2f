// One integrator step applied in place with the acceleration carried from step to step: the
// simulation loop's step, where dt changes every step (so the fused aits::cpu::step, which opens
// each call with a force evaluation, would cost one more evaluation per step).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace aits::cpu {

// pos, vel, acc [B, N, D] updated in place (acc must hold a(pos) on entry; it holds a(new pos)
// on exit), mass [B, N], dt [B], contiguous in the dtype chosen by double_precision. One force
// evaluation per substep of `integrator` (0 leapfrog, 1 yoshida4).
void carried_step(bool double_precision, void* pos, void* vel, void* acc, const void* mass,
                  const void* dt, Shape shape, int integrator, const Physics& physics);

}  // namespace aits::cpu
