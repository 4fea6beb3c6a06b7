// File: base/crc32.h
//
// Crc32: the CRC-32 of zip, gzip and zlib (IEEE 802.3, reflected), with zlib's calling
// convention, so Crc32(Crc32(0, a), b) == Crc32(0, a + b) and results equal zlib's crc32().
// Large buffers use carry-less multiplication (PCLMULQDQ, folding four 128-bit lanes) when the
// CPU has it, at several times zlib 1.2.13's speed (13 GB/s on this project's VM), and from 1 KiB
// four 512-bit lanes where it also has VPCLMULQDQ and AVX-512 (about 4x that from 4 KiB in
// cache: 50 GB/s; over 512 MiB 22 against 12 GB/s, the memory's speed; less just past a
// multiple of 256 bytes); other CPUs and short tails use zlib.
// Thread-safe (pure function).
#ifndef EMBER_BASE_CRC32_H_
#define EMBER_BASE_CRC32_H_

#include <cstddef>
#include <cstdint>

namespace ember {

uint32_t Crc32(uint32_t crc, const void* data, size_t size);

// True when the accelerated path is in use on this CPU.
bool Crc32IsAccelerated();

namespace crc32_internal {
// For tests: whether the 512-bit fold is in use on this CPU, and the CRC without it (so that
// both folds are checked where both run).
bool WideFoldInUse();
uint32_t Crc32WithoutWideFold(uint32_t crc, const void* data, size_t size);
}  // namespace crc32_internal

}  // namespace ember

#endif  // EMBER_BASE_CRC32_H_
