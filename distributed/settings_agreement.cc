#include "distributed/settings_agreement.h"

#include <array>
#include <charconv>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"

namespace ember::dist {

SettingList& SettingList::Add(absl::string_view name, absl::string_view value) {
  settings_.push_back(Setting{std::string(name), std::string(value)});
  return *this;
}

SettingList& SettingList::AddInt(absl::string_view name, int64_t value) {
  return Add(name, absl::StrCat(value));
}

SettingList& SettingList::AddDouble(absl::string_view name, double value) {
  return Add(name, CanonicalDouble(value));
}

SettingList& SettingList::AddBool(absl::string_view name, bool value) {
  return Add(name, value ? "true" : "false");
}

std::string CanonicalDouble(double value) {
  std::array<char, 64> buf;
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value);
  if (ec != std::errc()) return absl::StrCat(value);
  return std::string(buf.data(), end);
}

namespace {

// FNV-1a over length-prefixed fields, then a SplitMix64 finaliser: stable across processes and
// builds (absl::Hash is seeded per process), and a field boundary cannot be moved without
// changing the digest.
class Digest {
 public:
  Digest& Field(absl::string_view bytes) {
    Mix(static_cast<uint64_t>(bytes.size()));
    for (const char c : bytes) Byte(static_cast<unsigned char>(c));
    return *this;
  }
  Digest& Mix(uint64_t v) {
    for (int i = 0; i < 8; ++i) Byte(static_cast<unsigned char>(v >> (8 * i)));
    return *this;
  }
  uint64_t value() const {
    uint64_t z = h_ + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  void Byte(unsigned char c) {
    h_ ^= c;
    h_ *= 0x100000001b3ULL;
  }
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

uint64_t ListDigest(absl::string_view context, const std::vector<Setting>& settings) {
  Digest d;
  d.Field(context).Mix(settings.size());
  for (const Setting& s : settings) d.Field(s.name).Field(s.value);
  return d.value();
}

uint64_t ValueDigest(absl::string_view value) { return Digest().Field(value).value(); }

// What a rank sends in the second exchange: its context and, per setting, its name, its value as
// the message shows it (cut to kMaxValueChars) and the full value's digest.
struct Entry {
  std::string name;
  std::string shown;
  uint64_t digest = 0;
};
struct RankList {
  std::string context;
  std::vector<Entry> entries;
};

std::string Shown(absl::string_view value) {
  if (value.empty()) return "\"\"";
  if (value.size() <= static_cast<size_t>(kMaxValueChars)) return std::string(value);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(ValueDigest(value)));
  return absl::StrCat(value.substr(0, kMaxValueChars), "...[", value.size(), " chars, digest ",
                      absl::string_view(hex, 8), "]");
}

void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutString(std::string& out, absl::string_view s) {
  PutU64(out, s.size());
  out.append(s.data(), s.size());
}

std::string Encode(absl::string_view context, const std::vector<Setting>& settings) {
  std::string out;
  PutString(out, context);
  PutU64(out, settings.size());
  for (const Setting& s : settings) {
    PutString(out, s.name);
    PutString(out, Shown(s.value));
    PutU64(out, ValueDigest(s.value));
  }
  return out;
}

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool U64(uint64_t& v) {
    if (in_.size() < 8) return false;
    v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    return true;
  }
  bool String(std::string& s) {
    uint64_t n = 0;
    if (!U64(n) || n > in_.size()) return false;
    s.assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }
  size_t left() const { return in_.size(); }

 private:
  absl::string_view in_;
};

absl::StatusOr<RankList> Decode(absl::string_view bytes, int rank) {
  Reader r(bytes);
  RankList list;
  uint64_t n = 0;
  bool ok = r.String(list.context) && r.U64(n) && n <= r.left() / 24;  // each entry >= 24 bytes
  for (uint64_t i = 0; ok && i < n; ++i) {
    Entry e;
    ok = r.String(e.name) && r.String(e.shown) && r.U64(e.digest);
    list.entries.push_back(std::move(e));
  }
  if (!ok || !r.done()) {
    return absl::DataLossError(absl::StrCat("settings agreement: rank ", rank, " sent ", bytes.size(),
                                            " bytes that are not a settings list"));
  }
  return list;
}

// "rank 3", "ranks 0,2,3" or "ranks 0-4,6" (a run of three or more ranks is a range).
std::string Ranks(const std::vector<int>& ranks) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(ranks[i])
                    : j == i + 1 ? absl::StrCat(ranks[i], ",", ranks[j])
                                 : absl::StrCat(ranks[i], "-", ranks[j]));
    i = j + 1;
  }
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(parts, ","));
}

// "<a> on rank 0, <b> on ranks 1-3": the ranks grouped by key, groups in order of their lowest
// rank.
template <typename Key>
std::string Grouped(const std::vector<Key>& per_rank, const std::vector<std::string>& shown) {
  std::vector<std::pair<Key, std::vector<int>>> groups;
  std::vector<std::string> group_text;
  for (int r = 0; r < static_cast<int>(per_rank.size()); ++r) {
    size_t g = 0;
    while (g < groups.size() && !(groups[g].first == per_rank[r])) ++g;
    if (g == groups.size()) {
      groups.push_back({per_rank[r], {}});
      group_text.push_back(shown[r]);
    }
    groups[g].second.push_back(r);
  }
  std::vector<std::string> parts;
  for (size_t g = 0; g < groups.size(); ++g) {
    parts.push_back(absl::StrCat(group_text[g], " on ", Ranks(groups[g].second)));
  }
  return absl::StrJoin(parts, ", ");
}

