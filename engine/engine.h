// File: engine/engine.h
//
// Engine runs a step function over data for a number of epochs and fires events around it, in
// pytorch-ignite's order (v0.5.3; see docs/library.md). Handlers registered on an event run
// in registration order. It is ignite's Engine in C++: the same event order, filters, resume
// rules, terminate / terminate_epoch semantics and state_dict, with these deliberate
// differences:
//   - errors are values: Run() returns absl::Status (ignite raises);
//   - an EXCEPTION_RAISED handler that rethrows is called once (ignite calls it twice);
//   - invalid arguments (max_epochs < 1, epoch_length < 1, a batch of the wrong type) are
//     reported before anything runs.
//
// Thread safety: not thread-safe. One thread registers handlers and drives Run(); Terminate()
// and TerminateEpoch() must be called from that thread too (from a handler, or from another
// engine's handler running on the same thread, as EarlyStopping does). Distributed use: every
// rank must register the same handlers in the same order, so that events fire identically.
//
// Example:
//   std::vector<Batch> data = ...;
//   ember::Engine trainer([&](ember::Engine& e, const Batch& b) { return Step(b); });
//   trainer.On(ember::Events::IterationCompleted().Every(100), [](ember::Engine& e) {
//     std::printf("iteration %lld\n", static_cast<long long>(e.state().iteration));
//   });
//   absl::Status s = trainer.Run(data, {.max_epochs = 5});
//
// What a run agrees on at start: when the communicator has several ranks and the engine has
// synchronized handlers, Run() first checks, in one small collective (dist::AgreeOnSettings,
// "Engine::Run"), that every rank runs with the same epoch_length, max_epochs, max_iters and
// starting iteration, the same validity of Run's arguments, and the same synchronized handlers
// (in order, per event, each with its type, its label (SynchronizedHandler::label(): the score
// name, the filename prefix), its reductions and its filter with its arguments). A mismatch
// fails Run on every rank before any event fires, naming each setting and each rank's value
// ("synchronized handlers at COMPLETED is EarlyStopping(score=accuracy; MEAN) then
// EarlyStopping(score=loss; MEAN) on rank 0, EarlyStopping(score=loss; MEAN) then
// EarlyStopping(score=accuracy; MEAN) on rank 1"; "Checkpoint(MAX; every=2) on rank 0,
// Checkpoint(MAX; every=3) on rank 1"), and poisons the communicator. The same description,
// hashed once when the handler is registered, is the layout digest of each firing's agreement.
// Plain handlers are not compared (they do not communicate; a rank may log alone). Score
// functions and filter predicates are compared by CallableName (base/type_name.h): two lambdas
// are told apart, one lambda's captured state is not. An engine without synchronized
// handlers issues no collective and agrees on nothing (an engine only some ranks run, say an
// evaluator on rank 0 with plain handlers, must not wait for the others). The cost: a rank that
// registered no synchronized handler while its peers did is not seen at start; the peers wait
// out the collective timeout in this agreement and fail with DEADLINE_EXCEEDED saying that a rank
// without synchronized handlers skips it, and that rank fails in its step's collective (a
// gradient all-reduce, which never matches the agreement: another channel) or with their
// failure notice. Nothing is reduced or written meanwhile. Under strict mode
// (EMBER_DISTRIBUTED_DEBUG=DETAIL on every rank, communicator.h) it is seen at once: every rank
// fails with FAILED_PRECONDITION naming the collective each rank is in.
//
// The step function is called as step(engine, batch) with the batch by const reference, or as
// step(engine) for runs without data. What it returns becomes state().output (std::any; void
// leaves it empty); returning a non-OK absl::Status or absl::StatusOr, or throwing, raises an
// exception inside the run (EXCEPTION_RAISED handlers see it; without one, Run returns it).
//
// Distributed runs: an engine agrees through the process's default communicator (the World of
// dist::LaunchWorld(), when one was created before the engine), else through a single-process
// one (the same code path); set_communicator() gives it another one explicitly. Run() refuses to
// start when the launcher's environment says this is a multi-rank job, the engine has
// synchronized handlers, and its communicator is the implicit single-process one (a World
// created after the engine, or none at all): such handlers would decide alone on each rank. SynchronizedHandlers (synchronized_handler.h) due at
// one firing are agreed on in one collective with a deadline (set_collective_timeout); a failed
// or timed-out collective fails the run with an error naming the event and iteration. A run that
// fails on one rank of several (a handler's error, say) fails its communicator
// (Communicator::Fail): the peers' collectives then end promptly with kAborted "rank R failed:
// <error>" and the communicator stays poisoned (the job must end).
//
// Handlers are callables taking (Engine&) or (), returning void or absl::Status (non-OK is
// raised like an exception). EXCEPTION_RAISED handlers may take (Engine&, std::exception_ptr).
// A copyable handler is copied; a non-copyable lvalue (a handler object the caller owns, such
// as a Checkpoint) is referenced and must outlive its registration; a non-copyable rvalue, a
// std::unique_ptr or an absl::StatusOr<std::unique_ptr<H>> is owned by the engine.
#ifndef EMBER_ENGINE_ENGINE_H_
#define EMBER_ENGINE_ENGINE_H_

