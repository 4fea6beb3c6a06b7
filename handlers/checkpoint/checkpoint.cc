#include "handlers/checkpoint/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "base/type_name.h"
#include "distributed/default_communicator.h"
#include "distributed/root_action.h"
#include "handlers/serialization/torch_save.h"

namespace ember {
namespace {

// Ascending priority; NaN below every number (Ember: a NaN score can always be replaced).
bool PriorityLess(double a, double b) {
  if (std::isnan(a)) return !std::isnan(b);
  if (std::isnan(b)) return false;
  return a < b;
}

void SortSaved(std::vector<Checkpoint::Item>& saved) {
  std::stable_sort(saved.begin(), saved.end(), [](const Checkpoint::Item& x, const Checkpoint::Item& y) {
    return PriorityLess(x.priority, y.priority);
  });
}

// Copying a state: a tree of the same shape whose tensors own their memory. PlanCopy builds it:
// tensors of `reuse` (the previous copy, which no writer uses any more) with the same dtype and
// shape are written into, others are allocated; contiguous CPU tensors become byte ranges to copy
// (CopyPiece), the rest (strided, on a device) are copied at once through LibTorch. RunCopies then
// copies the ranges in 4 MiB pieces on `threads` threads (and, for a background snapshot, on the
// thread that waits for it at the fence: SharedCopy): one memcpy stream does not reach the
// machine's memory bandwidth (on the VM of docs/performance.md, 4 x 128 MiB take 78 ms on one
// thread and 42 ms on two; a single 512 MiB memcpy, 50 ms).
// Tensors that share a storage (tied weights, views) stay shared in the copy, as in the state
// itself and in a synchronous save (which writes each storage once): their storage is copied once,
// whole, and each copy is a view of it with the source's offset, sizes and strides.
struct CopiedTensor {
  torch::Tensor src;
  std::string path;
};

// What a copy copies: every tensor (null), or those `select` accepts (a background snapshot's
// two halves: at the firing, and on the writer); the others stay as they are.
using Selector = std::function<bool(const torch::Tensor&)>;

// The storage a tensor's bytes live in (null: none, e.g. a sparse tensor).
const void* StorageKey(const torch::Tensor& t) {
  return t.defined() && t.has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr;
}

struct StoragePlan {
  std::map<const void*, int> uses;              // saved tensors per storage
  std::map<const void*, torch::Tensor> copies;  // a shared storage's copy (bytes)
};

void CountStorages(const Value& v, StoragePlan& plan) {
  if (v.is_tensor()) {
    if (v.as_tensor().defined() && v.as_tensor().has_storage()) ++plan.uses[v.as_tensor().storage().unsafeGetStorageImpl()];
  } else if (v.is_sequence()) {
    for (const Value& item : v.items()) CountStorages(item, plan);
  } else if (v.is_dict()) {
    for (const Value& item : v.values()) CountStorages(item, plan);
  }
}

absl::StatusOr<Value> PlanCopy(const Value& v, const Value* reuse, const std::string& path, std::vector<CopyPiece>& jobs,
                               std::vector<CopiedTensor>& copied, StoragePlan& storages, const Selector* select) {
  switch (v.kind()) {
    case Value::Kind::kTensor: {
      const torch::Tensor& src = v.as_tensor();
      if (!src.defined()) return v;
      if (select != nullptr && !(*select)(src)) return v;
      const size_t tag = copied.size();  // the pieces of this tensor name it
      copied.push_back({src, path});
      const void* storage = src.has_storage() ? src.storage().unsafeGetStorageImpl() : nullptr;
      if (storage != nullptr && storages.uses[storage] > 1) {
        auto it = storages.copies.find(storage);
        if (it == storages.copies.end()) {
          const int64_t nbytes = static_cast<int64_t>(src.storage().nbytes());
          torch::Tensor bytes;
          if (src.device().is_cpu()) {
            bytes = torch::empty({nbytes}, torch::TensorOptions().dtype(torch::kUInt8));
            if (nbytes > 0) {
              jobs.push_back({static_cast<char*>(bytes.data_ptr()),
                              static_cast<const char*>(src.storage().data_ptr().get()), static_cast<size_t>(nbytes), tag});
            }
          } else {
            bytes = torch::empty({0}, src.options().dtype(torch::kUInt8)).set_(src.storage(), 0, {nbytes}, {1}).clone();
          }
          it = storages.copies.emplace(storage, bytes).first;
        }
        return Value(torch::empty({0}, src.options().device(it->second.device()))
                         .set_(it->second.storage(), src.storage_offset(), src.sizes(), src.strides()));
      }
      const torch::Tensor* old = reuse != nullptr && reuse->is_tensor() ? &reuse->as_tensor() : nullptr;
      const bool fits = old != nullptr && old->defined() && old->scalar_type() == src.scalar_type() &&
                        old->sizes() == src.sizes() && old->is_contiguous() && old->device().is_cpu();
      if (!src.device().is_cpu()) return Value(src.detach().clone(at::MemoryFormat::Contiguous));
      torch::Tensor dst = fits ? *old : torch::empty(src.sizes(), src.options().memory_format(at::MemoryFormat::Contiguous));
      if (src.is_contiguous()) {
        if (src.nbytes() > 0) {
          jobs.push_back({static_cast<char*>(dst.data_ptr()), static_cast<const char*>(src.data_ptr()), src.nbytes(), tag});
        }
      } else {
        dst.copy_(src.detach());
      }
      return Value(dst);
    }
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      std::vector<Value> items;
      const bool same = reuse != nullptr && reuse->kind() == v.kind() && reuse->items().size() == v.items().size();
      for (size_t i = 0; i < v.items().size(); ++i) {
        EMBER_ASSIGN_OR_RETURN(Value item, PlanCopy(v.items()[i], same ? &reuse->items()[i] : nullptr,
                                                    absl::StrCat(path, "[", i, "]"), jobs, copied, storages, select));
        items.push_back(std::move(item));
      }
      return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    case Value::Kind::kDict: {
      Value d = Value::Dict(v.ordered());
      for (size_t i = 0; i < v.size(); ++i) {
        const Value* old = reuse != nullptr ? reuse->Find(v.keys()[i]) : nullptr;
        const std::string key = v.keys()[i].is_string() ? v.keys()[i].as_string() : v.keys()[i].DebugString();
        EMBER_ASSIGN_OR_RETURN(Value item, PlanCopy(v.values()[i], old, path.empty() ? key : absl::StrCat(path, ".", key),
                                                    jobs, copied, storages, select));
        d.Set(v.keys()[i], std::move(item));
      }
      return d;
    }
    default:
      return v;
  }
}

// With `share` (a background snapshot), the pieces are also offered to the threads that wait at
// the fence for it, and once all are copied each source is compared with its copy: returns the
// tags of the jobs whose source changed since it was copied.
std::vector<size_t> RunCopies(const std::vector<CopyPiece>& jobs, int threads, Snapshot* share) {
  constexpr size_t kPiece = size_t{4} << 20;
  std::vector<CopyPiece> pieces;
  for (const CopyPiece& job : jobs) {
    for (size_t at = 0; at < job.bytes; at += kPiece) {
      pieces.push_back({job.dst + at, job.src + at, std::min(kPiece, job.bytes - at), job.tag});
    }
  }
  const int helpers = std::min<int>(threads, static_cast<int>(pieces.size())) - 1;
  auto copy = std::make_shared<SharedCopy>(std::move(pieces));
  if (share != nullptr) share->Share(copy);
  std::vector<std::thread> pool;
  for (int i = 0; i < helpers; ++i) pool.emplace_back([&copy] { copy->Work(); });
  copy->Work();
  for (std::thread& t : pool) t.join();
  copy->WaitCopied();  // pieces a waiter at the fence claimed
  if (share == nullptr) return {};
  copy->Verify();
  copy->WaitVerified();  // pieces a waiter at the fence compared
  return copy->changed_tags();
}

// The threads a copy of `bytes` uses: small states are copied on the calling thread alone (a
// thread costs more than the copy); large ones on up to 4 of the machine's cores.
int CopyThreads(const std::vector<CopyPiece>& jobs) {
  size_t bytes = 0;
  for (const CopyPiece& job : jobs) bytes += job.bytes;
  if (bytes < (size_t{16} << 20)) return 1;
  return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
}

// A copy of `v` (see PlanCopy) on `threads` threads (0: CopyThreads), of the tensors `select`
// accepts (null: all). With `versions` (a background snapshot: the selected tensors' version
// counters when it began, depth-first, RecordVersions), the copy fails, naming the tensors, when
// one of them changed while it was being copied: its version counter moved (an in-place change
// through it or a view of it that had returned by the check), or its bytes differ from their
// copy when re-read after the whole copy (any write landing between the two, through p.data()
// too). A change that was complete before the writer read those bytes and left the counter as it
// was (LibTorch's SGD writes through p.data()) looks like the state at the firing and is not seen:
// only the fence (WaitForSnapshots before optimizer.step) rules it out.
absl::StatusOr<Value> CopyState(const Value& v, const Value* reuse, const std::vector<int64_t>* versions, int threads,
                                Snapshot* share = nullptr, const Selector* select = nullptr) {
  std::vector<CopyPiece> jobs;
  std::vector<CopiedTensor> copied;
  StoragePlan storages;
  CountStorages(v, storages);
  EMBER_ASSIGN_OR_RETURN(Value out, PlanCopy(v, reuse, "", jobs, copied, storages, select));
  const std::vector<size_t> rewritten = RunCopies(jobs, threads > 0 ? threads : CopyThreads(jobs), share);
  if (versions != nullptr) {
    std::vector<std::string> moved, differ;
    for (size_t i = 0; i < copied.size(); ++i) {
      if (i >= versions->size() || copied[i].src._version() != (*versions)[i]) moved.push_back(copied[i].path);
    }
    for (size_t tag : rewritten) {
      if (tag < copied.size() && std::find(moved.begin(), moved.end(), copied[tag].path) == moved.end()) {
        differ.push_back(copied[tag].path);
      }
    }
    if (!moved.empty() || !differ.empty()) {
      std::string which;
      if (!moved.empty()) absl::StrAppend(&which, "its version counter moved: '", absl::StrJoin(moved, "', '"), "'");
      if (!differ.empty()) {
        absl::StrAppend(&which, which.empty() ? "" : "; ", "its bytes changed after they were copied: '",
                        absl::StrJoin(differ, "', '"), "'");
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "Checkpoint: a parameter or optimizer state changed in place while the background snapshot was copying "
          "it (", which, "), so the file would mix two steps and none is written: optimizer.step() (or another "
          "in-place change of them) ran before ember::WaitForSnapshots(); call it before optimizer.step() "
          "(DataParallel::AllReduceGradients() calls it on its way out, so a change made before that call needs "
          "its own), or save without snapshot_in_background"));
    }
  }
  return out;
}

// The version counters of the tensors of `v` that `select` accepts (null: all), depth-first (the
// order CopyState visits them).
void RecordVersions(const Value& v, std::vector<int64_t>& out, const Selector* select = nullptr) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      if (v.as_tensor().defined() && (select == nullptr || (*select)(v.as_tensor()))) {
        out.push_back(v.as_tensor()._version());
      }
      return;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (const Value& item : v.items()) RecordVersions(item, out, select);
      return;
    case Value::Kind::kDict:
      for (size_t i = 0; i < v.size(); ++i) RecordVersions(v.values()[i], out, select);
      return;
    default:
      return;
  }
}

