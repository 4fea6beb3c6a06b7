// File: distributed/settings_agreement.h
//
// Settings agreement: what defines a run (the trainer's flags; an Engine's epoch length,
// max_epochs and handler layout; a DataParallel's parameters; a checkpoint's options and keys; a
// data source's options) is checked once, at start, to be the same on every rank, before any
// collective that depends on it can be mismatched.
//
// Contract: AgreeOnSettings is a collective (call it on every rank, at the same point of the
// program). Each rank passes a context ("trainer flags", "Engine::Run", ...) and an ordered list
// of named settings with canonical string values. If every rank holds the same context and the
// same list (same names, same values, same order), it returns OK after one all-reduce of 6
// doubles (a 64-bit digest of the list split into exact 32-bit halves, and the list's length;
// MIN of the values and of their negations). Otherwise every rank learns it from that same
// all-reduce, the ranks then send their lists to each other (one Broadcast per rank, each value
// cut to kMaxValueChars characters for the message; the comparison uses the full value's
// digest), and every rank builds the same error, poisons the communicator with it
// (Communicator::PoisonDetectedEverywhere: every later collective fails naming it; no failure
// notice is sent, every rank has the error) and returns it:
//
//   kInvalidArgument "trainer flags differ across ranks: --lr is 0.1 on rank 0, 0.2 on rank 1;
//                     --seed is 1 on ranks 0,2,3, 7 on rank 1"
//
// Every differing setting is named, in the order of the lowest rank that has it; a setting that
// some ranks lack is "(absent)" there; a list whose settings are the same but in another order
// names the orders; a rank calling with another context is named too. A single-process world
// (world_size() == 1) exchanges nothing and returns OK. Each exchange has its own deadline
// (`timeout` from its start; a rank that never arrives gives kDeadlineExceeded, and the
// communicator is poisoned as for any failed collective). A communicator that is already
// poisoned returns its error.
//
// Cost: one all-reduce of 6 doubles per call; callers call it once per Run / construction, never
// per step.
//
// Example:
//   SettingList flags;
//   flags.Add("--data", data_path).AddInt("--batch_size", batch).AddDouble("--lr", lr);
//   EMBER_RETURN_IF_ERROR(AgreeOnSettings(comm, "trainer flags", flags, absl::Seconds(300)));
#ifndef EMBER_DISTRIBUTED_SETTINGS_AGREEMENT_H_
#define EMBER_DISTRIBUTED_SETTINGS_AGREEMENT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

// One named setting with its canonical value (the same value prints the same on every rank).
struct Setting {
  std::string name;
  std::string value;
};

// An ordered list of settings, built with canonical conversions: integers in decimal, doubles
// in the shortest form that reads back exactly ("0.1", "1e-05"), booleans "true" / "false".
// Names need not be unique, but a repeated name is compared by position.
class SettingList {
 public:
  SettingList& Add(absl::string_view name, absl::string_view value);
  SettingList& AddInt(absl::string_view name, int64_t value);
  SettingList& AddDouble(absl::string_view name, double value);
  SettingList& AddBool(absl::string_view name, bool value);

  const std::vector<Setting>& settings() const { return settings_; }
  bool empty() const { return settings_.empty(); }
  size_t size() const { return settings_.size(); }

 private:
  std::vector<Setting> settings_;
};

// Values longer than this are cut (with "...") in the error message.
inline constexpr int kMaxValueChars = 200;

// Checks that every rank holds the same `context` and `settings` (see the file comment).
absl::Status AgreeOnSettings(Communicator& comm, absl::string_view context,
                             const SettingList& settings, absl::Duration timeout);

// The canonical text of a double (shortest round-trip form), as SettingList::AddDouble uses.
std::string CanonicalDouble(double value);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_SETTINGS_AGREEMENT_H_
