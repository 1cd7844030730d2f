// Plumbing shared by the CPU kernels: the physics constants in the kernel's precision, the
// float/double x D = 2/3 dispatch, how work is split over OpenMP threads, and summation helpers.
//
// Threads are handed out in one of two ways. Many systems: each thread takes whole systems, so
// there is no synchronisation at all. Few large systems: the whole team works on one system at a
// time, sharing its O(N^2) row sweeps and splitting its O(N) updates (a `Team` carries the
// thread's share and the barriers), so one code path serves both ways.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "aitimestepper/dispatch.h"
#include "aitimestepper/physics.h"
#include "kernels.h"

namespace aits::cpu::detail {

// Physics of one call, converted once to the kernel's precision (the reference converts Python
// floats to the tensor dtype the same way: eps^2 and G*M are formed in double, then rounded).
template <typename T>
struct Params {
  T G;
  T eps2;
  bool field_on;
  T gm;    // G * field_mass
  T R[3];  // field position
};

template <typename T>
Params<T> make_params(const Physics& physics) {
  Params<T> p{};
  p.G = static_cast<T>(physics.G);
  p.eps2 = static_cast<T>(physics.softening * physics.softening);
  p.field_on = physics.field_mass != 0.0;
  p.gm = static_cast<T>(physics.G * physics.field_mass);
  for (int k = 0; k < 3; ++k) p.R[k] = static_cast<T>(physics.field_pos[k]);
  return p;
}

using aits::dispatch;  // aitimestepper/dispatch.h, shared with the CUDA entry points

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

enum class Split { Serial, Systems, Bodies };

// Below this many pair interactions a call stays on one thread: waking the team costs a few
// microseconds, about what one core needs for this much work.
constexpr int64_t kMinParallelPairs = int64_t(1) << 14;

// Per-system work of at least kBodiesSplitN^2 pairs amortises the barriers a body split needs
// (two per force evaluation, ~1 us each) to a few percent.
constexpr int64_t kBodiesSplitN = 256;

// Systems are split when there are enough of them to keep the team evenly busy (at least 8 per
// thread), or when each is too small to split.
// `passes` is how many all-pairs sweeps the call makes per system (force evaluations).
inline Split choose_split(int64_t B, int64_t N, int64_t passes = 1) {
  const int threads = max_threads();
  // In double: B N^2 times the number of steps can pass 2^63 for very long calls.
  const double pairs = double(B) * double(N) * double(N) * double(passes);
  if (threads <= 1 || pairs < double(kMinParallelPairs)) return Split::Serial;
  if (B >= 8 * int64_t(threads) || N < kBodiesSplitN) return Split::Systems;
  return Split::Bodies;
}

// One thread's view of the team working on a system: its share of the work and the barriers
// between phases. A thread working alone (Serial or Systems split) does all the work and never
// waits.
struct Team {
  int id = 0;
  int size = 1;

  bool shared() const { return size > 1; }
  void barrier() const {
#ifdef _OPENMP
    if (shared()) {
#pragma omp barrier
    }
#endif
  }
  // Contiguous block [begin, end) of n items owned by this thread (O(N) work: kicks, copies).
  int64_t begin(int64_t n) const { return n * id / size; }
  int64_t end(int64_t n) const { return n * (id + 1) / size; }

  // Calls body(i0, i1) on chunks of [0, n) handed out on demand across the team, for the O(N^2)
  // row sweeps: on a machine shared with other work a static split waits for whichever thread
  // the OS descheduled, while chunks on demand let the running thread take the rest. Every
  // thread of a shared team must reach this call; callers place the barrier after it.
  template <typename Body>
  void rows(int64_t n, int64_t chunk, const Body& body) const {
    if (!shared()) {
      body(int64_t(0), n);
      return;
    }
    const int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < chunks; ++c) body(c * chunk, std::min(n, (c + 1) * chunk));
  }
};

// Rows per chunk for Team::rows: about 32k pair evaluations (~15 us), small enough to balance,
// large enough that taking a chunk (one atomic) costs nothing.
inline int64_t row_chunk(int64_t N) { return std::max<int64_t>(1, (int64_t(1) << 15) / N); }

// Chunk of independent items (systems, lane blocks) per request in a dynamic schedule: about 16
// requests per thread.
inline int64_t item_chunk(int64_t items) {
  return std::max<int64_t>(1, items / (16 * int64_t(max_threads())));
}

// Sum of n values by recursive halving: error grows like log(n) rather than n, which keeps a
// float32 energy of a large system as accurate as the reference's (also blocked) sum.
template <typename T>
T pairwise_sum(const T* v, int64_t n) {
  if (n <= 16) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += v[i];
    return s;
  }
  const int64_t half = n / 2;
  return pairwise_sum(v, half) + pairwise_sum(v + half, n - half);
}

// Leading dimension of a structure-of-arrays block: a multiple of 16 elements (every component
// array starts on a 64-byte boundary) with room for one full SIMD vector read past body n - 1.
inline int64_t padded(int64_t n) { return (n + 15) / 16 * 16 + 16; }

// Scratch memory on 64-byte boundaries (one cache line, two AVX2 registers). Allocated before a
// parallel region, never inside one, so an allocation failure surfaces as an exception.
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
    data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!data_) throw std::bad_alloc();
    // Zeroed: the vector loops read (and then discard) padding lanes; keep them defined.
    std::memset(data_.get(), 0, bytes);
  }
  T* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
};

// Runs body(b, scratch, team) for every system b. `block` is how many elements of scratch one
// system needs. With a Bodies split every thread calls body for every system with the same
// scratch and its own team share; a barrier after each system keeps the next system's loads
// from overwriting scratch that is still being read.
template <typename T, typename Body>
void for_each_system(int64_t B, Split split, int64_t block, const Body& body) {
  if (split == Split::Serial) {
    Buffer<T> scratch(block);
    for (int64_t b = 0; b < B; ++b) body(b, scratch.get(), Team{});
    return;
  }
  const int threads = max_threads();
  if (split == Split::Systems) {
    Buffer<T> scratch(block * threads);
    const int64_t chunk = item_chunk(B);
#pragma omp parallel num_threads(threads)
    {
      T* mine = scratch.get() + block * thread_id();
#pragma omp for schedule(dynamic, chunk)
      for (int64_t b = 0; b < B; ++b) body(b, mine, Team{});
    }
    return;
  }
  Buffer<T> scratch(block);
#pragma omp parallel num_threads(threads)
  {
    const Team team{thread_id(), team_size()};
    for (int64_t b = 0; b < B; ++b) {
      body(b, scratch.get(), team);
      team.barrier();
    }
  }
}

// v + h/2 a: the half kick of every CPU step (fused, carried, and the backward's recomputation of
// the drift velocity), one expression so all of them round alike (an FMA under -ffp-contract=fast).
template <typename T>
inline T half_kick(T v, T half_h, T a) {
  return v + half_h * a;
}

}  // namespace aits::cpu::detail
