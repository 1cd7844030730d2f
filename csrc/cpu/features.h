// The network's state features in one compiled pass: the `basic` (11) and
// `rich` (23) blocks of python/aitimestepper/features.py, whose PyTorch formula
// (Featurizer.state_block_reference) is the float64 reference these values are tested against.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace aits::cpu {

// Columns of one state block, before the scales; `rich` adds softening / L0 as a last column.
constexpr int kBasicFeatures = 11;
constexpr int kRichFeatures = 23;

// pos, vel, acc [B, N, D], mass [B, N], out [B, F] (F = 11 basic, 23 rich), all contiguous in
// the dtype chosen by double_precision. column_scale [F] (rich: its first 22 entries) holds the
// factor each raw column is multiplied by (1 / its scale, or 1), in that dtype; `tail` is the
// rich block's last column (softening / L0), unused for basic.
void state_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                    const void* acc, const void* column_scale, void* out, Shape shape, bool rich,
                    double tail);

}  // namespace aits::cpu

namespace aits::cpu {

// The dimensionless `scaled` block of features.py (Featurizer.scaled_block, its float64
// reference) and the step time of physics/timescale.py, for every system: pos, vel, acc
// [B, N, D], mass [B, N], out [B, 13] (null: the time only), tau [B]: the dynamical time
// min_i sqrt(d_i / |a_i|), or with `flyby` the encounter time (its minimum with the fly-by time).
void scaled_features(bool double_precision, const void* pos, const void* vel, const void* mass,
                     const void* acc, void* out, void* tau, Shape shape, double G, double softening,
                     bool flyby);

}  // namespace aits::cpu
