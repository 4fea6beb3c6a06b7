// File: distributed/root_action.h
//
// RunOnRoot: runs `action` on the root rank only (the saving rank of a checkpoint) and gives
// every rank the same outcome: root's Status is broadcast, so a failed save fails every rank
// with the same code and message (prefixed with the root's rank on the others) instead of only
// the root. Must be called by every rank at the same point (it is a collective).
#ifndef EMBER_DISTRIBUTED_ROOT_ACTION_H_
#define EMBER_DISTRIBUTED_ROOT_ACTION_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

// `outcome_timeout` bounds the root's broadcast of the outcome once its action is done (the
// other ranks are waiting in it by then): a rank that stalled meanwhile fails the root within it,
// not at `deadline` (the action's own bound, a save's 30 minutes: Checkpoint passes its engine's
// collective timeout). Unbounded by default: the broadcast then waits until `deadline`, which
// suits a caller whose deadline is a collective's. The others wait until `deadline`: they wait for
// the action too.
// When the action failed and its outcome could not be broadcast (a peer stalled meanwhile), the
// root still tells the peers its action's error (Communicator::TellPeers: a failure notice, on
// the backends that carry one), so that a healthy peer learns why the job ends, not only that a
// broadcast was given up on.
absl::Status RunOnRoot(Communicator& comm, int root, absl::Time deadline,
                       const std::function<absl::Status()>& action,
                       absl::Duration outcome_timeout = absl::InfiniteDuration());

// BroadcastChecked: Broadcast of `bytes` from `root`, then a check that every rank holds the same
// bytes: each rank computes their CRC-32 (hardware-accelerated where the CPU allows: about 10 GB/s
// here) and one all-reduce of 4 doubles compares the CRCs and sizes. A difference (a corrupted
// transfer: a flipped bit on a TCP link, a memory fault) is DATA_LOSS on every rank, naming `what`.
// What the root verified before sharing is then what every rank holds, so receivers may skip their
// own per-record checks (ReadVerifiedTorchSave). A collective, like Broadcast.
absl::Status BroadcastChecked(Communicator& comm, std::string& bytes, int root, absl::string_view what,
                              absl::Time deadline);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_ROOT_ACTION_H_
