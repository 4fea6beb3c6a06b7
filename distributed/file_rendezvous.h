// File: distributed/file_rendezvous.h
//
// ShareThroughFile: rank 0 publishes `payload` in a file on a filesystem every rank sees
// (base/atomic_file.h: a reader never sees half a file); the other ranks poll for it
// until `deadline`. Used to hand out NCCL's ncclUniqueId when there is neither an MPI bootstrap
// nor a MASTER_ADDR.
//
// Stale files: a file left by an earlier job has the right size but the wrong id, and NCCL would
// then wait for peers that never come. The file carries the job's `run_id` (required, non-empty:
// a scheduler job id, torchrun's run id, a value the user's launcher passes to every rank) and a
// reader accepts only a file with its own run id; anything else is ignored as stale and the
// reader keeps waiting, until the deadline, then fails naming what it found. Rank 0 replaces a
// stale file by rename.
//
// Format: "EMBERRDV1\n" run_id "\n" <decimal payload size> "\n" payload.
#ifndef EMBER_DISTRIBUTED_FILE_RENDEZVOUS_H_
#define EMBER_DISTRIBUTED_FILE_RENDEZVOUS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ember::dist {

// On rank 0 returns `payload` once published; elsewhere returns what rank 0 published for
// `run_id`. kInvalidArgument for an empty run id or path; kDeadlineExceeded when no file of this
// run appeared in time.
absl::StatusOr<std::string> ShareThroughFile(int rank, const std::string& path,
                                             const std::string& run_id, const std::string& payload,
                                             absl::Time deadline);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_FILE_RENDEZVOUS_H_
