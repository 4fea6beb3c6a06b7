// File: engine/events.h
//
// Events and event filters, ported from ignite (engine/events.py, v0.5.3).
//
// An Event is a small value (an id). The built-in events are Events::Started() ...
// Events::TerminateSingleEpoch(); users create their own with Event::Custom("name") and
// register them on an engine with Engine::RegisterEvents before use. Two events are equal when
// their ids are equal; custom events with the same name share one id (process-wide registry,
// thread-safe).
//
// An EventSpec is an event plus optional filter arguments, built fluently:
//   Events::IterationCompleted().Every(100)
//   Events::EpochStarted().Every(2).After(0)      // fires at epochs 1, 3, 5, ...
//   Events::IterationCompleted().Once({2, 5, 11})
//   Events::EpochCompleted().When([](const Engine& e, int64_t epoch) { return epoch > 3; })
// and several specs combine with `|` into an EventList (ignite's `Events.A | Events.B`).
//
// Filter rules (ignite's): a filter sees the *absolute* iteration (GET_BATCH_*, ITERATION_*)
// or epoch (STARTED, EPOCH_*, COMPLETED) of the engine.
//   every=n              value % n == 0 (every=1: no filter)
//   once={a, b, ...}     value is one of the list (stateless: fires again if the value recurs)
//   before=b, after=a    a < value < b (either may be absent: a = 0, b = infinity)
//   every + before/after a < value < b and (value - a - 1) % n == 0
//   When(f)              f(engine, value)
// Exactly one of {When, Once, Every/Before/After} may be given; every > 0; once values > 0;
// before, after >= 0. Violations are reported by EventFilter::Create (and so by
// Engine::AddEventHandler) with ignite's messages. Events without an iteration or epoch
// (TERMINATE, EXCEPTION_RAISED, DATALOADER_STOP_ITERATION, TERMINATE_SINGLE_EPOCH, custom
// events registered without an attribute) cannot be filtered.
#ifndef EMBER_ENGINE_EVENTS_H_
#define EMBER_ENGINE_EVENTS_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ember {

class Engine;

// Which state counter an event's filter looks at.
enum class EventAttr : uint8_t { kNone, kIteration, kEpoch };

class EventSpec;
class EventList;

class Event {
 public:
  // Ids of the built-in events; custom events get ids from kFirstCustomId upward.
  enum BuiltinId : uint16_t {
    kStarted = 0,
    kEpochStarted,
    kGetBatchStarted,
    kGetBatchCompleted,
    kDataloaderStopIteration,
    kIterationStarted,
    kIterationCompleted,
    kEpochCompleted,
    kCompleted,
    kExceptionRaised,
    kTerminate,
    kTerminateSingleEpoch,
    kNumBuiltin,
  };
  static constexpr uint16_t kFirstCustomId = 32;

  constexpr explicit Event(uint16_t id) : id_(id) {}

  // A user-defined event, interned by name. `attr` says which counter filters see; an event
  // without one cannot be filtered. Calling Custom twice with one name returns the same event;
  // a different attr the second time is ignored (the first registration wins).
  static Event Custom(std::string_view name, EventAttr attr = EventAttr::kNone);

  constexpr uint16_t id() const { return id_; }
  constexpr bool is_builtin() const { return id_ < kNumBuiltin; }
  // "ITERATION_COMPLETED", or the custom event's name.
  std::string name() const;
  EventAttr attr() const;

  // Filters; see the header comment.
  EventSpec Every(int64_t n) const;
  EventSpec Once(int64_t value) const;
  EventSpec Once(std::vector<int64_t> values) const;
  EventSpec Before(int64_t value) const;
  EventSpec After(int64_t value) const;
  EventSpec When(std::function<bool(const Engine&, int64_t)> predicate) const;

  friend constexpr bool operator==(Event a, Event b) { return a.id_ == b.id_; }

 private:
  uint16_t id_;
};

