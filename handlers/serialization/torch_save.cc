#include "handlers/serialization/torch_save.h"

#include <caffe2/serialize/inline_container.h>
#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/torch.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/crc32.h"
#include "base/status_macros.h"
#include "handlers/serialization/pickle.h"
#include "handlers/serialization/zip.h"

namespace ember {
namespace {

constexpr char kChecksumRecord[] = "ember_checksum";
constexpr char kChecksumMagic[] = "ember-checkpoint";

// Debian's Abseil has its own string_view (not std::string_view).
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint32_t Crc32(const void* data, size_t size) { return ember::Crc32(0, data, size); }

// ---- Archive level ----------------------------------------------------------------------

std::string CppError(const c10::Error& e) { return e.what_without_backtrace(); }

using ChecksumEntry = serialization::ZipEntry;

uint64_t LocalLe(std::string_view b, uint64_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<size_t>(at) + i]);
  return v;
}

absl::StatusOr<std::map<std::string, ChecksumEntry>> ParseChecksum(std::string_view text,
                                                                   const std::string& name,
                                                                   int* version) {
  std::vector<absl::string_view> lines = absl::StrSplit(AV(text), '\n', absl::SkipEmpty());
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(name, ": malformed ", kChecksumRecord, " record: ", why));
  };
  if (lines.empty()) return bad("empty");
  std::vector<absl::string_view> head = absl::StrSplit(lines[0], ' ');
  if (head.size() != 2 || head[0] != kChecksumMagic || !absl::SimpleAtoi(head[1], version)) {
    return bad("bad header");
  }
  if (*version > kEmberCheckpointFormatVersion || *version < 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, ": written by a newer Ember (checkpoint format ", *version, ", this build reads up to ",
        kEmberCheckpointFormatVersion, ")"));
  }
  std::map<std::string, ChecksumEntry> out;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<absl::string_view> f = absl::StrSplit(lines[i], ' ');
    uint32_t crc;
    uint64_t size;
    if (f.size() != 4 || f[0] != "crc32" || !absl::SimpleHexAtoi(f[2], &crc) ||
        !absl::SimpleAtoi(f[3], &size)) {
      return bad(absl::StrCat("line ", i + 1));
    }
    out[std::string(f[1])] = {crc, size};
  }
  return out;
}

// Checks every record of the archive `bytes`: its CRC-32 against the zip central directory (any
// torch.save archive carries one per record) and, where Ember's checksum record is present,
// against that too (which also covers a record missing from the zip).
// A stored (uncompressed) record's data where it lies in the archive `bytes`, located through
// its local header at the central directory's offset; nullopt when the record is compressed or
// its local header does not parse (the reader's own copy is used then).
std::optional<std::string_view> StoredData(std::string_view bytes, const serialization::ZipEntry& in_zip) {
  const uint64_t at = in_zip.offset;
  if (at <= bytes.size() && bytes.size() - at >= 30 && LocalLe(bytes, at, 4) == 0x04034b50 &&
      LocalLe(bytes, at + 8, 2) == 0) {
    const uint64_t data = at + 30 + LocalLe(bytes, at + 26, 2) + LocalLe(bytes, at + 28, 2);
    if (data <= bytes.size() && bytes.size() - data >= in_zip.size) {
      return bytes.substr(static_cast<size_t>(data), static_cast<size_t>(in_zip.size));
    }
  }
  return std::nullopt;
}

// Records whose CRC-32 was checked on their bytes in place (VerifyReader's `in_place`): loading
// takes them from there, so that no record is copied (or checksummed) a second time.
using InPlaceRecords = std::unordered_map<std::string, std::string_view>;

