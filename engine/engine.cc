#include "engine/engine.h"


#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status_error.h"
#include "base/status_macros.h"
#include "base/type_name.h"
#include "distributed/settings_agreement.h"

namespace ember {
namespace {

// Internal control flow of a run (ignite's _EngineTerminateException and
// _EngineTerminateSingleEpochException). Never escape Run().
struct TerminateSignal {};
struct TerminateEpochSignal {};

// Wraps an exception thrown by an EXCEPTION_RAISED handler, so that the outer level of the run
// does not call the handlers a second time (ignite does, issue #1234).
struct HandledException {
  std::exception_ptr error;
};

std::string OptionalToString(const std::optional<int64_t>& v) {
  return v ? absl::StrCat(*v) : "None";
}


// Reads an optional integer entry of a state dict: absent -> error, None -> nullopt.
absl::StatusOr<std::optional<int64_t>> ReadOptionalInt(const StateDict& d, const std::string& key) {
  const StateScalar* value = d.Find(key);
  if (std::holds_alternative<std::monostate>(*value)) return std::optional<int64_t>();
  if (const int64_t* v = std::get_if<int64_t>(value)) return std::optional<int64_t>(*v);
  return absl::InvalidArgumentError(
      absl::StrCat("state_dict entry '", key, "' must be an integer or None"));
}

}  // namespace

// ---- HandlerHandle ---------------------------------------------------------------------

bool HandlerHandle::Remove() {
  std::shared_ptr<Engine*> engine = engine_.lock();
  if (!engine || ids_.empty()) return false;
  bool removed = (*engine)->RemoveHandlers(ids_);
  ids_.clear();
  return removed;
}

bool HandlerHandle::registered() const { return !engine_.expired() && !ids_.empty(); }

// ---- Registration ----------------------------------------------------------------------

Engine::~Engine() = default;

void Engine::RegisterEvents(std::initializer_list<Event> events) {
  for (Event event : events) {
    if (event.is_builtin()) continue;
    size_t index = event.id() - Event::kFirstCustomId;
    if (registered_custom_.size() <= index) registered_custom_.resize(index + 1, false);
    registered_custom_[index] = true;
    if (handlers_.size() <= event.id()) handlers_.resize(event.id() + 1);
  }
}

bool Engine::IsRegistered(Event event) const {
  if (event.is_builtin()) return true;
  if (event.id() < Event::kFirstCustomId) return false;
  size_t index = event.id() - Event::kFirstCustomId;
  return index < registered_custom_.size() && registered_custom_[index];
}

absl::StatusOr<HandlerHandle> Engine::Register(const EventList& events, const HandlerFn& fn,
                                               SynchronizedHandler* sync,
                                               std::shared_ptr<void> owned) {
  if (events.specs().empty()) {
    return absl::InvalidArgumentError("a handler must be registered on at least one event");
  }
  // Validate everything first, so that a bad spec registers nothing.
  std::vector<EventFilter> filters;
  for (const EventSpec& spec : events.specs()) {
    Event event = spec.event();
    if (!IsRegistered(event)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Event ", event.name(), " is not a valid event for this Engine. ",
                       "Register custom events with RegisterEvents() first."));
    }
    if (spec.args().empty()) {
      filters.emplace_back();
      continue;
    }
    absl::StatusOr<EventFilter> filter = EventFilter::Create(spec.args());
    if (!filter.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.DebugString(), ": ", filter.status().message()));
    }
    if (!filter->is_trivial() && event.attr() == EventAttr::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.DebugString(), ": event ", event.name(),
          " has no iteration or epoch to filter on; filters apply to STARTED, EPOCH_*, "
          "GET_BATCH_*, ITERATION_*, COMPLETED and custom events registered with an attribute"));
    }
    filters.push_back(*std::move(filter));
  }
  HandlerHandle handle;
  handle.engine_ = self_;
  for (size_t i = 0; i < filters.size(); ++i) {
    auto entry = std::make_unique<HandlerEntry>();
    entry->id = next_handler_id_++;
    entry->filter = std::move(filters[i]);
    entry->fn = fn;
    entry->sync = sync;
    if (sync != nullptr) {
      std::vector<dist::Reduction> ops;
      std::vector<std::string> parts, names;
      for (size_t k = 0; k < sync->num_values(); ++k) {
        ops.push_back(sync->reduction(k));
        names.push_back(dist::ReductionName(ops.back()));
      }
      if (std::string label = sync->label(); !label.empty()) parts.push_back(std::move(label));
      parts.push_back(absl::StrJoin(names, ","));
      if (std::string filter = entry->filter.Describe(); !filter.empty()) parts.push_back(std::move(filter));
      entry->sync_layout = absl::StrCat(ReadableTypeName(typeid(*sync)), "(", absl::StrJoin(parts, "; "), ")");
      entry->sync_digest = dist::LayoutDigest(dist::kLayoutSeed, entry->sync_layout, ops);
    }
    entry->owned = owned;
    handle.ids_.push_back(entry->id);
    handlers_[events.specs()[i].event().id()].push_back(std::move(entry));
  }
  return handle;
}

bool Engine::RemoveHandlers(const std::vector<uint64_t>& ids) {
  bool removed = false;
  for (auto& list : handlers_) {
    for (auto& entry : list) {
      for (uint64_t id : ids) {
        if (entry->id == id && !entry->removed) {
          entry->removed = true;
          removed = true;
        }
      }
    }
  }
  needs_compaction_ = needs_compaction_ || removed;
  if (firing_depth_ == 0) Compact();
  return removed;
}

