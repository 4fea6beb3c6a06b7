// Launcher environments (OpenMPI, PMIx, MPICH, Slurm, torchrun-style): what they say, what
// partial or inconsistent ones get; Launch's backend choice; the TCP rendezvous.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>

#include <map>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/default_communicator.h"
#include "distributed/file_rendezvous.h"
#include "distributed/launch.h"
#include "distributed/launcher_env.h"
#include "distributed/nccl_communicator.h"
#include "distributed/tcp_rendezvous.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember::dist {
namespace {

using ::testing::HasSubstr;

LaunchInfo Read(std::map<std::string, std::string> env) {
  absl::StatusOr<LaunchInfo> info = ReadLaunchInfo(MapEnv(std::move(env)));
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? *info : LaunchInfo();
}

std::string Error(std::map<std::string, std::string> env) {
  absl::StatusOr<LaunchInfo> info = ReadLaunchInfo(MapEnv(std::move(env)));
  EXPECT_FALSE(info.ok());
  return info.ok() ? "" : std::string(info.status().message());
}

// Every field ReadLaunchInfo fills, compared at once (a field a scheme forgets shows).
void ExpectInfo(const LaunchInfo& got, const LaunchInfo& want) {
  EXPECT_EQ(got.launcher, want.launcher);
  EXPECT_EQ(got.rank, want.rank) << want.launcher;
  EXPECT_EQ(got.world_size, want.world_size) << want.launcher;
  EXPECT_EQ(got.local_rank, want.local_rank) << want.launcher;
  EXPECT_EQ(got.local_world_size, want.local_world_size) << want.launcher;
  EXPECT_EQ(got.master_addr, want.master_addr) << want.launcher;
  EXPECT_EQ(got.master_port, want.master_port) << want.launcher;
  EXPECT_EQ(got.rendezvous_port, want.rendezvous_port) << want.launcher;
  EXPECT_EQ(got.rendezvous_port_from, want.rendezvous_port_from) << want.launcher;
  EXPECT_EQ(got.mpi_launched, want.mpi_launched) << want.launcher;
  EXPECT_EQ(got.restart_count, want.restart_count) << want.launcher;
  EXPECT_EQ(got.max_restarts, want.max_restarts) << want.launcher;
}

TEST(LauncherEnv, EachLauncher) {
  ExpectInfo(Read({}), {.launcher = "none", .rank = 0, .world_size = 1, .local_rank = 0, .local_world_size = 1});

  // mpirun inside a Slurm allocation: OpenMPI's numbers.
  ExpectInfo(Read({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                   {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}),
             {.launcher = "openmpi", .rank = 3, .world_size = 4, .local_rank = 1, .local_world_size = 2,
              .mpi_launched = true});

  ExpectInfo(Read({{"PMI_RANK", "2"}, {"PMI_SIZE", "8"}, {"MPI_LOCALRANKID", "2"}, {"MPI_LOCALNRANKS", "4"}}),
             {.launcher = "mpich", .rank = 2, .world_size = 8, .local_rank = 2, .local_world_size = 4,
              .mpi_launched = true});

  // srun --mpi=pmix: what Slurm 22 sets for the third task of node 1 with 3 tasks per node. The
  // local rank is Slurm's (PMIx puts none in the environment; MPI_LOCALRANKID is MPICH's).
  ExpectInfo(Read({{"PMIX_RANK", "5"}, {"PMIX_NAMESPACE", "slurm.pmix.77.0"}, {"SLURM_PROCID", "5"},
                   {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"}, {"SLURM_NODEID", "1"},
                   {"SLURM_TASKS_PER_NODE", "3(x2),2"}}),
             {.launcher = "pmix", .rank = 5, .world_size = 8, .local_rank = 2, .local_world_size = 3,
              .mpi_launched = true});
  ExpectInfo(Read({{"PMIX_RANK", "7"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "2"},
                   {"SLURM_TASKS_PER_NODE", "3(x2),2"}}),
             {.launcher = "pmix", .rank = 7, .world_size = 8, .local_rank = 1, .local_world_size = 2,
              .mpi_launched = true});
  ExpectInfo(Read({{"PMIX_RANK", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "4"}}),
             {.launcher = "pmix", .rank = 5, .world_size = 8, .local_rank = 1, .local_world_size = 4,
              .mpi_launched = true});
  // PMIx without a size anywhere: MPI tells it after MPI_Init (0 until then).
  ExpectInfo(Read({{"PMIX_RANK", "1"}}),
             {.launcher = "pmix", .rank = 1, .world_size = 0, .local_rank = 0, .local_world_size = 1,
              .mpi_launched = true});

  ExpectInfo(Read({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                   {"SLURM_NTASKS_PER_NODE", "4(x2)"}}),
             {.launcher = "slurm", .rank = 5, .world_size = 8, .local_rank = 1, .local_world_size = 4});
  ExpectInfo(Read({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "5"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "1"},
                   {"SLURM_TASKS_PER_NODE", "4,1"}, {"PMI_FD", "5"}}),
             {.launcher = "slurm", .rank = 4, .world_size = 5, .local_rank = 0, .local_world_size = 1,
              .mpi_launched = true});
  EXPECT_THAT(Error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "3"},
                     {"SLURM_TASKS_PER_NODE", "1(x2)"}}),
              HasSubstr("SLURM_NODEID=3 is beyond the nodes of SLURM_TASKS_PER_NODE='1(x2)'"));
  EXPECT_THAT(Error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "0"},
                     {"SLURM_TASKS_PER_NODE", "2(3)"}}),
              HasSubstr("SLURM_TASKS_PER_NODE='2(3)' is not a list of N or N(xM)"));

  ExpectInfo(Read({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                   {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}}),
             {.launcher = "torchrun", .rank = 1, .world_size = 2, .local_rank = 1, .local_world_size = 2,
              .master_addr = "10.0.0.1", .master_port = 29500,
              // a plain torchrun-style launch leaves MASTER_PORT to rank 0
              .rendezvous_port = 29500, .rendezvous_port_from = "MASTER_PORT"});
}

