// ckpt: inspect and verify Ember checkpoints.
//   ckpt list DIR          one line per *.pt: name, step, score, size, and whether it verifies
//   ckpt verify PATH...    one line per file: "ok (...)" or what is wrong; exit 1 if any fails
// list and verify apply the same checks (Check below): every record's CRC-32 against the zip
// directory, Ember's checksum record where present, and a full parse of the pickle with the safe
// reader (no code runs; unknown globals are refused).
//   ckpt ledger OUTPUT_DIR the sample ledger of a run trained with --ledger: every sample of each
//                          finished epoch used exactly once, none twice (tools/ledger.h)
//   ckpt show FILE         the content as JSON: every tensor (dotted key) with dtype, shape and a
//                          CRC-32 of its values, and every scalar (the trainer state, ...)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/crc32.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "handlers/checkpoint/disk_saver.h"
#include "tools/ledger.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"
#include "nlohmann/json.hpp"

namespace ember::tools {
namespace {

// A JSON string (every control character escaped; bytes that are not UTF-8 replaced by U+FFFD).
std::string Json(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ScalarJson(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      return "null";
    case Value::Kind::kBool:
      return v.as_bool() ? "true" : "false";
    case Value::Kind::kInt:
      return absl::StrCat(v.as_int());
    case Value::Kind::kDouble:
      return std::isfinite(v.as_double()) ? absl::StrFormat("%.17g", v.as_double()) : Json(absl::StrCat(v.as_double()));
    case Value::Kind::kString:
      return Json(v.as_string());
    default:
      return Json(v.DebugString());
  }
}

void Walk(const Value& v, const std::string& key, std::vector<std::string>& tensors, std::vector<std::string>& scalars) {
  if (v.is_tensor()) {
    torch::Tensor t = v.as_tensor().contiguous();
    uint32_t crc = Crc32(0, t.data_ptr(), t.numel() * t.element_size());
    tensors.push_back(absl::StrFormat("%s: {\"dtype\": \"%s\", \"shape\": [%s], \"crc32\": \"%08x\"}", Json(key),
                                      std::string(c10::toString(t.scalar_type())), absl::StrJoin(t.sizes(), ", "), crc));
    return;
  }
  if (v.is_dict()) {
    for (size_t i = 0; i < v.size(); ++i) {
      const Value& k = v.keys()[i];
      std::string name = k.is_string() ? k.as_string() : k.DebugString();
      Walk(v.values()[i], key.empty() ? name : key + "." + name, tensors, scalars);
    }
    return;
  }
  if (v.is_sequence()) {
    bool all_scalar = true;
    for (const Value& item : v.items()) all_scalar = all_scalar && !item.is_tensor() && !item.is_dict() && !item.is_sequence();
    if (all_scalar) {
      std::vector<std::string> parts;
      for (const Value& item : v.items()) parts.push_back(ScalarJson(item));
      scalars.push_back(absl::StrCat(Json(key), ": [", absl::StrJoin(parts, ", "), "]"));
      return;
    }
    for (size_t i = 0; i < v.items().size(); ++i) Walk(v.items()[i], absl::StrCat(key, ".", i), tensors, scalars);
    return;
  }
  scalars.push_back(absl::StrCat(Json(key), ": ", ScalarJson(v)));
}

// The one verdict of list and verify: "ok (...)" or the first problem found.
absl::StatusOr<std::string> Check(const std::string& path) {
  ArchiveCheck check;
  EMBER_RETURN_IF_ERROR(ReadTorchSaveFile(path, nullptr, &check).status());  // reading verifies first
  return absl::StrCat("ok (", check.records, " records: zip CRC-32",
                      check.has_checksum ? " and Ember checksum" : "; no Ember checksum", ", pickle parsed)");
}

int List(const std::string& dir) {
  if (!FileSystem::Default()->IsDirectory(dir)) {
    std::fprintf(stderr, "ckpt: %s is not a directory (ckpt list DIR; ckpt verify FILE...)\n", dir.c_str());
    return 1;
  }
  absl::StatusOr<std::vector<std::string>> names = FileSystem::Default()->ListDir(dir);
  if (!names.ok()) {
    std::fprintf(stderr, "ckpt: %s\n", std::string(names.status().message()).c_str());
    return 1;
  }
  std::sort(names->begin(), names->end());
  std::printf("%-50s %8s %12s %12s  %s\n", "checkpoint", "step", "score", "bytes", "status");
  int bad = 0;
  for (const std::string& name : *names) {
    if (!absl::EndsWith(name, ".pt")) continue;
    const std::string path = JoinPath(dir, name);
    std::string step = "-", score = "-";
    if (auto meta = ReadTorchSaveRecord(path, "ember_meta"); meta.ok()) {
      if (auto m = CheckpointMetadata::Parse(*meta); m.ok()) {
        if (m->global_step) step = absl::StrCat(*m->global_step);
        if (!m->score_name.empty()) score = absl::StrFormat("%.4f", m->priority);
      }
    }
    uint64_t size = FileSystem::Default()->FileSize(path).value_or(0);
    absl::StatusOr<std::string> check = Check(path);
    if (!check.ok()) ++bad;
    std::printf("%-50s %8s %12s %12llu  %s\n", name.c_str(), step.c_str(), score.c_str(),
                static_cast<unsigned long long>(size),
                check.ok() ? check->c_str() : absl::StrCat("CORRUPT: ", check.status().message()).c_str());
  }
  return bad == 0 ? 0 : 1;
}

int Verify(const std::vector<std::string>& paths) {
  int bad = 0;
  for (const std::string& p : paths) {
    absl::StatusOr<std::string> check = Check(p);
    if (!check.ok()) ++bad;
    std::printf("%s: %s\n", p.c_str(), check.ok() ? check->c_str() : check.status().ToString().c_str());
  }
  return bad == 0 ? 0 : 1;
}

int Show(const std::string& path) {
  absl::StatusOr<Value> v = ReadTorchSaveFile(path);
  if (!v.ok()) {
    std::fprintf(stderr, "ckpt: %s\n", v.status().ToString().c_str());
    return 1;
  }
  std::vector<std::string> tensors, scalars;
  Walk(*v, "", tensors, scalars);
  std::printf("{\"file\": %s, \"tensors\": {%s}, \"scalars\": {%s}}\n", Json(path).c_str(),
              absl::StrJoin(tensors, ", ").c_str(), absl::StrJoin(scalars, ", ").c_str());
  return 0;
}

}  // namespace
}  // namespace ember::tools

namespace ember::tools {
namespace {

// ckpt ledger DIR: the sample ledger's verdict (see tools/ledger.h); exit 1 on a violation.
int Ledger(const std::string& dir) {
  absl::StatusOr<LedgerReport> report = CheckLedger(dir);
  if (!report.ok()) {
    std::fprintf(stderr, "ckpt: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  for (const std::string& line : report->lines) std::printf("%s\n", line.c_str());
  std::printf("%s\n", report->ok ? "ledger OK: no sample used twice in an epoch; finished epochs complete"
                                 : "ledger VIOLATED");
  return report->ok ? 0 : 1;
}

}  // namespace
}  // namespace ember::tools

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "list" && argc == 3) return ember::tools::List(argv[2]);
  if (cmd == "verify" && argc >= 3) return ember::tools::Verify(std::vector<std::string>(argv + 2, argv + argc));
  if (cmd == "show" && argc == 3) return ember::tools::Show(argv[2]);
  if (cmd == "ledger" && argc == 3) return ember::tools::Ledger(argv[2]);
  std::fprintf(stderr, "usage: ckpt list DIR | ckpt verify PATH... | ckpt show FILE | ckpt ledger OUTPUT_DIR\n");
  return 2;
}