void Engine::Compact() {
  if (!needs_compaction_) return;
  for (auto& list : handlers_) {
    std::erase_if(list, [](const std::unique_ptr<HandlerEntry>& e) { return e->removed; });
  }
  needs_compaction_ = false;
}

std::optional<Event> Engine::last_event() const {
  if (last_event_ < 0) return std::nullopt;
  return Event(static_cast<uint16_t>(last_event_));
}

absl::StatusOr<int64_t> Engine::EventAttributeValue(Event event) const {
  switch (event.attr()) {
    case EventAttr::kIteration:
      return state_.iteration;
    case EventAttr::kEpoch:
      return state_.epoch;
    case EventAttr::kNone:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("Unknown event name '", event.name(), "': it has no iteration or epoch"));
}

void Engine::FireHandlers(Event event) {
  int64_t value = 0;
  switch (event.attr()) {
    case EventAttr::kIteration:
      value = state_.iteration;
      break;
    case EventAttr::kEpoch:
      value = state_.epoch;
      break;
    case EventAttr::kNone:
      break;
  }
  ++firing_depth_;
  struct DepthGuard {
    Engine* engine;
    ~DepthGuard() {
      if (--engine->firing_depth_ == 0) engine->Compact();
    }
  } guard{this};
  // Index loop: handlers added while firing run too (as in ignite); entries are heap-allocated
  // so that a running handler is never moved. Synchronized handlers propose here and decide
  // after one collective at the end of the firing.
  const size_t first_handler = pending_.size();
  const size_t first_value = proposals_.size();
  // handlers_ is indexed afresh on every step: a handler that registers events may grow it.
  for (size_t i = 0; i < handlers_[event.id()].size(); ++i) {
    HandlerEntry* entry = handlers_[event.id()][i].get();
    if (entry->removed) continue;
    if (!entry->filter.is_trivial() && !entry->filter.Matches(*this, value)) continue;
    if (entry->sync == nullptr) {
      entry->fn(*this);
      continue;
    }
    const size_t n = entry->sync->num_values();
    const size_t offset = proposals_.size();
    proposals_.resize(offset + n, 0.0);
    for (size_t k = 0; k < n; ++k) reductions_.push_back(entry->sync->reduction(k));
    pending_.push_back(entry);
    pending_offsets_.push_back(offset);
    const size_t carried = CarriedOffset(event, entry);
    pending_carried_.push_back(carried);
    if (carried != kNotCarried) {
      std::copy_n(carried_.mine.begin() + static_cast<ptrdiff_t>(carried), n, proposals_.begin() + static_cast<ptrdiff_t>(offset));
      continue;
    }
    ThrowIfError(entry->sync->Propose(*this, absl::MakeSpan(proposals_.data() + offset, n)));
  }
  if (pending_.size() > first_handler) Agree(event, first_handler, first_value);
}

void Engine::Agree(Event event, size_t first_handler, size_t first_value) {
  // Pops this firing's proposals off the shared buffers however it ends.
  struct Pop {
    Engine* e;
    size_t handlers, values;
    ~Pop() {
      e->pending_.resize(handlers);
      e->pending_offsets_.resize(handlers);
      e->pending_carried_.resize(handlers);
      e->proposals_.resize(values);
      e->reductions_.resize(values);
    }
  } pop{this, first_handler, first_value};
  const size_t n = proposals_.size() - first_value;
  const int world = consensus_.comm()->world_size();
  // This firing's results live on its own stack frame: a Decide that fires an event with
  // synchronized handlers (Checkpoint fires SAVED_CHECKPOINT) runs a nested agreement that may
  // grow the engine's shared buffers, and must not move what this firing is still reading.
  absl::InlinedVector<double, 16> reduced_buffer(n);
  absl::InlinedVector<double, 64> per_rank_buffer(n * static_cast<size_t>(world));
  const bool all_carried =
      std::all_of(pending_carried_.begin() + static_cast<ptrdiff_t>(first_handler), pending_carried_.end(),
                  [](size_t c) { return c != kNotCarried; });
  absl::Status s;
  if (all_carried) {
    // Every rank's values came with the step's own collective: lay them out as this firing's
    // all-gather would have, and reduce them the same way.
    ++carried_agreements_;
    const size_t carried_n = carried_.mine.size();
    for (int r = 0; r < world; ++r) {
      for (size_t h = first_handler; h < pending_.size(); ++h) {
        const size_t count = pending_[h]->sync->num_values();
        const double* from = carried_.all.data() + static_cast<size_t>(r) * carried_n + pending_carried_[h];
        std::copy_n(from, count, per_rank_buffer.data() + static_cast<size_t>(r) * n + (pending_offsets_[h] - first_value));
      }
    }
    s = dist::Consensus::ReduceGathered(absl::MakeConstSpan(per_rank_buffer),
                                        absl::MakeConstSpan(reductions_.data() + first_value, n),
                                        absl::MakeSpan(reduced_buffer), world);
  } else {
    ++agreements_;
    // A single process cannot wait on anyone: skip reading the clock for a deadline.
    const absl::Time deadline =
        world > 1 ? absl::Now() + collective_timeout_ : absl::InfiniteFuture();
    s = consensus_.Reduce(
        absl::MakeConstSpan(proposals_.data() + first_value, n),
        absl::MakeConstSpan(reductions_.data() + first_value, n),
        absl::MakeSpan(reduced_buffer), absl::MakeSpan(per_rank_buffer), deadline,
        world > 1 ? FiringId(event, first_handler) : dist::AgreementId{});
  }
  if (!s.ok()) {
    throw StatusError(absl::Status(
        s.code(), absl::StrCat("agreement of ", n, " value(s) from ", pending_.size() - first_handler,
                               " synchronized handler(s) at ", event.name(), " failed on rank ",
                               consensus_.comm()->rank(), " of ", world, ": ", s.message())));
  }
  absl::Span<const double> reduced(reduced_buffer);
  absl::Span<const double> per_rank(per_rank_buffer);
  for (size_t h = first_handler; h < pending_.size(); ++h) {
    const size_t offset = pending_offsets_[h] - first_value;
    const size_t count = pending_[h]->sync->num_values();
    Agreement agreement(reduced.subspan(offset, count), per_rank, offset, n, world);
    ThrowIfError(pending_[h]->sync->Decide(*this, agreement));
  }
  if (verify_agreement_) {
    // A digest of what every rank now holds: the reduced values and the run's decisions.
    uint64_t digest = 1469598103934665603ull;
    auto mix = [&digest](uint64_t v) { digest = (digest ^ v) * 1099511628211ull; };
    mix(event.id());
    mix(static_cast<uint64_t>(state_.iteration));
    mix(static_cast<uint64_t>(state_.epoch));
    for (double v : reduced) {
      uint64_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      mix(bits);
    }
    mix(should_terminate_ ? 1 : 0);
    mix(static_cast<uint64_t>(epoch_termination_));
    double mine;
    std::memcpy(&mine, &digest, sizeof(mine));
    std::vector<double> all(static_cast<size_t>(world));
    ThrowIfError(consensus_.comm()->AllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all),
                                              absl::Now() + collective_timeout_));
    for (int r = 0; r < world; ++r) {
      if (std::memcmp(&all[static_cast<size_t>(r)], &mine, sizeof(mine)) != 0) {
        throw StatusError(absl::InternalError(absl::StrCat(
            "ranks diverged at ", event.name(), ": rank ", r, "'s decisions differ from rank ",
            consensus_.comm()->rank(), "'s")));
      }
    }
  }
}

