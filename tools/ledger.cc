#include "tools/ledger.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/atomic_file.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace ember::tools {
namespace {

std::string LedgerDir(const std::string& output_dir) { return JoinPath(output_dir, "ledger"); }

absl::StatusOr<std::vector<std::string>> LedgerFiles(const std::string& output_dir) {
  FileSystem* fs = FileSystem::Default();
  std::vector<std::string> out;
  if (!fs->IsDirectory(LedgerDir(output_dir))) return out;
  EMBER_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(LedgerDir(output_dir)));
  for (const std::string& n : names) {
    if (absl::StartsWith(n, "from-") && absl::EndsWith(n, ".jsonl")) out.push_back(JoinPath(LedgerDir(output_dir), n));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A parsed line, or nullopt for a torn or malformed one.
std::optional<nlohmann::json> Parse(absl::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

// A field of a ledger line that must be an integer; a clear error naming the file, the line and
// the field otherwise (never an exception of the JSON library).
absl::StatusOr<int64_t> IntField(const nlohmann::json& j, const char* field, const std::string& path, size_t line) {
  auto it = j.find(field);
  if (it == j.end()) {
    return absl::DataLossError(absl::StrCat(path, ": line ", line, ": no \"", field, "\" field"));
  }
  if (!it->is_number_integer()) {
    return absl::DataLossError(absl::StrCat(path, ": line ", line, ": \"", field, "\" is ",
                                            it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                                            ", not an integer"));
  }
  return it->get<int64_t>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LedgerWriter>> LedgerWriter::Open(const std::string& output_dir,
                                                                 const LedgerHeader& h) {
  EMBER_RETURN_IF_ERROR(FileSystem::Default()->CreateDirs(LedgerDir(output_dir)));
  const std::string path =
      JoinPath(LedgerDir(output_dir), absl::StrCat("from-", h.from_iteration, ".rank-", h.rank, ".jsonl"));
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("ledger: cannot create ", path));
  const nlohmann::ordered_json header = {{"ledger", 1},
                                         {"dataset_size", h.dataset_size},
                                         {"global_batch", h.global_batch},
                                         {"epoch_length", h.epoch_length},
                                         {"world_size", h.world_size},
                                         {"rank", h.rank},
                                         {"from_iteration", h.from_iteration}};
  std::unique_ptr<LedgerWriter> writer(new LedgerWriter(f, path, h.epoch_length));
  std::fprintf(f, "%s\n", header.dump().c_str());
  // The file and its entry in the directory, durably.
  EMBER_RETURN_IF_ERROR(writer->Sync());
  EMBER_RETURN_IF_ERROR(FileSystem::Default()->SyncDir(LedgerDir(output_dir)));
  return writer;
}

LedgerWriter::~LedgerWriter() { std::fclose(file_); }

absl::Status LedgerWriter::Append(int64_t epoch, int64_t iteration, const torch::Tensor& ids) {
  torch::Tensor c = ids.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  std::string line = absl::StrCat("{\"epoch\": ", epoch, ", \"iteration\": ", iteration, ", \"ids\": [",
                                  absl::StrJoin(p, p + c.numel(), ","), "]}\n");
  // Flushed per line: what a checkpoint covers is in the file before that checkpoint is taken;
  // durable (fsync) at each epoch's last line, before the epoch-end checkpoint.
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return absl::UnavailableError(absl::StrCat("ledger: cannot write ", path_));
  }
  if (epoch_length_ > 0 && iteration % epoch_length_ == 0) return Sync();
  return absl::OkStatus();
}

absl::Status LedgerWriter::Sync() {
  if (std::fflush(file_) != 0) return ErrnoStatus(errno, "write", path_);
  if (::fsync(::fileno(file_)) != 0) return ErrnoStatus(errno, "fsync", path_);
  return absl::OkStatus();
}

absl::StatusOr<int> TrimLedger(const std::string& output_dir, int64_t iteration) {
  FileSystem* fs = FileSystem::Default();
  EMBER_ASSIGN_OR_RETURN(std::vector<std::string> files, LedgerFiles(output_dir));
  int dropped = 0;
  for (const std::string& path : files) {
    EMBER_ASSIGN_OR_RETURN(std::string text, fs->ReadFile(path));
    std::string kept;
    int here = 0;
    bool first = true;
    size_t number = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      ++number;
      std::optional<nlohmann::json> j = Parse(line);
      bool keep = false;
      if (j && first) {
        keep = j->contains("ledger");
      } else if (j && j->contains("iteration")) {
        EMBER_ASSIGN_OR_RETURN(const int64_t its, IntField(*j, "iteration", path, number));
        keep = its <= iteration;
      }
      first = false;
      if (keep) {
        absl::StrAppend(&kept, line, "\n");
      } else {
        ++here;
      }
    }
    if (here == 0) continue;
    dropped += here;
    EMBER_RETURN_IF_ERROR(WriteFileAtomically(fs, path, [&](const AppendFn& append) {
      return append(kept.data(), kept.size());
    }));
  }
  return dropped;
}

absl::StatusOr<LedgerReport> CheckLedger(const std::string& output_dir) {
  EMBER_ASSIGN_OR_RETURN(std::vector<std::string> files, LedgerFiles(output_dir));
  if (files.empty()) return absl::NotFoundError(absl::StrCat("no ledger in ", LedgerDir(output_dir), " (train with --ledger)"));
  LedgerReport report;
  std::vector<std::string> violations;
  auto violation = [&](std::string what) {
    report.ok = false;
    violations.push_back(absl::StrCat("VIOLATION: ", what));
  };
  int64_t dataset_size = -1, global_batch = -1, epoch_length = -1;
  struct Use {
    int64_t iteration;
    std::string file;
  };
  std::map<int64_t, std::map<int64_t, std::vector<Use>>> uses;  // epoch -> id -> uses
  std::map<int64_t, std::set<int64_t>> iterations;               // epoch -> iterations seen
  std::map<int64_t, int64_t> counts;                             // epoch -> ids used
  for (const std::string& path : files) {
    EMBER_ASSIGN_OR_RETURN(std::string text, FileSystem::Default()->ReadFile(path));
    std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
    if (lines.empty()) continue;
    std::optional<nlohmann::json> header = Parse(lines[0]);
    if (!header || !header->contains("ledger")) {
      return absl::DataLossError(absl::StrCat(path, ": no ledger header on its first line"));
    }
    EMBER_ASSIGN_OR_RETURN(const int64_t n, IntField(*header, "dataset_size", path, 1));
    EMBER_ASSIGN_OR_RETURN(const int64_t b, IntField(*header, "global_batch", path, 1));
    EMBER_ASSIGN_OR_RETURN(const int64_t l, IntField(*header, "epoch_length", path, 1));
    constexpr int64_t kMax = int64_t{1} << 31;
    for (const auto& [field, v] : {std::pair<const char*, int64_t>{"dataset_size", n}, {"global_batch", b}, {"epoch_length", l}}) {
      if (v < 1 || v > kMax) {
        return absl::DataLossError(absl::StrCat(path, ": line 1: \"", field, "\" is ", v, ", not in [1, 2^31]"));
      }
    }
    if (dataset_size < 0) {
      dataset_size = n;
      global_batch = b;
      epoch_length = l;
    } else if (n != dataset_size || b != global_batch || l != epoch_length) {
      violation(absl::StrCat(path, ": dataset_size/global_batch/epoch_length ", n, "/", b, "/", l,
                             " differ from the other files' ", dataset_size, "/", global_batch, "/", epoch_length));
    }
    const std::string name = path.substr(path.rfind('/') + 1);
    for (size_t k = 1; k < lines.size(); ++k) {
      std::optional<nlohmann::json> j = Parse(lines[k]);
      if (!j || !j->contains("epoch") || !j->contains("iteration") || !j->contains("ids")) {
        if (k + 1 == lines.size()) continue;  // a torn last line (a killed rank): not counted
        return absl::DataLossError(absl::StrCat(path, ": line ", k + 1, " is malformed"));
      }
      EMBER_ASSIGN_OR_RETURN(const int64_t epoch, IntField(*j, "epoch", path, k + 1));
      EMBER_ASSIGN_OR_RETURN(const int64_t iteration, IntField(*j, "iteration", path, k + 1));
      if (epoch < 1 || epoch > (int64_t{1} << 31)) {
        return absl::DataLossError(absl::StrCat(path, ": line ", k + 1, ": \"epoch\" is ", epoch, ", not in [1, 2^31]"));
      }
      const nlohmann::json& id_list = (*j)["ids"];
      if (!id_list.is_array()) {
        return absl::DataLossError(absl::StrCat(path, ": line ", k + 1, ": \"ids\" is not a list of integers"));
      }
      iterations[epoch].insert(iteration);
      for (const nlohmann::json& id_value : id_list) {
        if (!id_value.is_number_integer()) {
          return absl::DataLossError(absl::StrCat(path, ": line ", k + 1, ": \"ids\" holds ",
                                                  id_value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                                                  ", not an integer"));
        }
        const int64_t id = id_value.get<int64_t>();
        if (id < 0 || id >= n) violation(absl::StrCat(name, ": id ", id, " outside [0, ", n, ")"));
        uses[epoch][id].push_back({iteration, name});
        ++counts[epoch];
      }
    }
  }
  for (const auto& [epoch, by_id] : uses) {
    int twice = 0;
    for (const auto& [id, u] : by_id) {
      if (u.size() < 2) continue;
      if (++twice <= 5) {
        std::vector<std::string> where;
        for (const Use& x : u) where.push_back(absl::StrCat("iteration ", x.iteration, " in ", x.file));
        violation(absl::StrCat("epoch ", epoch, ": sample ", id, " used ", u.size(), " times (", absl::StrJoin(where, ", "), ")"));
      }
    }
    if (twice > 5) violation(absl::StrCat("epoch ", epoch, ": ", twice - 5, " more samples used more than once"));
    const std::set<int64_t>& its = iterations[epoch];
    // Each of the epoch's iterations seen (the set holds distinct iterations).
    const bool finished =
        std::distance(its.lower_bound((epoch - 1) * epoch_length + 1), its.upper_bound(epoch * epoch_length)) ==
        epoch_length;
    const int64_t expected = epoch_length * global_batch;
    if (finished && counts[epoch] != expected) {
      violation(absl::StrCat("epoch ", epoch, ": ", counts[epoch], " samples used, expected ", epoch_length, " x ",
                             global_batch, " = ", expected));
    }
    report.lines.push_back(absl::StrCat("epoch ", epoch, ": ", counts[epoch], " samples",
                                        twice == 0 ? ", each exactly once" : ", SOME MORE THAN ONCE",
                                        finished ? " (finished)" : " (not finished)"));
  }
  report.lines.insert(report.lines.end(), violations.begin(), violations.end());
  return report;
}

}  // namespace ember::tools