// With `checksums` false (bytes another rank verified and sent: ReadVerifiedTorchSave), the
// structure is checked as always (the zip directory, Ember's checksum record, every record it
// names present) and each record's size against both directories, but no CRC-32 is computed.
absl::StatusOr<ArchiveCheck> VerifyReader(caffe2::serialize::PyTorchStreamReader& reader,
                                          std::string_view bytes, const std::string& name,
                                          InPlaceRecords* in_place = nullptr, bool checksums = true) {
  ArchiveCheck check;
  EMBER_ASSIGN_OR_RETURN(auto zip, serialization::ReadZipDirectory(bytes, name));
  std::map<std::string, ChecksumEntry> ember;
  if (reader.hasRecord(kChecksumRecord)) {
    check.has_checksum = true;
    auto [text_ptr, text_size] = reader.getRecord(kChecksumRecord);
    std::string_view text(static_cast<const char*>(text_ptr.get()), text_size);
    EMBER_ASSIGN_OR_RETURN(ember, ParseChecksum(text, name, &check.format_version));
    if (ember.count("data.pkl") == 0) {
      return absl::DataLossError(absl::StrCat(name, ": checksum record does not cover data.pkl"));
    }
    for (const auto& [record, expected] : ember) {
      if (zip.count(record) == 0 || !reader.hasRecord(record)) {
        return absl::DataLossError(absl::StrCat(name, ": record ", record, " is missing"));
      }
    }
  }
  for (const auto& [record, in_zip] : zip) {
    if (!reader.hasRecord(record)) continue;  // a directory entry, or outside the archive folder
    // A stored record's CRC is computed on the archive's bytes where they lie (no copy: one pass
    // over the file); anything else (a compressed record, a local header that does not parse)
    // through the reader's own copy, as before.
    uint32_t crc = 0;
    uint64_t size = 0;
    const std::optional<std::string_view> stored = StoredData(bytes, in_zip);
    if (stored.has_value()) {
      crc = checksums ? Crc32(stored->data(), stored->size()) : in_zip.crc;
      size = stored->size();
    } else {
      auto [ptr, n] = reader.getRecord(record);
      crc = Crc32(ptr.get(), n);
      size = n;
    }
    // Structured bindings are captured through init-captures: clang 14 (tools/thread_safety_check.sh)
    // does not implement capturing them directly (C++20 P1091R3).
    auto mismatch = [&, &record = record, size = size](const char* against, const ChecksumEntry& expected) {
      return absl::DataLossError(absl::StrFormat(
          "%s: %s mismatch in record %s (crc32 %08x, %d bytes; expected %08x, %d bytes): "
          "the file is corrupted",
          name, against, record, crc, size, expected.crc, expected.size));
    };
    if (crc != in_zip.crc || size != in_zip.size) return mismatch("zip CRC-32", in_zip);
    auto it = ember.find(record);
    // Unchecked (`checksums` false), `crc` is the zip directory's: the two directories must
    // still agree.
    if (it != ember.end() && (crc != it->second.crc || size != it->second.size)) {
      return mismatch("checksum", it->second);
    }
    if (in_place != nullptr && stored.has_value()) in_place->emplace(record, *stored);
    if (checksums) ++check.records;  // records whose CRC-32 was computed and matched
  }
  return check;
}

// Keeps the file's buffer alive while a tensor built on it lives (a DataPtr's context).
void ReleaseOwner(void* ctx) { delete static_cast<std::shared_ptr<const std::string>*>(ctx); }

