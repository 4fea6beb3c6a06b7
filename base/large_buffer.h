// File: base/large_buffer.h
//
// Buffers of many MiB (a checkpoint file read whole, a broadcast's receive buffer) backed by 2 MiB
// pages where the kernel allows them (madvise(MADV_HUGEPAGE): transparent huge pages in "madvise"
// or "always" mode), so that filling one costs one page fault per 2 MiB instead of one per 4 KiB.
// On a virtual machine a fault is expensive: on the 2-core VM of docs/performance.md, receiving a
// 512 MiB MPI broadcast into fresh 4 KiB pages took about 1 s, into 2 MiB pages 0.04 s, and a
// resume of 512 MiB on 2 ranks fell from 10 s to under 1.5 s (docs/performance.md, resume). The
// advice is only advice: where huge pages are off the buffer is an ordinary one. Only buffers
// over 32 MiB are advised: glibc always gives those a mapping of their own (its mmap threshold
// never exceeds 32 MiB), so the advice ends with the buffer; a smaller one may come from the
// heap, where it would outlive it.
// Thread-safe (no shared state).
#ifndef EMBER_BASE_LARGE_BUFFER_H_
#define EMBER_BASE_LARGE_BUFFER_H_

#include <cstddef>
#include <string>

namespace ember {

// Advises huge pages for the whole 2 MiB pages inside [data, data + size) when size is over 32 MiB
// (see above; the caller must own that whole range as one allocation of its own); best effort
// (errors are ignored: a kernel without THP keeps 4 KiB pages).
void AdviseHugePages(void* data, size_t size);

// `s` resized to `size` bytes (new bytes zeroed), its storage reserved and advised (above) before
// its new bytes are first touched. What `s` held before is kept, up to `size`.
void ResizeLargeBuffer(std::string& s, size_t size);

}  // namespace ember

#endif  // EMBER_BASE_LARGE_BUFFER_H_