dist::AgreementId Engine::FiringId(Event event, size_t first_handler) const {
  dist::AgreementId id;
  id.event = event.id();
  id.iteration = state_.iteration;
  uint64_t layout = dist::kLayoutSeed;
  for (size_t h = first_handler; h < pending_.size(); ++h) layout = (layout ^ pending_[h]->sync_digest) * 1099511628211ull;
  id.layout = layout;
  // Two words of capture: std::function keeps them inline (no allocation per firing).
  const uint64_t where = (static_cast<uint64_t>(first_handler) << 16) | event.id();
  id.describe = [this, where] {
    return DescribeFiring(Event(static_cast<uint16_t>(where & 0xFFFF)), static_cast<size_t>(where >> 16));
  };
  return id;
}

std::string Engine::DescribeFiring(Event event, size_t first_handler) const {
  std::vector<std::string> names;
  for (size_t h = first_handler; h < pending_.size(); ++h) {
    names.push_back(pending_[h]->sync_layout);
  }
  return absl::StrCat("at ", event.name(), " (epoch ", state_.epoch, ", iteration ", state_.iteration,
                      ") runs ", names.empty() ? std::string("no synchronized handler") : absl::StrJoin(names, " then "));
}

size_t Engine::CarriedOffset(Event event, const HandlerEntry* entry) const {
  if (event.id() != Event::kIterationCompleted || !carried_.gathered || carried_.iteration != state_.iteration) {
    return kNotCarried;
  }
  for (size_t k = 0; k < carried_.entries.size(); ++k) {
    if (carried_.entries[k] == entry) return carried_.offsets[k];
  }
  return kNotCarried;
}

absl::StatusOr<absl::Span<const double>> Engine::ProposeAhead(const std::any& output) {
  if (!running_ || !in_step_ || firing_depth_ != 0) {
    return absl::FailedPreconditionError("Engine::ProposeAhead is for use inside this engine's step function");
  }
  carried_.iteration = -1;
  carried_.gathered = false;
  carried_.entries.clear();
  carried_.offsets.clear();
  carried_.mine.clear();
  carried_.packed.clear();
  if (consensus_.comm()->world_size() == 1) return absl::Span<const double>();
  // The handlers see the output they will see at the firing; what the step returns replaces it.
  std::any saved = std::move(state_.output);
  state_.output = output;
  struct Restore {
    std::any& to;
    std::any& from;
    ~Restore() { to = std::move(from); }
  } restore{state_.output, saved};
  for (const std::unique_ptr<HandlerEntry>& entry : handlers_[Event::kIterationCompleted]) {
    if (entry->removed || entry->sync == nullptr || !entry->filter.is_trivial() || !entry->sync->proposes_in_step()) {
      continue;
    }
    const size_t n = entry->sync->num_values();
    const size_t offset = carried_.mine.size();
    carried_.mine.resize(offset + n, 0.0);
    EMBER_RETURN_IF_ERROR(entry->sync->Propose(*this, absl::MakeSpan(carried_.mine.data() + offset, n)));
    carried_.entries.push_back(entry.get());
    carried_.offsets.push_back(offset);
  }
  carried_.iteration = state_.iteration;
  // The identity first, whatever the handlers: the carried size is the same on every rank.
  carried_.layout = dist::kLayoutSeed;
  for (const HandlerEntry* e : carried_.entries) carried_.layout = (carried_.layout ^ e->sync_digest) * 1099511628211ull;
  carried_.packed.resize(dist::kAgreementSlots);
  consensus_.Pack(CarriedId(), carried_.mine, absl::MakeSpan(carried_.packed));
  return absl::MakeConstSpan(carried_.packed);
}