TEST(LauncherEnv, TheRendezvousPortAvoidsTorchrunsAgentStore) {
  std::map<std::string, std::string> env = {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                                            {"MASTER_PORT", "29500"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}};
  LaunchInfo agent = Read(env);
  EXPECT_EQ(agent.master_port, 29500);
  EXPECT_EQ(agent.rendezvous_port, 29501);
  EXPECT_THAT(agent.rendezvous_port_from, HasSubstr("TORCHELASTIC_USE_AGENT_STORE=True"));

  env["TORCHELASTIC_USE_AGENT_STORE"] = "False";  // torchrun's c10d rendezvous without a shared store
  EXPECT_EQ(Read(env).rendezvous_port, 29500);

  env["EMBER_RENDEZVOUS_PORT"] = "31000";
  LaunchInfo chosen = Read(env);
  EXPECT_EQ(chosen.rendezvous_port, 31000);
  EXPECT_EQ(chosen.rendezvous_port_from, "EMBER_RENDEZVOUS_PORT");

  env["EMBER_RENDEZVOUS_PORT"] = "70000";
  EXPECT_THAT(Error(env), HasSubstr("EMBER_RENDEZVOUS_PORT='70000' is not a TCP port (1-65535)"));
  env["EMBER_RENDEZVOUS_PORT"] = "x";
  EXPECT_THAT(Error(env), HasSubstr("EMBER_RENDEZVOUS_PORT='x' is not a TCP port (1-65535)"));
  env.erase("EMBER_RENDEZVOUS_PORT");
  env["TORCHELASTIC_USE_AGENT_STORE"] = "True";
  env["MASTER_PORT"] = "65535";
  EXPECT_THAT(Error(env), HasSubstr("set EMBER_RENDEZVOUS_PORT to a free TCP port"));
}

