// Runs under a real torchrun (torchrun_test.sh): reads the launcher's environment as Launch does
// and hands rank 0's payload to every rank through the TCP rendezvous that the NCCL backend uses
// for its ncclUniqueId (tcp_rendezvous.h), at MASTER_ADDR and the rendezvous port that
// launcher_env.h derives. Each rank prints
//   rank R of N: got '<payload>' on port P (<which variables chose it>)
// or "rank R: <error>" and exits 1.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "distributed/launcher_env.h"
#include "distributed/tcp_rendezvous.h"

int main() {
  absl::StatusOr<ember::dist::LaunchInfo> info = ember::dist::ReadLaunchInfo();
  if (!info.ok()) {
    std::printf("rank ?: %s\n", info.status().ToString().c_str());
    return 1;
  }
  const std::string payload = info->rank == 0 ? absl::StrCat("unique-id-of-pid-", ::getpid()) : "";
  absl::StatusOr<std::string> got =
      ember::dist::ShareFromRank0(info->rank, info->world_size, info->master_addr, info->rendezvous_port,
                                  payload, absl::Now() + absl::Seconds(60));
  if (!got.ok()) {
    std::printf("rank %d: %s\n", info->rank, got.status().ToString().c_str());
    return 1;
  }
  std::printf("rank %d of %d: got '%s' on port %d (%s)\n", info->rank, info->world_size, got->c_str(),
              info->rendezvous_port, info->rendezvous_port_from.c_str());
  return 0;
}
