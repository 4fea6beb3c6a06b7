// File: handlers/checkpoint.h
//
// Checkpoint (ignite's, made crash-safe and exact across ranks) saves the state of `to_save`
// (modules, optimizers, engines, handlers, user objects) when its event fires, keeps the best
// `n_saved` by score (or the latest by step) and, optionally, also the `keep_last` most recent.
//
// Names, scores and retention follow ignite v0.5.3 (see README, "Checkpoint"):
//   {prefix}_{name}_{global_step}_{score_name}={score}.pt, "checkpoint" as the name when several
//   objects are saved, a single object saved as its bare state_dict, %.4f scores, ties kept
//   first-come (or last-come with greater_or_equal), last_checkpoint = the highest priority.
// Deliberate differences (DESIGN.md): the new file is written durably BEFORE the old one is
// removed, and a save is recorded only after it succeeded (ignite removes first, so a failed save
// leaves nothing); a file with the same name is replaced by rename; n_saved < 1 and other bad
// arguments fail at Create; a NaN score ranks below every finite score; latest_checkpoint gives
// the most recent file.
//
// Retention survives restarts: on its first call, the checkpointer adopts the files of its own
// basename already in the save handler (their priority and order are stored inside them), so a
// resumed run neither forgets old checkpoints nor keeps too many. It never deletes a file it did
// not write, and it removes a file only after the checkpoint that replaces it is durable, so the
// file a run resumed from stays until a newer one is safely on disk (then retention applies to it
// like to any other).
//
// Multi-rank: a SynchronizedHandler. Every rank computes the same priority (the score is reduced
// across ranks, MEAN by default) and so the same retention bookkeeping; only save_on_rank
// touches the save handler, and its outcome is broadcast, so a failed save fails every rank with
// the same error. SAVED_CHECKPOINT fires on every rank after a successful save.
//
// Asynchronous saving (async_save): the state is copied on the training thread and written on a
// background thread on the saving rank; the next save and Flush() wait for it, and an error of a
// background save is returned there (on every rank), never dropped. The save enters saved(),
// last_checkpoint() and latest_checkpoint() only when that wait found it succeeded; until then
// (and after a failure) they describe the files that are known to be durable. SAVED_CHECKPOINT
// fires when the write has been started. Attach() registers a Flush() at the engine's COMPLETED.
//
// Example:
//   auto saver = ember::DiskSaver::Create({.dirname = "runs/ckpt"}, &comm);
//   auto ckpt = ember::Checkpoint::Create({{"model", model}, {"optimizer", optimizer}},
//                                         *std::move(saver), {.n_saved = 2, .score_name = "acc"});
//   evaluator.On(ember::Events::Completed(), **ckpt);
#ifndef EMBER_HANDLERS_CHECKPOINT_H_
#define EMBER_HANDLERS_CHECKPOINT_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"
#include "handlers/save_handler.h"
#include "handlers/stateful.h"
#include "handlers/value.h"

namespace ember {

// Something with a state_dict: a module, an optimizer, an engine, or a Stateful.
class Saveable {
 public:
  Saveable(torch::nn::Module& module);  // NOLINT: implicit by design
  template <typename M>
  Saveable(torch::nn::ModuleHolder<M>& holder) : Saveable(*holder) {}  // NOLINT
  Saveable(torch::optim::Optimizer& optimizer);  // NOLINT
  Saveable(Engine& engine);                      // NOLINT
  Saveable(Stateful& stateful);                  // NOLINT
  Saveable(std::function<absl::StatusOr<Value>()> state_dict,
           std::function<absl::Status(const Value&, bool strict)> load);

  absl::StatusOr<Value> StateDict() const { return get_(); }
  absl::Status LoadStateDict(const Value& state, bool strict = true) const { return set_(state, strict); }

 private:
  std::function<absl::StatusOr<Value>()> get_;
  std::function<absl::Status(const Value&, bool)> set_;
};

using ObjectMap = std::vector<std::pair<std::string, Saveable>>;

// A score: a number, remembering whether it is an integer or a bool (ignite formats those
// without decimals: "3", "True").
struct Score {
  enum class Kind : uint8_t { kFloat, kInt, kBool };
  double value = 0;
  Kind kind = Kind::kFloat;
  Score(double v) : value(v) {}                                  // NOLINT
  Score(float v) : value(v) {}                                   // NOLINT
  Score(int v) : value(v), kind(Kind::kInt) {}                   // NOLINT
  Score(int64_t v) : value(static_cast<double>(v)), kind(Kind::kInt) {}  // NOLINT
  Score(bool v) : value(v ? 1 : 0), kind(Kind::kBool) {}         // NOLINT
};

// ignite's score formatting: int -> "3", bool -> "True", float -> "%.4f" ("nan", "inf").
std::string FormatScore(const Score& score);

struct CheckpointOptions {
  std::string filename_prefix;
  std::function<Score(const Engine&)> score_function;
  // Alone: the score is state().metrics[score_name] of the engine it is attached to.
  std::string score_name;
  std::optional<int> n_saved = 1;  // nullopt keeps everything
  int keep_last = 0;               // also keep this many most recent checkpoints
  std::function<int64_t(const Engine&, Event)> global_step_transform;
  // str.format-style: {filename_prefix} {name} {global_step} {score_name} {score} {ext}
  std::string filename_pattern;
  bool include_self = false;
  bool greater_or_equal = false;
  int save_on_rank = 0;
  dist::Reduction score_reduction = dist::Reduction::kMean;
  bool async_save = false;
  // How long the saving rank's outcome may take to reach the others.
  absl::Duration save_timeout = absl::Minutes(30);
};

class Checkpoint : public SynchronizedHandler, public Stateful {
 public:
  struct Item {
    double priority;
    std::string filename;
    int64_t save_index;
  };

