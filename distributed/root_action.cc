#include "distributed/root_action.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ember::dist {

absl::Status RunOnRoot(Communicator& comm, int root, absl::Time deadline,
                       const std::function<absl::Status()>& action) {
  std::string outcome;
  absl::Status local;
  if (comm.rank() == root) {
    local = action();
    outcome = std::string(1, static_cast<char>(local.code())) + std::string(local.message());
  }
  if (absl::Status s = comm.Broadcast(outcome, root, deadline); !s.ok()) {
    return comm.rank() == root && !local.ok() ? local : s;
  }
  if (comm.rank() == root) return local;
  if (outcome.empty()) return absl::DataLossError("RunOnRoot: empty outcome from the root");
  const auto code = static_cast<absl::StatusCode>(static_cast<unsigned char>(outcome[0]));
  if (code == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(code, absl::StrCat("rank ", root, ": ", outcome.substr(1)));
}

}  // namespace ember::dist