// Unpickles the archive `bytes` after VerifyReader's checks. Each tensor's storage is its
// record's bytes where they lie in `owner` (the buffer the file was read into, which `bytes`
// views; it stays alive while any loaded tensor does): the file is read once, CRC-checked in
// place and never copied. Without an owner (bytes the caller keeps), each record is copied once
// into a tensor's own storage. Records the verifier could not locate in place (compressed ones,
// from another writer) go through caffe2's reader as before.
absl::StatusOr<Value> ReadArchive(caffe2::serialize::PyTorchStreamReader& reader,
                                  std::string_view bytes, const std::string& name,
                                  ArchiveCheck* check = nullptr,
                                  std::shared_ptr<const std::string> owner = nullptr,
                                  bool checksums = true) {
  InPlaceRecords in_place;
  EMBER_ASSIGN_OR_RETURN(ArchiveCheck verified, VerifyReader(reader, bytes, name, &in_place, checksums));
  if (check != nullptr) *check = verified;
  if (!reader.hasRecord("data.pkl")) {
    return absl::DataLossError(absl::StrCat(name, ": not a torch.save archive (no data.pkl)"));
  }
  std::string_view pkl;
  at::DataPtr pkl_copy;
  if (auto it = in_place.find("data.pkl"); it != in_place.end()) {
    pkl = it->second;
  } else {
    auto [pkl_ptr, pkl_size] = reader.getRecord("data.pkl");
    pkl_copy = std::move(pkl_ptr);
    pkl = std::string_view(static_cast<const char*>(pkl_copy.get()), pkl_size);
  }
  std::unordered_map<std::string, torch::Tensor> loaded;
  serialization::StorageLoader loader = [&](const std::string& key, torch::ScalarType dtype,
                             int64_t numel) -> absl::StatusOr<torch::Tensor> {
    auto it = loaded.find(key);
    if (it != loaded.end()) {
      if (it->second.scalar_type() != dtype || it->second.numel() != numel) {
        return absl::DataLossError(absl::StrCat(name, ": storage ", key,
                                                " is referenced with two different types"));
      }
      return it->second;
    }
    const std::string record = absl::StrCat("data/", key);
    if (!reader.hasRecord(record)) {
      return absl::DataLossError(absl::StrCat(name, ": record ", record, " is missing"));
    }
    const size_t element = c10::elementSize(dtype);
    auto check_size = [&](size_t size) -> absl::Status {
      if (static_cast<uint64_t>(numel) > size / element || size != static_cast<size_t>(numel) * element) {
        return absl::DataLossError(absl::StrFormat(
            "%s: record %s has %d bytes but its %s storage needs %d elements (%d bytes)", name,
            record, size, std::string(c10::toString(dtype)), numel, numel * element));
      }
      return absl::OkStatus();
    };
    c10::Storage storage;
    auto found = in_place.find(record);
    if (found != in_place.end()) {
      const std::string_view data = found->second;
      EMBER_RETURN_IF_ERROR(check_size(data.size()));
      if (owner != nullptr && reinterpret_cast<uintptr_t>(data.data()) % element == 0) {
        // In place: the storage points into the file's buffer and holds it alive.
        at::DataPtr ptr(const_cast<char*>(data.data()), new std::shared_ptr<const std::string>(owner),
                        &ReleaseOwner, c10::Device(c10::DeviceType::CPU));
        storage = c10::Storage(c10::Storage::use_byte_size_t(), data.size(), std::move(ptr),
                               /*allocator=*/nullptr, /*resizable=*/false);
      } else {
        // One copy into the tensor's own (aligned) storage; the bytes were checked in place.
        storage = c10::Storage(c10::Storage::use_byte_size_t(), data.size(), c10::GetCPUAllocator(),
                               /*resizable=*/false);
        if (!data.empty()) std::memcpy(storage.data_ptr().get(), data.data(), data.size());
      }
    } else {
      auto [ptr, size] = reader.getRecord(record);
      EMBER_RETURN_IF_ERROR(check_size(size));
      storage = c10::Storage(c10::Storage::use_byte_size_t(), size, std::move(ptr),
                             /*allocator=*/nullptr, /*resizable=*/false);
    }
    torch::Tensor t = torch::empty({0}, torch::TensorOptions().dtype(dtype))
                          .set_(storage, 0, {numel}, {1});
    loaded.emplace(key, t);
    return t;
  };
  return serialization::Unpickle(pkl, name, loader);
}

// caffe2's MemoryReadAdapter copies whatever range the zip reader asks for, and a corrupt
// central directory makes it ask past the end of the buffer (found by libFuzzer: a segfault).
// This one returns a short read instead, which the zip reader reports as an error.
class BoundedMemoryAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BoundedMemoryAdapter(std::string_view bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* = "") const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - static_cast<size_t>(pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  std::string_view bytes_;
};

// Checks the leading bytes before handing the data to the zip reader.
absl::Status CheckMagic(std::string_view head, const std::string& name) {
  if (head.size() >= 4 && head.substr(0, 4) == std::string_view("PK\x03\x04", 4)) {
    return absl::OkStatus();
  }
  if (head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0x80) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it in "
              "Python with a current torch.save"));
  }
  if (head.empty()) return absl::DataLossError(absl::StrCat(name, ": empty file"));
  return absl::DataLossError(absl::StrCat(name, ": not a torch.save archive (bad magic bytes)"));
}

}  // namespace

