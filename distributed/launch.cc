#include "distributed/launch.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"
#include "distributed/gloo_communicator.h"
#include "distributed/mpi_communicator.h"
#include "distributed/nccl_communicator.h"
#include "distributed/single_process_communicator.h"
#include "distributed/tcp_rendezvous.h"

namespace ember::dist {
namespace {

absl::Status AgreeOnStrictMode(Communicator& comm, absl::Time deadline);

// An NCCL communicator together with the MPI communicator that bootstrapped it (kept alive so
// that MPI is finalised after NCCL is torn down). Every collective is NCCL's, gradient buffers on
// the device included (device_buffers, StartAllReduce); the control traffic is MPI's: the failure
// notices (NCCL has no side channel) and the shutdown meeting, on the bootstrap's control channel,
// where it can never complete a training collective. Strict mode's fingerprints are this
// communicator's (NCCL's own are off: one exchange per collective, not two).
class BootstrappedCommunicator final : public Communicator {
 public:
  BootstrappedCommunicator(std::unique_ptr<Communicator> bootstrap, std::unique_ptr<Communicator> main)
      : bootstrap_(std::move(bootstrap)), main_(std::move(main)) {
    main_->set_strict(false);
  }
  ~BootstrappedCommunicator() override {
    // After a failed NCCL collective the peers' state is unknown: the bootstrap (MPI) must not
    // finalise either, or MPI_Finalize can block on a stalled peer.
    absl::Status failed = poisoned().ok() ? main_->poisoned() : poisoned();
    // No notice from here: the peers were told when it failed (DoNotifyFailure), if at all.
    if (!failed.ok()) bootstrap_->PoisonDetectedEverywhere(failed);
    main_.reset();
  }
  int rank() const override { return main_->rank(); }
  int world_size() const override { return main_->world_size(); }
  int local_rank() const override { return main_->local_rank(); }
  std::string backend() const override { return main_->backend(); }
  bool device_buffers() const override { return main_->device_buffers(); }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, ReduceOp op, absl::Time d) override {
    return main_->AllReduce(v, op, d);
  }
  absl::Status DoAllReduce(absl::Span<float> v, ReduceOp op, absl::Time d) override {
    return main_->AllReduce(v, op, d);
  }
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& b, ReduceOp op, absl::Time d) override {
    return main_->StartAllReduce(b, op, d);
  }
  absl::Status DoAllGather(absl::Span<const double> s, absl::Span<double> r, absl::Time d) override {
    return main_->AllGather(s, r, d);
  }
  absl::Status DoBroadcast(std::string& b, int root, absl::Time d) override {
    return main_->Broadcast(b, root, d);
  }
  absl::Status DoBarrier(absl::Time d) override { return main_->Barrier(d); }
  // The notice goes out on the bootstrap's control channel, which a peer's NCCL waits poll
  // (NcclOptions::notices, set by LaunchNccl), as does a peer at the shutdown meeting.
  void DoNotifyFailure(const absl::Status& error) override { bootstrap_->Fail(error); }
  // The meeting is the bootstrap's: OK when no rank failed; otherwise the failure it reports
  // (a peer's notice, or the ranks that failed), which becomes this rank's error.
  absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline) override {
    // The outer communicator meets only when it may (not after a missed deadline): so may this.
    if (failed) bootstrap_->Fail(poisoned());
    absl::Status met = bootstrap_->Meet(deadline);
    std::vector<int> flags(static_cast<size_t>(world_size()), 0);
    if (failed) {
      flags[static_cast<size_t>(rank())] = 1;
      return flags;
    }
    if (!met.ok()) return met;
    return flags;
  }

 private:
  std::unique_ptr<Communicator> bootstrap_;
  std::unique_ptr<Communicator> main_;
};

absl::StatusOr<std::unique_ptr<Communicator>> LaunchMpi(const LaunchOptions& options,
                                                        const LaunchInfo& info) {
  if (!info.mpi_launched) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend mpi: this process was not started by an MPI launcher (launcher: ", info.launcher,
        "); start it with mpirun (or srun --mpi=pmix), or use another backend"));
  }
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> mpi, MpiCommunicator::Create(options.init_timeout));
  if (info.world_size > 0 && (mpi->world_size() != info.world_size || mpi->rank() != info.rank)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "MPI says rank ", mpi->rank(), " of ", mpi->world_size(), " but the ", info.launcher,
        " environment says rank ", info.rank, " of ", info.world_size));
  }
  return std::unique_ptr<Communicator>(std::move(mpi));
}