// The storages of the tensors of `v`.
void CollectStorages(const Value& v, std::set<const void*>& out) {
  if (v.is_tensor()) {
    if (const void* key = StorageKey(v.as_tensor()); key != nullptr) out.insert(key);
  } else if (v.is_sequence()) {
    for (const Value& item : v.items()) CollectStorages(item, out);
  } else if (v.is_dict()) {
    for (const Value& item : v.values()) CollectStorages(item, out);
  }
}

// Runs `f`, turning an exception (c10::Error from an allocation or a copy, std::bad_alloc, ...)
// into an error status that says what was being done: on the writer thread an exception would
// otherwise call std::terminate; on the training thread it would escape the engine.
template <typename F>
absl::Status NoThrow(const char* what, F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Checkpoint: ", what, " failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("Checkpoint: ", what, " failed: ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("Checkpoint: ", what, " failed: an unknown exception"));
  }
}

// Formats a str.format-style pattern with the given fields ("None" for missing ones).
absl::StatusOr<std::string> FormatPattern(const std::string& pattern,
                                          const std::map<std::string, std::optional<std::string>>& fields) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '{' && i + 1 < pattern.size() && pattern[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    if (c == '}' && i + 1 < pattern.size() && pattern[i + 1] == '}') {
      out += '}';
      ++i;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    size_t end = pattern.find('}', i);
    if (end == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("filename_pattern '", pattern, "': unmatched '{'"));
    }
    const std::string field = pattern.substr(i + 1, end - i - 1);
    auto it = fields.find(field);
    if (it == fields.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "filename_pattern '", pattern, "': unknown field '{", field,
          "}'; allowed: {filename_prefix}, {name}, {global_step}, {score_name}, {score}, {ext}"));
    }
    out += it->second.value_or("None");
    i = end;
  }
  return out;
}

}  // namespace

// ---- Checkpoint ------------------------------------------------------------------------