namespace serialization_internal {

absl::Status WriteTorchSaveImpl(const Value& value, const ByteSink& sink, bool force_zip64,
                                const ExtraRecords& extra_records) {
  EMBER_ASSIGN_OR_RETURN(const serialization::Pickled pickled, serialization::Pickle(value));
  serialization::ZipWriter zip(sink, force_zip64);
  std::string checksum = absl::StrCat(kChecksumMagic, " ", kEmberCheckpointFormatVersion, "\n");
  auto record = [&](const std::string& name, const void* data, size_t size) -> absl::Status {
    EMBER_ASSIGN_OR_RETURN(uint32_t crc, zip.Record(name, data, size));
    absl::StrAppendFormat(&checksum, "crc32 %s %08x %d\n", name, crc, size);
    return absl::OkStatus();
  };
  EMBER_RETURN_IF_ERROR(record("data.pkl", pickled.bytes.data(), pickled.bytes.size()));
  for (const serialization::PickledStorage& s : pickled.storages) {
    EMBER_RETURN_IF_ERROR(record(absl::StrCat("data/", s.key), s.data, s.nbytes));
  }
  for (const auto& [name, bytes] : extra_records) {
    if (name == kChecksumRecord || name == "data.pkl" || name == "version" || name.rfind("data/", 0) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("extra record name '", name, "' is reserved"));
    }
    EMBER_RETURN_IF_ERROR(record(name, bytes.data(), bytes.size()));
  }
  const std::string version = "3\n";  // caffe2 kMinProducedFileFormatVersion, as torch.save
  EMBER_RETURN_IF_ERROR(zip.Record("version", version.data(), version.size()).status());
  EMBER_RETURN_IF_ERROR(zip.Record(kChecksumRecord, checksum.data(), checksum.size()).status());
  return zip.Finish();
}

}  // namespace serialization_internal

absl::Status WriteTorchSave(const Value& value, const ByteSink& sink,
                            const ExtraRecords& extra_records) {
  return serialization_internal::WriteTorchSaveImpl(value, sink, /*force_zip64=*/false,
                                                    extra_records);
}

absl::StatusOr<std::string> SerializeTorchSave(const Value& value) {
  std::string out;
  EMBER_RETURN_IF_ERROR(WriteTorchSave(value, [&](const void* data, size_t size) {
    out.append(static_cast<const char*>(data), size);
    return absl::OkStatus();
  }));
  return out;
}

namespace {

absl::Status Unreadable(const std::string& name, const c10::Error& e) {
  return absl::DataLossError(
      absl::StrCat(name, ": unreadable torch.save archive (truncated or corrupted?): ", CppError(e)));
}

// Reads the whole file through the FileSystem seam (so that tests can fail the read with EIO),
// checks its leading bytes, opens it from memory with caffe2's reader and runs `use` on it; the
// reader's exceptions become DATA_LOSS errors naming the file.
template <typename T, typename F>
absl::StatusOr<T> WithFileReader(const std::string& path, FileSystem* fs, F use) {
  if (fs == nullptr) fs = FileSystem::Default();
  if (fs->IsDirectory(path)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": is a directory, not a checkpoint file"));
  }
  EMBER_ASSIGN_OR_RETURN(std::string read, fs->ReadFile(path));
  // Shared, so that loaded tensors can keep the buffer the file was read into (ReadArchive).
  // A non-const string: loaded tensors are writable views of it (an in-place op on one writes
  // here), which a const object would not allow.
  const std::shared_ptr<const std::string> owner = std::make_shared<std::string>(std::move(read));
  const std::string_view bytes(*owner);
  EMBER_RETURN_IF_ERROR(CheckMagic(bytes.substr(0, 4), path));
  try {
    caffe2::serialize::PyTorchStreamReader reader(std::make_shared<BoundedMemoryAdapter>(bytes));
    return use(reader, bytes, owner);
  } catch (const c10::Error& e) {
    return Unreadable(path, e);
  }
}

}  // namespace

namespace {

// The in-memory counterpart of WithFileReader: checks the leading bytes, opens `bytes` with
// caffe2's reader and runs `use` on it; the reader's exceptions become DATA_LOSS errors naming
// `name`.
template <typename T, typename F>
absl::StatusOr<T> WithMemoryReader(std::string_view bytes, const std::string& name, F use) {
  EMBER_RETURN_IF_ERROR(CheckMagic(bytes.substr(0, 4), name));
  try {
    caffe2::serialize::PyTorchStreamReader reader(std::make_shared<BoundedMemoryAdapter>(bytes));
    return use(reader);
  } catch (const c10::Error& e) {
    return Unreadable(name, e);
  }
}

}  // namespace

absl::StatusOr<Value> ReadTorchSave(std::string_view bytes, std::string_view name_view) {
  const std::string name(name_view);
  return WithMemoryReader<Value>(bytes, name, [&](caffe2::serialize::PyTorchStreamReader& r) {
    return ReadArchive(r, bytes, name);
  });
}

