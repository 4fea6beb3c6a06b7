// File: distributed/default_communicator.h
//
// The process's default communicator, the way PyTorch's default process group works: the World
// that LaunchWorld() returns (launch.h) sets it for as long as it lives, and every Engine (and
// every ModelCheckpoint) created meanwhile uses it unless given another one explicitly.
//
// LauncherWorldSize() is the number of ranks the launcher's environment announces (1 without a
// launcher, or when the environment cannot be read): an engine compares it with its own
// communicator so that a synchronized handler never agrees on a single-process communicator
// inside a multi-rank job by accident.
//
// Thread safety: the default is an atomic pointer; set it before creating engines.
#ifndef EMBER_DISTRIBUTED_DEFAULT_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_DEFAULT_COMMUNICATOR_H_

#include "absl/status/status.h"
#include "distributed/communicator.h"

namespace ember::dist {

// nullptr when no World is alive.
Communicator* DefaultCommunicator();
// Replaces the default; returns the previous one (nullptr clears it).
Communicator* SetDefaultCommunicator(Communicator* comm);

int LauncherWorldSize();

// For an object that takes the default communicator when given none: OK unless there is no World
// while the launcher announces several ranks; then FAILED_PRECONDITION "<who>: this process is
// one of N ranks (launcher environment) but no World exists, so <consequence>: create the World
// (ember::dist::LaunchWorld()) before <who>, or pass <how>".
absl::Status CheckWorldExists(const char* who, const char* consequence, const char* how);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_DEFAULT_COMMUNICATOR_H_