// The message every rank builds from the same lists.
std::string Describe(const std::vector<RankList>& lists) {
  const int world = static_cast<int>(lists.size());
  {
    std::vector<std::string> contexts;
    for (const RankList& l : lists) contexts.push_back(l.context);
    bool same = true;
    for (const std::string& c : contexts) same = same && c == contexts[0];
    if (!same) {
      std::vector<std::string> shown;
      for (const std::string& c : contexts) shown.push_back(absl::StrCat("\"", c, "\""));
      return absl::StrCat("settings agreements differ across ranks (the ranks are not at the same point of "
                          "the program): ",
                          Grouped(contexts, shown));
    }
  }
  // A setting is (name, occurrence of that name): the union over the ranks, in the order of the
  // lowest rank that has it.
  using Key = std::pair<std::string, int>;
  std::vector<Key> order;
  std::map<Key, std::vector<const Entry*>> at;  // per key, per rank (nullptr: absent)
  for (int r = 0; r < world; ++r) {
    std::map<std::string, int> seen;
    for (const Entry& e : lists[r].entries) {
      Key k{e.name, seen[e.name]++};
      auto [it, inserted] = at.try_emplace(k, std::vector<const Entry*>(world, nullptr));
      if (inserted) order.push_back(k);
      it->second[r] = &e;
    }
  }
  std::vector<std::string> diffs;
  for (const Key& k : order) {
    const std::vector<const Entry*>& per = at[k];
    std::vector<std::pair<bool, uint64_t>> keys;
    std::vector<std::string> shown;
    for (const Entry* e : per) {
      keys.push_back({e != nullptr, e != nullptr ? e->digest : 0});
      shown.push_back(e != nullptr ? e->shown : "(absent)");
    }
    bool same = true;
    for (const auto& key : keys) same = same && key == keys[0];
    if (!same) diffs.push_back(absl::StrCat(k.first, " is ", Grouped(keys, shown)));
  }
  // Lists of different lengths always show here: some setting is (absent) on some rank.
  if (diffs.empty()) {
    // Same settings, same values: the order differs.
    std::vector<std::vector<std::string>> orders;
    std::vector<std::string> shown;
    for (const RankList& l : lists) {
      std::vector<std::string> names;
      for (const Entry& e : l.entries) names.push_back(e.name);
      shown.push_back(absl::StrJoin(names, " "));
      orders.push_back(std::move(names));
    }
    diffs.push_back(absl::StrCat("the settings are in another order: ", Grouped(orders, shown)));
  }
  return absl::StrCat(lists[0].context, " differ across ranks: ", absl::StrJoin(diffs, "; "));
}

}  // namespace

absl::Status AgreeOnSettings(Communicator& comm, absl::string_view context, const SettingList& settings,
                             absl::Duration timeout) {
  if (!comm.poisoned().ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("agreeing on ", context, " on a communicator poisoned by an earlier error: ",
                     comm.poisoned().message()));
  }
  const int world = comm.world_size();
  if (world == 1) return absl::OkStatus();

  // First exchange: MIN of (digest halves, length) and of their negations, i.e. MIN and MAX.
  const uint64_t digest = ListDigest(context, settings.settings());
  const double hi = static_cast<double>(digest >> 32);
  const double lo = static_cast<double>(digest & 0xffffffffULL);
  const double n = static_cast<double>(settings.size());
  std::array<double, 6> v = {hi, lo, n, -hi, -lo, -n};
  if (absl::Status s = comm.AllReduce(absl::MakeSpan(v), ReduceOp::kMin, absl::Now() + timeout); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("agreeing on ", context, ": ", s.message()));
  }
  if (v[0] == -v[3] && v[1] == -v[4] && v[2] == -v[5]) return absl::OkStatus();

  // Second exchange, only on a mismatch (every rank saw it in the same reduced values): every
  // rank's list, from each rank in turn.
  const std::string mine = Encode(context, settings.settings());
  std::vector<RankList> lists;
  for (int r = 0; r < world; ++r) {
    std::string bytes = r == comm.rank() ? mine : std::string();
    if (absl::Status s = comm.Broadcast(bytes, r, absl::Now() + timeout); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat(context, " differ across ranks; sending the lists failed: ",
                                                 s.message()));
    }
    absl::StatusOr<RankList> list = Decode(bytes, r);
    if (!list.ok()) {
      comm.PoisonDetectedEverywhere(list.status());
      return list.status();
    }
    lists.push_back(*std::move(list));
  }
  // Every rank builds this same error from the same lists: no rank needs telling (and a notice
  // could abort a peer still completing the last broadcast).
  absl::Status error = absl::InvalidArgumentError(Describe(lists));
  comm.PoisonDetectedEverywhere(error);
  return error;
}

}  // namespace ember::dist
