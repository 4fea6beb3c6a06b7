// File: handlers/serialization/torch_save.h
//
// Reads and writes Python's torch.save format (the zip archive of PyTorch >= 1.6) so that
//   - a checkpoint written here opens in Python with a plain torch.load(path) — also under
//     PyTorch 2.6+'s default weights_only=True, because the pickle uses only what that reader
//     allows: builtin containers and scalars, collections.OrderedDict,
//     torch._utils._rebuild_tensor_v2 and the torch.*Storage classes through persistent ids;
//   - a file saved by Python's torch.save (PyTorch 1.x or 2.x) loads here as a Value.
//
// Layout written: <archive>/data.pkl (pickle protocol 2), <archive>/data/<key> (one record per
// storage; tensors that share a storage are written once, views keep their offset and strides),
// <archive>/version, and <archive>/ember_checksum, a small text record with the format version and
// the CRC-32 and size of every other record. Python ignores that record; ReadTorchSave verifies it
// when present, so a corrupted Ember checkpoint is reported, never loaded.
//
// Reading never executes code: an unknown pickle opcode or global, a malformed archive, a
// truncated file, a record whose size does not match its tensor, or out-of-bounds strides give an
// error that names the file (or the `name` given for in-memory bytes) and what is wrong. The
// legacy non-zip format (PyTorch < 1.6) is reported as unsupported.
//
// Thread safety: the functions are reentrant; a Value must not be mutated while it is written.
// Tensors are written from CPU memory without an intermediate copy (non-CPU tensors are copied to
// the CPU first). ReadTorchSaveFile reads the file once into one buffer, checks every record's
// CRC-32 where it lies and builds each tensor on its record's bytes there (no copy): the loaded
// tensors share that buffer, which lives until the last of them is gone (clone a small tensor
// kept from a large file). ReadTorchSave copies each record once out of the caller's bytes.
//
// Example:
//   ember::Value ckpt = ember::Value::Dict();
//   ckpt.Set("model", ember::ModuleStateDict(*model));
//   EMBER_RETURN_IF_ERROR(ember::WriteTorchSave(ckpt, sink));
//   EMBER_ASSIGN_OR_RETURN(ember::Value back, ember::ReadTorchSaveFile("ckpt.pt"));
#ifndef EMBER_HANDLERS_SERIALIZATION_TORCH_SAVE_H_
#define EMBER_HANDLERS_SERIALIZATION_TORCH_SAVE_H_

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/file_system.h"
#include "handlers/serialization/value.h"
#include "handlers/serialization/zip.h"

namespace ember {

// Version of Ember's additions to the torch.save layout (the ember_checksum record).
inline constexpr int kEmberCheckpointFormatVersion = 1;

// Extra records stored beside the pickle (Python ignores them; the checksum covers them).
using ExtraRecords = std::vector<std::pair<std::string, std::string>>;

// Writes `value` in torch.save's zip format to `sink`. Tensors may live on any device.
absl::Status WriteTorchSave(const Value& value, const ByteSink& sink,
                            const ExtraRecords& extra_records = {});

// Reads one record of an archive (e.g. an extra record) without unpickling or verifying the
// other records (cheap: for listing checkpoints); NotFound if absent.
// File readers go through the FileSystem seam (`fs`, default FileSystem::Default()): the file is
// read whole, then parsed from memory.
absl::StatusOr<std::string> ReadTorchSaveRecord(const std::string& path, const std::string& record,
                                                FileSystem* fs = nullptr);

// The same, into memory.
absl::StatusOr<std::string> SerializeTorchSave(const Value& value);


// Reads a torch.save archive from memory; `name` is used in error messages.
absl::StatusOr<Value> ReadTorchSave(std::string_view bytes, std::string_view name);

// What a file says about itself, without unpickling: every record's CRC-32 checked against the
// zip central directory (any torch.save archive, Python's included, carries one per record) and,
// where Ember's checksum record is present, against that too. Reading (ReadTorchSave*) runs the
// same checks before it unpickles.
struct ArchiveCheck {
  bool has_checksum = false;  // Ember's checksum record is present (and matched)
  int format_version = 0;
  int records = 0;            // records whose CRC-32 was verified
};
absl::StatusOr<ArchiveCheck> VerifyTorchSaveFile(const std::string& path, FileSystem* fs = nullptr);
// The same checks of an archive in memory (no record is copied; `name` is for messages).
absl::StatusOr<ArchiveCheck> VerifyTorchSave(std::string_view bytes, std::string_view name);

// Reads an archive whose bytes were verified already (VerifyTorchSave, on this rank or on the
// rank that sent them, as tools' ReadOnRootAndShare does: a broadcast hands over rank 0's bytes
// exactly), without computing the CRC-32s again: everything else is checked as ReadTorchSave
// checks it (the zip structure, Ember's checksum record and the records it names, each record's
// size against both directories, the pickle). No record is copied: each tensor's storage is its
// bytes where they lie in `*bytes`, which the tensors keep alive (and may write: they are
// ordinary writable tensors). Bytes that no one verified must go through ReadTorchSave.
absl::StatusOr<Value> ReadVerifiedTorchSave(std::shared_ptr<std::string> bytes, std::string_view name);

// Reads a torch.save archive from a file, after the checks above; `check`, when given, receives
// what they found.
absl::StatusOr<Value> ReadTorchSaveFile(const std::string& path, FileSystem* fs = nullptr,
                                        ArchiveCheck* check = nullptr);

// For files a writer of Ember's own made (an extra record names them): `record` is that record,
// or nullopt when the archive has none (not ours); `integrity` says whether the archive is
// intact (Ember's checksum present and matching every record). A non-OK StatusOr: the file
// cannot be read as an archive at all (unreadable, truncated central directory, not a zip).
struct RecordLookup {
  std::optional<std::string> record;
  absl::Status integrity;
};
absl::StatusOr<RecordLookup> ReadRecordAndVerify(const std::string& path, const std::string& record,
                                                 FileSystem* fs = nullptr);

// The same, from the file's trailer only (what a directory listing needs, in time that does not
// grow with the file): the zip directory, `record` and Ember's checksum record are read from the
// file's last bytes (FileSystem::ReadFileTail; Ember writes its records after the tensors), and
// `integrity` says whether they are intact and agree: each one's CRC-32 against the directory,
// and the checksum record's CRC-32 and size of every record against the directory's. The
// records' bodies (the tensors) are NOT read or checked: VerifyTorchSaveFile does that, and a
// file must pass it before it is trusted (resumed from, ranked as best). `record` is an empty
// string when present but unreadable (integrity then says why).
absl::StatusOr<RecordLookup> ReadRecordFromTrailer(const std::string& path, const std::string& record,
                                                   FileSystem* fs = nullptr);

namespace serialization_internal {
// WriteTorchSave with zip64 records forced on (as for records or archives over 4 GiB), so that
// tests can check that readers accept the zip64 layout without writing 4 GiB.
absl::Status WriteTorchSaveImpl(const Value& value, const ByteSink& sink, bool force_zip64,
                                const ExtraRecords& extra_records = {});
}  // namespace serialization_internal

}  // namespace ember

#endif  // EMBER_HANDLERS_SERIALIZATION_TORCH_SAVE_H_