absl::StatusOr<std::unique_ptr<Communicator>> LaunchNccl(const LaunchOptions& options,
                                                         const LaunchInfo& info) {
  NcclOptions nccl;
  nccl.rank = info.rank;
  nccl.world_size = info.world_size;
  nccl.local_rank = info.local_rank;
  nccl.init_timeout = options.init_timeout;
  std::unique_ptr<Communicator> bootstrap;
  if (info.mpi_launched) {
    EMBER_ASSIGN_OR_RETURN(bootstrap, LaunchMpi(options, info));
    // Strict mode is agreed on the bootstrap first, before the NCCL id goes through it (a rank in
    // strict mode alone would otherwise send a fingerprint against the others' broadcast and wait
    // out the init timeout); the bootstrap's few collectives are not fingerprinted.
    EMBER_RETURN_IF_ERROR(AgreeOnStrictMode(*bootstrap, absl::Now() + options.init_timeout));
    bootstrap->set_strict(false);
    nccl.rank = bootstrap->rank();
    nccl.world_size = bootstrap->world_size();
    nccl.local_rank = bootstrap->local_rank();
    nccl.bootstrap = bootstrap.get();
    nccl.notices = bootstrap.get();  // a peer's notice ends an NCCL wait at once
  } else {
    nccl.master_addr = info.master_addr;
    nccl.rendezvous_port = info.rendezvous_port;
    nccl.rendezvous_port_from = info.rendezvous_port_from;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateNcclCommunicator(nccl);
  if (!bootstrap) return comm;
  if (!comm.ok()) {
    // The bootstrap is poisoned either way, so that it skips MPI_Finalize, which would wait for
    // the peers. A failure of this rank's own (Communicator::IsLocalFault: no device, a CUDA
    // error, an invalid NCCL call) is told to the peers through it (their NCCL init polls its
    // notices) instead of leaving them to the init timeout. Nothing else is: a missed deadline or
    // an NCCL system or remote error is what every rank sees of a lost or stalled peer, and a
    // peer's notice would be sent on as this rank's failure; either would name a healthy rank.
    const absl::Status& s = comm.status();
    const absl::Status failed = Communicator::WithMessage(s, absl::StrCat("starting NCCL: ", s.message()));
    if (Communicator::IsLocalFault(s) && !Communicator::IsPeerFailure(s)) {
      bootstrap->Fail(failed);
    } else {
      bootstrap->PoisonDetectedEverywhere(failed);
    }
    return failed;
  }
  return CombineWithBootstrap(std::move(bootstrap), *std::move(comm));
}

bool IsLoopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> LaunchGloo(const LaunchOptions& options, const LaunchInfo& info) {
  if (info.world_size > 1 && (info.master_addr.empty() || info.rendezvous_port == 0)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend gloo: rank ", info.rank, " of ", info.world_size, " (", info.launcher,
        " launcher) has no MASTER_ADDR and MASTER_PORT to meet the other ranks at; launch with torchrun "
        "(or set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE), or use --backend=mpi under mpirun"));
  }
  GlooOptions gloo;
  gloo.rank = info.rank;
  gloo.world_size = info.world_size;
  gloo.local_rank = info.local_rank;
  gloo.init_timeout = options.init_timeout;
  gloo.loopback = IsLoopback(info.master_addr);
  if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME"); iface != nullptr && *iface != '\0') {
    gloo.iface = iface;
  } else if (!gloo.loopback && info.world_size > 1) {
    // Listen where this host reaches rank 0 from: the host name may resolve to a loopback address
    // (Debian's 127.0.1.1, a container's /etc/hosts) that the other hosts cannot connect to.
    absl::StatusOr<std::string> toward = LocalAddressToward(info.master_addr);
    if (!toward.ok()) {
      return absl::Status(toward.status().code(),
                          absl::StrCat("backend gloo: rank ", info.rank, ": MASTER_ADDR=", info.master_addr, ": ",
                                       toward.status().message(),
                                       " (set GLOO_SOCKET_IFNAME to the interface that reaches the other ranks)"));
    }
    gloo.hostname = *toward;
  }
  // The addresses of the ranks' connections meet at rank 0, on the rendezvous port (beside
  // torchrun's agent store, never on it: launcher_env.h).
  const std::string addr = info.master_addr;
  const int port = info.rendezvous_port;
  const std::string from = info.rendezvous_port_from;
  gloo.exchange = [rank = info.rank, size = info.world_size, addr, port, from](
                      const std::string& mine, absl::Time deadline) -> absl::StatusOr<std::vector<std::string>> {
    absl::StatusOr<std::vector<std::string>> all = GatherThroughRank0(rank, size, addr, port, mine, deadline);
    if (!all.ok()) {
      return absl::Status(all.status().code(),
                          absl::StrCat(all.status().message(), " (rendezvous port from ", from, ")"));
    }
    return all;
  };
  return CreateGlooCommunicator(gloo);
}

}  // namespace