namespace Events {
constexpr Event Started() { return Event(Event::kStarted); }
constexpr Event EpochStarted() { return Event(Event::kEpochStarted); }
constexpr Event GetBatchStarted() { return Event(Event::kGetBatchStarted); }
constexpr Event GetBatchCompleted() { return Event(Event::kGetBatchCompleted); }
constexpr Event DataloaderStopIteration() { return Event(Event::kDataloaderStopIteration); }
constexpr Event IterationStarted() { return Event(Event::kIterationStarted); }
constexpr Event IterationCompleted() { return Event(Event::kIterationCompleted); }
constexpr Event EpochCompleted() { return Event(Event::kEpochCompleted); }
constexpr Event Completed() { return Event(Event::kCompleted); }
constexpr Event ExceptionRaised() { return Event(Event::kExceptionRaised); }
constexpr Event Terminate() { return Event(Event::kTerminate); }
constexpr Event TerminateSingleEpoch() { return Event(Event::kTerminateSingleEpoch); }
}  // namespace Events

// The raw filter arguments, as ignite's Events.X(every=..., once=..., before=..., after=...,
// event_filter=...) takes them.
struct FilterArgs {
  std::optional<int64_t> every;
  std::optional<std::vector<int64_t>> once;
  std::optional<int64_t> before;
  std::optional<int64_t> after;
  std::function<bool(const Engine&, int64_t)> predicate;

  bool empty() const {
    return !every && !once && !before && !after && !predicate;
  }
};

// A validated filter, cheap to evaluate. The default filter passes everything.
class EventFilter {
 public:
  EventFilter() = default;

  // Validates `args` with ignite's rules and messages (see the header comment).
  static absl::StatusOr<EventFilter> Create(FilterArgs args);

  bool is_trivial() const { return kind_ == Kind::kNone; }
  bool Matches(const Engine& engine, int64_t value) const;
  // Its arguments, for messages and layouts: "every=2", "once=3", "once=[1, 2]",
  // "every=1, after=2, before=10", "event_filter=Run()::{lambda()#2}" (the predicate named by
  // CallableName, base/type_name.h: two predicates are told apart); empty for the trivial filter.
  std::string Describe() const;

 private:
  enum class Kind : uint8_t { kNone, kEvery, kOnce, kRange, kPredicate };
  Kind kind_ = Kind::kNone;
  int64_t every_ = 1;
  int64_t after_ = 0;
  std::optional<int64_t> before_;
  std::vector<int64_t> once_;
  std::function<bool(const Engine&, int64_t)> predicate_;
};

// An event and its (not yet validated) filter arguments. Implicit from Event. Calling one
// builder method twice keeps the last value.
class EventSpec {
 public:
  EventSpec(Event event) : event_(event) {}  // NOLINT: implicit by design
  EventSpec(Event event, FilterArgs args) : event_(event), args_(std::move(args)) {}

  EventSpec Every(int64_t n) &&;
  EventSpec Once(int64_t value) &&;
  EventSpec Once(std::vector<int64_t> values) &&;
  EventSpec Before(int64_t value) &&;
  EventSpec After(int64_t value) &&;
  EventSpec When(std::function<bool(const Engine&, int64_t)> predicate) &&;

  Event event() const { return event_; }
  const FilterArgs& args() const { return args_; }
  // "ITERATION_COMPLETED(every=2, after=3)", for messages.
  std::string DebugString() const;

 private:
  Event event_;
  FilterArgs args_;
};

// Several specs; a handler registered on a list is registered on each in turn.
class EventList {
 public:
  EventList() = default;
  EventList(std::initializer_list<EventSpec> specs) : specs_(specs) {}
  EventList(EventSpec spec) : specs_{std::move(spec)} {}  // NOLINT: implicit by design
  EventList(Event event) : specs_{EventSpec(event)} {}    // NOLINT: implicit by design

  const std::vector<EventSpec>& specs() const { return specs_; }
  EventList& Add(EventSpec spec) {
    specs_.push_back(std::move(spec));
    return *this;
  }

 private:
  std::vector<EventSpec> specs_;
};

EventList operator|(EventList a, EventList b);
inline EventList operator|(Event a, Event b) { return EventList(a) | EventList(b); }
inline EventList operator|(EventSpec a, EventSpec b) {
  return EventList(std::move(a)) | EventList(std::move(b));
}
inline EventList operator|(Event a, EventSpec b) { return EventList(a) | EventList(std::move(b)); }
inline EventList operator|(EventSpec a, Event b) { return EventList(std::move(a)) | EventList(b); }

}  // namespace ember

#endif  // EMBER_ENGINE_EVENTS_H_