dist::AgreementId Engine::CarriedId() const {
  dist::AgreementId id;
  id.event = Event::kIterationCompleted;
  id.iteration = carried_.iteration;
  id.layout = carried_.layout;
  id.describe = [this] {
    std::vector<std::string> names;
    for (const HandlerEntry* e : carried_.entries) names.push_back(e->sync_layout);
    return absl::StrCat("carries ITERATION_COMPLETED's agreement in its step (epoch ", state_.epoch, ", iteration ",
                        carried_.iteration, ") for ",
                        names.empty() ? std::string("no synchronized handler") : absl::StrJoin(names, " then "));
  };
  return id;
}

absl::Status Engine::CarryAgreement(absl::Span<const double> gathered) {
  const size_t world = static_cast<size_t>(consensus_.comm()->world_size());
  if (carried_.iteration != state_.iteration || !in_step_) {
    return absl::FailedPreconditionError(
        "Engine::CarryAgreement: no proposals made ahead in this step (call ProposeAhead first, in the step function)");
  }
  if (gathered.size() != world * carried_.packed.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Engine::CarryAgreement: ", gathered.size(), " values for ",
                                                   carried_.packed.size(), " proposed on each of ", world,
                                                   " ranks; expected ", world * carried_.packed.size()));
  }
  // Every rank's identity before any value is used.
  EMBER_RETURN_IF_ERROR(consensus_.CheckGathered(gathered, CarriedId(), absl::Now() + collective_timeout_));
  const size_t n = carried_.mine.size();
  if (n > dist::kAgreementInline) return absl::OkStatus();  // not carried: the firing agrees itself
  carried_.all.resize(world * n);
  for (size_t r = 0; r < world; ++r) {
    std::copy_n(gathered.begin() + static_cast<ptrdiff_t>(r * dist::kAgreementSlots + dist::kAgreementHeader), n,
                carried_.all.begin() + static_cast<ptrdiff_t>(r * n));
  }
  carried_.gathered = true;
  return absl::OkStatus();
}

absl::Status Engine::FireEvent(Event event) {
  if (!IsRegistered(event)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Event ", event.name(), " is not a valid event for this Engine."));
  }
  Fire(event);
  return absl::OkStatus();
}

absl::Status Engine::Synchronize(SynchronizedHandler& handler) {
  if (running_) return absl::FailedPreconditionError("Synchronize() is for use outside Run()");
  const size_t n = handler.num_values();
  const int world = consensus_.comm()->world_size();
  std::vector<double> proposal(n), reduced(n), per_rank(n * static_cast<size_t>(world));
  std::vector<dist::Reduction> ops(n);
  for (size_t k = 0; k < n; ++k) ops[k] = handler.reduction(k);
  try {
    if (absl::Status proposed = handler.Propose(*this, absl::MakeSpan(proposal)); !proposed.ok()) return proposed;
    ++agreements_;
    absl::Status s = consensus_.Reduce(proposal, ops, absl::MakeSpan(reduced), absl::MakeSpan(per_rank),
                                       absl::Now() + collective_timeout_);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("agreement of ", n, " value(s) outside a run failed on rank ",
                                                 consensus_.comm()->rank(), " of ", world, ": ", s.message()));
    }
    return handler.Decide(*this, Agreement(reduced, per_rank, 0, n, world));
  } catch (const StatusError& e) {  // a handler of an event the decision fired
    return e.status();
  }
}

bool Engine::HasSynchronizedHandlers() const {
  for (const auto& entries : handlers_) {
    for (const auto& h : entries) {
      if (h->sync != nullptr && !h->removed) return true;
    }
  }
  return false;
}

absl::Status Engine::AgreeOnRun(const absl::Status& prepared) {
  dist::SettingList settings;
  settings.Add("Run's arguments", prepared.ok() ? "valid" : prepared.message())
      .Add("epoch_length", OptionalToString(state_.epoch_length))
      .Add("max_epochs", OptionalToString(state_.max_epochs))
      .Add("max_iters", OptionalToString(state_.max_iters))
      .AddInt("starting iteration", state_.iteration)
      // A rank that verifies issues one more collective per synchronized firing than one that
      // does not.
      .AddBool("verify_agreement", verify_agreement_);
  for (size_t id = 0; id < handlers_.size(); ++id) {
    std::vector<std::string> layout;
    for (const auto& h : handlers_[id]) {
      if (h->sync == nullptr || h->removed) continue;
      layout.push_back(h->sync_layout);
    }
    if (layout.empty()) continue;
    const std::string event = Event(static_cast<uint16_t>(id)).name();
    std::string joined = absl::StrJoin(layout, " then ");
    if (joined.size() <= static_cast<size_t>(dist::kMaxValueChars)) {
      settings.Add(absl::StrCat("synchronized handlers at ", event), joined);
    } else {
      // Too long to show whole in an error (handlers with many options): one setting per handler,
      // so that the one that differs is shown, not a cut prefix that looks the same.
      settings.AddInt(absl::StrCat("number of synchronized handlers at ", event), static_cast<int64_t>(layout.size()));
      for (size_t k = 0; k < layout.size(); ++k) {
        settings.Add(absl::StrCat("synchronized handler ", k + 1, " at ", event), layout[k]);
      }
    }
  }
  absl::Status agreed = dist::AgreeOnSettings(*consensus_.comm(), "Engine::Run", settings, collective_timeout_);
  if (absl::IsDeadlineExceeded(agreed)) {
    // The likeliest cause, which no rank can see from here: a rank whose engine has no synchronized
    // handlers skips this agreement (an engine without them issues no collective) and is in its
    // step's collectives instead (a gradient all-reduce), or has finished.
    return absl::Status(agreed.code(),
                        absl::StrCat(agreed.message(), " (every rank whose engine has synchronized handlers agrees "
                                     "at the start of Run; a rank that registered none skips this agreement: "
                                     "register the same synchronized handlers on every rank; EMBER_DISTRIBUTED_DEBUG=DETAIL on every "
                                     "rank shows at once which collective each rank is in)"));
  }
  return agreed;
}

