#include "distributed/consensus.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ember::dist {

const char* ReductionName(Reduction r) {
  switch (r) {
    case Reduction::kSum:
      return "SUM";
    case Reduction::kMean:
      return "MEAN";
    case Reduction::kMin:
      return "MIN";
    case Reduction::kMax:
      return "MAX";
    case Reduction::kAnyNonZero:
      return "ANY";
  }
  return "?";
}

namespace {

double Bits(uint64_t v) {
  double d;
  std::memcpy(&d, &v, sizeof(d));
  return d;
}

uint64_t Word(double d) {
  uint64_t v;
  std::memcpy(&v, &d, sizeof(v));
  return v;
}

const char* const kFieldNames[kAgreementHeader] = {"sequence number", "event", "iteration", "number of values",
                                                   "layout"};

}  // namespace

uint64_t LayoutDigest(uint64_t digest, const std::string& name, absl::Span<const Reduction> ops) {
  auto mix = [&digest](uint64_t v) { digest = (digest ^ v) * 1099511628211ull; };
  for (char c : name) mix(static_cast<unsigned char>(c));
  mix(0xFF);
  mix(ops.size());
  for (Reduction op : ops) mix(static_cast<uint64_t>(op) + 1);
  return digest;
}

void Consensus::Pack(const AgreementId& id, absl::Span<const double> values, absl::Span<double> slots) {
  slots[0] = Bits(seq_++);
  slots[1] = Bits(id.event);
  slots[2] = Bits(static_cast<uint64_t>(id.iteration));
  slots[3] = Bits(values.size());
  slots[4] = Bits(id.layout);
  const size_t inline_n = values.size() <= kAgreementInline ? values.size() : 0;
  std::copy_n(values.begin(), inline_n, slots.begin() + kAgreementHeader);
  std::fill(slots.begin() + static_cast<ptrdiff_t>(kAgreementHeader + inline_n), slots.begin() + kAgreementSlots, 0.0);
}

absl::Status Consensus::CheckGathered(absl::Span<const double> gathered, const AgreementId& id, absl::Time deadline) {
  const int world = comm_->world_size();
  if (gathered.size() != static_cast<size_t>(world) * kAgreementSlots) {
    return absl::InvalidArgumentError(absl::StrCat("Consensus::CheckGathered: ", gathered.size(), " slots for ", world,
                                                   " ranks; expected ", world * kAgreementSlots));
  }
  const double* mine = gathered.data() + static_cast<size_t>(comm_->rank()) * kAgreementSlots;
  for (int r = 0; r < world; ++r) {
    if (std::memcmp(gathered.data() + static_cast<size_t>(r) * kAgreementSlots, mine,
                    kAgreementHeader * sizeof(double)) != 0) {
      return Mismatch(*comm_, gathered, id, deadline);
    }
  }
  return absl::OkStatus();
}

absl::Status Consensus::Mismatch(Communicator& comm, absl::Span<const double> gathered, const AgreementId& id,
                                 absl::Time deadline) {
  const int world = comm.world_size();
  auto header = [&](int r, size_t f) { return Word(gathered[static_cast<size_t>(r) * kAgreementSlots + f]); };
  // Rare path: every rank saw the same headers, so every rank is here; each tells its side.
  std::vector<std::string> sides(static_cast<size_t>(world));
  const std::string mine = id.describe ? id.describe() : std::string();
  for (int root = 0; root < world; ++root) {
    std::string text = comm.rank() == root ? mine : std::string();
    if (!comm.Broadcast(text, root, deadline).ok()) break;  // the headers still say what differs
    sides[static_cast<size_t>(root)] = std::move(text);
  }
  std::vector<std::string> differs;
  std::vector<std::string> ranks;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> fields;
    for (size_t f = 0; f < kAgreementHeader; ++f) {
      if (header(r, f) != header(0, f)) fields.push_back(kFieldNames[f]);
    }
    if (r > 0 && fields.empty()) continue;
    for (const std::string& f : fields) {
      if (std::find(differs.begin(), differs.end(), f) == differs.end()) differs.push_back(f);
    }
    const uint64_t event = header(r, 1);
    const std::string& side = sides[static_cast<size_t>(r)];
    ranks.push_back(absl::StrCat(
        "rank ", r, " (agreement #", header(r, 0), ") ",
        !side.empty() ? side
                      : absl::StrCat(event == AgreementId::kNoEvent ? std::string("outside an event")
                                                                    : absl::StrCat("at event ", event),
                                     " (iteration ", static_cast<int64_t>(header(r, 2)), "), ", header(r, 3),
                                     " value(s), layout ", header(r, 4))));
  }
  absl::Status error = absl::FailedPreconditionError(absl::StrCat(
      "the ranks' agreements differ (", absl::StrJoin(differs, ", "),
      "), detected before any value was used: ", absl::StrJoin(ranks, "; "),
      ". Every rank must run the same program: the same handlers, registered in the same order, "
      "at the same events"));
  // Every rank detected it from the same headers: no notice (it could abort a peer still in the
  // last description broadcast).
  comm.PoisonDetectedEverywhere(error);
  return error;
}

