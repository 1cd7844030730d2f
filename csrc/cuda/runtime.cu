// Host-side runtime services for the CUDA kernels: device queries that never throw (the module
// must import and answer "no CUDA" on machines without a GPU or driver), cached device facts,
// and stream-ordered scratch memory from a private pool.
//
// Why a private pool: the j-split reductions and the generic step path need temporary buffers.
// cudaMallocFromPoolAsync orders them on the caller's stream (no device-wide sync, unlike
// cudaMalloc), and a pool of our own can keep a bounded amount of memory between calls
// (release threshold) without changing the process-wide default pool that other code may use.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "common.cuh"

namespace aits::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later calls do not see it
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return v;
}

namespace detail {

namespace {
std::mutex g_mutex;  // guards the two caches below

DeviceFacts query_device(int device) {
  DeviceFacts f{};
  f.device = device;
  check(cudaDeviceGetAttribute(&f.sm_count, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  return f;
}

// Memory the pool keeps after a synchronisation: enough that the usual scratch (j-split partial
// sums, one [B, N, D] buffer of a mid-sized batch) is not re-mapped on every call, small enough
// not to starve torch's own allocator.
constexpr uint64_t kPoolKeepBytes = 64ull << 20;

cudaMemPool_t pool_for(int device) {
  static std::unordered_map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = pools.find(device);
  if (it != pools.end()) return it->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  uint64_t keep = kPoolKeepBytes;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
        "cudaMemPoolSetAttribute(ReleaseThreshold)");
  pools.emplace(device, pool);
  return pool;
}
}  // namespace

const DeviceFacts& current_device() {
  static std::unordered_map<int, DeviceFacts> facts;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = facts.find(device);
  if (it == facts.end()) it = facts.emplace(device, query_device(device)).first;
  return it->second;  // unordered_map references stay valid across later insertions
}

int env_choice(const char* name, std::initializer_list<const char*> allowed) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return 0;
  int index = 0;
  for (const char* a : allowed) {
    if (std::strcmp(value, a) == 0) return index;
    ++index;
  }
  std::string list;  // "a, b or c"
  index = 0;
  for (const char* a : allowed) {
    if (index > 0) list += index + 1 == int(allowed.size()) ? " or " : ", ";
    list += a;
    ++index;
  }
  throw std::runtime_error(std::string(name) + " must be " + list + ", got '" + value + "'");
}

void* scratch_alloc(size_t bytes, cudaStream_t stream) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  void* ptr = nullptr;
  check(cudaMallocFromPoolAsync(&ptr, bytes, pool_for(device), stream),
        "cudaMallocFromPoolAsync (scratch memory)");
  return ptr;
}

void scratch_free(void* ptr, cudaStream_t stream) noexcept {
  // Called from destructors, also while an exception unwinds: report nothing, clear the error.
  if (cudaFreeAsync(ptr, stream) != cudaSuccess) (void)cudaGetLastError();
}

}  // namespace detail
}  // namespace aits::cuda