absl::StatusOr<ArchiveCheck> VerifyTorchSave(std::string_view bytes, std::string_view name_view) {
  const std::string name(name_view);
  return WithMemoryReader<ArchiveCheck>(bytes, name, [&](caffe2::serialize::PyTorchStreamReader& r) {
    return VerifyReader(r, bytes, name);
  });
}

absl::StatusOr<Value> ReadVerifiedTorchSave(std::shared_ptr<std::string> bytes, std::string_view name_view) {
  const std::string name(name_view);
  if (bytes == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, ": no bytes (null)"));
  const std::string_view view(*bytes);
  std::shared_ptr<const std::string> owner = std::move(bytes);
  return WithMemoryReader<Value>(view, name, [&](caffe2::serialize::PyTorchStreamReader& r) {
    return ReadArchive(r, view, name, /*check=*/nullptr, owner, /*checksums=*/false);
  });
}

absl::StatusOr<Value> ReadTorchSaveFile(const std::string& path, FileSystem* fs, ArchiveCheck* check) {
  return WithFileReader<Value>(path, fs, [&](caffe2::serialize::PyTorchStreamReader& r, std::string_view b,
                                              const std::shared_ptr<const std::string>& owner) {
    return ReadArchive(r, b, path, check, owner);
  });
}

absl::StatusOr<std::string> ReadTorchSaveRecord(const std::string& path, const std::string& record,
                                                FileSystem* fs) {
  return WithFileReader<std::string>(
      path, fs, [&](caffe2::serialize::PyTorchStreamReader& r, std::string_view,
          const std::shared_ptr<const std::string>&) -> absl::StatusOr<std::string> {
        if (!r.hasRecord(record)) return absl::NotFoundError(absl::StrCat(path, ": no record '", record, "'"));
        auto [ptr, size] = r.getRecord(record);
        return std::string(static_cast<const char*>(ptr.get()), size);
      });
}

absl::StatusOr<RecordLookup> ReadRecordAndVerify(const std::string& path, const std::string& record,
                                                 FileSystem* fs) {
  return WithFileReader<RecordLookup>(
      path, fs, [&](caffe2::serialize::PyTorchStreamReader& r, std::string_view b,
          const std::shared_ptr<const std::string>&) -> absl::StatusOr<RecordLookup> {
        RecordLookup out;
        if (!r.hasRecord(record)) return out;
        auto [ptr, size] = r.getRecord(record);
        out.record = std::string(static_cast<const char*>(ptr.get()), size);
        absl::StatusOr<ArchiveCheck> check = VerifyReader(r, b, path);
        if (!check.ok()) {
          out.integrity = check.status();
        } else if (!check->has_checksum) {
          out.integrity = absl::DataLossError(absl::StrCat(path, ": has no checksum record"));
        } else if (!r.hasRecord("data.pkl")) {
          out.integrity = absl::DataLossError(absl::StrCat(path, ": not a torch.save archive (no data.pkl)"));
        }
        return out;
      });
}

