#include "handlers/serialization/zip.h"

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/crc32.h"
#include "base/status_macros.h"

namespace ember::serialization {
namespace {

uint32_t Crc32(const void* data, size_t size) { return ember::Crc32(0, data, size); }

uint64_t Le(std::string_view b, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

}  // namespace

class ZipWriter::Impl {
 public:
  static constexpr size_t kParallelCrcBytes = size_t{8} << 20;

  Impl(const ByteSink& sink, bool force_zip64) : sink_(sink), force_zip64_(force_zip64) {}

  // Writes one record; returns its CRC-32.
  absl::StatusOr<uint32_t> Record(const std::string& name, const void* data, size_t size) {
    const std::string full = "archive/" + name;
    const bool zip64 = force_zip64_ || size >= 0xFFFFFFFFull || offset_ >= 0xFFFFFFFFull;
    std::string header;
    Put32(header, 0x04034b50);
    Put16(header, zip64 ? 45 : 20);
    Put16(header, 0x0008);  // sizes and CRC follow in a data descriptor
    Put16(header, 0);       // stored
    Put16(header, 0);
    Put16(header, 0x21);    // 1980-01-01, as PyTorch writes
    Put32(header, 0);
    Put32(header, zip64 ? 0xFFFFFFFF : 0);
    Put32(header, zip64 ? 0xFFFFFFFF : 0);
    Put16(header, static_cast<uint16_t>(full.size()));
    std::string extra;
    if (zip64) {
      Put16(extra, 0x0001);
      Put16(extra, 16);
      Put64(extra, size);
      Put64(extra, size);
    }
    // Pad so that the data starts on a 64-byte boundary ("FB" field, as PyTorch does).
    size_t data_start = offset_ + header.size() + 2 + full.size() + extra.size() + 4;
    size_t pad = (64 - data_start % 64) % 64;
    Put16(extra, 0x4246);
    Put16(extra, static_cast<uint16_t>(pad));
    extra.append(pad, 'Z');
    Put16(header, static_cast<uint16_t>(extra.size()));
    header += full;
    header += extra;
    const uint64_t local_offset = offset_;
    EMBER_RETURN_IF_ERROR(Emit(header.data(), header.size()));

    // Large records: the CRC runs on a helper thread while the data streams to the sink, so
    // the save costs about max(write, CRC) instead of their sum (the bytes are only read, never
    // copied, by either).
    uint32_t crc = 0;
    if (size >= kParallelCrcBytes) {
      std::thread crc_thread([&crc, data, size] { crc = Crc32(data, size); });
      absl::Status written = Emit(data, size);
      crc_thread.join();
      EMBER_RETURN_IF_ERROR(written);
    } else {
      crc = Crc32(data, size);
      EMBER_RETURN_IF_ERROR(Emit(data, size));
    }
    std::string descriptor;
    Put32(descriptor, 0x08074b50);
    Put32(descriptor, static_cast<uint32_t>(crc));
    if (zip64) {
      Put64(descriptor, size);
      Put64(descriptor, size);
    } else {
      Put32(descriptor, static_cast<uint32_t>(size));
      Put32(descriptor, static_cast<uint32_t>(size));
    }
    EMBER_RETURN_IF_ERROR(Emit(descriptor.data(), descriptor.size()));
    entries_.push_back({full, static_cast<uint32_t>(crc), size, local_offset, zip64});
    return static_cast<uint32_t>(crc);
  }

