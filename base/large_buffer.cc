#include "base/large_buffer.h"

#include <sys/mman.h>

#include <cstdint>

namespace ember {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
// Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit): a buffer this large is always
// its own mmap, so the advice goes with it when it is freed. A smaller one may come from the brk
// heap, where the advice would stay on memory that later small allocations reuse.
constexpr size_t kMinAdvised = (size_t{32} << 20) + 1;

}  // namespace

void AdviseHugePages(void* data, size_t size) {
#ifdef MADV_HUGEPAGE
  if (data == nullptr || size < kMinAdvised) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (begin + size) & ~(kHugePage - 1);
  if (end <= first) return;
  (void)::madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)size;
#endif
}

void ResizeLargeBuffer(std::string& s, size_t size) {
  if (size > s.size()) {
    s.reserve(size);
    // Only the bytes not yet in use: the pages under s's current content are touched already.
    AdviseHugePages(s.data() + s.size(), size - s.size());
  }
  s.resize(size);
}

}  // namespace ember
