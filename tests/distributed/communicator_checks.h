// File: tests/distributed/communicator_checks.h
//
// One conformance suite for every Communicator backend (single process, the in-process fake
// world, MPI under mpirun, NCCL on a GPU machine): each check is called by every rank of a world
// with that rank's communicator, and reports failures through gtest (thread-safe).
#ifndef EMBER_TESTS_DISTRIBUTED_COMMUNICATOR_CHECKS_H_
#define EMBER_TESTS_DISTRIBUTED_COMMUNICATOR_CHECKS_H_

#include "distributed/communicator.h"

namespace ember::dist::testing {

void CheckAllReduce(Communicator& comm);
// StartAllReduce of host buffers of every element type (float32, float64, float16, bfloat16,
// int64), SUM / MIN / MAX, with two collectives in flight at once; a device buffer on a backend
// without device buffers is refused without poisoning the communicator.
void CheckTypedAllReduce(Communicator& comm);
void CheckAllGather(Communicator& comm);
void CheckBroadcast(Communicator& comm);
void CheckBarrier(Communicator& comm);
// The engine: a NaN on the last rank at iteration 3 stops every rank at iteration 3, and a
// per-rank EarlyStopping score reduced with MEAN stops every rank at the same epoch, with one
// collective per synchronized firing.
void CheckEngineAgreement(Communicator& comm);

inline void CheckAll(Communicator& comm) {
  CheckAllReduce(comm);
  CheckTypedAllReduce(comm);
  CheckAllGather(comm);
  CheckBroadcast(comm);
  CheckBarrier(comm);
  CheckEngineAgreement(comm);
}

}  // namespace ember::dist::testing

#endif  // EMBER_TESTS_DISTRIBUTED_COMMUNICATOR_CHECKS_H_
