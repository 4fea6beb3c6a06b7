// File: tests/distributed/communicator_checks.h
//
// One conformance suite for every Communicator backend (single process, the in-process fake
// world, MPI under mpirun, NCCL on a GPU machine): each check is called by every rank of a world
// with that rank's communicator, and reports failures through gtest (thread-safe).
#ifndef EMBER_TESTS_DISTRIBUTED_COMMUNICATOR_CHECKS_H_
#define EMBER_TESTS_DISTRIBUTED_COMMUNICATOR_CHECKS_H_

#include <memory>
#include <string>

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

// The fault matrix's programs (mpi_checks, gloo_checks), run on every rank of a real launch.
// RunFaultScenario: an engine run of 100 iterations with TerminateOnNan and a 3 s collective
// timeout in which rank `victim`, at iteration 3, "stall"s (SIGSTOP), "swallow"s (SIGSTOP, while
// every rank's EXCEPTION_RAISED handler swallows the failure), "exit"s (status 9, as a crash) or
// "leave"s (status 0, early). Each rank prints "rank R: <status> after <S>s (EXCEPTION_RAISED
// handler called N time(s))". RunKindsScenario: rank `victim` all-reduces 4 doubles while the
// others all-reduce a 50858-float gradient bucket (deadline 3 s); each rank prints "rank R:
// <status> after <S>s (strict 0|1)". Both return 0 when this rank's run ended OK, 1 otherwise;
// the caller decides how to exit (a poisoned MPI must not be finalized).
int RunFaultScenario(Communicator& comm, const std::string& kind, int victim);
int RunKindsScenario(Communicator& comm, int victim);
// The divergent programs, on a World made of `comm`: an evaluator run of 4 iterations
// whose COMPLETED has two synchronized probes (a MAX "accuracy" and a MEAN "loss"); rank
// `victim` "handler_error": returns an error from a plain handler at COMPLETED (before the
// probes propose; "handler_error_two": ranks victim - 1 and victim both do), "order": registers the probes in the other order, "extra": one more probe
// (both after the run's start). Each rank prints "rank R: run: <status> after <S>s (decided N
// time(s): ...)" and "rank R: shutdown: <status>"; returns 0 when both were OK, 1 otherwise.
int RunDivergenceScenario(std::unique_ptr<Communicator> comm, const std::string& kind, int victim);

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