// ---- Termination -----------------------------------------------------------------------

void Engine::TerminateBy(std::string who, bool skip_completed) {
  if (!should_terminate_) {
    terminated_by_ = std::move(who);
    terminated_at_ = last_event();
  }
  should_terminate_ = true;
  skip_completed_ = skip_completed;
}

void Engine::TerminateEpoch(bool skip_epoch_completed) {
  epoch_termination_ = skip_epoch_completed ? EpochTermination::kSkipEpochCompleted
                                            : EpochTermination::kTerminate;
}

void Engine::RaiseTermination(bool in_epoch_body) {
  if (should_terminate_) throw TerminateSignal{};
  if (epoch_termination_ != EpochTermination::kNone) {
    if (!in_epoch_body) {
      std::optional<Event> at = last_event();
      throw std::logic_error(absl::StrCat(
          "The method terminate_epoch() should not be called on Event.STARTED or "
          "Event.EPOCH_STARTED (it was called at ",
          at ? at->name() : "?", ", epoch ", state_.epoch, ")"));
    }
    throw TerminateEpochSignal{};
  }
}

bool Engine::IsDone() const {
  const State& s = state_;
  if (s.max_iters && s.iteration >= *s.max_iters) return true;
  if (s.epoch_length && s.max_epochs && s.iteration >= *s.epoch_length * *s.max_epochs) {
    return true;
  }
  return s.max_epochs && s.epoch >= *s.max_epochs;
}

// ---- Run -------------------------------------------------------------------------------

absl::Status Engine::Run(RunOptions options) {
  return RunImpl(nullptr, std::nullopt, nullptr, options);
}

absl::Status Engine::PrepareRun(bool has_data, std::optional<int64_t> data_length,
                                const RunOptions& options) {
  if (options.max_epochs && *options.max_epochs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_epochs must be >= 1, got ", *options.max_epochs));
  }
  if (options.max_iters && *options.max_iters < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_iters must be >= 1, got ", *options.max_iters));
  }
  if (options.epoch_length && *options.epoch_length < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("epoch_length must be >= 1, got ", *options.epoch_length));
  }
  if (state_.max_epochs) {
    // A previous state exists: check and apply the overridden arguments.
    if (options.max_epochs) {
      if (*options.max_epochs < state_.epoch) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Argument max_epochs should be greater than or equal to the start epoch defined in "
            "the state: ",
            *options.max_epochs, " vs ", state_.epoch,
            ". Please, set engine.state().max_epochs = std::nullopt before calling Run() in "
            "order to restart the training from the beginning."));
      }
      state_.max_epochs = options.max_epochs;
    }
    if (options.epoch_length && options.epoch_length != state_.epoch_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("Argument epoch_length should be same as in the state, but given ",
                       *options.epoch_length, " vs ", OptionalToString(state_.epoch_length)));
    }
  }
  if (!state_.max_epochs || IsDone()) {
    // A new state.
    std::optional<int64_t> epoch_length = options.epoch_length;
    if (!epoch_length) {
      if (!has_data) {
        return absl::InvalidArgumentError("epoch_length should be provided if data is None");
      }
      epoch_length = data_length;
      if (epoch_length && *epoch_length < 1) {
        return absl::InvalidArgumentError("Input data has zero size. Please provide non-empty data");
      }
    }
    std::optional<int64_t> max_epochs = options.max_epochs;
    if (options.max_iters) {
      if (options.max_epochs) {
        return absl::InvalidArgumentError(
            "Arguments max_iters and max_epochs are mutually exclusive. Please provide only "
            "max_epochs or max_iters.");
      }
      if (epoch_length) max_epochs = (*options.max_iters + *epoch_length - 1) / *epoch_length;
    } else if (!max_epochs) {
      max_epochs = 1;
    }
    state_.iteration = 0;
    state_.epoch = 0;
    state_.max_epochs = max_epochs;
    state_.max_iters = options.max_iters;
    state_.epoch_length = epoch_length;
    init_iter_.reset();
  } else {
    if (!state_.epoch_length && !has_data) {
      return absl::InvalidArgumentError("epoch_length should be provided if data is None");
    }
    // Resuming after terminate(): the next epoch is a whole one. Otherwise a partly done epoch
    // is completed (the data restarts from its beginning; only the count is offset).
    if (should_terminate_) {
      init_iter_ = 0;
    } else {
      init_iter_ = state_.epoch_length ? state_.iteration % *state_.epoch_length : state_.iteration;
    }
  }
  return absl::OkStatus();
}