namespace {

// Bytes read from a file's end for its trailer (the zip directory and Ember's records, written
// last): enough for some thousands of records, and at most kMaxTrailerBytes when there are more.
constexpr size_t kTrailerBytes = size_t{256} << 10;
constexpr uint64_t kMaxTrailerBytes = uint64_t{64} << 20;

uint64_t LeAt(std::string_view b, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

}  // namespace

absl::StatusOr<RecordLookup> ReadRecordFromTrailer(const std::string& path, const std::string& record,
                                                   FileSystem* fs) {
  if (fs == nullptr) fs = FileSystem::Default();
  if (fs->IsDirectory(path)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": is a directory, not a checkpoint file"));
  }
  uint64_t file_size = 0;
  EMBER_ASSIGN_OR_RETURN(std::string tail, fs->ReadFileTail(path, kTrailerBytes, &file_size));
  // Reads the file's end again, from byte `from` on.
  auto read_from = [&](uint64_t from) -> absl::Status {
    if (from > file_size || file_size - from > kMaxTrailerBytes) {
      return absl::DataLossError(absl::StrCat(path, ": its zip directory would start at byte ", from, " of ",
                                              file_size, ", more than ", kMaxTrailerBytes,
                                              " bytes before the end (corrupted, or not a checkpoint of Ember's)"));
    }
    uint64_t again = 0;
    EMBER_ASSIGN_OR_RETURN(tail, fs->ReadFileTail(path, static_cast<size_t>(file_size - from), &again));
    if (again != file_size) {
      return absl::AbortedError(absl::StrCat(path, ": changed size while it was read (", file_size, " then ",
                                             again, " bytes)"));
    }
    return absl::OkStatus();
  };
  uint64_t need_from = 0;
  absl::StatusOr<std::map<std::string, serialization::ZipEntry>> dir =
      serialization::ReadZipDirectoryTail(tail, file_size, path, &need_from);
  if (dir.status().code() == absl::StatusCode::kOutOfRange) {
    EMBER_RETURN_IF_ERROR(read_from(need_from));
    dir = serialization::ReadZipDirectoryTail(tail, file_size, path, nullptr);
  }
  if (!dir.ok()) return dir.status();
  RecordLookup out;
  auto wanted = dir->find(record);
  if (wanted == dir->end()) return out;  // not one of ours
  auto checksum = dir->find(kChecksumRecord);
  // Ember writes its own records last (after every tensor): read from the first of them.
  uint64_t first = wanted->second.offset;
  if (checksum != dir->end()) first = std::min(first, checksum->second.offset);
  if (first < file_size - tail.size()) EMBER_RETURN_IF_ERROR(read_from(first));
  const uint64_t base = file_size - tail.size();
  auto extract = [&](const std::string& name, const serialization::ZipEntry& e) -> absl::StatusOr<std::string> {
    auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat(path, ": record ", name, " ", why, ": the file is corrupted"));
    };
    if (e.offset < base || e.offset > file_size || file_size - e.offset < 30 ||
        LeAt(tail, static_cast<size_t>(e.offset - base), 4) != 0x04034b50) {
      return bad(absl::StrCat("has no local header at byte ", e.offset));
    }
    const size_t at = static_cast<size_t>(e.offset - base);
    const uint64_t data = e.offset + 30 + LeAt(tail, at + 26, 2) + LeAt(tail, at + 28, 2);
    if (data > file_size || file_size - data < e.size) return bad("overruns the file");
    std::string bytes = tail.substr(static_cast<size_t>(data - base), static_cast<size_t>(e.size));
    const uint32_t crc = Crc32(bytes.data(), bytes.size());
    if (crc != e.crc) {
      return bad(absl::StrFormat("fails its zip CRC-32 (crc32 %08x, expected %08x)", crc, e.crc));
    }
    return bytes;
  };
  absl::StatusOr<std::string> found = extract(record, wanted->second);
  if (!found.ok()) {
    out.record = std::string();
    out.integrity = found.status();
    return out;
  }
  out.record = *std::move(found);
  if (checksum == dir->end()) {
    out.integrity = absl::DataLossError(absl::StrCat(path, ": has no checksum record"));
    return out;
  }
  absl::StatusOr<std::string> text = extract(kChecksumRecord, checksum->second);
  if (!text.ok()) {
    out.integrity = text.status();
    return out;
  }
  int version = 0;
  absl::StatusOr<std::map<std::string, ChecksumEntry>> ember = ParseChecksum(*text, path, &version);
  if (!ember.ok()) {
    out.integrity = ember.status();
    return out;
  }
  if (ember->count("data.pkl") == 0 || ember->count(record) == 0) {
    out.integrity = absl::DataLossError(absl::StrCat(path, ": checksum record does not cover data.pkl and ", record));
    return out;
  }
  // Ember's checksum record and the zip directory must agree on every record (the bodies are not
  // read here: VerifyTorchSaveFile reads them).
  for (const auto& [name, expected] : *ember) {
    auto in_zip = dir->find(name);
    if (in_zip == dir->end()) {
      out.integrity = absl::DataLossError(absl::StrCat(path, ": record ", name, " is missing"));
      return out;
    }
    if (in_zip->second.crc != expected.crc || in_zip->second.size != expected.size) {
      out.integrity = absl::DataLossError(absl::StrFormat(
          "%s: the zip directory and Ember's checksum record disagree on record %s (crc32 %08x, %d bytes; "
          "expected %08x, %d bytes): the file is corrupted",
          path, name, in_zip->second.crc, in_zip->second.size, expected.crc, expected.size));
      return out;
    }
  }
  return out;
}

absl::StatusOr<ArchiveCheck> VerifyTorchSaveFile(const std::string& path, FileSystem* fs) {
  return WithFileReader<ArchiveCheck>(path, fs, [&](caffe2::serialize::PyTorchStreamReader& r, std::string_view b,
                                                     const std::shared_ptr<const std::string>&) {
    return VerifyReader(r, b, path);
  });
}

}  // namespace ember