  static absl::StatusOr<std::unique_ptr<Checkpoint>> Create(ObjectMap to_save,
                                                            std::shared_ptr<SaveHandler> save_handler,
                                                            CheckpointOptions options = {});
  ~Checkpoint() override;
  // The world size of the job this checkpoint was created for (CreateModelCheckpoint sets it):
  // saving from an engine whose communicator has another size is an error.
  void set_expected_world_size(int n) { expected_world_size_ = n; }

  // Fired (on the engine the checkpoint is attached to) after each successful save.
  static Event SavedCheckpointEvent();

  // Registers the checkpoint on `events` and a Flush() at COMPLETED.
  absl::Status Attach(Engine& engine, const EventList& events);

  // The highest-priority checkpoint (ignite's last_checkpoint), and the most recent one; full
  // paths with a DiskSaver.
  std::optional<std::string> last_checkpoint() const;
  std::optional<std::string> latest_checkpoint() const;
  std::optional<double> best_score() const;
  // Kept checkpoints, ascending priority (ties: oldest first).
  const std::vector<Item>& saved() const { return saved_; }
  SaveHandler& save_handler() const { return *save_handler_; }

  // Resume: loads the newest checkpoint of this checkpointer that reads back intact into
  // `to_load` (default: the objects it saves) and returns its location; nullopt when there is
  // none (a fresh start). `loaded`, when given, receives the whole checkpoint as read (to check
  // settings stored beside the objects). Files that are corrupt are never used:
  // they are moved aside (DiskSaver) and said on stderr; when files were seen but none is usable,
  // this fails (kFailedPrecondition, naming each file and why) unless start_over_if_unusable.
  // The saving rank reads the file and broadcasts its bytes, so every rank loads the same state
  // even without a shared filesystem. A collective: call it on every rank.
  absl::StatusOr<std::optional<std::string>> ResumeLatest(dist::Communicator& comm,
                                                          const ObjectMap* to_load = nullptr,
                                                          bool start_over_if_unusable = false,
                                                          Value* loaded = nullptr);

  // Waits for an asynchronous save and returns its outcome on every rank (a collective).
  absl::Status Flush(dist::Communicator& comm);
  void Reset();

  // {"_saved": [(priority, filename), ...]}
  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

  // ignite's load_objects: one object whose key is not in the checkpoint takes the whole
  // checkpoint; otherwise key by key (extra checkpoint keys are ignored, a missing one is an
  // error). `strict` applies to modules.
  static absl::Status LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict = true);

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override {
    return has_score() ? options_.score_reduction : dist::Reduction::kMax;
  }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;

 private:
  Checkpoint(ObjectMap to_save, std::shared_ptr<SaveHandler> save_handler, CheckpointOptions options);
  bool has_score() const { return options_.score_function || !options_.score_name.empty(); }
  std::string ObjectName() const;
  std::string Basename() const;
  absl::StatusOr<std::string> Filename(const std::optional<Score>& score,
                                       std::optional<int64_t> global_step) const;
  absl::StatusOr<Value> BuildCheckpoint() const;
  absl::Status RestoreFromHandler(dist::Communicator& comm);

  ObjectMap to_save_;
  int expected_world_size_ = 0;  // CreateModelCheckpoint's communicator's; 0: not checked
  std::shared_ptr<SaveHandler> save_handler_;
  CheckpointOptions options_;
  std::vector<Item> saved_;
  int64_t next_index_ = 0;
  bool restored_ = false;
  Score::Kind local_kind_ = Score::Kind::kFloat;
  std::optional<int64_t> pending_step_;
  // Asynchronous saving (saving rank only).
  std::thread writer_;
  absl::Status writer_status_;
  std::optional<std::vector<Item>> pending_saved_;  // saved_ once the background save succeeds
  Value copy_cache_;                         // the last copy; its buffers are reused
};

struct ModelCheckpointOptions {
  std::string dirname;
  std::string filename_prefix;
  std::function<Score(const Engine&)> score_function;
  std::string score_name;
  std::optional<int> n_saved = 1;
  int keep_last = 0;
  bool atomic = true;
  bool require_empty = true;
  bool create_dir = true;
  std::function<int64_t(const Engine&, Event)> global_step_transform;
  std::string filename_pattern;
  bool include_self = false;
  bool greater_or_equal = false;
  int save_on_rank = 0;
  dist::Reduction score_reduction = dist::Reduction::kMean;
  bool async_save = false;
  FileSystem* fs = nullptr;
};

// ignite's ModelCheckpoint: a Checkpoint with its own DiskSaver. `comm` (default: the process's
// default communicator, i.e. the World of dist::LaunchWorld(), else this process alone; every
// rank calls this) gives every rank the saving rank's verdict on the directory. The checkpoint
// then refuses to save from an engine whose communicator has another world size (e.g. an
// evaluator left on a single-process communicator in a multi-rank job), naming both sizes.
absl::StatusOr<std::unique_ptr<Checkpoint>> CreateModelCheckpoint(ModelCheckpointOptions options,
                                                                  ObjectMap to_save,
                                                                  dist::Communicator* comm = nullptr);

// ignite's global_step_from_engine: the other engine's counter for the event the checkpoint's
// engine is at (its epoch at EPOCH_*/COMPLETED, its iteration at ITERATION_*); falls back to the
// epoch for events without a counter (ignite HEAD's fallback_attr="epoch").
std::function<int64_t(const Engine&, Event)> GlobalStepFromEngine(const Engine& other);

}  // namespace ember

#endif  // EMBER_HANDLERS_CHECKPOINT_H_