namespace {
// The outermost engine whose Run() is in progress on this thread (AtOutermostRunEnd).
thread_local Engine* t_outermost_run = nullptr;
}  // namespace

bool Engine::AtOutermostRunEnd(std::weak_ptr<const void> owner, std::function<absl::Status(bool run_ok)> fn) {
  Engine* outermost = t_outermost_run;
  if (outermost == nullptr) return false;
  for (const RunEndWork& w : outermost->at_run_end_) {
    // The same owner (its control block, not its address: a new owner may reuse a freed one's).
    if (!w.owner.owner_before(owner) && !owner.owner_before(w.owner)) return true;
  }
  outermost->at_run_end_.push_back(RunEndWork{std::move(owner), std::move(fn)});
  return true;
}

absl::Status Engine::RunImpl(DataIter* data, std::optional<int64_t> data_length,
                             const std::type_info* batch_type, const RunOptions& options) {
  if (!registration_error_.ok()) {
    absl::Status error = registration_error_;
    registration_error_ = absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("a handler registration failed: ", error.message()));
  }
  if (running_) {
    return absl::FailedPreconditionError("Run() called while this engine is already running");
  }
  if (data != nullptr && step_batch_type_ == nullptr) {
    return absl::InvalidArgumentError(
        "this engine's step takes no batch (step(Engine&)); run it without data: "
        "Run({.epoch_length = N})");
  }
  if (data == nullptr && step_batch_type_ != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "this engine's step takes a batch of type ", step_batch_type_->name(),
        "; Run() without data needs a step that takes only (Engine&)"));
  }
  if (data != nullptr && *batch_type != *step_batch_type_) {
    return absl::InvalidArgumentError(absl::StrCat("the data yields batches of type ",
                                                   batch_type->name(), " but the step takes ",
                                                   step_batch_type_->name()));
  }
  // The built-in single-process communicator is never anyone's choice: no World existed when the
  // engine was made, and none was given since.
  if (consensus_.comm() == &single_process_ && HasSynchronizedHandlers()) {
    if (const int launched = dist::LauncherWorldSize(); launched > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "this process is one of ", launched, " ranks (launcher environment) but this engine's "
          "synchronized handlers would agree on a single-process communicator, each rank deciding "
          "alone: create the World (ember::dist::LaunchWorld()) before the engines, or call "
          "set_communicator()"));
    }
  }
  {
    absl::Status prepared = PrepareRun(data != nullptr, data_length, options);
    if (consensus_.comm()->world_size() > 1 && HasSynchronizedHandlers()) {
      EMBER_RETURN_IF_ERROR(AgreeOnRun(prepared));
    }
    if (!prepared.ok()) return prepared;
  }

  data_ = data;
  batch_type_ = batch_type;
  running_ = true;
  const bool outermost = t_outermost_run == nullptr;
  if (outermost) t_outermost_run = this;
  carried_.iteration = -1;
  carried_.gathered = false;
  absl::Status status;
  try {
    RunLoop();
  } catch (const HandledException& handled) {
    status = ErrorStatus(handled.error);
  } catch (...) {
    // Exceptions outside the epoch body (STARTED, EPOCH_STARTED, EPOCH_COMPLETED, COMPLETED
    // handlers) and those the epoch body did not swallow.
    try {
      HandleException(std::current_exception());
    } catch (const HandledException& handled) {
      status = ErrorStatus(handled.error);
    } catch (...) {
      status = ErrorStatus(std::current_exception());
    }
  }
  // A run that fails on this rank leaves its peers in (or on their way to) a collective this
  // rank will never join: poison the communicator, which tells them (a failure notice), so that
  // they fail promptly with this error instead of waiting out a deadline or completing a
  // collective with another one. Before the work below, so that a peer's collective in it ends
  // at once. Nothing to tell alone, or when a collective failed already.
  if (!status.ok() && consensus_.comm()->world_size() > 1) consensus_.comm()->Fail(status);
  if (outermost) {
    // What handlers left in flight (AtOutermostRunEnd), awaited before the run reports its end,
    // in registration order; work registered meanwhile (by this work) runs too.
    while (!at_run_end_.empty()) {
      RunEndWork work = std::move(at_run_end_.front());
      at_run_end_.erase(at_run_end_.begin());
      if (work.owner.expired()) continue;
      absl::Status done;
      try {
        done = work.fn(status.ok());
      } catch (...) {
        done = ErrorStatus(std::current_exception());
      }
      if (status.ok() && !done.ok()) status = done;
    }
    t_outermost_run = nullptr;
  }
  outcome_ = RunOutcome{};
  outcome_.epoch = state_.epoch;
  outcome_.iteration = state_.iteration;
  if (!status.ok()) {
    outcome_.kind = RunOutcome::Kind::kFailed;
    outcome_.status = status;
    // The end-of-run work's own error (the run had none): told like any other (a no-op when the
    // communicator is already poisoned, as after a failed collective).
    if (consensus_.comm()->world_size() > 1) consensus_.comm()->Fail(status);
  } else if (should_terminate_) {
    outcome_.kind = RunOutcome::Kind::kTerminated;
    outcome_.terminated_by = terminated_by_;
    outcome_.terminated_at = terminated_at_;
  } else {
    outcome_.kind = RunOutcome::Kind::kCompleted;
  }
  running_ = false;
  in_step_ = false;
  data_ = nullptr;
  state_.batch = nullptr;
  current_exception_ = nullptr;
  raised_at_ = -1;
  return status;
}