absl::Status Consensus::Reduce(absl::Span<const double> values, absl::Span<const Reduction> ops,
                               absl::Span<double> reduced, absl::Span<double> per_rank,
                               absl::Time deadline, const AgreementId& id) {
  const int world = comm_->world_size();
  const size_t n = values.size();
  if (ops.size() != n || reduced.size() != n || per_rank.size() != n * static_cast<size_t>(world)) {
    return absl::InvalidArgumentError(absl::StrCat("Consensus::Reduce: ", n, " values, ",
                                                   ops.size(), " reductions, ", reduced.size(),
                                                   " outputs, ", per_rank.size(), " per-rank slots"));
  }
  if (world == 1) {
    // Alone, the all-gather is this copy: skip the communicator's call (a virtual call, its
    // poison check and collective count), which is a quarter of a firing's cost here.
    std::copy(values.begin(), values.end(), per_rank.begin());
    return ReduceGathered(per_rank, ops, reduced, world);
  }
  // Fixed size, identity first (see the header).
  slots_.resize(kAgreementSlots);
  gathered_.resize(static_cast<size_t>(world) * kAgreementSlots);
  Pack(id, values, absl::MakeSpan(slots_));
  if (absl::Status s = comm_->AllGather(slots_, absl::MakeSpan(gathered_), deadline); !s.ok()) return s;
  if (absl::Status s = CheckGathered(gathered_, id, deadline); !s.ok()) return s;
  if (n <= kAgreementInline) {
    for (int r = 0; r < world; ++r) {
      std::copy_n(gathered_.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(r) * kAgreementSlots + kAgreementHeader),
                  n, per_rank.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(r) * n));
    }
  } else if (absl::Status s = comm_->AllGather(values, per_rank, deadline); !s.ok()) {
    // The headers agreed on n: the second exchange has the same size on every rank.
    return s;
  }
  return ReduceGathered(per_rank, ops, reduced, world);
}

absl::Status Consensus::ReduceGathered(absl::Span<const double> per_rank, absl::Span<const Reduction> ops,
                                       absl::Span<double> reduced, int world) {
  const size_t n = ops.size();
  if (world < 1 || reduced.size() != n || per_rank.size() != n * static_cast<size_t>(world)) {
    return absl::InvalidArgumentError(absl::StrCat("Consensus::ReduceGathered: ", n, " reductions, ", reduced.size(),
                                                   " outputs, ", per_rank.size(), " per-rank slots for ", world,
                                                   " ranks"));
  }
  for (size_t i = 0; i < n; ++i) {
    double acc = per_rank[i];
    for (int r = 1; r < world; ++r) {
      const double v = per_rank[static_cast<size_t>(r) * n + i];
      switch (ops[i]) {
        case Reduction::kSum:
        case Reduction::kMean:
          acc += v;
          break;
        case Reduction::kMin:
          if (std::isnan(acc) || v < acc) acc = std::isnan(v) ? acc : v;
          break;
        case Reduction::kMax:
          if (std::isnan(acc) || v > acc) acc = std::isnan(v) ? acc : v;
          break;
        case Reduction::kAnyNonZero:
          acc = (acc != 0 || v != 0) ? 1.0 : 0.0;
          break;
      }
    }
    if (ops[i] == Reduction::kMean) acc /= world;
    if (ops[i] == Reduction::kAnyNonZero) acc = acc != 0 ? 1.0 : 0.0;
    reduced[i] = acc;
  }
  return absl::OkStatus();
}

}  // namespace ember::dist