absl::StatusOr<dist::Communicator*> Checkpoint::BoundCommunicator() {
  if (comm_ != nullptr) return comm_;
  dist::Communicator* now = dist::DefaultCommunicator();
  if (now == world_at_create_) return now != nullptr ? now : &alone_;
  if (world_at_create_ != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Checkpoint: the World of ", world_size_at_create_, " rank(s) it was created in no longer exists; keep the "
        "World that ember::dist::LaunchWorld() returns alive while the checkpoint is used (in "
        "`LaunchWorld().value()->rank()` the World is a temporary, gone at the end of the statement), or pass the "
        "communicator to ResumeLatest()/Flush()"));
  }
  if (now->world_size() == 1) return now;
  return absl::FailedPreconditionError(absl::StrCat(
      "Checkpoint: created with no World alive (for this process alone), but used in a World of ",
      now->world_size(), " ranks; create the checkpoint after ember::dist::LaunchWorld(), or pass the communicator"));
}

absl::StatusOr<std::optional<std::string>> Checkpoint::ResumeLatest() {
  EMBER_ASSIGN_OR_RETURN(dist::Communicator * comm, BoundCommunicator());
  return ResumeLatest(*comm);
}

absl::Status Checkpoint::Flush() {
  EMBER_ASSIGN_OR_RETURN(dist::Communicator * comm, BoundCommunicator());
  return Flush(*comm);
}

Event Checkpoint::SavedCheckpointEvent() { return Event::Custom("SAVED_CHECKPOINT"); }