  absl::Status Finish() {
    const uint64_t cd_offset = offset_;
    std::string cd;
    for (const Entry& e : entries_) {
      const bool big_size = e.zip64 && (force_zip64_ || e.size >= 0xFFFFFFFFull);
      const bool big_offset = force_zip64_ || e.offset >= 0xFFFFFFFFull;
      std::string extra;
      if (big_size || big_offset) {
        Put16(extra, 0x0001);
        Put16(extra, static_cast<uint16_t>((big_size ? 16 : 0) + (big_offset ? 8 : 0)));
        if (big_size) {
          Put64(extra, e.size);
          Put64(extra, e.size);
        }
        if (big_offset) Put64(extra, e.offset);
      }
      Put32(cd, 0x02014b50);
      Put16(cd, extra.empty() ? 20 : 45);
      Put16(cd, extra.empty() ? 20 : 45);
      Put16(cd, 0x0008);
      Put16(cd, 0);
      Put16(cd, 0);
      Put16(cd, 0x21);
      Put32(cd, e.crc);
      Put32(cd, big_size ? 0xFFFFFFFF : static_cast<uint32_t>(e.size));
      Put32(cd, big_size ? 0xFFFFFFFF : static_cast<uint32_t>(e.size));
      Put16(cd, static_cast<uint16_t>(e.name.size()));
      Put16(cd, static_cast<uint16_t>(extra.size()));
      Put16(cd, 0);
      Put16(cd, 0);
      Put16(cd, 0);
      Put32(cd, 0);
      Put32(cd, big_offset ? 0xFFFFFFFF : static_cast<uint32_t>(e.offset));
      cd += e.name;
      cd += extra;
    }
    EMBER_RETURN_IF_ERROR(Emit(cd.data(), cd.size()));
    const uint64_t cd_size = cd.size();
    const bool zip64_end = force_zip64_ || entries_.size() >= 0xFFFF || cd_offset >= 0xFFFFFFFFull ||
                           cd_size >= 0xFFFFFFFFull;
    std::string end;
    if (zip64_end) {
      const uint64_t eocd64_offset = offset_;
      Put32(end, 0x06064b50);
      Put64(end, 44);
      Put16(end, 45);
      Put16(end, 45);
      Put32(end, 0);
      Put32(end, 0);
      Put64(end, entries_.size());
      Put64(end, entries_.size());
      Put64(end, cd_size);
      Put64(end, cd_offset);
      Put32(end, 0x07064b50);
      Put32(end, 0);
      Put64(end, eocd64_offset);
      Put32(end, 1);
    }
    Put32(end, 0x06054b50);
    Put16(end, 0);
    Put16(end, 0);
    Put16(end, zip64_end ? 0xFFFF : static_cast<uint16_t>(entries_.size()));
    Put16(end, zip64_end ? 0xFFFF : static_cast<uint16_t>(entries_.size()));
    Put32(end, zip64_end ? 0xFFFFFFFF : static_cast<uint32_t>(cd_size));
    Put32(end, zip64_end ? 0xFFFFFFFF : static_cast<uint32_t>(cd_offset));
    Put16(end, 0);
    return Emit(end.data(), end.size());
  }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    uint64_t size;
    uint64_t offset;
    bool zip64;
  };