absl::StatusOr<std::string> ChooseBackend(const LaunchOptions& options, const LaunchInfo& info, int gpus,
                                          bool nccl_built) {
  const std::string& b = options.backend;
  if (options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("unknown device '", options.device, "'; allowed: cpu, cuda"));
  }
  if (b != "auto" && b != "single" && b != "mpi" && b != "nccl" && b != "gloo") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown backend '", b, "'; allowed: auto, single, mpi, nccl, gloo"));
  }
  if (options.device == "cuda" && info.local_world_size > gpus) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device cuda: ", info.local_world_size, " rank(s) on this node but ", gpus,
        " visible GPU(s); each rank needs a GPU of its own (the local rank picks it): start at most ", gpus,
        " rank(s) per node, or use device cpu"));
  }
  if (b == "single") {
    if (info.world_size > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "backend single, but the ", info.launcher, " launcher started rank ", info.rank, " of ",
          info.world_size, "; use --backend=auto, mpi, nccl or gloo"));
    }
    return std::string("single");
  }
  if (b != "auto") return b;
  if (options.device == "cuda" && nccl_built && info.world_size > 1) return std::string("nccl");
  if (info.mpi_launched) return std::string("mpi");
  if (info.world_size <= 1) return std::string("single");
  // CPU ranks that no MPI launcher started (torchrun, a Kubernetes operator): Gloo, which meets
  // at MASTER_ADDR.
  if (options.device == "cpu" && GlooBuilt() && !info.master_addr.empty()) return std::string("gloo");
  return absl::FailedPreconditionError(absl::StrCat(
      "rank ", info.rank, " of ", info.world_size, " (", info.launcher,
      " launcher) but no backend can connect the ranks: NCCL needs device cuda",
      nccl_built ? "" : " and a build with NCCL", ", MPI needs an MPI launcher (mpirun, srun --mpi=pmix)",
      GlooBuilt() ? ", Gloo needs device cpu and MASTER_ADDR" : ", Gloo needs a build with Gloo"));
}

namespace {

constexpr char kDebugLevels[] =
    "allowed, in any case: OFF, INFO (both: no checks beyond the default), DETAIL (strict mode: every "
    "collective compared across ranks before it runs)";

// EMBER_DISTRIBUTED_DEBUG's value, or "" when unset; whether it is one of PyTorch's levels
// (TORCH_DISTRIBUTED_DEBUG: OFF, INFO, DETAIL, in any case) or empty (unset).
std::string DebugValue() {
  const char* v = std::getenv("EMBER_DISTRIBUTED_DEBUG");
  return v == nullptr ? "" : v;
}
bool IsDebugLevel(const std::string& v) {
  return v.empty() || absl::EqualsIgnoreCase(v, "OFF") || absl::EqualsIgnoreCase(v, "INFO") ||
         absl::EqualsIgnoreCase(v, "DETAIL");
}

// Strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL, communicator.h) is read from each process's
// environment; a rank in it runs a fingerprint all-gather before every collective, which a rank
// without it does not run, so the two would pair one's fingerprint with the other's collective and
// wait out a deadline. Agreed once, right after the communicator is made (one all-gather of one
// value per rank, itself not fingerprinted): a difference fails every rank, naming the ranks.
absl::Status AgreeOnStrictMode(Communicator& comm, absl::Time deadline) {
  // A value that is no level is a typo that would leave strict mode off on that rank: refused on
  // every rank (each rank's value goes into the same all-gather).
  const std::string value = DebugValue();
  const bool invalid = !IsDebugLevel(value);
  if (comm.world_size() == 1) {
    if (!invalid) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("EMBER_DISTRIBUTED_DEBUG=", value, ": not a debug level; ", kDebugLevels));
  }
  const bool mine = comm.strict();
  const double v = invalid ? 2 : mine ? 1 : 0;
  std::vector<double> all(static_cast<size_t>(comm.world_size()));
  comm.set_strict(false);
  absl::Status gathered = comm.AllGather(absl::MakeConstSpan(&v, 1), absl::MakeSpan(all), deadline);
  comm.set_strict(mine);
  if (!gathered.ok()) return gathered;
  std::vector<std::string> bad;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r] == 2) bad.push_back(std::to_string(r));
  }
  if (!bad.empty()) {
    absl::Status refused = absl::InvalidArgumentError(absl::StrCat(
        "EMBER_DISTRIBUTED_DEBUG is not a debug level on rank(s) ", absl::StrJoin(bad, ", "), " (this rank's: ",
        value.empty() ? "unset" : absl::StrCat("'", value, "'"), "); ", kDebugLevels));
    comm.PoisonDetectedEverywhere(refused);
    return refused;
  }
  std::vector<std::string> on, off;
  for (size_t r = 0; r < all.size(); ++r) (all[r] != 0 ? on : off).push_back(std::to_string(r));
  if (on.empty() || off.empty()) return absl::OkStatus();
  absl::Status differ = absl::FailedPreconditionError(absl::StrCat(
      "EMBER_DISTRIBUTED_DEBUG differs across ranks: DETAIL (strict mode) on rank(s) ", absl::StrJoin(on, ", "),
      ", not on rank(s) ", absl::StrJoin(off, ", "),
      ": set it on every rank or on none (mpirun -x EMBER_DISTRIBUTED_DEBUG=DETAIL exports it to every rank)"));
  comm.PoisonDetectedEverywhere(differ);
  return differ;
}