namespace {

// Create's argument checks (every rank runs them, then agrees on the outcome).
absl::Status ValidateCreate(const ObjectMap& to_save, const CheckpointOptions& options) {
  if (to_save.empty()) return absl::InvalidArgumentError("No objects to checkpoint found.");
  if (options.n_saved && *options.n_saved < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Checkpoint: n_saved must be >= 1 (or unset to keep every checkpoint), got ", *options.n_saved));
  }
  if (options.keep_last < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Checkpoint: keep_last must be >= 0, got ", options.keep_last));
  }
  if (options.save_on_rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Checkpoint: save_on_rank must be >= 0, got ", options.save_on_rank));
  }
  if (options.snapshot_in_background && !options.async_save) {
    return absl::InvalidArgumentError(
        "Checkpoint: snapshot_in_background needs async_save (the background snapshot is written by the "
        "asynchronous writer)");
  }
  if (options.score_reduction == dist::Reduction::kSum || options.score_reduction == dist::Reduction::kAnyNonZero) {
    return absl::InvalidArgumentError(absl::StrCat("Checkpoint: score_reduction must be MEAN, MIN or MAX, got ",
                                                   dist::ReductionName(options.score_reduction)));
  }
  for (size_t i = 0; i < to_save.size(); ++i) {
    if (to_save[i].first.empty()) return absl::InvalidArgumentError("Checkpoint: an object has an empty name");
    for (size_t j = 0; j < i; ++j) {
      if (to_save[i].first == to_save[j].first) {
        return absl::InvalidArgumentError(absl::StrCat("Checkpoint: two objects are named '", to_save[i].first, "'"));
      }
    }
    if (options.include_self && to_save[i].first == "checkpointer") {
      return absl::InvalidArgumentError(
          "Checkpoint: with include_self, no object may be named 'checkpointer'");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Checkpoint::AgreeAtCreate(dist::Communicator& comm, absl::string_view context, const ObjectMap& to_save,
                                       const CheckpointOptions& options, const absl::Status& valid,
                                       const dist::SettingList& extra) {
  if (comm.world_size() == 1) return absl::OkStatus();
  std::vector<std::string> keys;
  for (const auto& [name, object] : to_save) keys.push_back(name);
  // The arguments' validity first: a rank whose arguments are invalid says so to the others.
  const absl::Status v = valid.ok() ? ValidateCreate(to_save, options) : valid;
  dist::SettingList s;
  s.Add("arguments", v.ok() ? "valid" : v.message())
      .Add("objects", absl::StrJoin(keys, ","))
      .AddInt("save_on_rank", options.save_on_rank)
      .Add("n_saved", options.n_saved ? absl::StrCat(*options.n_saved) : "None")
      .AddInt("keep_last", options.keep_last)
      .Add("filename_prefix", options.filename_prefix)
      .Add("score_name", options.score_name)
      .AddBool("score_function", options.score_function != nullptr)
      .AddBool("global_step_transform", options.global_step_transform != nullptr)
      .Add("filename_pattern", options.filename_pattern)
      .AddBool("include_self", options.include_self)
      .AddBool("greater_or_equal", options.greater_or_equal)
      .Add("score_reduction", dist::ReductionName(options.score_reduction))
      .AddBool("async_save", options.async_save)
      .AddBool("snapshot_in_background", options.snapshot_in_background);
  for (const dist::Setting& e : extra.settings()) s.Add(e.name, e.value);
  return dist::AgreeOnSettings(comm, context, s, absl::Seconds(300));
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Create(ObjectMap to_save,
                                                               std::shared_ptr<SaveHandler> save_handler,
                                                               CheckpointOptions options) {
  if (save_handler == nullptr) return absl::InvalidArgumentError("Checkpoint: save_handler is null");
  const absl::Status valid = ValidateCreate(to_save, options);
  // In a multi-rank World, first agree (a rank whose arguments are invalid says so to the others).
  if (dist::Communicator* world = dist::DefaultCommunicator(); world != nullptr && world->world_size() > 1) {
    EMBER_RETURN_IF_ERROR(AgreeAtCreate(*world, "Checkpoint options", to_save, options, valid));
  }
  EMBER_RETURN_IF_ERROR(valid);
  std::unique_ptr<Checkpoint> c(new Checkpoint(std::move(to_save), std::move(save_handler), std::move(options)));
  if (!c->options_.filename_pattern.empty()) {
    // Validate the pattern now, not at the first save.
    EMBER_RETURN_IF_ERROR(c->Filename(Score(0.5), int64_t{1}).status());
  }
  return c;
}

Checkpoint::Checkpoint(ObjectMap to_save, std::shared_ptr<SaveHandler> save_handler, CheckpointOptions options)
    : to_save_(std::move(to_save)),
      world_at_create_(dist::DefaultCommunicator()),
      world_size_at_create_(world_at_create_ != nullptr ? world_at_create_->world_size() : 1),
      save_handler_(std::move(save_handler)),
      options_(std::move(options)) {}

Checkpoint::~Checkpoint() {
  if (writer_.joinable()) {
    writer_.join();
    if (!writer_status_.ok()) {
      LogWarning(absl::StrCat("Checkpoint: background save failed: ", writer_status_.ToString()));
    }
  }
}

absl::Status Checkpoint::Attach(Engine& engine, const EventList& events) {
  EMBER_RETURN_IF_ERROR(engine.AddEventHandler(events, *this).status());
  return engine.AddEventHandler(Events::Completed(),
                                [this](Engine& e) {
                                  outcome_timeout_ = e.collective_timeout();
                                  return Flush(e.communicator());
                                })
      .status();
}

std::string Checkpoint::ObjectName() const { return to_save_.size() == 1 ? to_save_[0].first : "checkpoint"; }

std::string Checkpoint::Basename() const {
  return options_.filename_prefix.empty() ? ObjectName() : absl::StrCat(options_.filename_prefix, "_", ObjectName());
}

absl::StatusOr<std::string> Checkpoint::Filename(const std::optional<Score>& score,
                                                 std::optional<int64_t> global_step) const {
  const std::string score_text = score ? FormatScore(*score) : "";
  if (!options_.filename_pattern.empty()) {
    std::map<std::string, std::optional<std::string>> fields = {
        {"filename_prefix", options_.filename_prefix},
        {"name", ObjectName()},
        {"ext", std::string("pt")},
        {"score_name", options_.score_name.empty() ? std::nullopt : std::optional<std::string>(options_.score_name)},
        {"score", score ? std::optional<std::string>(score_text) : std::nullopt},
        {"global_step", global_step ? std::optional<std::string>(absl::StrCat(*global_step)) : std::nullopt},
    };
    return FormatPattern(options_.filename_pattern, fields);
  }
  std::string name = Basename();
  if (global_step) absl::StrAppend(&name, "_", *global_step);
  if (score) {
    if (!options_.score_name.empty()) {
      absl::StrAppend(&name, "_", options_.score_name, "=", score_text);
    } else {
      absl::StrAppend(&name, "_", score_text);
    }
  }
  return absl::StrCat(name, ".pt");
}

absl::StatusOr<Value> Checkpoint::BuildCheckpoint(std::set<const void*>* fenced) const {
  Value checkpoint = Value::Dict();
  std::set<const void*> at_firing;  // storages of tensors that may change before the fence
  for (const auto& [name, object] : to_save_) {
    EMBER_ASSIGN_OR_RETURN(Value state, object.StateDict());
    if (fenced != nullptr) {
      // Saveable::fenced(): an optimizer's state and a module's parameters change only in
      // optimizer.step(); a module's buffers (BatchNorm's running statistics) in a forward, and
      // other objects whenever their owner likes.
      std::set<const void*> storages;
      CollectStorages(state, storages);
      std::set<const void*> parameters;
      if (object.fenced() == Saveable::Fenced::kParameters) {
        for (const torch::Tensor& p : object.parameters()) {
          if (const void* key = StorageKey(p); key != nullptr) parameters.insert(key);
        }
      }
      for (const void* key : storages) {
        const bool behind_fence = object.fenced() == Saveable::Fenced::kAll ||
                                  (object.fenced() == Saveable::Fenced::kParameters && parameters.count(key) > 0);
        (behind_fence ? *fenced : at_firing).insert(key);
      }
    }
    checkpoint.Set(name, std::move(state));
  }
  // A storage shared with a tensor that may change before the fence is copied at the firing.
  if (fenced != nullptr) {
    for (const void* key : at_firing) fenced->erase(key);
  }
  if (to_save_.size() == 1) {
    Value single = checkpoint.values()[0];
    if (options_.include_self && single.is_dict()) single.Set("checkpointer", StateDict());
    return single;
  }
  if (options_.include_self) checkpoint.Set("checkpointer", StateDict());
  return checkpoint;
}


std::string Checkpoint::label() const {
  std::vector<std::string> parts;
  if (!options_.filename_prefix.empty()) parts.push_back("prefix=" + options_.filename_prefix);
  if (!options_.score_name.empty()) parts.push_back("score=" + options_.score_name);
  if (options_.score_function) {
    parts.push_back("score_function=" + CallableName<double (*)(const Engine&), float (*)(const Engine&),
                                                     int (*)(const Engine&), int64_t (*)(const Engine&),
                                                     bool (*)(const Engine&)>(options_.score_function));
  }
  return absl::StrJoin(parts, ", ");
}

absl::Status Checkpoint::Propose(Engine& engine, absl::Span<double> values) {
  if (options_.score_function) {
    Score s = options_.score_function(engine);
    local_kind_ = s.kind;
    values[0] = s.value;
  } else if (!options_.score_name.empty()) {
    auto it = engine.state().metrics.find(options_.score_name);
    if (it == engine.state().metrics.end()) {
      return absl::NotFoundError(absl::StrCat("Checkpoint: metric '", options_.score_name,
                                              "' is not in state().metrics of the engine it is attached to"));
    }
    local_kind_ = Score::Kind::kFloat;
    values[0] = it->second;
  } else {
    values[0] = 0;
  }
  return absl::OkStatus();
}

void Checkpoint::VerifyBest(std::vector<Item> ranked, const std::string& trusted,
                            std::set<std::string>* untrusted) {
  SortSaved(ranked);
  for (auto it = ranked.rbegin(); it != ranked.rend(); ++it) {
    if (it->filename == trusted || untrusted->count(it->filename) > 0) {
      if (it->filename == trusted) return;
      continue;
    }
    absl::Status v = save_handler_->Verify(it->filename);
    if (v.ok()) return;
    LogWarning(absl::StrCat("Checkpoint: ", save_handler_->Location(it->filename),
                            " would rank best but does not verify, so it is not ranked: ", v.ToString()));
    untrusted->insert(it->filename);
  }
}

absl::Status Checkpoint::VerifyFiles(dist::Communicator& comm, const std::vector<std::string>& files) {
  if (files.empty()) return absl::OkStatus();
  std::string dropped;
  const absl::Time deadline = absl::Now() + options_.save_timeout;
  EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, options_.save_on_rank, deadline, [&]() -> absl::Status {
    for (const std::string& f : files) {
      absl::Status v = save_handler_->Verify(f);
      if (v.ok()) continue;
      LogWarning(absl::StrCat("Checkpoint: ", save_handler_->Location(f),
                              " does not verify, so it is not ranked, kept in place of another or reported: ",
                              v.ToString()));
      absl::StrAppend(&dropped, f, "\n");
    }
    return absl::OkStatus();
  }, outcome_timeout_));
  EMBER_RETURN_IF_ERROR(comm.Broadcast(dropped, options_.save_on_rank, deadline));
  std::set<std::string> gone;
  for (absl::string_view f : absl::StrSplit(dropped, '\n', absl::SkipEmpty())) gone.insert(std::string(f));
  for (Item& item : saved_) {
    if (gone.count(item.filename) == 0 &&
        std::find(files.begin(), files.end(), item.filename) != files.end()) {
      item.verified = true;
    }
  }
  std::erase_if(saved_, [&](const Item& i) { return gone.count(i.filename) > 0; });
  for (const std::string& f : gone) steps_.erase(f);
  return absl::OkStatus();
}

absl::Status Checkpoint::KeepBestVerified(dist::Communicator& comm) {
  while (!saved_.empty() && !saved_.back().verified) {
    EMBER_RETURN_IF_ERROR(VerifyFiles(comm, {saved_.back().filename}));
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::RestoreFromHandler(dist::Communicator& comm, bool verify_best) {
  // The saving rank lists what is there; every rank adopts the same list.
  std::string listing;
  const absl::Time deadline = absl::Now() + options_.save_timeout;
  absl::Status s = dist::RunOnRoot(comm, options_.save_on_rank, deadline, [&]() -> absl::Status {
    EMBER_ASSIGN_OR_RETURN(auto files, save_handler_->List());
    // A listing may come from the files' trailers alone (DiskSaver): the file that would rank
    // best is read whole first, and one that does not verify is not adopted (the next best is
    // tried). Only that one is read, however many files there are.
    std::set<std::string> untrusted;
    if (verify_best) {
      std::vector<Item> ranked = saved_;
      for (const auto& [filename, meta] : files) {
        if (meta.basename == Basename()) ranked.push_back(Item{meta.priority, filename, meta.save_index});
      }
      VerifyBest(std::move(ranked), "", &untrusted);
    }
    for (const auto& [filename, meta] : files) {
      if (meta.basename != Basename() || untrusted.count(filename) > 0) continue;
      absl::StrAppendFormat(&listing, "%s\t%.17g\t%d\t%s\n", filename, meta.priority, meta.save_index,
                            meta.global_step ? absl::StrCat(*meta.global_step) : "-");
    }
    return absl::OkStatus();
  }, outcome_timeout_);
  EMBER_RETURN_IF_ERROR(s);
  EMBER_RETURN_IF_ERROR(comm.Broadcast(listing, options_.save_on_rank, deadline));
  for (absl::string_view line : absl::StrSplit(listing, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    Item item{0, f[0], 0};
    // A save_index the next save could not follow (a crafted INT64_MAX) is not adopted.
    if (f.size() != 4 || !absl::SimpleAtoi(f[2], &item.save_index) || item.save_index < 0 ||
        item.save_index == std::numeric_limits<int64_t>::max()) {
      continue;
    }
    if (int64_t step; absl::SimpleAtoi(f[3], &step)) steps_[item.filename] = step;
    if (f[1] == "nan" || f[1] == "-nan") {
      item.priority = std::nan("");
    } else if (!absl::SimpleAtod(f[1], &item.priority)) {
      continue;
    }
    bool known = false;
    for (const Item& mine : saved_) known = known || mine.filename == item.filename;
    if (!known) saved_.push_back(item);
    next_index_ = std::max(next_index_, item.save_index + 1);
  }
  SortSaved(saved_);
  // The best was verified above (Verify remembers it: no second read); this marks it on every rank.
  if (verify_best) EMBER_RETURN_IF_ERROR(KeepBestVerified(comm));
  return absl::OkStatus();
}

std::optional<int64_t> Checkpoint::StepOf(const Item& item) const {
  auto it = steps_.find(item.filename);
  if (it != steps_.end()) return it->second;
  // Ranked by step: the priority is the step.
  if (!has_score() && std::isfinite(item.priority)) return static_cast<int64_t>(item.priority);
  return std::nullopt;
}

absl::StatusOr<std::vector<std::string>> Checkpoint::SetAsideAfter(dist::Communicator& comm, int64_t step) {
  if (!restored_) {
    restored_ = true;
    EMBER_RETURN_IF_ERROR(RestoreFromHandler(comm));
  }
  EMBER_RETURN_IF_ERROR(Flush(comm));
  return SetAsideLater(comm, step);
}

absl::StatusOr<std::vector<std::string>> Checkpoint::SetAsideLater(dist::Communicator& comm, int64_t step) {
  std::vector<std::string> where;
  std::vector<std::pair<std::string, int64_t>> later;
  for (const Item& item : saved_) {
    std::optional<int64_t> its = StepOf(item);
    if (its && *its > step) later.emplace_back(item.filename, *its);
  }
  if (later.empty()) return where;
  EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, options_.save_on_rank, absl::Now() + options_.save_timeout,
                                        [&]() -> absl::Status {
    for (const auto& [f, its] : later) {
      absl::StatusOr<std::string> aside = save_handler_->SetAside(f);
      if (!aside.ok()) {
        return absl::Status(aside.status().code(),
                            absl::StrCat("Checkpoint: cannot set aside ", save_handler_->Location(f),
                                         ", a checkpoint of a future this run abandoned: ", aside.status().message()));
      }
      LogWarning(absl::StrCat(
          "Checkpoint: ", save_handler_->Location(f), " was saved at step ", its,
          step < 0 ? std::string(" by a run this one does not continue")
                   : absl::StrCat(", after step ", step, " that this run continues from (a future it abandoned)"),
          ": set aside as ", *aside, ", not ranked, resumed from or deleted"));
    }
    return absl::OkStatus();
  }, outcome_timeout_));
  for (const auto& [f, its] : later) {
    where.push_back(save_handler_->Location(f));
    std::erase_if(saved_, [&f = f](const Item& i) { return i.filename == f; });  // init-capture: clang 14
    steps_.erase(f);
  }
  // The best may be among those set aside: the next best is verified before it is reported.
  EMBER_RETURN_IF_ERROR(KeepBestVerified(comm));
  return where;
}

void Checkpoint::WaitLocally(bool saving_rank) {
  if (writer_.joinable()) writer_.join();
  if (saving_rank && pending_saved_.has_value() && writer_status_.ok()) saved_ = *std::move(pending_saved_);
  if (!writer_status_.ok()) {
    LogWarning(absl::StrCat("Checkpoint: background save failed: ", writer_status_.ToString()));
  }
  writer_status_ = absl::OkStatus();
  pending_saved_.reset();
}

absl::Status Checkpoint::Flush(dist::Communicator& comm) {
  if (!options_.async_save) return absl::OkStatus();
  bool written = false;  // the saving rank's write succeeded (and removed what it replaced)
  absl::Status outcome = dist::RunOnRoot(comm, options_.save_on_rank, absl::Now() + options_.save_timeout,
                                         [&]() -> absl::Status {
                                           if (writer_.joinable()) writer_.join();
                                           absl::Status s = writer_status_;
                                           writer_status_ = absl::OkStatus();
                                           written = s.ok();
                                           return s;
                                         }, outcome_timeout_);
  // The background save is recorded only now that it succeeded (on every rank, from the saving
  // rank's verdict); after a failure the list stays what it was: the files it names still exist
  // (nothing is removed before the new file is durable), so retention goes on tracking them. The
  // saving rank records a save it completed even when the verdict could not be shared (a peer
  // stalled): the files it replaced are gone, and last_checkpoint() must not name them.
  if (pending_saved_.has_value() && (outcome.ok() || written)) saved_ = *std::move(pending_saved_);
  pending_saved_.reset();
  return outcome;
}

absl::Status Checkpoint::Decide(Engine& engine, const Agreement& agreement) {
  outcome_timeout_ = engine.collective_timeout();
  const absl::Time entered = absl::Now();
  struct Blocked {
    std::atomic<int64_t>& ns;
    absl::Time since;
    ~Blocked() { ns.fetch_add(absl::ToInt64Nanoseconds(absl::Now() - since), std::memory_order_relaxed); }
  } blocked{blocked_ns_, entered};
  dist::Communicator& comm = engine.communicator();
  const int job_size = comm_ != nullptr ? comm_->world_size() : world_size_at_create_;
  if ((comm_ != nullptr || world_at_create_ != nullptr) && comm.world_size() != job_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Checkpoint: created for a job of ", job_size, " rank(s), but the engine it is attached to "
        "agrees through a communicator of ", comm.world_size(), ": give that engine the job's communicator "
        "(create the World with ember::dist::LaunchWorld() before the engines, or call set_communicator())"));
  }
  if (options_.save_on_rank >= comm.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("Checkpoint: save_on_rank ", options_.save_on_rank,
                                                   " is not a rank of this job (world size ",
                                                   comm.world_size(), ")"));
  }
  if (!restored_) {
    restored_ = true;
    EMBER_RETURN_IF_ERROR(RestoreFromHandler(comm));
  }
  EMBER_RETURN_IF_ERROR(Flush(comm));

  std::optional<int64_t> global_step;
  if (options_.global_step_transform) {
    Event event = engine.last_event().value_or(Events::Completed());
    global_step = options_.global_step_transform(engine, event);
  }
  std::optional<Score> score;
  double priority;
  if (has_score()) {
    Score s(agreement.value(0));
    s.kind = local_kind_;
    score = s;
    priority = s.value;
  } else {
    if (!global_step) global_step = engine.state().iteration;
    priority = static_cast<double>(*global_step);
  }

  if (!has_score()) {
    // Ranked by step: a kept file of a later step is from a future this run abandoned (it resumed
    // from an earlier point). It is set aside, so that this save is written, never skipped as
    // "not better" (that would report a save that was not made).
    EMBER_RETURN_IF_ERROR(SetAsideLater(comm, *global_step).status());
  }

  const bool keep_all = !options_.n_saved.has_value();
  const size_t n_saved = keep_all ? 0 : static_cast<size_t>(*options_.n_saved);
  absl::StatusOr<std::string> named = Filename(score, global_step);
  const std::string planned = named.ok() ? *named : std::string();
  struct Plan {
    bool skip = false;
    std::vector<Item> next;
    std::vector<std::string> evicted;
    // Files not yet verified that rank within the best n_saved when this save evicts a file or
    // is skipped: the decision must not rest on them.
    std::vector<std::string> unverified;
  };
  auto plan = [&]() {
    Plan p;
    // Priority-ranked entries only (the keep_last extras are tracked apart below).
    const bool full = !keep_all && saved_.size() >= n_saved;
    if (options_.keep_last == 0 && full && !saved_.empty()) {
      const double lowest = saved_.front().priority;
      const bool improves = !std::isnan(priority) &&
                            (std::isnan(lowest) || priority > lowest ||
                             (options_.greater_or_equal && priority == lowest));
      p.skip = !improves;
    }
    p.next = saved_;
    std::erase_if(p.next, [&](const Item& i) { return i.filename == planned; });  // replaced by rename
    p.next.push_back(Item{priority, planned, next_index_, /*verified=*/true});  // kept only once written
    SortSaved(p.next);
    // Retention: the best n_saved by priority, plus the keep_last most recent.
    if (!keep_all) {
      std::vector<Item> by_recency = p.next;
      std::sort(by_recency.begin(), by_recency.end(),
                [](const Item& a, const Item& b) { return a.save_index > b.save_index; });
      std::vector<std::string> keep;
      for (size_t i = 0; i < p.next.size() && i < n_saved; ++i) keep.push_back(p.next[p.next.size() - 1 - i].filename);
      const size_t by_priority = keep.size();
      for (size_t i = 0; i < by_recency.size() && i < static_cast<size_t>(options_.keep_last); ++i) {
        keep.push_back(by_recency[i].filename);
      }
      std::vector<Item> kept;
      for (const Item& item : p.next) {
        if (std::find(keep.begin(), keep.end(), item.filename) != keep.end()) {
          kept.push_back(item);
        } else {
          p.evicted.push_back(item.filename);
        }
      }
      if (p.skip || !p.evicted.empty()) {
        for (size_t i = 0; i < by_priority; ++i) {
          const Item& item = p.next[p.next.size() - 1 - i];
          if (!item.verified) p.unverified.push_back(item.filename);
        }
      }
      p.next = std::move(kept);
    }
    return p;
  };
  Plan p = plan();
  while (!p.unverified.empty()) {
    // Usually none or one file: those listed from their trailers that rank at or above the cut-off.
    EMBER_RETURN_IF_ERROR(VerifyFiles(comm, p.unverified));
    p = plan();
  }
  EMBER_RETURN_IF_ERROR(KeepBestVerified(comm));
  if (p.skip) return absl::OkStatus();
  EMBER_ASSIGN_OR_RETURN(std::string filename, std::move(named));
  if (global_step) steps_[filename] = *global_step;
  std::vector<Item> next = std::move(p.next);
  std::vector<std::string> evicted = std::move(p.evicted);
  // With include_self the file holds the list as it will be after this save (as ignite).
  std::vector<Item> before = std::move(saved_);
  saved_ = next;
  std::set<const void*> fenced;  // snapshot_in_background: the storages the writer copies
  absl::StatusOr<Value> checkpoint = BuildCheckpoint(options_.async_save && options_.snapshot_in_background ? &fenced : nullptr);
  saved_ = std::move(before);
  if (!checkpoint.ok()) return checkpoint.status();

  CheckpointMetadata meta;
  meta.basename = Basename();
  meta.score_name = options_.score_name;
  meta.priority = priority;
  meta.save_index = next_index_;
  meta.global_step = global_step;

  auto save_then_remove = [this, filename, meta, evicted](const Value& ckpt) -> absl::Status {
    // 1. The new checkpoint, durably. 2. Only then the ones it replaces.
    EMBER_RETURN_IF_ERROR(NoThrow("writing the checkpoint", [&] { return save_handler_->Save(ckpt, filename, meta); }));
    for (const std::string& old : evicted) {
      if (absl::Status s = save_handler_->Remove(old); !s.ok()) {
        LogWarning(absl::StrCat("Checkpoint: could not remove ", save_handler_->Location(old), ": ", s.ToString()));
      }
    }
    return absl::OkStatus();
  };
  const absl::Time deadline = absl::Now() + options_.save_timeout;
  if (options_.async_save) {
    // The state is copied here, on the training thread; the write happens in the background.
    absl::Status started = dist::RunOnRoot(comm, options_.save_on_rank, deadline, [&]() -> absl::Status {
      if (!options_.snapshot_in_background) {
        // The training thread waits for this copy anyway: it may use the idle cores too.
        Value copied;
        EMBER_RETURN_IF_ERROR(NoThrow("copying the state", [&]() -> absl::Status {
          EMBER_ASSIGN_OR_RETURN(copied, CopyState(*checkpoint, &copy_cache_, nullptr, /*threads=*/0));
          return absl::OkStatus();
        }));
        copy_cache_ = copied;  // reused by the next save, once this writer is done (Flush)
        writer_ = std::thread([this, copy = std::move(copied), save_then_remove]() {
          const absl::Time start = absl::Now();
          writer_status_ = NoThrow("the background save", [&] { return save_then_remove(copy); });
          background_ns_.fetch_add(absl::ToInt64Nanoseconds(absl::Now() - start), std::memory_order_relaxed);
        });
        return absl::OkStatus();
      }
      // Parameters and optimizer state are copied on the writer thread; the training thread
      // waits for that copy only at the fence (WaitForSnapshots), before optimizer.step(). The
      // rest (buffers, which a training-mode forward changes without the fence, the engine's
      // and other objects' state) is copied here, at the firing: nothing can tear it.
      auto behind_fence = std::make_shared<const Selector>(
          [fenced = std::move(fenced)](const torch::Tensor& t) { return fenced.count(StorageKey(t)) > 0; });
      const Selector at_firing = [&behind_fence](const torch::Tensor& t) { return !(*behind_fence)(t); };
      Value partial;
      EMBER_RETURN_IF_ERROR(NoThrow("copying the state", [&]() -> absl::Status {
        EMBER_ASSIGN_OR_RETURN(partial, CopyState(*checkpoint, &copy_cache_, nullptr, /*threads=*/0, nullptr, &at_firing));
        return absl::OkStatus();
      }));
      std::vector<int64_t> versions;
      RecordVersions(partial, versions, behind_fence.get());
      snapshot_ = BeginSnapshot(&blocked_ns_);
      writer_ = std::thread([this, state = std::move(partial), versions = std::move(versions), behind_fence,
                             snapshot = snapshot_, save_then_remove]() {
        const absl::Time start = absl::Now();
        // One thread: the training thread computes meanwhile, and helps if it reaches the fence
        // before the copy is done.
        absl::StatusOr<Value> copied = absl::InternalError("not copied");
        absl::Status copy_status = NoThrow("copying the state in the background", [&]() -> absl::Status {
          copied = CopyState(state, &copy_cache_, &versions, /*threads=*/1, snapshot.get(), behind_fence.get());
          return absl::OkStatus();
        });
        if (!copy_status.ok()) copied = copy_status;
        snapshot->Finish();  // the training thread may change the state from here on (also after a failure)
        if (copied.ok()) {
          copy_cache_ = *copied;  // read by the next save's copy, after this thread is joined
          writer_status_ = NoThrow("the background save", [&] { return save_then_remove(*copied); });
        } else {
          writer_status_ = copied.status();
        }
        background_ns_.fetch_add(absl::ToInt64Nanoseconds(absl::Now() - start), std::memory_order_relaxed);
      });
      return absl::OkStatus();
    }, outcome_timeout_);
    EMBER_RETURN_IF_ERROR(started);
    pending_saved_ = std::move(next);  // recorded by Flush once the write succeeded
    // The run that caused this save awaits it, whatever engine the checkpoint is registered on
    // (an evaluator's COMPLETED, as with On()): at its end, a Flush when it succeeded (the save's
    // error becomes the run's), else this rank's writer only (no collective on a failed run), so
    // that last_checkpoint() names what is on disk either way. Alone, the wait needs no
    // communicator: this checkpoint's own (the firing engine's may be gone by then, an evaluator
    // made per epoch); a job's communicator outlives its engines. Skipped once this checkpoint
    // is destroyed (its owner token expires).
    dist::Communicator* flush_comm = comm.world_size() == 1 ? &alone_ : &comm;
    Engine::AtOutermostRunEnd(std::weak_ptr<const void>(alive_),
                              [this, flush_comm](bool run_ok) -> absl::Status {
      if (run_ok) return Flush(*flush_comm);
      WaitLocally(flush_comm->rank() == options_.save_on_rank);
      return absl::OkStatus();
    });
  } else {
    // The peers wait for the save until `deadline`; the saving rank waits for them only as long as
    // for any collective once it is done (a peer that stalled meanwhile fails it then, not in 30 min).
    bool written = false;  // on the saving rank: the file is durable, what it replaced removed
    absl::Status saved = dist::RunOnRoot(comm, options_.save_on_rank, deadline,
                                         [&]() {
                                           absl::Status s = save_then_remove(*checkpoint);
                                           written = s.ok();
                                           return s;
                                         },
                                         outcome_timeout_);
    // After a failed save nothing is recorded: saved_ still names only files that exist. A save
    // that succeeded on the saving rank whose verdict could not be shared (a peer stalled) is
    // recorded there: the files it replaced are gone.
    if (!saved.ok()) {
      if (written) saved_ = std::move(next);
      return saved;
    }
    saved_ = std::move(next);
  }
  ++next_index_;
  engine.RegisterEvents({SavedCheckpointEvent()});
  return engine.FireEvent(SavedCheckpointEvent());
}

std::optional<std::string> Checkpoint::last_checkpoint() const {
  if (saved_.empty()) return std::nullopt;
  return save_handler_->Location(saved_.back().filename);
}

std::optional<std::string> Checkpoint::latest_checkpoint() const {
  if (saved_.empty()) return std::nullopt;
  const Item* latest = &saved_[0];
  for (const Item& i : saved_) {
    if (i.save_index > latest->save_index) latest = &i;
  }
  return save_handler_->Location(latest->filename);
}

std::optional<double> Checkpoint::best_score() const {
  if (saved_.empty() || !has_score()) return std::nullopt;
  return saved_.back().priority;
}

void Checkpoint::Reset() {
  // ignite's reset(): forget the list (the files stay, and are not adopted again).
  saved_.clear();
  restored_ = true;
}

Value Checkpoint::StateDict() const {
  Value list = Value::List();
  for (const Item& i : saved_) {
    const bool integral = std::isfinite(i.priority) && i.priority == std::floor(i.priority) && !has_score();
    list.Append(Value::Tuple({integral ? Value(static_cast<int64_t>(i.priority)) : Value(i.priority), i.filename}));
  }
  Value d = Value::Dict(/*ordered=*/true);
  d.Set("_saved", std::move(list));
  return d;
}

absl::Status Checkpoint::LoadStateDict(const Value& state) {
  const Value* list = state.is_dict() ? state.Find("_saved") : nullptr;
  if (list == nullptr) {
    std::vector<std::string> keys;
    for (const Value& k : state.keys()) keys.push_back(k.DebugString());
    return absl::InvalidArgumentError(absl::StrCat(
        "Required state attribute '_saved' is absent in provided state_dict 'dict_keys([",
        absl::StrJoin(keys, ", "), "])'"));
  }
  if (!list->is_sequence()) return absl::InvalidArgumentError("Checkpoint state: '_saved' must be a list");
  std::vector<Item> items;
  int64_t index = 0;
  for (const Value& entry : list->items()) {
    if (!entry.is_sequence() || entry.items().size() != 2 || !entry.items()[0].is_number() ||
        !entry.items()[1].is_string()) {
      return absl::InvalidArgumentError("Checkpoint state: '_saved' entries must be (priority, filename)");
    }
    items.push_back(Item{entry.items()[0].as_double(), entry.items()[1].as_string(), index++});
    // A file this checkpoint already verified (or wrote) stays so; the others are not, yet.
    for (const Item& known : saved_) {
      if (known.filename == items.back().filename && known.verified) items.back().verified = true;
    }
  }
  saved_ = std::move(items);
  next_index_ = std::max(next_index_, index);
  restored_ = true;  // the loaded list is authoritative (ignite: load replaces the list)
  return absl::OkStatus();
}

absl::Status Checkpoint::LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict) {
  return ember::LoadObjects(to_load, checkpoint, strict);
}

