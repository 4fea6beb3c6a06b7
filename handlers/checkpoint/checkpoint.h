// File: handlers/checkpoint/checkpoint.h
//
// Checkpoint (ignite's, made crash-safe and exact across ranks) saves the state of `to_save`
// (modules, optimizers, engines, handlers, user objects) when its event fires, keeps the best
// `n_saved` by score (or the latest by step) and, optionally, also the `keep_last` most recent.
//
// Names, scores and retention follow ignite v0.5.3 (see docs/checkpoints.md):
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
// background save is returned there (on every rank), never dropped. With snapshot_in_background
// part of the copy moves to the background thread too. What is copied where, and what that
// guarantees (issue 24.3):
//   - At the firing, on the training thread: every tensor except module parameters and optimizer
//     state (Saveable::fenced()): a module's buffers (BatchNorm's running_mean, running_var,
//     num_batches_tracked, anything registered as a buffer), the engine's state, Stateful and
//     user objects. These change outside optimizer.step() (BatchNorm's statistics in a
//     training-mode forward, without moving their version counters), so they are copied before
//     the training thread goes on: nothing done after the firing reaches them in the file, with
//     or without the fence. They are usually small; a large Stateful costs its copy here.
//   - On the writer thread: module parameters and optimizer state. The training thread must call
//     ember::WaitForSnapshots() (snapshot_fence.h) before the next in-place change of them,
//     typically optimizer.step() (DataParallel::AllReduceGradients() calls it on its way out, after
//     the backward; a forward does not change parameters). With that call, the file holds exactly
//     the state at the firing: GUARANTEED, whatever the optimizer writes through (LibTorch's SGD
//     updates p.data(), which has a version counter of its own).
//   - Without it (misuse), the writer detects a change it can see, and then fails that save with
//     kFailedPrecondition naming the tensors (no file is written; the error surfaces at the next
//     save or Flush): a version counter that moved (an in-place change through the tensor or a view
//     of it, e.g. Adam's update, SGD's momentum buffer, once the changing op has returned), or bytes
//     that differ from their copy when the writer re-reads them after the whole copy (any write that
//     landed after those bytes were copied, p.data() included). NOT detected: a tear made only of
//     writes that leave the counter where it was (through p.data(), as LibTorch's SGD does, or by
//     an op that had not returned when the writer checked) each of which landed before the writer
//     copied those bytes or after it re-read them; the file then mixes two steps. Catching those
//     would need a reference taken at the firing (a pass over the state on the training thread,
//     which the background snapshot exists to avoid): only the fence rules them out. Device
//     tensors and non-contiguous ones are checked by version counter only.
// The save enters saved(), last_checkpoint() and latest_checkpoint() only when that wait found it
// succeeded; until then
// (and after a failure) they describe the files that are known to be durable. SAVED_CHECKPOINT
// fires when the write has been started. Attach() registers a Flush() at the engine's COMPLETED;
// however the checkpoint is registered (On() on an evaluator included), the outermost run that
// caused a background save awaits it before its Run() returns (Engine::AtOutermostRunEnd): a
// Flush() when that run succeeded, whose error becomes the run's; after a failed run, this rank's
// writer only, so that last_checkpoint() on the saving rank names what is on disk (the other
// ranks keep the records they had: after a failed multi-rank run the ranks' records may differ,
// and the checkpoint, like its poisoned communicator, is not for another run). A save made
// outside any Run() (Engine::Synchronize) is awaited by the next save or an explicit Flush().
//
// ModelCheckpoint (model_checkpoint.h) is this with its own DiskSaver, the usual way to make one.
//
// Example:
//   auto saver = std::make_shared<ember::InMemorySaver>();
//   auto ckpt = ember::Checkpoint::Create({{"model", model}, {"optimizer", optimizer}}, saver,
//                                         {.score_name = "acc", .n_saved = 2});
//   evaluator.On(ember::Events::Completed(), **ckpt);
#ifndef EMBER_HANDLERS_CHECKPOINT_H_
#define EMBER_HANDLERS_CHECKPOINT_H_

#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"
#include "distributed/root_action.h"
#include "distributed/settings_agreement.h"
#include "distributed/single_process_communicator.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"
#include "handlers/checkpoint/save_handler.h"
#include "handlers/checkpoint/saveable.h"
#include "handlers/checkpoint/score.h"
#include "handlers/serialization/value.h"
#include "handlers/checkpoint/snapshot_fence.h"
#include "handlers/checkpoint/stateful.h"

namespace ember {

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
  // With async_save: copy module parameters and optimizer state on the background thread as well
  // (see above; the rest is copied at the firing). The caller promises to call
  // ember::WaitForSnapshots() before changing those in place (optimizer.step()).
  bool snapshot_in_background = false;
  // How long the saving rank's outcome may take to reach the others.
  absl::Duration save_timeout = absl::Minutes(30);
};

