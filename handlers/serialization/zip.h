// File: handlers/serialization/zip.h
//
// The zip half of torch.save (internal to this package; torch_save.h is the API).
//
// ZipWriter streams a stored (uncompressed) zip in the layout PyTorch's own writer produces:
// records under "archive/", each record's data aligned to 64 bytes with an "FB" padding extra
// field, zip64 fields where a size or offset needs them (or always, with force_zip64). The CRC-32
// is computed while the data streams to the sink (flag bit 3 and a data descriptor carry it), so
// each byte is read once, and Record() returns it for Ember's checksum record.
//
// ReadZipDirectory parses the central directory of an archive in memory (ReadZipDirectoryTail,
// from the file's last bytes only): the CRC-32, size and local-header offset of each record, keyed by its name without the archive's top-level folder. Every offset is
// bounds-checked: a malformed directory is kDataLoss naming `name`, never a read past the buffer.
//
// Thread safety: a ZipWriter is used by one thread at a time (it may use a helper thread for the
// CRC of large records); ReadZipDirectory is reentrant.
#ifndef EMBER_HANDLERS_SERIALIZATION_ZIP_H_
#define EMBER_HANDLERS_SERIALIZATION_ZIP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ember {

// Receives the archive's bytes in order. A non-OK status aborts the write and is returned.
using ByteSink = std::function<absl::Status(const void* data, size_t size)>;

namespace serialization {

class ZipWriter {
 public:
  // `sink` must outlive the writer.
  ZipWriter(const ByteSink& sink, bool force_zip64);
  ~ZipWriter();
  // Writes one record ("archive/" + name); returns its CRC-32.
  absl::StatusOr<uint32_t> Record(const std::string& name, const void* data, size_t size);
  // Writes the central directory and the end records.
  absl::Status Finish();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

struct ZipEntry {
  uint32_t crc;
  uint64_t size;
  uint64_t offset = 0;  // of the record's local header (0 where not read from a directory)
};

absl::StatusOr<std::map<std::string, ZipEntry>> ReadZipDirectory(std::string_view bytes,
                                                                 const std::string& name);

// The same from the last tail.size() bytes of a file of `file_size` bytes (a reader that does not
// read the file's body): kOutOfRange, with `*need_from` set to the first byte needed, when the
// directory starts before the tail (read from there, then call again).
absl::StatusOr<std::map<std::string, ZipEntry>> ReadZipDirectoryTail(std::string_view tail, uint64_t file_size,
                                                                     const std::string& name,
                                                                     uint64_t* need_from);

}  // namespace serialization
}  // namespace ember

#endif  // EMBER_HANDLERS_SERIALIZATION_ZIP_H_