#include <any>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/status_error.h"
#include "distributed/communicator.h"
#include "distributed/consensus.h"
#include "distributed/default_communicator.h"
#include "distributed/single_process_communicator.h"
#include "engine/events.h"
#include "engine/state.h"
#include "engine/state_dict.h"
#include "engine/synchronized_handler.h"

namespace ember {

// A source of batches, for data that is not a container: streams, generators, data of unknown
// length. The engine calls Next() until it returns nullptr, then Restart() (ignite resets the
// iterator only when it runs out, not at every epoch boundary).
template <typename Batch>
class DataSource {
 public:
  virtual ~DataSource() = default;
  // Number of batches, when known; the engine then uses it as the default epoch_length.
  virtual std::optional<int64_t> size() const { return std::nullopt; }
  // The next batch, or nullptr at the end. The pointer stays valid until the next call.
  virtual const Batch* Next() = 0;
  // Starts again from the beginning. A one-shot stream may do nothing: Next() then keeps
  // returning nullptr, and the engine ends the run with a warning.
  virtual void Restart() = 0;
};

// Arguments of Engine::Run, as ignite's run(data, max_epochs, max_iters, epoch_length).
struct RunOptions {
  std::optional<int64_t> max_epochs;
  std::optional<int64_t> max_iters;
  std::optional<int64_t> epoch_length;
};

class Engine;

namespace engine_internal {
template <typename C>
concept Iterable = requires(const C& c) {
  std::begin(c);
  std::end(c);
};
}  // namespace engine_internal

// Returned by handler registration; Remove() unregisters the handler (on every event it was
// registered on). Copyable; safe to use after the engine is gone (it then does nothing).
class HandlerHandle {
 public:
  HandlerHandle() = default;
  // Returns true if the handler was still registered.
  bool Remove();
  bool registered() const;

 private:
  friend class Engine;
  std::weak_ptr<Engine*> engine_;
  std::vector<uint64_t> ids_;
};

class Engine {
 public:
  // `step` is step(Engine&, const Batch&) or step(Engine&); see the header comment.
  template <typename Step>
  explicit Engine(Step step);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // ---- Handlers and events -------------------------------------------------------------
  // Registers `handler` on every event of `events`, checking the filters (ignite's argument
  // rules and messages) and that custom events were registered.
  template <typename H>
  absl::StatusOr<HandlerHandle> AddEventHandler(const EventList& events, H&& handler);
  // Like AddEventHandler, but an invalid registration is not an error here: it makes the next
  // Run() fail with the registration's error (so `On` chains read simply, and no error is lost).
  template <typename H>
  HandlerHandle On(const EventList& events, H&& handler);

