// File: distributed/root_action.h
//
// RunOnRoot: runs `action` on the root rank only (the saving rank of a checkpoint) and gives
// every rank the same outcome: root's Status is broadcast, so a failed save fails every rank
// with the same code and message (prefixed with the root's rank on the others) instead of only
// the root. Must be called by every rank at the same point (it is a collective).
#ifndef EMBER_DISTRIBUTED_ROOT_ACTION_H_
#define EMBER_DISTRIBUTED_ROOT_ACTION_H_

#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

absl::Status RunOnRoot(Communicator& comm, int root, absl::Time deadline,
                       const std::function<absl::Status()>& action);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_ROOT_ACTION_H_
