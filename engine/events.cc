#include "engine/events.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/mutex.h"
#include "base/type_name.h"

namespace ember {
namespace {

constexpr const char* kBuiltinNames[Event::kNumBuiltin] = {
    "STARTED",           "EPOCH_STARTED",       "GET_BATCH_STARTED", "GET_BATCH_COMPLETED",
    "DATALOADER_STOP_ITERATION", "ITERATION_STARTED", "ITERATION_COMPLETED", "EPOCH_COMPLETED",
    "COMPLETED",         "EXCEPTION_RAISED",    "TERMINATE",         "TERMINATE_SINGLE_EPOCH",
};

// Process-wide registry of custom events (name and attribute by id).
struct CustomRegistry {
  Mutex mu;
  std::vector<std::pair<std::string, EventAttr>> events ABSL_GUARDED_BY(mu);  // index = id - kFirstCustomId
};

CustomRegistry& Registry() {
  static CustomRegistry* const registry = new CustomRegistry();
  return *registry;
}

std::string PyList(const std::vector<int64_t>& values) {
  return absl::StrCat("[", absl::StrJoin(values, ", "), "]");
}

}  // namespace

Event Event::Custom(std::string_view name, EventAttr attr) {
  CustomRegistry& registry = Registry();
  MutexLock lock(&registry.mu);
  for (size_t i = 0; i < registry.events.size(); ++i) {
    if (registry.events[i].first == name) return Event(static_cast<uint16_t>(kFirstCustomId + i));
  }
  registry.events.emplace_back(std::string(name), attr);
  return Event(static_cast<uint16_t>(kFirstCustomId + registry.events.size() - 1));
}

std::string Event::name() const {
  if (is_builtin()) return kBuiltinNames[id_];
  CustomRegistry& registry = Registry();
  MutexLock lock(&registry.mu);
  size_t index = id_ - kFirstCustomId;
  if (id_ < kFirstCustomId || index >= registry.events.size()) return absl::StrCat("EVENT_", id_);
  return registry.events[index].first;
}

EventAttr Event::attr() const {
  switch (id_) {
    case kStarted:
    case kEpochStarted:
    case kEpochCompleted:
    case kCompleted:
      return EventAttr::kEpoch;
    case kGetBatchStarted:
    case kGetBatchCompleted:
    case kIterationStarted:
    case kIterationCompleted:
      return EventAttr::kIteration;
    default:
      break;
  }
  if (is_builtin()) return EventAttr::kNone;
  CustomRegistry& registry = Registry();
  MutexLock lock(&registry.mu);
  size_t index = id_ - kFirstCustomId;
  if (id_ < kFirstCustomId || index >= registry.events.size()) return EventAttr::kNone;
  return registry.events[index].second;
}

EventSpec Event::Every(int64_t n) const { return EventSpec(*this).Every(n); }
EventSpec Event::Once(int64_t value) const { return EventSpec(*this).Once(value); }
EventSpec Event::Once(std::vector<int64_t> values) const {
  return EventSpec(*this).Once(std::move(values));
}
EventSpec Event::Before(int64_t value) const { return EventSpec(*this).Before(value); }
EventSpec Event::After(int64_t value) const { return EventSpec(*this).After(value); }
EventSpec Event::When(std::function<bool(const Engine&, int64_t)> predicate) const {
  return EventSpec(*this).When(std::move(predicate));
}

EventSpec EventSpec::Every(int64_t n) && {
  args_.every = n;
  return std::move(*this);
}
EventSpec EventSpec::Once(int64_t value) && {
  args_.once = std::vector<int64_t>{value};
  return std::move(*this);
}
EventSpec EventSpec::Once(std::vector<int64_t> values) && {
  args_.once = std::move(values);
  return std::move(*this);
}
EventSpec EventSpec::Before(int64_t value) && {
  args_.before = value;
  return std::move(*this);
}
EventSpec EventSpec::After(int64_t value) && {
  args_.after = value;
  return std::move(*this);
}
EventSpec EventSpec::When(std::function<bool(const Engine&, int64_t)> predicate) && {
  args_.predicate = std::move(predicate);
  return std::move(*this);
}

std::string EventSpec::DebugString() const {
  std::vector<std::string> parts;
  if (args_.every) parts.push_back(absl::StrCat("every=", *args_.every));
  if (args_.once) {
    parts.push_back(absl::StrCat(
        "once=", args_.once->size() == 1 ? absl::StrCat((*args_.once)[0]) : PyList(*args_.once)));
  }
  if (args_.before) parts.push_back(absl::StrCat("before=", *args_.before));
  if (args_.after) parts.push_back(absl::StrCat("after=", *args_.after));
  if (args_.predicate) parts.push_back("event_filter=" + CallableName(args_.predicate));
  if (parts.empty()) return event_.name();
  return absl::StrCat(event_.name(), "(", absl::StrJoin(parts, ", "), ")");
}

absl::StatusOr<EventFilter> EventFilter::Create(FilterArgs args) {
  // ignite: exactly one of {event_filter, once, every/before/after}.
  const int groups = (args.predicate ? 1 : 0) + (args.once ? 1 : 0) +
                     ((args.every || args.before || args.after) ? 1 : 0);
  if (groups != 1) {
    return absl::InvalidArgumentError(
        "Only one of the input arguments should be specified, except before, after and every");
  }
  EventFilter filter;
  if (args.predicate) {
    filter.kind_ = Kind::kPredicate;
    filter.predicate_ = std::move(args.predicate);
    return filter;
  }
  if (args.once) {
    bool ok = !args.once->empty();
    for (int64_t v : *args.once) ok = ok && v > 0;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Argument once should either be a positive integer or a list of positive integers, got ",
          args.once->size() == 1 ? absl::StrCat((*args.once)[0]) : PyList(*args.once)));
    }
    filter.kind_ = Kind::kOnce;
    filter.once_ = std::move(*args.once);
    return filter;
  }
  if (args.every && *args.every <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument every should be integer and greater than zero, got ", *args.every));
  }
  if (args.before && *args.before < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument before should be integer and greater or equal to zero, got ", *args.before));
  }
  if (args.after && *args.after < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument after should be integer and greater or equal to zero, got ", *args.after));
  }
  if (!args.before && !args.after) {
    filter.kind_ = *args.every == 1 ? Kind::kNone : Kind::kEvery;
    filter.every_ = *args.every;
    return filter;
  }
  filter.kind_ = Kind::kRange;
  filter.every_ = args.every.value_or(1);
  filter.after_ = args.after.value_or(0);
  filter.before_ = args.before;
  return filter;
}