  // Makes custom events valid for this engine (ignite's register_events).
  void RegisterEvents(std::initializer_list<Event> events);
  bool IsRegistered(Event event) const;
  // Fires `event` (built-in or registered custom) now, running its handlers.
  absl::Status FireEvent(Event event);
  // Runs one synchronized handler now, outside Run() (e.g. a checkpoint after a preemption
  // stopped the run): its proposal is reduced across ranks with this engine's communicator and
  // deadline, then it decides. A collective: call it on every rank. kFailedPrecondition inside
  // Run().
  absl::Status Synchronize(SynchronizedHandler& handler);

  // Work that outlives its event: `fn` runs once when the outermost Run() now in progress on this
  // thread ends (the run that is not nested in another engine's handler: a trainer whose
  // EPOCH_COMPLETED runs an evaluator), after its COMPLETED, also when it failed or terminated,
  // before Run() returns. `fn` gets whether that run succeeded on this rank; an error it returns
  // becomes the run's when the run had none (and the run's outcome is then kFailed). `owner`
  // identifies the work: while one registration of an owner is pending, another is the same work
  // (the first stays); once `owner` has expired, its work is skipped (an owner destroyed mid-run
  // leaves nothing behind). Returns false, registering nothing, when no Run() is in progress on
  // this thread. Used by handlers that leave work in flight past their event (an asynchronous
  // checkpoint registered with On() on an evaluator), so that the run that caused the work awaits
  // it and reports its error.
  // Multi-rank: a run that failed on a rank has poisoned its communicator (and told the peers)
  // before this work runs there, so a collective in `fn` on a rank whose run succeeded fails
  // promptly with the peer's error instead of waiting for a rank that will not join; `fn` must call
  // a collective only when `run_ok`, and every rank whose run succeeded registers the same work.
  static bool AtOutermostRunEnd(std::weak_ptr<const void> owner, std::function<absl::Status(bool run_ok)> fn);

  // ---- Running ---------------------------------------------------------------------------
  // Runs over a container of batches (anything with begin()/end() yielding const Batch&).
  template <typename Container>
    requires engine_internal::Iterable<Container>
  absl::Status Run(const Container& data, RunOptions options = {});
  // Runs over a DataSource.
  template <typename Batch>
  absl::Status Run(DataSource<Batch>& data, RunOptions options = {});
  // Runs without data (ignite's run(None, epoch_length=...)); needs an epoch_length.
  absl::Status Run(RunOptions options);

  // Stops the run after the current event's handlers; fires TERMINATE, then COMPLETED unless
  // skip_completed. A later Run() resumes at the next epoch.
  void Terminate(bool skip_completed = false) { TerminateBy("", skip_completed); }
  // Terminate, saying who stopped the run (outcome().terminated_by): Ember's handlers pass their
  // name ("TerminateOnNan", "EarlyStopping").
  void TerminateBy(std::string who, bool skip_completed = false);
  // Ends the current epoch after the current event's handlers; fires TERMINATE_SINGLE_EPOCH,
  // then EPOCH_COMPLETED unless skip_epoch_completed; the run goes on with the next epoch.
  // Not allowed from STARTED or EPOCH_STARTED (the run fails).
  void TerminateEpoch(bool skip_epoch_completed = false);
  bool should_terminate() const { return should_terminate_; }

  // How the last Run() ended: completed (every epoch ran), terminated (Terminate() was called;
  // by whom, at which event and iteration) or failed (the status Run() returned).
  struct RunOutcome {
    enum class Kind { kNotRun, kCompleted, kTerminated, kFailed };
    Kind kind = Kind::kNotRun;
    std::string terminated_by;        // kTerminated: the TerminateBy name ("" for Terminate())
    std::optional<Event> terminated_at;
    int64_t epoch = 0;                // state().epoch and iteration when the run ended
    int64_t iteration = 0;
    absl::Status status;              // kFailed: the error
    bool completed() const { return kind == Kind::kCompleted; }
    bool terminated() const { return kind == Kind::kTerminated; }
    // "completed at epoch 3", "terminated by EarlyStopping at epoch 5",
    // "failed at epoch 2: <the error>", "not run".
    std::string Summary() const;
  };
  const RunOutcome& outcome() const { return outcome_; }