absl::StatusOr<std::unique_ptr<Communicator>> LaunchBackend(const LaunchOptions& options, const LaunchInfo& info) {
  EMBER_ASSIGN_OR_RETURN(const std::string backend, ChooseBackend(options, info, CudaDeviceCount(), NcclBuilt()));
  if (backend == "mpi") return LaunchMpi(options, info);
  if (backend == "nccl") return LaunchNccl(options, info);
  if (backend == "gloo") return LaunchGloo(options, info);
  return std::unique_ptr<Communicator>(new SingleProcessCommunicator());
}

}  // namespace

std::unique_ptr<Communicator> CombineWithBootstrap(std::unique_ptr<Communicator> bootstrap,
                                                   std::unique_ptr<Communicator> main) {
  return std::unique_ptr<Communicator>(new BootstrappedCommunicator(std::move(bootstrap), std::move(main)));
}

absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options,
                                                     const LaunchInfo& info) {
  // EMBER_DISTRIBUTED_DEBUG is checked once the communicator exists (AgreeOnStrictMode), so that
  // a typo on one rank fails every rank at once, naming it, instead of leaving the others to wait
  // for it at their first collective.
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, LaunchBackend(options, info));
  EMBER_RETURN_IF_ERROR(AgreeOnStrictMode(*comm, absl::Now() + options.init_timeout));
  return comm;
}

absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options) {
  EMBER_ASSIGN_OR_RETURN(LaunchInfo info, ReadLaunchInfo());
  return Launch(options, info);
}

World::World(std::unique_ptr<Communicator> comm)
    : comm_(std::move(comm)), previous_default_(SetDefaultCommunicator(comm_.get())) {}

World::~World() {
  // A successful Shutdown has restored the previous default already (and a newer World may have
  // replaced it since); otherwise restore it here.
  if (!Shutdown().ok()) SetDefaultCommunicator(previous_default_);
  // comm_'s destructor finalizes the backend only when it is not poisoned (MpiCommunicator skips
  // MPI_Finalize, NcclCommunicator aborts), so this never waits for a lost rank.
}

absl::Status World::Shutdown(absl::Duration deadline) {
  if (shut_down_ || comm_ == nullptr) return absl::OkStatus();
  // One meeting only: the peers will not come to a second one.
  if (met_) return comm_->poisoned();
  met_ = true;
  // On the control channel: it cannot complete a collective a peer left pending. A rank that
  // failed comes too (its peers learn it here at the latest); after a missed deadline or a broken
  // transport nobody waits (Communicator::may_meet).
  absl::Status status = comm_->Meet(absl::Now() + deadline);
  if (!status.ok()) {
    comm_->Poison(status);  // not finalized: a rank failed or did not meet us
    return status;
  }
  shut_down_ = true;
  SetDefaultCommunicator(previous_default_);
  comm_.reset();  // finalizes the backend (MPI_Finalize, ncclCommDestroy)
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<World>> LaunchWorld(const LaunchOptions& options) {
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, Launch(options));
  return std::make_unique<World>(std::move(comm));
}

}  // namespace ember::dist