TEST(LauncherEnv, TorchrunsElasticAgentSaysWhichAttemptThisIs) {
  std::map<std::string, std::string> env = {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                                            {"MASTER_PORT", "29500"}};
  LaunchInfo plain = Read(env);  // no agent variables: nothing is known of restarts
  EXPECT_EQ(plain.restart_count, -1);
  EXPECT_EQ(plain.max_restarts, -1);
  EXPECT_FALSE(plain.restarts_left());

  env["TORCHELASTIC_RESTART_COUNT"] = "0";
  env["TORCHELASTIC_MAX_RESTARTS"] = "0";  // torchrun's default: no restart
  ExpectInfo(Read(env), {.launcher = "torchrun", .rank = 0, .world_size = 2, .local_rank = 0, .local_world_size = 1,
                         .master_addr = "h", .master_port = 29500, .rendezvous_port = 29500,
                         .rendezvous_port_from = "MASTER_PORT", .restart_count = 0, .max_restarts = 0});
  EXPECT_FALSE(Read(env).restarts_left());
  env["TORCHELASTIC_MAX_RESTARTS"] = "3";
  EXPECT_TRUE(Read(env).restarts_left());
  env["TORCHELASTIC_RESTART_COUNT"] = "2";
  EXPECT_EQ(Read(env).restart_count, 2);
  EXPECT_TRUE(Read(env).restarts_left());
  env["TORCHELASTIC_RESTART_COUNT"] = "3";  // the last attempt
  EXPECT_FALSE(Read(env).restarts_left());

  env["TORCHELASTIC_RESTART_COUNT"] = "-1";
  EXPECT_THAT(Error(env), HasSubstr("TORCHELASTIC_RESTART_COUNT='-1' is not an integer from 0 to 2147483647"));
  env["TORCHELASTIC_RESTART_COUNT"] = "99999999999";
  EXPECT_THAT(Error(env), HasSubstr("TORCHELASTIC_RESTART_COUNT='99999999999' is not an integer from 0 to 2147483647"));
  env["TORCHELASTIC_RESTART_COUNT"] = "4";  // beyond what the agent allows (MAX_RESTARTS=3)
  EXPECT_THAT(Error(env), HasSubstr("TORCHELASTIC_RESTART_COUNT=4 exceeds TORCHELASTIC_MAX_RESTARTS=3"));
  env["TORCHELASTIC_RESTART_COUNT"] = "1";
  env["TORCHELASTIC_MAX_RESTARTS"] = "three";
  EXPECT_THAT(Error(env), HasSubstr("TORCHELASTIC_MAX_RESTARTS='three' is not an integer from 0 to 2147483647"));
  env.erase("TORCHELASTIC_MAX_RESTARTS");  // one without the other: restarts unknown
  EXPECT_EQ(Read(env).restart_count, 1);
  EXPECT_FALSE(Read(env).restarts_left());
}