  static void Put16(std::string& s, uint16_t v) {
    s.push_back(static_cast<char>(v & 0xff));
    s.push_back(static_cast<char>(v >> 8));
  }
  static void Put32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  static void Put64(std::string& s, uint64_t v) {
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  absl::Status Emit(const void* data, size_t size) {
    if (size == 0) return absl::OkStatus();
    EMBER_RETURN_IF_ERROR(sink_(data, size));
    offset_ += size;
    return absl::OkStatus();
  }

  const ByteSink& sink_;
  bool force_zip64_;
  uint64_t offset_ = 0;
  std::vector<Entry> entries_;
};

ZipWriter::ZipWriter(const ByteSink& sink, bool force_zip64)
    : impl_(std::make_unique<Impl>(sink, force_zip64)) {}
ZipWriter::~ZipWriter() = default;
absl::StatusOr<uint32_t> ZipWriter::Record(const std::string& name, const void* data, size_t size) {
  return impl_->Record(name, data, size);
}
absl::Status ZipWriter::Finish() { return impl_->Finish(); }

// The CRC-32, size and local-header offset that the zip central directory records for each
// record, keyed by the reader's record name (the path without the archive's top-level folder),
// read from the last t.size() bytes of a file of `file_size` bytes. Every offset is bounds-checked
// against the file and the tail: a malformed directory is kDataLoss, and a directory that starts
// before the tail is kOutOfRange with `*need_from` set to where it starts (read more, then call
// again); never a read past the buffer.
absl::StatusOr<std::map<std::string, ZipEntry>> ReadZipDirectoryTail(std::string_view t, uint64_t file_size,
                                                                     const std::string& name,
                                                                     uint64_t* need_from) {
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(name, ": malformed zip central directory: ", why));
  };
  auto short_tail = [&](uint64_t from) {
    if (need_from != nullptr) *need_from = from;
    return absl::OutOfRangeError(absl::StrCat(name, ": the zip central directory starts at byte ", from,
                                              ", before the ", t.size(), " bytes read"));
  };
  if (t.size() > file_size) return bad("tail longer than the file");
  const uint64_t base = file_size - t.size();
  auto le = [&](uint64_t at, int n) { return Le(t, static_cast<size_t>(at - base), n); };
  constexpr uint64_t kEocd = 22;
  if (file_size < kEocd) return bad("file too short");
  const uint64_t lowest = file_size > kEocd + 65535 ? file_size - kEocd - 65535 : 0;
  uint64_t eocd = file_size;
  for (uint64_t at = file_size - kEocd + 1; at-- > std::max(lowest, base);) {
    if (le(at, 4) == 0x06054b50) {
      eocd = at;
      break;
    }
  }
  if (eocd == file_size) {
    if (lowest < base) return short_tail(lowest);
    return bad("no end-of-directory record");
  }
  uint64_t count = le(eocd + 10, 2), offset = le(eocd + 16, 4);
  if ((count == 0xFFFF || offset == 0xFFFFFFFF) && eocd >= 20) {
    if (eocd - 20 < base) return short_tail(eocd - 20);
    if (le(eocd - 20, 4) == 0x07064b50) {
      const uint64_t z = le(eocd - 20 + 8, 8);
      if (file_size < 56 || z > file_size - 56) return bad("bad zip64 end-of-directory record");
      if (z < base) return short_tail(z);
      if (le(z, 4) != 0x06064b50) return bad("bad zip64 end-of-directory record");
      count = le(z + 32, 8);
      offset = le(z + 48, 8);
    }
  }
  if (offset > file_size) return bad(absl::StrCat("directory offset ", offset, " is past the end of the file"));
  if (offset < base) return short_tail(offset);
  std::map<std::string, ZipEntry> out;
  std::string folder;
  uint64_t at = offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (at > file_size || file_size - at < 46 || le(at, 4) != 0x02014b50) {
      return bad(absl::StrCat("entry ", i, " of ", count, " is out of bounds or has a bad signature"));
    }
    const uint64_t n = le(at + 28, 2), extra = le(at + 30, 2), comment = le(at + 32, 2);
    if (file_size - at - 46 < n + extra + comment) return bad(absl::StrCat("entry ", i, " overruns the file"));
    uint64_t size = le(at + 24, 4);
    const uint64_t packed = le(at + 20, 4);
    uint64_t local = le(at + 42, 4);
    // A zip64 extra field carries the real size and offset when the 32-bit ones are saturated
    // (in that order, each only when saturated).
    const bool big_size = size == 0xFFFFFFFF, big_packed = packed == 0xFFFFFFFF, big_local = local == 0xFFFFFFFF;
    for (uint64_t e = at + 46 + n; (big_size || big_local) && e + 4 <= at + 46 + n + extra;) {
      const uint64_t id = le(e, 2), len = le(e + 2, 2);
      if (e + 4 + len > at + 46 + n + extra) break;
      if (id == 0x0001) {
        uint64_t field = e + 4;
        if (big_size && field + 8 <= e + 4 + len) size = le(field, 8), field += 8;
        if (big_packed) field += 8;
        if (big_local && field + 8 <= e + 4 + len) local = le(field, 8);
        break;
      }
      e += 4 + len;
    }
    std::string full(t.substr(static_cast<size_t>(at + 46 - base), static_cast<size_t>(n)));
    // As torch.load: every record lies in the archive's one top folder, and a record's name is
    // what follows it. A record outside it, or a second record of one name, would let this
    // reader and PyTorch's load different bytes for the same tensor: refused.
    const size_t slash = full.find('/');
    if (slash == std::string::npos || slash == 0) {
      return bad(absl::StrCat("entry ", i, " ('", full, "') is not in the archive's folder"));
    }
    if (i == 0) {
      folder = full.substr(0, slash);
    } else if (full.compare(0, slash, folder) != 0 || slash != folder.size()) {
      return bad(absl::StrCat("entry ", i, " ('", full, "') is not in the archive's folder '", folder, "/'"));
    }
    auto [it, added] = out.try_emplace(full.substr(slash + 1), ZipEntry{static_cast<uint32_t>(le(at + 16, 4)), size, local});
    if (!added) return bad(absl::StrCat("entry ", i, " ('", full, "') repeats a record name"));
    at += 46 + n + extra + comment;
  }
  return out;
}

absl::StatusOr<std::map<std::string, ZipEntry>> ReadZipDirectory(std::string_view b, const std::string& name) {
  return ReadZipDirectoryTail(b, b.size(), name, nullptr);
}

}  // namespace ember::serialization