  // ---- State -----------------------------------------------------------------------------
  State& state() { return state_; }
  const State& state() const { return state_; }
  // The last event fired (ignite's last_event_name), if any.
  std::optional<Event> last_event() const;
  // The exception being handled, inside EXCEPTION_RAISED handlers; null elsewhere.
  std::exception_ptr current_exception() const { return current_exception_; }
  // The counter that filters of `event` see: the iteration or the epoch.
  absl::StatusOr<int64_t> EventAttributeValue(Event event) const;

  // ignite's state_dict(): epoch_length, max_epochs, iteration (max_iters when set), then the
  // user keys (values from state().user).
  StateDict GetStateDict() const;
  // ignite's load_state_dict: needs epoch_length, max_epochs and exactly one of iteration or
  // epoch, plus every user key.
  absl::Status LoadStateDict(const StateDict& state_dict);
  void set_state_dict_user_keys(std::vector<std::string> keys) {
    user_keys_ = std::move(keys);
  }
  const std::vector<std::string>& state_dict_user_keys() const { return user_keys_; }

  // ---- Distributed -----------------------------------------------------------------------
  // The communicator that synchronized handlers agree through (not owned; null restores the
  // built-in single-process one). Set it before Run.
  void set_communicator(dist::Communicator* comm) {
    consensus_ = dist::Consensus(comm != nullptr ? comm : &single_process_);
  }
  dist::Communicator& communicator() const { return *consensus_.comm(); }
  // How long one agreement may wait for the other ranks (default 300 s).
  void set_collective_timeout(absl::Duration timeout) { collective_timeout_ = timeout; }
  absl::Duration collective_timeout() const { return collective_timeout_; }
  // Debug: after each agreement, all-gather a digest of every rank's resulting decisions and
  // fail if any rank differs (one more collective per synchronized firing). Agreed at the start
  // of Run like the handlers: it must be set alike on every rank.
  void set_verify_agreement(bool verify) { verify_agreement_ = verify; }
  // Number of agreements (collectives issued for synchronized handlers) so far.
  int64_t agreements() const { return agreements_; }

  // ---- An agreement carried by another collective ----------------------------------------
  // A component that runs a collective of its own in every step (DataParallel's gradient
  // all-reduce) can carry ITERATION_COMPLETED's agreement in it, so that a step costs that
  // collective alone. Inside the step function, with the output the step will return:
  //   EMBER_ASSIGN_OR_RETURN(absl::Span<const double> mine, engine.ProposeAhead(output));
  // runs Propose of the synchronized handlers on ITERATION_COMPLETED that can propose in the
  // step (SynchronizedHandler::proposes_in_step(), registered without an event filter), with
  // state().output set to `output`. The component all-gathers these n values (the same n on
  // every rank, since every rank registers the same handlers) and hands them back, rank r's at
  // [r * n, r * n + n), with
  //   EMBER_RETURN_IF_ERROR(engine.CarryAgreement(gathered));
  // At the firing those handlers do not propose again: they decide on the carried values, in
  // their place and order, exactly as after the firing's own collective. A firing whose due
  // synchronized handlers were all carried issues no collective (carried_agreements() counts
  // it); one with a handler that was not (a filtered Checkpoint every N iterations, say) agrees
  // in its own collective as before, the carried handlers contributing their values. A signal
  // or output that arrives after ProposeAhead counts at the next iteration. With several ranks
  // the span always has dist::kAgreementSlots values (fixed, whatever the handlers: a rank that
  // registered other handlers never hands the transport a bucket of another size): the
  // agreement's identity (consensus.h) and the values; CarryAgreement checks every rank's
  // identity before anything is used (a mismatch poisons the communicator and fails on every
  // rank, naming the ranks' handlers). More than dist::kAgreementInline values are not carried
  // (the firing agrees in its own collective). An empty span: a single process.
  absl::StatusOr<absl::Span<const double>> ProposeAhead(const std::any& output);
  absl::Status CarryAgreement(absl::Span<const double> gathered);
  // Firings decided on carried values without a collective of their own.
  int64_t carried_agreements() const { return carried_agreements_; }