absl::StatusOr<std::optional<std::string>> Checkpoint::ResumeLatest(dist::Communicator& comm,
                                                                     const ObjectMap* to_load,
                                                                     bool start_over_if_unusable,
                                                                     Value* loaded) {
  if (!restored_) {
    restored_ = true;
    // The best is verified below, unless it is the file resumed from (read whole anyway).
    EMBER_RETURN_IF_ERROR(RestoreFromHandler(comm, /*verify_best=*/false));
  }
  std::vector<Item> newest_first = saved_;
  std::sort(newest_first.begin(), newest_first.end(),
            [](const Item& a, const Item& b) { return a.save_index > b.save_index; });
  // The saving rank finds the newest file that reads back intact and broadcasts its bytes; the
  // ones that do not are moved aside and dropped from the list on every rank.
  std::string chosen, bytes, dropped;
  const absl::Time deadline = absl::Now() + options_.save_timeout;
  EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, options_.save_on_rank, deadline, [&]() -> absl::Status {
    std::vector<std::string> unreadable;
    for (const Item& item : newest_first) {
      absl::StatusOr<std::string> b = save_handler_->ReadBytes(item.filename);
      absl::Status ok = b.status();
      if (ok.ok()) ok = VerifyTorchSave(*b, save_handler_->Location(item.filename)).status();
      if (!ok.ok()) {
        LogWarning(absl::StrCat("Checkpoint: cannot resume from ", save_handler_->Location(item.filename), ": ",
                                ok.ToString()));
        if (ok.code() == absl::StatusCode::kDataLoss) {
          save_handler_->Quarantine(item.filename, ok);
        } else {
          unreadable.push_back(absl::StrCat(item.filename, ": ", ok.message()));
        }
        absl::StrAppend(&dropped, item.filename, "\n");
        continue;
      }
      chosen = item.filename;
      bytes = *std::move(b);
      break;
    }
    // The file that ranks best is read whole too, unless it is the one just read.
    std::set<std::string> untrusted;
    for (absl::string_view f : absl::StrSplit(dropped, '\n', absl::SkipEmpty())) untrusted.insert(std::string(f));
    const size_t known = untrusted.size();
    VerifyBest(saved_, chosen, &untrusted);
    if (untrusted.size() > known) {
      for (const Item& item : saved_) {
        if (untrusted.count(item.filename) > 0 && dropped.find(item.filename + "\n") == std::string::npos) {
          absl::StrAppend(&dropped, item.filename, "\n");
        }
      }
    }
    std::vector<std::string> rejected = save_handler_->Rejected();
    rejected.insert(rejected.end(), unreadable.begin(), unreadable.end());
    if (chosen.empty() && !rejected.empty() && !start_over_if_unusable) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no usable checkpoint to resume from: ", rejected.size(), " file(s) seen, none usable (",
          absl::StrJoin(rejected, "; "), "); move them away, or ask to start over"));
    }
    return absl::OkStatus();
  }, outcome_timeout_));
  EMBER_RETURN_IF_ERROR(comm.Broadcast(dropped, options_.save_on_rank, deadline));
  for (absl::string_view f : absl::StrSplit(dropped, '\n', absl::SkipEmpty())) {
    std::erase_if(saved_, [&](const Item& i) { return i.filename == f; });
  }
  EMBER_RETURN_IF_ERROR(comm.Broadcast(chosen, options_.save_on_rank, deadline));
  for (Item& item : saved_) item.verified = item.verified || item.filename == chosen;  // read whole above
  // The best was verified above (Verify remembers it); this marks it on every rank.
  EMBER_RETURN_IF_ERROR(KeepBestVerified(comm));
  if (chosen.empty()) return std::optional<std::string>();
  const std::string location = save_handler_->Location(chosen);
  // The saving rank's verified bytes, checked to be the same on every rank after the transfer, then
  // parsed once, in place, without the per-record CRCs again (tools/run_dir.cc does the same).
  EMBER_RETURN_IF_ERROR(dist::BroadcastChecked(comm, bytes, options_.save_on_rank, location, deadline));
  EMBER_ASSIGN_OR_RETURN(Value checkpoint,
                         ReadVerifiedTorchSave(std::make_shared<std::string>(std::move(bytes)), location));
  if (options_.include_self) {
    const Value* self = checkpoint.Find("checkpointer");
    if (self != nullptr) {
      // The stored list replaces the one listed: its best is verified before it is reported.
      EMBER_RETURN_IF_ERROR(LoadStateDict(*self));
      for (Item& item : saved_) item.verified = item.verified || item.filename == chosen;
      EMBER_RETURN_IF_ERROR(KeepBestVerified(comm));
    }
    checkpoint.Erase("checkpointer");
  }
  EMBER_RETURN_IF_ERROR(LoadObjects(to_load != nullptr ? *to_load : to_save_, checkpoint));
  if (loaded != nullptr) *loaded = std::move(checkpoint);
  return std::optional<std::string>(location);
}

}  // namespace ember
