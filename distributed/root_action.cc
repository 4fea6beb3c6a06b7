#include "distributed/root_action.h"

#include <algorithm>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "base/crc32.h"

namespace ember::dist {

absl::Status RunOnRoot(Communicator& comm, int root, absl::Time deadline,
                       const std::function<absl::Status()>& action, absl::Duration outcome_timeout) {
  std::string outcome;
  absl::Status local;
  absl::Time broadcast_deadline = deadline;
  if (comm.rank() == root) {
    local = action();
    outcome = std::string(1, static_cast<char>(local.code())) + std::string(local.message());
    broadcast_deadline = std::min(deadline, absl::Now() + outcome_timeout);
  }
  if (absl::Status s = comm.Broadcast(outcome, root, broadcast_deadline); !s.ok()) {
    if (comm.rank() != root || local.ok()) return s;
    comm.TellPeers(local);  // the broadcast's failure told the peers nothing of the action's error
    return local;
  }
  if (comm.rank() == root) return local;
  if (outcome.empty()) return absl::DataLossError("RunOnRoot: empty outcome from the root");
  const auto code = static_cast<absl::StatusCode>(static_cast<unsigned char>(outcome[0]));
  if (code == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(code, absl::StrCat("rank ", root, ": ", outcome.substr(1)));
}

absl::Status BroadcastChecked(Communicator& comm, std::string& bytes, int root, absl::string_view what,
                              absl::Time deadline) {
  if (absl::Status s = comm.Broadcast(bytes, root, deadline); !s.ok()) return s;
  if (comm.world_size() == 1) return absl::OkStatus();
  const double crc = static_cast<double>(Crc32(0, bytes.data(), bytes.size()));
  const double size = static_cast<double>(bytes.size());
  double v[4] = {crc, -crc, size, -size};  // MIN of each and of its negation: equal everywhere iff min == max
  if (absl::Status s = comm.AllReduce(absl::MakeSpan(v), ReduceOp::kMin, deadline); !s.ok()) return s;
  if (v[0] == -v[1] && v[2] == -v[3]) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      what, ": the bytes broadcast from rank ", root, " differ between ranks after the transfer (this rank holds ",
      bytes.size(), " bytes, CRC-32 ", absl::Hex(static_cast<uint32_t>(crc), absl::kZeroPad8),
      "; the ranks' CRC-32s span ", absl::Hex(static_cast<uint32_t>(v[0]), absl::kZeroPad8), " to ",
      absl::Hex(static_cast<uint32_t>(-v[1]), absl::kZeroPad8), ", sizes ", static_cast<uint64_t>(v[2]), " to ",
      static_cast<uint64_t>(-v[3]), "): a corrupted transfer; nothing was loaded"));
}

}  // namespace ember::dist
