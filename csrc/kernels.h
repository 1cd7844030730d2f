// The C++ interface of the compiled kernels, shared by module.cpp (bindings), csrc/cpu/ and
// csrc/cuda/. See docs/kernel-contract.md for what each kernel reads and writes.
#pragma once

#include <cstdint>

namespace aits {

// Sizes of a flattened batch: B systems of N bodies in D (2 or 3) dimensions.
struct Shape {
  int64_t B;
  int64_t N;
  int D;
};

// Physical constants of one call. field_mass == 0 means "no tidal field".
struct Physics {
  double G;
  double softening;
  double field_mass;
  double field_pos[3];
};

// Every pointer is contiguous memory of the dtype chosen by `double_precision`
// (float64 when true, float32 otherwise); shapes as in docs/kernel-contract.md.
#define AITS_KERNEL_DECLARATIONS(EXTRA_ARG)                                                       \
  void acceleration(bool double_precision, const void* pos, const void* mass, void* out_acc,      \
                    Shape shape, const Physics& physics EXTRA_ARG);                               \
  void potential_energy(bool double_precision, const void* pos, const void* mass,                 \
                        void* out_energy, Shape shape, const Physics& physics EXTRA_ARG);         \
  void acceleration_vjp(bool double_precision, const void* pos, const void* mass,                 \
                        const void* grad_acc, void* out_grad_pos, Shape shape,                    \
                        const Physics& physics EXTRA_ARG);                                        \
  void step(bool double_precision, const void* pos, const void* vel, const void* mass,            \
            const void* dt, void* out_pos, void* out_vel, void* trajectory, Shape shape,          \
            int64_t steps, int integrator, const Physics& physics EXTRA_ARG);                     \
  void step_backward(bool double_precision, const void* trajectory, const void* mass,             \
                     const void* dt, const void* grad_pos, const void* grad_vel,                  \
                     void* out_grad_pos, void* out_grad_vel, void* out_grad_dt, Shape shape,      \
                     int64_t steps, int integrator, const Physics& physics EXTRA_ARG);

// Which value check of ops/validate.py failed first (Ok when none did); values are part of the
// Python contract (validate.py maps them to messages).
enum class ValueCheck : int {
  Ok = 0,
  PositionNotFinite = 1,
  VelocityNotFinite = 2,
  MassNotFinite = 3,
  MassNotPositive = 4,
  DtNotFinite = 5,
  DtNegative = 6,
  CoincidentBodies = 7,
};

namespace cpu {
AITS_KERNEL_DECLARATIONS()
// vel and dt may be null (not part of the op); the coincident-bodies scan is O(B N^2).
ValueCheck check_values(bool double_precision, const void* pos, const void* vel, const void* mass,
                        const void* dt, Shape shape, bool check_coincident);
}  // namespace cpu

#define AITS_STREAM_ARG , void* stream
namespace cuda {
AITS_KERNEL_DECLARATIONS(AITS_STREAM_ARG)
// Number of visible CUDA devices; 0 when there is no GPU or no driver (never throws).
int device_count();
// Runtime version as major*1000 + minor*10, or 0.
int runtime_version();
}  // namespace cuda
#undef AITS_STREAM_ARG

}  // namespace aits