  // Where this engine's warnings go (a one-shot stream that ran dry, ...): a per-engine override
  // of the library's log sink. Default (none set): ember::LogWarning (base/log.h), which writes
  // to stderr unless the program installed its own sink with ember::SetLogSink().
  void set_warning_handler(std::function<void(const std::string&)> handler) {
    warning_handler_ = std::move(handler);
  }

 private:
  using HandlerFn = std::function<void(Engine&)>;
  using StepFn = std::function<void(Engine&, const void*)>;

  struct HandlerEntry {
    uint64_t id;
    EventFilter filter;
    HandlerFn fn;                          // plain handlers
    SynchronizedHandler* sync = nullptr;   // synchronized handlers
    std::string sync_layout;               // "EarlyStopping(score=accuracy; MEAN; every=2)": type, label, reductions, filter
    uint64_t sync_digest = 0;              // dist::LayoutDigest of sync_layout (computed once, at registration)
    std::shared_ptr<void> owned;           // keeps an owned synchronized handler alive
    bool removed = false;
  };

  bool HasSynchronizedHandlers() const;
  // Agrees once, at the start of a Run in a multi-rank world, on what defines it (see "What a
  // run agrees on at start" in the header comment); `prepared` is PrepareRun's result.
  absl::Status AgreeOnRun(const absl::Status& prepared);

  // Type-erased data iterator for one Run.
  class DataIter {
   public:
    virtual ~DataIter() = default;
    virtual const void* Next() = 0;
    virtual void Restart() = 0;
  };
  template <typename Container>
  class ContainerIter;
  template <typename Batch>
  class SourceIter;

  enum class EpochTermination : uint8_t { kNone, kTerminate, kSkipEpochCompleted };

  absl::Status RunImpl(DataIter* data, std::optional<int64_t> data_length,
                       const std::type_info* batch_type, const RunOptions& options);
  absl::Status PrepareRun(bool has_data, std::optional<int64_t> data_length,
                          const RunOptions& options);
  void RunLoop();
  void RunEpoch();
  bool IsDone() const;
  void HandleException(std::exception_ptr error);
  absl::Status ErrorStatus(std::exception_ptr error) const;
  void Warn(const std::string& message);

  // Fires `event`: runs its handlers (filters applied), in registration order.
  void Fire(Event event) {
    last_event_ = event.id();
    if (!handlers_[event.id()].empty()) FireHandlers(event);
  }
  void FireHandlers(Event event);
  // Throws the internal terminate signals when a terminate was requested.
  void MaybeTerminate(bool in_epoch_body) {
    if (should_terminate_ || epoch_termination_ != EpochTermination::kNone)
      RaiseTermination(in_epoch_body);
  }
  void RaiseTermination(bool in_epoch_body);