void Engine::RunLoop() {
  should_terminate_ = false;
  terminated_by_.clear();
  terminated_at_.reset();
  skip_completed_ = false;
  epoch_termination_ = EpochTermination::kNone;
  state_.epoch_time = 0.0;
  state_.run_time = 0.0;
  Clock* clock = RealClock();
  const double start = clock->NowSeconds();
  try {
    Fire(Events::Started());
    MaybeTerminate(/*in_epoch_body=*/false);
    bool iterator_ready = false;
    while (!IsDone() && !should_terminate_) {
      ++state_.epoch;
      const double epoch_start = clock->NowSeconds();
      Fire(Events::EpochStarted());
      MaybeTerminate(/*in_epoch_body=*/false);
      if (!iterator_ready) {
        if (data_ != nullptr) data_->Restart();
        iterator_ready = true;
      }
      RunEpoch();
      state_.epoch_time = clock->NowSeconds() - epoch_start;
      const bool skip = epoch_termination_ == EpochTermination::kSkipEpochCompleted;
      if (!skip) {
        Fire(Events::EpochCompleted());
        state_.epoch_time = clock->NowSeconds() - epoch_start;
      }
      // terminate_epoch() called at EPOCH_COMPLETED has no effect.
      epoch_termination_ = EpochTermination::kNone;
      MaybeTerminate(/*in_epoch_body=*/false);
    }
    state_.run_time = clock->NowSeconds() - start;
    Fire(Events::Completed());
  } catch (const TerminateSignal&) {
    Fire(Events::Terminate());
    state_.run_time = clock->NowSeconds() - start;
    if (!skip_completed_) Fire(Events::Completed());
  }
}

void Engine::RunEpoch() {
  int64_t iter_counter = init_iter_.value_or(0);
  init_iter_.reset();
  bool should_exit = false;
  try {
    while (true) {
      // As ignite: the previous step's output is cleared only once a new batch was fetched (below),
      // so handlers at EPOCH_COMPLETED still see the last output when data of unknown length runs
      // out.
      if (data_ == nullptr) {
        state_.output.reset();
      } else {
        // GET_BATCH_STARTED is not fired again right after a restart of the data.
        if (last_event_ != Event::kDataloaderStopIteration) {
          Fire(Events::GetBatchStarted());
          MaybeTerminate(/*in_epoch_body=*/true);
        }
        // The previous batch is valid only until Next() is called again (DataSource's contract).
        state_.batch = nullptr;
        const void* batch = data_->Next();
        if (batch == nullptr) {
          if (!state_.epoch_length) {
            // Data of unknown length: the first pass defines the epoch length.
            if (iter_counter == 0) {
              throw StatusError(absl::InvalidArgumentError(
                  "Input data has zero size: the data source yielded no batch"));
            }
            state_.epoch_length = iter_counter;
            if (state_.max_iters) {
              state_.max_epochs = (*state_.max_iters + iter_counter - 1) / iter_counter;
            }
            break;
          }
          if (should_exit) {
            // The data could not be restarted.
            if (!IsDone()) {
              std::optional<int64_t> total =
                  state_.max_epochs ? std::optional<int64_t>(*state_.epoch_length *
                                                              *state_.max_epochs)
                                    : state_.max_iters;
              Warn(absl::StrCat("Data iterator can not provide data anymore but required total "
                                "number of iterations to run is not reached. Current iteration: ",
                                state_.iteration, " vs Total iterations to run : ",
                                OptionalToString(total)));
            }
            break;
          }
          Fire(Events::DataloaderStopIteration());
          MaybeTerminate(/*in_epoch_body=*/true);
          data_->Restart();
          should_exit = true;
          continue;
        }
        state_.batch = batch;
        state_.batch_type = batch_type_;
        state_.output.reset();
        Fire(Events::GetBatchCompleted());
        MaybeTerminate(/*in_epoch_body=*/true);
      }
      ++iter_counter;
      should_exit = false;
      ++state_.iteration;
      Fire(Events::IterationStarted());
      MaybeTerminate(/*in_epoch_body=*/true);
      in_step_ = true;
      step_(*this, state_.batch);
      in_step_ = false;
      Fire(Events::IterationCompleted());
      MaybeTerminate(/*in_epoch_body=*/true);
      if (state_.epoch_length && iter_counter == *state_.epoch_length) break;
      if (state_.max_iters && state_.iteration == *state_.max_iters) {
        should_terminate_ = true;
        throw TerminateSignal{};
      }
    }
  } catch (const TerminateEpochSignal&) {
    Fire(Events::TerminateSingleEpoch());
    if (data_ != nullptr) data_->Restart();
  } catch (const TerminateSignal&) {
    throw;
  } catch (const HandledException&) {
    throw;
  } catch (...) {
    // Swallowed by an EXCEPTION_RAISED handler: the epoch ends here. Otherwise it propagates
    // with in_step_ still telling where it came from.
    HandleException(std::current_exception());
    in_step_ = false;
  }
}