class Checkpoint : public SynchronizedHandler, public Stateful {
 public:
  struct Item {
    double priority;
    std::string filename;
    int64_t save_index;
    // Read whole and found intact (SaveHandler::Verify), or written by this run; a file adopted
    // from a listing (its trailer alone) or a loaded state is not, until it is verified. The
    // best in saved() is always verified; so is every file that ranks above one that retention
    // evicts or above a save that is skipped as not better.
    bool verified = false;
  };

  static absl::StatusOr<std::unique_ptr<Checkpoint>> Create(ObjectMap to_save,
                                                            std::shared_ptr<SaveHandler> save_handler,
                                                            CheckpointOptions options = {});
  ~Checkpoint() override;
  // Binds the checkpoint to the job's communicator (ModelCheckpoint::Create does when given one):
  // saving from an engine whose communicator has another world size is then an error, and
  // ResumeLatest() and Flush() without a communicator use this one. Unbound, the checkpoint
  // belongs to the World that was alive when it was created (dist::DefaultCommunicator(), the
  // same checks apply), or, when none was, to this process alone (world size 1: no World is
  // needed). Using it after that World is gone (a World that was a temporary, as in
  // `LaunchWorld().value()->rank()`), or without one after a multi-rank World started, is
  // kFailedPrecondition, never a dangling pointer.
  void BindCommunicator(dist::Communicator* comm) { comm_ = comm; }

  // What every rank of a multi-rank job must hold the same for a checkpoint: whether its
  // arguments are valid (`valid`), the names of to_save, and every option (save_on_rank, n_saved,
  // keep_last, filename_prefix, score_name, whether a score function and a global step transform
  // are given, filename_pattern, include_self, greater_or_equal, score_reduction, async_save,
  // snapshot_in_background), plus `extra` (a saver's options). Agreed once at creation
  // (dist::AgreeOnSettings with `context`: Create does it on the World alive at that moment,
  // ModelCheckpoint::Create on its communicator, before its saver's first collective); a mismatch
  // fails every rank with an error naming each setting and each rank's value, before anything is
  // written. A collective when comm has several ranks; nothing otherwise.
  static absl::Status AgreeAtCreate(dist::Communicator& comm, absl::string_view context, const ObjectMap& to_save,
                                    const CheckpointOptions& options, const absl::Status& valid,
                                    const dist::SettingList& extra = {});

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
  // they are moved aside (DiskSaver) and logged (base/log.h); when files were seen but none is usable,
  // this fails (kFailedPrecondition, naming each file and why) unless start_over_if_unusable.
  // The saving rank reads the file and broadcasts its bytes, so every rank loads the same state
  // even without a shared filesystem. A collective: call it on every rank.
  absl::StatusOr<std::optional<std::string>> ResumeLatest(dist::Communicator& comm,
                                                          const ObjectMap* to_load = nullptr,
                                                          bool start_over_if_unusable = false,
                                                          Value* loaded = nullptr);
  // The same through the bound communicator (see BindCommunicator).
  absl::StatusOr<std::optional<std::string>> ResumeLatest();

  // Sets aside this checkpointer's files from a future the run abandoned, i.e. saved at a global
  // step above `step` (the unit of global_step_transform; without one, the iteration): a run that
  // resumed from an earlier point must neither rank, report nor resume from them, nor delete
  // them (a negative step: every file of a known step, when the run continues another run's
  // checkpoint). Each is renamed by the save handler (DiskSaver: "NAME.pt.abandoned"), said on stderr
  // and dropped from saved(); returns where each was. A file whose step is unknown (a score-ranked
  // checkpoint without global_step_transform) stays. A collective: call it on every rank.
  // A checkpoint ranked by step (no score) does this itself when it is about to save at a step
  // below a kept file's: such a save is always written, never skipped in favour of that file.
  absl::StatusOr<std::vector<std::string>> SetAsideAfter(dist::Communicator& comm, int64_t step);

  // Goodput accounting, cumulative since construction: the time this rank's training thread spent
  // in this checkpointer's saves (the whole handler: waiting for the previous background write,
  // the agreement on the outcome, the copy or the synchronous write), and the time the background
  // writer spent writing (async_save; the saving rank only). Readable from any thread.
  absl::Duration blocked_time() const { return absl::Nanoseconds(blocked_ns_.load(std::memory_order_relaxed)); }
  absl::Duration background_write_time() const {
    return absl::Nanoseconds(background_ns_.load(std::memory_order_relaxed));
  }

  // Waits for an asynchronous save and returns its outcome on every rank (a collective). The
  // saving rank waits for the others at most the collective timeout of the engine it last fired
  // on (300 s before any) once the save is done: a peer that stalled meanwhile fails it then, not
  // after save_timeout (dist::RunOnRoot).
  absl::Status Flush(dist::Communicator& comm);
  absl::Status Flush();
  void Reset();