  absl::StatusOr<HandlerHandle> Register(const EventList& events, const HandlerFn& fn,
                                         SynchronizedHandler* sync = nullptr,
                                         std::shared_ptr<void> owned = nullptr);
  // Reduces the proposals of the synchronized handlers collected since `first` in one
  // collective and lets each decide.
  void Agree(Event event, size_t first_handler, size_t first_value);
  // The identity of the agreement of pending_[first_handler...] at `event` (consensus.h), and
  // its description for a mismatch's message.
  dist::AgreementId FiringId(Event event, size_t first_handler) const;
  std::string DescribeFiring(Event event, size_t first_handler) const;
  dist::AgreementId CarriedId() const;
  // Where `entry`'s values proposed ahead for this firing are in carried_, or kNotCarried.
  static constexpr size_t kNotCarried = static_cast<size_t>(-1);
  size_t CarriedOffset(Event event, const HandlerEntry* entry) const;
  bool RemoveHandlers(const std::vector<uint64_t>& ids);
  void Compact();

  template <typename F>
  static void InvokeHandler(F& f, Engine& engine);
  template <typename H>
  static HandlerFn MakeHandlerFn(H&& handler);
  template <typename R>
  static void StoreOutput(Engine& engine, R&& result);

  friend class HandlerHandle;

  State state_;
  StepFn step_;
  const std::type_info* step_batch_type_ = nullptr;  // null: the step takes no batch

  std::vector<std::vector<std::unique_ptr<HandlerEntry>>> handlers_;  // by event id
  std::vector<bool> registered_custom_;  // by event id - kFirstCustomId
  uint64_t next_handler_id_ = 1;
  int firing_depth_ = 0;
  bool needs_compaction_ = false;
  absl::Status registration_error_;
  std::shared_ptr<Engine*> self_;

  // Run state.
  DataIter* data_ = nullptr;
  const std::type_info* batch_type_ = nullptr;
  bool running_ = false;
  bool should_terminate_ = false;
  std::string terminated_by_;
  std::optional<Event> terminated_at_;
  RunOutcome outcome_;
  bool skip_completed_ = false;
  EpochTermination epoch_termination_ = EpochTermination::kNone;
  std::optional<int64_t> init_iter_;
  int last_event_ = -1;
  // The event at which the exception being handled was raised (errors name it, not
  // EXCEPTION_RAISED); -1 when none.
  int raised_at_ = -1;
  bool in_step_ = false;
  std::exception_ptr current_exception_;
  // AtOutermostRunEnd's work, on the outermost running engine; run in registration order.
  struct RunEndWork {
    std::weak_ptr<const void> owner;
    std::function<absl::Status(bool)> fn;
  };
  std::vector<RunEndWork> at_run_end_;

  std::vector<std::string> user_keys_;
  std::function<void(const std::string&)> warning_handler_;

  // Distributed agreement (buffers are reused; nested firings use them as a stack).
  dist::SingleProcessCommunicator single_process_;
  dist::Consensus consensus_{dist::DefaultCommunicator() != nullptr ? dist::DefaultCommunicator() : &single_process_};
  absl::Duration collective_timeout_ = absl::Seconds(300);
  bool verify_agreement_ = false;
  int64_t agreements_ = 0;
  int64_t carried_agreements_ = 0;
  std::vector<HandlerEntry*> pending_;
  std::vector<size_t> pending_offsets_;
  std::vector<size_t> pending_carried_;  // per pending handler: its offset in carried_, or npos
  // ITERATION_COMPLETED's proposals made ahead in the step (ProposeAhead) and, once carried,
  // every rank's.
  struct Carried {
    int64_t iteration = -1;  // the iteration they were proposed at; -1: none
    bool gathered = false;   // CarryAgreement handed every rank's values back
    std::vector<const HandlerEntry*> entries;
    std::vector<size_t> offsets;
    std::vector<double> mine;
    std::vector<double> packed;  // the identity and mine, as carried (dist::kAgreementSlots)
    uint64_t layout = 0;
    std::vector<double> all;  // world * mine.size()
  } carried_;
  std::vector<double> proposals_;
  std::vector<dist::Reduction> reductions_;
};

}  // namespace ember

#include "engine/internal/engine_impl.h"  // IWYU pragma: export

#endif  // EMBER_ENGINE_ENGINE_H_