TEST(LauncherEnv, PartialOrInconsistentEnvironmentsNameTheVariable) {
  EXPECT_THAT(Error({{"RANK", "1"}}), HasSubstr("RANK=1 is set but WORLD_SIZE is not"));
  EXPECT_THAT(Error({{"WORLD_SIZE", "2"}}), HasSubstr("WORLD_SIZE is set but RANK is not"));
  EXPECT_THAT(Error({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), HasSubstr("RANK=2 is not below WORLD_SIZE=2"));
  EXPECT_THAT(Error({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), HasSubstr("RANK='x' is not an integer >= 0"));
  EXPECT_THAT(Error({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "0"}}),
              HasSubstr("OMPI_COMM_WORLD_SIZE='0' is not an integer >= 1"));
  EXPECT_THAT(Error({{"RANK", "0"}, {"WORLD_SIZE", "2"}}), HasSubstr("needs MASTER_ADDR and MASTER_PORT"));
  EXPECT_THAT(Error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "99999"}}),
              HasSubstr("MASTER_PORT='99999' is not a TCP port"));
  EXPECT_THAT(Error({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"},
                     {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
              HasSubstr("LOCAL_RANK=3 is not below LOCAL_WORLD_SIZE=2"));
}

TEST(World, IsTheDefaultCommunicatorWhileItLives) {
  ASSERT_EQ(DefaultCommunicator(), nullptr);
  {
    absl::StatusOr<std::unique_ptr<World>> world = LaunchWorld({.backend = "single"});
    ASSERT_TRUE(world.ok()) << world.status();
    EXPECT_EQ((*world)->rank(), 0);
    EXPECT_EQ((*world)->world_size(), 1);
    EXPECT_EQ(DefaultCommunicator(), &(*world)->communicator());
    EXPECT_TRUE((*world)->Shutdown().ok());
    EXPECT_EQ(DefaultCommunicator(), nullptr) << "a shut-down world is no longer the default";
  }
  {
    // A poisoned communicator (a failed collective) is not finalized, and nothing waits.
    absl::StatusOr<std::unique_ptr<World>> world = LaunchWorld({.backend = "single"});
    ASSERT_TRUE(world.ok());
    (*world)->communicator().Poison(absl::DeadlineExceededError("rank 1 did not join"));
    const absl::Time start = absl::Now();
    EXPECT_FALSE((*world)->Shutdown().ok());
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
  EXPECT_EQ(DefaultCommunicator(), nullptr) << "the destructor restores the previous default";
}

TEST(Launch, BackendChoiceAndErrors) {
  LaunchInfo single;
  single.launcher = "none";
  absl::StatusOr<std::unique_ptr<Communicator>> c = Launch({.backend = "auto"}, single);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->backend(), "single");
  EXPECT_THAT(std::string(Launch({.backend = "gl00"}, single).status().message()),
              HasSubstr("unknown backend 'gl00'; allowed: auto, single, mpi, nccl, gloo"));
  // A debug level that is not one would leave strict mode silently off.
  ::setenv("EMBER_DISTRIBUTED_DEBUG", "detial", 1);
  EXPECT_THAT(std::string(Launch({.backend = "auto"}, single).status().message()),
              HasSubstr("EMBER_DISTRIBUTED_DEBUG=detial: not a debug level; allowed, in any case: OFF, INFO"));
  for (const char* level : {"OFF", "INFO", "off", "Info", "", "DETAIL", "detail"}) {  // PyTorch's levels, any case
    ::setenv("EMBER_DISTRIBUTED_DEBUG", level, 1);
    absl::StatusOr<std::unique_ptr<Communicator>> made = Launch({.backend = "auto"}, single);
    ASSERT_TRUE(made.ok()) << level << ": " << made.status();
    EXPECT_EQ((*made)->strict(), std::string(level) == "DETAIL" || std::string(level) == "detail") << level;
  }
  ::unsetenv("EMBER_DISTRIBUTED_DEBUG");
  // Gloo on one rank: no peers, nothing to exchange.
  absl::StatusOr<std::unique_ptr<Communicator>> one = Launch({.backend = "gloo"}, single);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ((*one)->backend(), "gloo");
  double v = 2.0;
  EXPECT_TRUE((*one)->AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kMax, absl::Now() + absl::Seconds(5)).ok());
  EXPECT_EQ(v, 2.0);
  EXPECT_THAT(std::string(Launch({.backend = "mpi"}, single).status().message()),
              HasSubstr("not started by an MPI launcher"));
  LaunchInfo torchrun = Read({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1"}});
  EXPECT_THAT(std::string(Launch({.backend = "single"}, torchrun).status().message()),
              HasSubstr("backend single, but the torchrun launcher started rank 0 of 2"));
  // CPU ranks under torchrun: Gloo (gloo_test.sh runs it for real).
  EXPECT_EQ(*ChooseBackend({}, torchrun, 0, false), "gloo");
  EXPECT_EQ(*ChooseBackend({.backend = "gloo"}, torchrun, 0, false), "gloo");
  if (CudaDeviceCount() == 0) {
    absl::Status nccl = Launch({.backend = "nccl", .init_timeout = absl::Seconds(2)}, torchrun).status();
    EXPECT_FALSE(nccl.ok());
    EXPECT_THAT(std::string(nccl.message()), ::testing::AnyOf(HasSubstr("no CUDA device"), HasSubstr("no NCCL backend")));
  }
}

TEST(Launch, AutoPicksNcclOnlyForCudaTensorsWithAGpuPerRank) {
  LaunchInfo info = Read({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"},
                          {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1"}});
  // CPU tensors never go to NCCL, even with GPUs on the node: Gloo, without an MPI launcher.
  EXPECT_EQ(*ChooseBackend({.device = "cpu"}, info, /*gpus=*/8, true), "gloo");
  // CUDA tensors without NCCL or MPI: nothing can carry them (Gloo reduces host buffers only).
  EXPECT_THAT(std::string(ChooseBackend({.device = "cuda"}, info, 2, false).status().message()),
              HasSubstr("no backend can connect the ranks: NCCL needs device cuda and a build with NCCL, MPI "
                        "needs an MPI launcher (mpirun, srun --mpi=pmix), Gloo needs device cpu and MASTER_ADDR"));
  info.mpi_launched = true;
  EXPECT_EQ(*ChooseBackend({.device = "cpu"}, info, 8, true), "mpi");
  EXPECT_EQ(*ChooseBackend({.device = "cuda"}, info, 2, true), "nccl");
  EXPECT_EQ(*ChooseBackend({.device = "cuda"}, info, 2, /*nccl_built=*/false), "mpi");
  // More ranks on the node than GPUs: an error naming both numbers, whatever the backend.
  for (const char* backend : {"auto", "mpi", "nccl"}) {
    absl::StatusOr<std::string> b = ChooseBackend({.backend = backend, .device = "cuda"}, info, 1, true);
    ASSERT_FALSE(b.ok()) << backend;
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("device cuda: 2 rank(s) on this node but 1 visible GPU(s)"));
  }
  EXPECT_THAT(std::string(ChooseBackend({.device = "tpu"}, info, 1, true).status().message()),
              HasSubstr("unknown device 'tpu'; allowed: cpu, cuda"));
}

TEST(TcpRendezvous, Rank0HandsItsPayloadToEveryRank) {
  const int world = 4;
  const int port = 20000 + (::getpid() % 20000);
  std::vector<absl::StatusOr<std::string>> got(world, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = world - 1; r >= 0; --r) {  // the others start first and must retry
    threads.emplace_back([&, r] {
      got[r] = ShareFromRank0(r, world, "localhost", port, r == 0 ? std::string("id-\x00\x01", 5) : "",
                              absl::Now() + absl::Seconds(20));
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(got[r].ok()) << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], std::string("id-\x00\x01", 5));
  }
  absl::StatusOr<std::string> lonely = ShareFromRank0(1, 2, "127.0.0.1", port + 1, "", absl::Now() + absl::Milliseconds(300));
  EXPECT_EQ(lonely.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(lonely.status().message()), HasSubstr("rank 0 never listened on 127.0.0.1:"));
}

// A listening loopback socket on a free port that accepts nothing by itself (connections wait in
// its backlog): a silent rank 0, or another service on the port. -1 on failure.
int LoopbackListener(int* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 4) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// A signal during the wait for rank 0's answer (SIGUSR1 to a profiler, a preemption signal the
// trainer handles) interrupts poll(): the rendezvous waits again for the time left, and fails at
// its deadline as DEADLINE_EXCEEDED, not at the signal as "Interrupted system call".
TEST(TcpRendezvous, ASignalDuringTheWaitDoesNotEndIt) {
  int port = 0;
  const int listener = LoopbackListener(&port);
  ASSERT_GE(listener, 0);
  struct sigaction handler {}, old {};
  handler.sa_handler = [](int) {};
  handler.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR
  ASSERT_EQ(::sigaction(SIGUSR1, &handler, &old), 0);
  const pthread_t waiter = ::pthread_self();
  std::atomic<bool> done{false};
  std::thread signaller([&] {
    for (int i = 0; i < 20 && !done; ++i) {
      absl::SleepFor(absl::Milliseconds(50));
      if (!done) ::pthread_kill(waiter, SIGUSR1);
    }
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got =
      ShareFromRank0(1, 2, "127.0.0.1", port, "", absl::Now() + absl::Milliseconds(1500));
  const absl::Duration took = absl::Now() - start;
  done = true;
  signaller.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  ::close(listener);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_GE(took, absl::Milliseconds(1400)) << "the wait ended at a signal: " << got.status();
}

// Whatever else listens on the port may announce any length: a rank refuses more than the
// rendezvous ever sends, at once and without allocating it (it allocated 4 GiB and overran its
// deadline before).
TEST(TcpRendezvous, AnAnswerLongerThanTheRendezvousSendsIsRefused) {
  int port = 0;
  const int listener = LoopbackListener(&port);
  ASSERT_GE(listener, 0);
  std::thread impostor([&] {  // answers each of two connections with a frame of 0xfffffff0 bytes
    for (int i = 0; i < 2; ++i) {
      const int c = ::accept(listener, nullptr, nullptr);
      if (c < 0) return;
      const char head[8] = {'E', 'M', 'B', 'R', '\xff', '\xff', '\xff', '\xf0'};
      (void)!::write(c, head, sizeof(head));
      absl::SleepFor(absl::Milliseconds(500));
      ::close(c);
    }
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> shared =
      ShareFromRank0(1, 2, "127.0.0.1", port, "", absl::Now() + absl::Seconds(5));
  absl::StatusOr<std::vector<std::string>> gathered =
      GatherThroughRank0(1, 2, "127.0.0.1", port, "x", absl::Now() + absl::Seconds(5));
  impostor.join();
  ::close(listener);
  for (const absl::Status& s : {shared.status(), gathered.status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("announced an answer of 4294967280 bytes")) << s;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// A rank launched with another WORLD_SIZE than rank 0 is told so, naming both sizes (it said
// "truncated table" before).
TEST(TcpRendezvous, GatherNamesRanksLaunchedWithAnotherWorldSize) {
  const int port = 20000 + ((::getpid() + 7919) % 20000);
  absl::StatusOr<std::vector<std::string>> zero = absl::UnknownError("not run"), one = zero;
  std::thread rank0([&] { zero = GatherThroughRank0(0, 2, "127.0.0.1", port, "a", absl::Now() + absl::Seconds(10)); });
  std::thread rank1([&] { one = GatherThroughRank0(1, 3, "127.0.0.1", port, "b", absl::Now() + absl::Seconds(10)); });
  rank0.join();
  rank1.join();
  EXPECT_EQ(one.status().code(), absl::StatusCode::kFailedPrecondition) << one.status();
  EXPECT_THAT(std::string(one.status().message()),
              HasSubstr("rank 0's table has 2 entries but this rank's WORLD_SIZE is 3: the ranks were launched "
                        "with different world sizes"));
  // Rank 0 names the peer too, at once (before, it completed a table of 2 and its peers' Gloo
  // connection waited out the init timeout).
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition) << zero.status();
  EXPECT_THAT(std::string(zero.status().message()),
              HasSubstr("rank 1 was launched with WORLD_SIZE=3, this rank 0 with WORLD_SIZE=2"));
}

// torchrun (static rendezvous, and c10d sharing its store) runs a TCPStore server in its agent
// on MASTER_PORT and tells the workers so with TORCHELASTIC_USE_AGENT_STORE=True. A rank 0 that
// listened on MASTER_PORT would fail with "Address already in use"; the rendezvous port the
// environment gives is the next one.
TEST(TcpRendezvous, TorchrunsAgentStoreOnMasterPortDoesNotBlockTheRendezvous) {
  // The agent: a dual-stack listener on MASTER_PORT, as PyTorch's TCPStore server binds, on a
  // port whose successor is free.
  int agent = -1;
  int master_port = 0;
  for (int attempt = 0; attempt < 50 && master_port == 0; ++attempt) {
    agent = ::socket(AF_INET6, SOCK_STREAM, 0);
    ASSERT_GE(agent, 0);
    int on = 1, off = 0;
    ::setsockopt(agent, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    ::setsockopt(agent, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_any;
    ASSERT_EQ(::bind(agent, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    ASSERT_EQ(::getsockname(agent, reinterpret_cast<sockaddr*>(&sa), &len), 0);
    ASSERT_EQ(::listen(agent, 8), 0);
    const int port = ntohs(sa.sin6_port);
    int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
    sa.sin6_port = htons(static_cast<uint16_t>(port + 1));
    const bool next_free = port < 65535 && ::bind(probe, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    ::close(probe);
    if (next_free) {
      master_port = port;
    } else {
      ::close(agent);
    }
  }
  ASSERT_NE(master_port, 0) << "no port with a free successor";
  std::map<std::string, std::string> env = {{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                            {"MASTER_PORT", std::to_string(master_port)},
                                            {"TORCHELASTIC_USE_AGENT_STORE", "True"}};
  std::vector<absl::StatusOr<std::string>> got(2, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::map<std::string, std::string> mine = env;
      mine["RANK"] = std::to_string(r);
      LaunchInfo info = Read(mine);
      got[r] = ShareFromRank0(r, 2, info.master_addr, info.rendezvous_port, r == 0 ? "unique-id" : "",
                              absl::Now() + absl::Seconds(20));
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], "unique-id");
  }
  // What listening on MASTER_PORT itself meets while the agent holds it.
  env["RANK"] = "0";
  env.erase("TORCHELASTIC_USE_AGENT_STORE");
  LaunchInfo plain = Read(env);
  ASSERT_EQ(plain.rendezvous_port, master_port);
  absl::StatusOr<std::string> busy =
      ShareFromRank0(0, 2, plain.master_addr, plain.rendezvous_port, "x", absl::Now() + absl::Seconds(2));
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kUnavailable) << busy.status();
  EXPECT_THAT(std::string(busy.status().message()),
              HasSubstr("cannot listen on port " + std::to_string(master_port)));
  ::close(agent);
}

// Issue 26: a Kubernetes-style environment (a PyTorchJob's pod: no LOCAL_RANK, no agent store)
// is one process per pod; rank 0 listens on MASTER_PORT, and auto picks Gloo for CPU ranks.
TEST(Launch, KubernetesStyleEnvironmentWithoutLocalRank) {
  LaunchInfo info = Read({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "job-master-0"}, {"MASTER_PORT", "23456"}});
  EXPECT_EQ(info.launcher, "torchrun");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.local_world_size, 1);
  EXPECT_EQ(info.rendezvous_port, 23456);
  EXPECT_EQ(info.rendezvous_port_from, "MASTER_PORT");
  EXPECT_EQ(*ChooseBackend({}, info, 0, false), "gloo");
  info.master_addr.clear();  // no address to meet at: not Gloo, and the error says so
  EXPECT_THAT(std::string(ChooseBackend({}, info, 0, false).status().message()),
              HasSubstr("Gloo needs device cpu and MASTER_ADDR"));
}

// GatherThroughRank0 (the Gloo backend's address exchange): every rank gets every rank's payload,
// in rank order, whoever comes first; stray connections (a probe, a silent client, junk, a
// ShareFromRank0 peer's hello) never count as ranks.
TEST(TcpRendezvous, GatherThroughRank0GivesEveryRankEveryPayload) {
  const int world = 4;
  const int port = 20000 + ((::getpid() + 104729) % 20000);
  std::vector<absl::StatusOr<std::vector<std::string>>> got(world, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    got[0] = GatherThroughRank0(0, world, "127.0.0.1", port, "zero", absl::Now() + absl::Seconds(30));
  });
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  auto connected = [&] {
    for (int attempt = 0; attempt < 200; ++attempt) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return fd;
      ::close(fd);
      ::usleep(50 * 1000);
    }
    return -1;
  };
  int probe = connected();
  ASSERT_GE(probe, 0) << "rank 0 never listened";
  ::close(probe);
  int silent = connected();
  int garbage = connected();
  ASSERT_EQ(::send(garbage, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL), 18);
  // A ShareFromRank0 hello of rank 1 (another protocol): dropped, rank 1 not taken.
  int other = connected();
  const char share_hello[12] = {'E', 'M', 'B', 'H', 0, 0, 0, 1, 0, 0, 0, 1};
  ASSERT_EQ(::send(other, share_hello, 12, MSG_NOSIGNAL), 12);
  ::usleep(300 * 1000);
  for (int r = world - 1; r >= 1; --r) {
    threads.emplace_back([&, r] {
      got[r] = GatherThroughRank0(r, world, "127.0.0.1", port, r == 2 ? std::string("t\x00o", 3) : std::to_string(r),
                                  absl::Now() + absl::Seconds(30));
    });
  }
  for (std::thread& t : threads) t.join();
  ::close(silent);
  ::close(garbage);
  ::close(other);
  const std::vector<std::string> want = {"zero", "1", std::string("t\x00o", 3), "3"};
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], want) << "rank " << r;
  }
}

TEST(TcpRendezvous, GatherThroughRank0NamesTheMissingRanksAtItsDeadline) {
  const int port = 20000 + ((::getpid() + 7) % 20000);
  absl::StatusOr<std::vector<std::string>> got =
      GatherThroughRank0(0, 3, "127.0.0.1", port, "zero", absl::Now() + absl::Milliseconds(300));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("0 of 2 ranks joined; missing rank(s) 1, 2"));
}

// Issue 24.14: connections that are not ranks (a port probe that connects and closes, a client
// that stays silent, one that sends something else) are never counted as ranks: the real rank
// still gets the payload.
TEST(TcpRendezvous, AStrayConnectionNeverCountsAsARank) {
  const int port = 20000 + ((::getpid() + 7919) % 20000);
  absl::StatusOr<std::string> at0 = absl::UnknownError("not run");
  std::thread rank0([&] { at0 = ShareFromRank0(0, 2, "127.0.0.1", port, "the-id", absl::Now() + absl::Seconds(30)); });
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  auto connected = [&] {
    for (int attempt = 0; attempt < 200; ++attempt) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return fd;
      ::close(fd);
      ::usleep(50 * 1000);
    }
    return -1;
  };
  int probe = connected();  // connect() then close(): a port scanner, a health check
  ASSERT_GE(probe, 0) << "rank 0 never listened";
  ::close(probe);
  int silent = connected();  // stays open, says nothing
  ASSERT_GE(silent, 0);
  int garbage = connected();
  ASSERT_GE(garbage, 0);
  ASSERT_EQ(::send(garbage, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL), 18);
  ::usleep(300 * 1000);  // rank 0 has seen all three before the real rank comes
  absl::StatusOr<std::string> at1 = ShareFromRank0(1, 2, "127.0.0.1", port, "", absl::Now() + absl::Seconds(20));
  rank0.join();
  ::close(silent);
  ::close(garbage);
  ASSERT_TRUE(at1.ok()) << at1.status();
  EXPECT_EQ(*at1, "the-id");
  ASSERT_TRUE(at0.ok()) << at0.status();
}

// A rank 0 whose listen queue is full drops the SYNs: a blocking connect() then waits for the
// kernel's retries (minutes). The rendezvous must give up at its deadline.
TEST(TcpRendezvous, ConnectIsBoundedByTheDeadline) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  socklen_t len = sizeof(sa);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ASSERT_EQ(::listen(listener, 0), 0);
  // Fill the accept queue (never accepted).
  std::vector<int> fillers;
  for (int i = 0; i < 8; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    fillers.push_back(fd);
  }
  ::usleep(200 * 1000);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got =
      ShareFromRank0(1, 2, "127.0.0.1", ntohs(sa.sin_port), "", absl::Now() + absl::Seconds(2));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_LT(took, absl::Seconds(6)) << "connect() was not bounded by the deadline";
  for (int fd : fillers) ::close(fd);
  ::close(listener);
}

std::string TempPath(const char* name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name + "." + std::to_string(::getpid());
}

TEST(FileRendezvous, EveryRankGetsRank0sPayload) {
  const std::string path = TempPath("rdv_fresh");
  const std::string payload("id\x00\x01\n2", 6);
  std::vector<absl::StatusOr<std::string>> got(3, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 2; r >= 0; --r) {  // readers first: they must wait for the file
    threads.emplace_back([&, r] {
      got[r] = ShareThroughFile(r, path, "job-7", r == 0 ? payload : "", absl::Now() + absl::Seconds(10));
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(got[r].ok()) << got[r].status();
    EXPECT_EQ(*got[r], payload);
  }
}

// A file of the right size left by an earlier job must not be taken for this job's.
TEST(FileRendezvous, AStaleFileIsNeverAccepted) {
  const std::string path = TempPath("rdv_stale");
  ASSERT_TRUE(ShareThroughFile(0, path, "job-6", "old-id", absl::Now() + absl::Seconds(5)).ok());
  absl::StatusOr<std::string> got = ShareThroughFile(1, path, "job-7", "", absl::Now() + absl::Milliseconds(300));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("stale: written for run 'job-6'"));
  // A torn or foreign file is not accepted either.
  { std::ofstream(path, std::ios::trunc) << "garbage of any size"; }
  got = ShareThroughFile(1, path, "job-7", "", absl::Now() + absl::Milliseconds(200));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("not an Ember rendezvous file"));
  // Rank 0 of the new job replaces it; the reader then gets the new payload.
  ASSERT_TRUE(ShareThroughFile(0, path, "job-7", "new-id", absl::Now() + absl::Seconds(5)).ok());
  got = ShareThroughFile(1, path, "job-7", "", absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "new-id");
  EXPECT_EQ(ShareThroughFile(1, path, "", "", absl::Now()).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
TEST(TcpRendezvous, TheGlooAddressIsWhereThisHostReachesRank0From) {
  // On one host: the loopback address, whatever the host name resolves to.
  absl::StatusOr<std::string> lo = LocalAddressToward("127.0.0.1");
  ASSERT_TRUE(lo.ok()) << lo.status();
  EXPECT_EQ(*lo, "127.0.0.1");
  absl::StatusOr<std::string> local = LocalAddressToward("localhost");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_TRUE(*local == "127.0.0.1" || *local == "::1") << *local;
  absl::StatusOr<std::string> bad = LocalAddressToward("no-such-host.invalid");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("cannot resolve 'no-such-host.invalid'"));
}

}  // namespace ember::dist