  // {"_saved": [(priority, filename), ...]}
  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

  // ignite's Checkpoint.load_objects; see LoadObjects in saveable.h.
  static absl::Status LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict = true);

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override {
    return has_score() ? options_.score_reduction : dist::Reduction::kMax;
  }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  // "prefix=<filename_prefix>, score=<score_name>" (each when set; "score_function=<CallableName>"
  // with a score function, base/type_name.h), for the layout the ranks agree on.
  std::string label() const override;

 private:
  Checkpoint(ObjectMap to_save, std::shared_ptr<SaveHandler> save_handler, CheckpointOptions options);
  // The communicator of ResumeLatest() and Flush() without one (see BindCommunicator).
  absl::StatusOr<dist::Communicator*> BoundCommunicator();
  bool has_score() const { return options_.score_function || !options_.score_name.empty(); }
  std::string ObjectName() const;
  std::string Basename() const;
  absl::StatusOr<std::string> Filename(const std::optional<Score>& score,
                                       std::optional<int64_t> global_step) const;
  // With `fenced`: also the storages a background snapshot copies behind the fence (see
  // Saveable::fenced()); every other tensor is copied at the firing.
  absl::StatusOr<Value> BuildCheckpoint(std::set<const void*>* fenced = nullptr) const;
  // verify_best: the file that would rank best is verified in full (SaveHandler::Verify) before
  // it is adopted (ResumeLatest does it itself, after reading the file it resumes from).
  absl::Status RestoreFromHandler(dist::Communicator& comm, bool verify_best = true);
  // On the saving rank: verifies the best-ranked of `ranked` (skipping those in `*untrusted`),
  // adding each one that fails to `*untrusted`, until one verifies or is `trusted` (already read).
  void VerifyBest(std::vector<Item> ranked, const std::string& trusted, std::set<std::string>* untrusted);
  // A collective: the saving rank verifies `files` (of saved_); those that fail are dropped
  // from saved_ on every rank (a corrupt one is quarantined by the handler), the rest marked
  // verified on every rank.
  absl::Status VerifyFiles(dist::Communicator& comm, const std::vector<std::string>& files);
  // Keeps "the best in saved_ is verified" after the best was removed or replaced: verifies the
  // best until one passes (nothing, and no collective, when it already is). Call on every rank.
  absl::Status KeepBestVerified(dist::Communicator& comm);
  std::optional<int64_t> StepOf(const Item& item) const;
  absl::StatusOr<std::vector<std::string>> SetAsideLater(dist::Communicator& comm, int64_t step);
  // After a failed run, without a collective: waits for this rank's writer; the saving rank
  // records the save when it succeeded, an error is logged (the run's error is the one returned).
  void WaitLocally(bool saving_rank);

  ObjectMap to_save_;
  dist::Communicator* comm_ = nullptr;  // BindCommunicator's; its world size is checked at saves
  // Unbound: the World alive at Create (compared by address only: it may be gone) and its size.
  dist::Communicator* world_at_create_ = nullptr;
  int world_size_at_create_ = 1;
  dist::SingleProcessCommunicator alone_;  // no World at Create: this process alone
  // How long the saving rank waits for the others once its part of a collective step is done
  // (RunOnRoot's outcome_timeout): the collective timeout of the engine it was last attached to or
  // fired on. Every RunOnRoot of this checkpoint passes it (their deadline is save_timeout).
  absl::Duration outcome_timeout_ = absl::Seconds(300);
  std::shared_ptr<SaveHandler> save_handler_;
  CheckpointOptions options_;
  std::vector<Item> saved_;
  std::map<std::string, int64_t> steps_;  // the global step each file was saved at, when known
  int64_t next_index_ = 0;
  bool restored_ = false;
  Score::Kind local_kind_ = Score::Kind::kFloat;
  std::optional<int64_t> pending_step_;
  // Asynchronous saving (saving rank only). writer_status_, pending_saved_ and copy_cache_ are
  // written by the writer thread while it runs and read by the training thread only after
  // writer_.join() (Flush, WaitLocally, the next save, the destructor): join() is their lock.
  std::thread writer_;
  absl::Status writer_status_;
  std::optional<std::vector<Item>> pending_saved_;  // saved_ once the background save succeeds
  Value copy_cache_;                         // the last copy; its buffers are reused
  std::shared_ptr<Snapshot> snapshot_;       // the background copy in progress (snapshot_in_background)
  std::atomic<int64_t> blocked_ns_{0}, background_ns_{0};
  // Owns the work left with Engine::AtOutermostRunEnd: expires with the checkpoint, which then
  // skips that work (a new checkpoint, even at the same address, is another owner).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ember

#endif  // EMBER_HANDLERS_CHECKPOINT_H_