void Engine::HandleException(std::exception_ptr error) {
  bool has_handler = false;
  for (const auto& entry : handlers_[Event::kExceptionRaised]) {
    has_handler = has_handler || !entry->removed;
  }
  if (!has_handler) std::rethrow_exception(error);
  current_exception_ = error;
  raised_at_ = last_event_;
  try {
    Fire(Events::ExceptionRaised());
  } catch (...) {
    current_exception_ = nullptr;
    throw HandledException{std::current_exception()};
  }
  current_exception_ = nullptr;
  // A failed collective is never swallowed: the communicator is poisoned, the peers' state is
  // unknown and every later agreement would fail. The handlers observed it; the run ends here,
  // on every rank, with the collective's error.
  if (!consensus_.comm()->poisoned().ok()) throw HandledException{error};
  raised_at_ = -1;  // swallowed
}

absl::Status Engine::ErrorStatus(std::exception_ptr error) const {
  std::optional<Event> at = last_event();
  if (raised_at_ >= 0) at = Event(static_cast<uint16_t>(raised_at_));
  std::string where = absl::StrCat(" [", in_step_ ? "in the step function" : "at ",
                                   in_step_ ? "" : (at ? at->name() : "start"),
                                   ", epoch ", state_.epoch, ", iteration ", state_.iteration, "]");
  try {
    std::rethrow_exception(error);
  } catch (const StatusError& e) {
    return absl::Status(e.status().code(), absl::StrCat(e.status().message(), where));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(e.what(), where));
  } catch (...) {
    return absl::UnknownError(absl::StrCat("unknown exception", where));
  }
}

void Engine::Warn(const std::string& message) {
  if (warning_handler_) {
    warning_handler_(message);
  } else {
    LogWarning(message);  // base/log.h: the process's sink, stderr by default
  }
}

// ---- state_dict ------------------------------------------------------------------------

StateDict Engine::GetStateDict() const {
  auto opt = [](const std::optional<int64_t>& v) -> StateScalar {
    if (v) return *v;
    return std::monostate();
  };
  StateDict d;
  d.Set("epoch_length", opt(state_.epoch_length));
  d.Set("max_epochs", opt(state_.max_epochs));
  d.Set("iteration", state_.iteration);
  if (state_.max_iters) d.Set("max_iters", *state_.max_iters);
  for (const std::string& key : user_keys_) {
    const StateScalar* value = state_.user.Find(key);
    d.Set(key, value ? *value : StateScalar());
  }
  return d;
}

absl::Status Engine::LoadStateDict(const StateDict& d) {
  for (const char* key : {"epoch_length", "max_epochs"}) {
    if (!d.Contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("Required state attribute '", key,
                                                     "' is absent in provided state_dict '",
                                                     d.KeysRepr(), "'"));
    }
  }
  if (d.Contains("iteration") == d.Contains("epoch")) {
    return absl::InvalidArgumentError(
        "state_dict should contain only one of '('iteration', 'epoch')' keys");
  }
  for (const std::string& key : user_keys_) {
    if (!d.Contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("Required user state attribute '", key,
                                                     "' is absent in provided state_dict '",
                                                     d.KeysRepr(), "'"));
    }
  }
  absl::StatusOr<std::optional<int64_t>> epoch_length = ReadOptionalInt(d, "epoch_length");
  if (!epoch_length.ok()) return epoch_length.status();
  absl::StatusOr<std::optional<int64_t>> max_epochs = ReadOptionalInt(d, "max_epochs");
  if (!max_epochs.ok()) return max_epochs.status();
  std::optional<int64_t> max_iters;
  if (d.Contains("max_iters")) {
    absl::StatusOr<std::optional<int64_t>> v = ReadOptionalInt(d, "max_iters");
    if (!v.ok()) return v.status();
    max_iters = *v;
  }
  const std::string counter = d.Contains("iteration") ? "iteration" : "epoch";
  const int64_t* count = d.GetIf<int64_t>(counter);
  if (count == nullptr || *count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("state_dict entry '", counter, "' must be a non-negative integer"));
  }
  if (*epoch_length && **epoch_length < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("state_dict entry 'epoch_length' must be >= 1, got ", **epoch_length));
  }
  if (counter == "epoch" && !*epoch_length) {
    return absl::InvalidArgumentError(
        "If epoch is provided in the state dict, epoch_length should not be None. Input state "
        "dict: " + d.KeysRepr());
  }
  state_.epoch_length = *epoch_length;
  state_.max_epochs = *max_epochs;
  state_.max_iters = max_iters;
  for (const std::string& key : user_keys_) state_.user.Set(key, *d.Find(key));
  if (counter == "iteration") {
    state_.iteration = *count;
    state_.epoch = state_.epoch_length ? *count / *state_.epoch_length : 0;
  } else {
    state_.epoch = *count;
    state_.iteration = *state_.epoch_length * *count;
  }
  return absl::OkStatus();
}

std::string Engine::RunOutcome::Summary() const {
  switch (kind) {
    case Kind::kNotRun:
      return "not run";
    case Kind::kCompleted:
      return absl::StrCat("completed at epoch ", epoch);
    case Kind::kTerminated:
      return absl::StrCat("terminated", terminated_by.empty() ? "" : " by ", terminated_by, " at epoch ", epoch);
    case Kind::kFailed:
      return absl::StrCat("failed at epoch ", epoch, ": ", status.message());
  }
  return "";
}

}  // namespace ember