bool EventFilter::Matches(const Engine& engine, int64_t value) const {
  switch (kind_) {
    case Kind::kNone:
      return true;
    case Kind::kEvery:
      return value % every_ == 0;
    case Kind::kOnce:
      for (int64_t v : once_) {
        if (v == value) return true;
      }
      return false;
    case Kind::kRange:
      if (value <= after_) return false;
      if (before_ && value >= *before_) return false;
      return (value - after_ - 1) % every_ == 0;
    case Kind::kPredicate:
      return predicate_(engine, value);
  }
  return false;
}

std::string EventFilter::Describe() const {
  switch (kind_) {
    case Kind::kNone:
      return "";
    case Kind::kEvery:
      return absl::StrCat("every=", every_);
    case Kind::kOnce:
      return absl::StrCat("once=", once_.size() == 1 ? absl::StrCat(once_[0]) : PyList(once_));
    case Kind::kRange: {
      std::string out = absl::StrCat("every=", every_, ", after=", after_);
      if (before_) absl::StrAppend(&out, ", before=", *before_);
      return out;
    }
    case Kind::kPredicate:
      return "event_filter=" + CallableName(predicate_);
  }
  return "";
}

EventList operator|(EventList a, EventList b) {
  for (const EventSpec& spec : b.specs()) a.Add(spec);
  return a;
}

}  // namespace ember
