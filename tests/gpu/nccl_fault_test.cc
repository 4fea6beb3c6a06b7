// The NCCL backend's failure handling (issue 25, items 7 and 9), on CPU: this binary links the
// production distributed/nccl_communicator.cc against a scripted CUDA runtime and NCCL defined
// below (the executable's definitions take the place of libcudart's and libnccl's), so that
// asynchronous errors, stuck events and init failures can be produced without a GPU:
//   - a failed non-blocking init is aborted (ncclCommAbort), never destroyed;
//   - an asynchronous NCCL error aborts the communicator and poisons it before the call returns;
//   - a collective whose event completed still fails once another one aborted the communicator;
//   - staging buffers grow without a device-wide cudaFree, and a large one-off is released;
//   - a peer's failure notice on the bootstrap's channel (NcclOptions::notices: a fake world
//     stands in for the MPI bootstrap) ends a stuck wait at once, with the peer's error.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstdlib>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "distributed/nccl_communicator.h"
#include "distributed/tcp_rendezvous.h"
#include "distributed/testing/fake_world.h"
#include "gtest/gtest.h"

namespace fake {
int aborts = 0, destroys = 0, device_frees = 0, async_frees = 0;
ncclResult_t async_state = ncclSuccess;  // what ncclCommGetAsyncError reports once init is done
ncclResult_t init_state = ncclSuccess;   // what it reports after ncclCommInitRankConfig
std::atomic<bool> initialising{false};  // two ranks' threads start communicators at once
// Per rank (each rank of a two-rank test starts on its own thread):
thread_local bool no_device = false;      // cudaGetDeviceCount finds none
thread_local bool init_stuck = false;     // ncclCommInitRank never completes (a peer never came)
thread_local ncclResult_t init_fails = ncclSuccess;  // what this rank's init ends with, if set
std::set<cudaEvent_t> stuck;  // events that never complete
std::set<cudaEvent_t> faulted;  // events whose query reports a sticky CUDA error
std::atomic<int> next_event{1};
std::atomic<cudaEvent_t> last_event{nullptr};
std::atomic<int> allgathers{0};     // ncclAllGather calls (a shutdown meeting runs one)
std::atomic<bool> fixed_id{false};  // ncclGetUniqueId returns one id every time (as with NCCL_COMM_ID)
long long device_bytes = 0, pinned_bytes = 0;  // live staging allocations
long long max_device_bytes = 0, max_pinned_bytes = 0;
void Reset() {
  aborts = destroys = device_frees = async_frees = 0;
  async_state = init_state = ncclSuccess;
  initialising = false;
  allgathers = 0;
  fixed_id = false;
  stuck.clear();
  faulted.clear();
  device_bytes = pinned_bytes = max_device_bytes = max_pinned_bytes = 0;
}
struct Block {
  size_t size;
};
void* Alloc(size_t n, long long& live, long long& max) {
  auto* b = static_cast<Block*>(std::malloc(sizeof(Block) + n));
  b->size = n;
  live += static_cast<long long>(n);
  if (live > max) max = live;
  return b + 1;
}
void Free(void* p, long long& live) {
  auto* b = static_cast<Block*>(p) - 1;
  live -= static_cast<long long>(b->size);
  std::free(b);
}
}  // namespace fake

// ---- the scripted CUDA runtime ----------------------------------------------------------------
extern "C" {
const char* cudaGetErrorString(cudaError_t) { return "fake CUDA error"; }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = fake::no_device ? 0 : 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = reinterpret_cast<cudaStream_t>(0x5);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  *e = reinterpret_cast<cudaEvent_t>(static_cast<intptr_t>(0x1000 + fake::next_event++));
  fake::last_event = *e;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (fake::faulted.count(e)) return cudaErrorIllegalAddress;
  return fake::stuck.count(e) ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaMalloc(void** p, size_t n) {
  *p = fake::Alloc(n, fake::device_bytes, fake::max_device_bytes);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) {
  *p = fake::Alloc(n, fake::device_bytes, fake::max_device_bytes);
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {  // synchronises the whole device: counted
  ++fake::device_frees;
  if (p != nullptr) fake::Free(p, fake::device_bytes);
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  ++fake::async_frees;
  fake::Free(p, fake::device_bytes);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t n) {
  *p = fake::Alloc(n, fake::pinned_bytes, fake::max_pinned_bytes);
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
  fake::Free(p, fake::pinned_bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}

// ---- the scripted NCCL (one rank: every collective leaves its buffer as it is) ------------------
const char* ncclGetErrorString(ncclResult_t) { return "fake NCCL error"; }
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  // A new id every call, as NCCL's (a file rendezvous names its notices by it).
  static std::atomic<uint64_t> ids{0};
  std::memset(id, 0, sizeof(*id));
  const uint64_t n = fake::fixed_id ? 0 : ++ids;
  std::memcpy(id->internal, &n, sizeof(n));
  return ncclSuccess;
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int, ncclUniqueId, int, ncclConfig_t*) {
  *comm = reinterpret_cast<ncclComm_t>(0x77);
  fake::initialising = true;
  return ncclInProgress;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* state) {
  if (fake::init_stuck || fake::init_fails != ncclSuccess) {
    *state = fake::init_stuck ? ncclInProgress : fake::init_fails;
    return ncclSuccess;
  }
  if (fake::initialising) {
    fake::initialising = false;
    *state = fake::init_state;
  } else {
    *state = fake::async_state;
  }
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t) {
  ++fake::aborts;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t) {
  ++fake::destroys;
  return ncclSuccess;
}
ncclResult_t ncclAllReduce(const void* s, void* r, size_t n, ncclDataType_t t, ncclRedOp_t, ncclComm_t, cudaStream_t) {
  const size_t width = t == ncclFloat64 || t == ncclInt64 ? 8 : t == ncclFloat32 ? 4 : 2;
  if (s != r) std::memmove(r, s, n * width);
  return ncclSuccess;
}
ncclResult_t ncclBroadcast(const void* s, void* r, size_t n, ncclDataType_t, int, ncclComm_t, cudaStream_t) {
  if (s != r) std::memmove(r, s, n);
  return ncclSuccess;
}
ncclResult_t ncclAllGather(const void* s, void* r, size_t n, ncclDataType_t, ncclComm_t, cudaStream_t) {
  ++fake::allgathers;
  if (s != r) std::memmove(r, s, n * 8);
  return ncclSuccess;
}
}  // extern "C"

namespace ember::dist {
namespace {

std::unique_ptr<Communicator> Make() {
  absl::StatusOr<std::unique_ptr<Communicator>> c =
      CreateNcclCommunicator({.rank = 0, .world_size = 1, .local_rank = 0, .init_timeout = absl::Seconds(5)});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// An NCCL communicator of one rank whose notices come from rank 0 of `bootstrap` (standing in for
// the MPI bootstrap under an MPI launcher).
std::unique_ptr<Communicator> MakeWithNotices(testing::FakeWorld& bootstrap) {
  absl::StatusOr<std::unique_ptr<Communicator>> c = CreateNcclCommunicator(
      {.rank = 0, .world_size = 1, .local_rank = 0, .notices = bootstrap.comm(0), .init_timeout = absl::Seconds(5)});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// A device all-reduce of `a` whose completion event never fires (a peer that never joins).
std::unique_ptr<Pending> StartStuck(Communicator& c, std::vector<float>& a, absl::Duration timeout) {
  auto pending = c.StartAllReduce(Buffer{a.data(), DType::kFloat32, a.size(), 0}, ReduceOp::kSum, absl::Now() + timeout);
  EXPECT_TRUE(pending.ok()) << pending.status();
  if (!pending.ok()) return nullptr;
  fake::stuck.insert(fake::last_event);
  return *std::move(pending);
}

TEST(NcclFaults, AFailedNonBlockingInitIsAbortedNotDestroyed) {
  fake::Reset();
  fake::init_state = ncclSystemError;
  absl::StatusOr<std::unique_ptr<Communicator>> c =
      CreateNcclCommunicator({.rank = 0, .world_size = 1, .local_rank = 0, .init_timeout = absl::Seconds(5)});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("ncclCommInitRank"), std::string::npos) << c.status();
  EXPECT_EQ(fake::aborts, 1);
  EXPECT_EQ(fake::destroys, 0) << "a communicator whose init failed must be aborted, not destroyed";
}

TEST(NcclFaults, AHealthyCommunicatorIsDestroyedAtTheEnd) {
  fake::Reset();
  {
    std::unique_ptr<Communicator> c = Make();
    ASSERT_NE(c, nullptr);
    std::vector<double> v = {1, 2, 3};
    ASSERT_TRUE(c->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5)).ok());
    EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  }
  EXPECT_EQ(fake::destroys, 1);
  EXPECT_EQ(fake::aborts, 0);
}

TEST(NcclFaults, AnAsynchronousErrorAbortsAndPoisonsBeforeReturning) {
  fake::Reset();
  std::unique_ptr<Communicator> c = Make();
  ASSERT_NE(c, nullptr);
  fake::async_state = ncclRemoteError;
  std::vector<double> v = {1};
  absl::Status s = c->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(fake::aborts, 1) << "an asynchronous NCCL error must abort the communicator";
  EXPECT_FALSE(c->poisoned().ok());
  fake::async_state = ncclSuccess;  // even if NCCL now says nothing, the communicator stays dead
  EXPECT_FALSE(c->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5)).ok());
  c.reset();
  EXPECT_EQ(fake::destroys, 0);
  EXPECT_EQ(fake::aborts, 1) << "aborted once";
}

TEST(NcclFaults, ACompletedCollectiveFailsOnceAnotherAbortedTheCommunicator) {
  fake::Reset();
  std::unique_ptr<Communicator> c = Make();
  ASSERT_NE(c, nullptr);
  std::vector<float> a(4, 1.f), b(4, 2.f);
  auto first = c->StartAllReduce(Buffer{a.data(), DType::kFloat32, a.size(), 0}, ReduceOp::kSum,
                                 absl::Now() + absl::Milliseconds(200));
  ASSERT_TRUE(first.ok()) << first.status();
  fake::stuck.insert(fake::last_event);  // the first one's completion event never fires
  auto second = c->StartAllReduce(Buffer{b.data(), DType::kFloat32, b.size(), 0}, ReduceOp::kSum,
                                  absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(second.ok()) << second.status();  // its event completes at once
  absl::Status s1 = (*first)->Wait();
  EXPECT_EQ(s1.code(), absl::StatusCode::kDeadlineExceeded) << s1;
  EXPECT_EQ(fake::aborts, 1);
  absl::Status s2 = (*second)->Wait();
  EXPECT_FALSE(s2.ok()) << "a collective on an aborted communicator returned OK";
}

TEST(NcclFaults, StagingGrowsWithoutCudaFreeAndALargeOneOffIsReleased) {
  fake::Reset();
  std::unique_ptr<Communicator> c = Make();
  ASSERT_NE(c, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  std::vector<double> small = {1, 2};
  ASSERT_TRUE(c->AllReduce(absl::MakeSpan(small), ReduceOp::kSum, deadline).ok());
  const long long kept = fake::pinned_bytes;
  EXPECT_GT(kept, 0) << "a small collective keeps its staging";
  std::string big(8 << 20, 'x');
  big[12345] = 'y';
  ASSERT_TRUE(c->Broadcast(big, 0, deadline).ok());
  EXPECT_EQ(big.size(), size_t{8} << 20);
  EXPECT_EQ(big[12345], 'y');
  EXPECT_GE(fake::max_pinned_bytes, 8 << 20);
  EXPECT_LE(fake::pinned_bytes, 1 << 20) << "the 8 MiB staging of a one-off broadcast stays allocated";
  EXPECT_LE(fake::device_bytes, 1 << 20);
  EXPECT_EQ(fake::device_frees, 0) << "staging was freed with a device-wide cudaFree";
  EXPECT_GE(fake::async_frees, 1);
  ASSERT_TRUE(c->AllReduce(absl::MakeSpan(small), ReduceOp::kSum, deadline).ok());
  EXPECT_EQ(small, (std::vector<double>{1, 2}));
}

TEST(NcclFaults, APeersNoticeOnTheBootstrapEndsAStuckWaitAtOnce) {
  fake::Reset();
  testing::FakeWorld bootstrap(2);  // rank 0 is this process's MPI bootstrap; rank 1 a peer
  std::unique_ptr<Communicator> c = MakeWithNotices(bootstrap);
  ASSERT_NE(c, nullptr);
  std::vector<float> a(4, 1.f);
  std::unique_ptr<Pending> pending = StartStuck(*c, a, absl::Seconds(60));
  ASSERT_NE(pending, nullptr);  // the peer never joins this all-reduce
  std::thread peer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    bootstrap.comm(1)->Fail(absl::InternalError("handler failed on purpose"));
  });
  const absl::Time start = absl::Now();
  absl::Status s = pending->Wait();
  const absl::Duration waited = absl::Now() - start;
  peer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_TRUE(Communicator::IsPeerFailure(s)) << s;
  EXPECT_NE(s.message().find("rank 1 failed: INTERNAL: handler failed on purpose"), std::string::npos) << s;
  EXPECT_NE(s.message().find("while this rank waited in ncclAllReduce of"), std::string::npos) << s;
  EXPECT_LT(waited, absl::Seconds(10)) << "the wait ran toward its 60 s deadline";
  EXPECT_EQ(fake::aborts, 1) << "the NCCL communicator must be aborted (its kernel may be stuck)";
  EXPECT_TRUE(Communicator::IsPeerFailure(c->poisoned())) << c->poisoned();
  EXPECT_TRUE(c->may_meet()) << "a peer's notice leaves the shutdown meeting possible";
  c.reset();
  EXPECT_EQ(fake::destroys, 0);
}

// A notice that came before a device all-reduce fails it before it is issued (its event is never
// waited for).
TEST(NcclFaults, ANoticeThatCameEarlierFailsTheNextCollectiveBeforeItIsIssued) {
  fake::Reset();
  testing::FakeWorld bootstrap(2);  // rank 0 is this process's MPI bootstrap; rank 1 a peer
  std::unique_ptr<Communicator> c = MakeWithNotices(bootstrap);
  ASSERT_NE(c, nullptr);
  bootstrap.comm(1)->Fail(absl::DeadlineExceededError("the user's own timeout"));
  std::vector<float> a(4, 1.f);
  auto pending = c->StartAllReduce(Buffer{a.data(), DType::kFloat32, a.size(), 0}, ReduceOp::kSum,
                                   absl::Now() + absl::Seconds(60));
  ASSERT_FALSE(pending.ok());
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kAborted) << pending.status();
  EXPECT_NE(pending.status().message().find("rank 1 failed: DEADLINE_EXCEEDED: the user's own timeout"),
            std::string::npos)
      << pending.status();
  EXPECT_EQ(fake::aborts, 1);
}

TEST(NcclFaults, WithoutANoticeAStuckWaitStillEndsAtItsDeadline) {
  fake::Reset();
  testing::FakeWorld bootstrap(2);  // rank 0 is this process's MPI bootstrap; rank 1 a peer
  std::unique_ptr<Communicator> c = MakeWithNotices(bootstrap);
  ASSERT_NE(c, nullptr);
  std::vector<float> a(4, 1.f);
  std::unique_ptr<Pending> pending = StartStuck(*c, a, absl::Milliseconds(300));
  ASSERT_NE(pending, nullptr);
  absl::Status s = pending->Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_FALSE(Communicator::IsPeerFailure(s)) << s;
}

// The notices are polled only on the thread that made the communicator (the MPI bootstrap is
// MPI_THREAD_FUNNELED): a wait on another thread (a gradient hook on autograd's device thread)
// ends at its deadline instead.
TEST(NcclFaults, NoticesArePolledOnlyOnTheCommunicatorsThread) {
  fake::Reset();
  testing::FakeWorld bootstrap(2);  // rank 0 is this process's MPI bootstrap; rank 1 a peer
  std::unique_ptr<Communicator> c = MakeWithNotices(bootstrap);
  ASSERT_NE(c, nullptr);
  bootstrap.comm(1)->Fail(absl::InternalError("handler failed on purpose"));
  std::vector<float> a(4, 1.f);
  absl::Status s;
  std::thread other([&] {
    std::unique_ptr<Pending> pending = StartStuck(*c, a, absl::Milliseconds(300));
    ASSERT_NE(pending, nullptr);
    s = pending->Wait();
  });
  other.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
}

// A sticky CUDA error seen while waiting is this rank's own fault: marked so (LocalFault), so that
// the communicator tells the peers (a transport's error would not be).
TEST(NcclFaults, ACudaErrorIsALocalFaultAnNcclRemoteErrorIsNot) {
  fake::Reset();
  std::unique_ptr<Communicator> c = Make();
  ASSERT_NE(c, nullptr);
  std::vector<float> a(4, 1.f);
  std::unique_ptr<Pending> pending = StartStuck(*c, a, absl::Seconds(5));
  ASSERT_NE(pending, nullptr);
  fake::faulted.insert(fake::last_event);  // its query reports the fault (checked before "stuck")
  absl::Status s = pending->Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_TRUE(Communicator::IsLocalFault(s)) << s;
  fake::Reset();
  std::unique_ptr<Communicator> d = Make();
  ASSERT_NE(d, nullptr);
  fake::async_state = ncclRemoteError;
  std::vector<double> v = {1};
  absl::Status r = d->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5));
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(Communicator::IsLocalFault(r)) << r;
}

// NCCL under torchrun (a TCP rendezvous, no MPI): the rendezvous's connections stay open and carry
// the notices (tcp_notices.h). Two ranks of the production backend in one process: rank 0 made on
// the calling thread (notices are polled on the thread that made a communicator), rank 1 on
// another. `salt` keeps each test's port its own.
std::pair<std::unique_ptr<Communicator>, std::unique_ptr<Communicator>> MakePair(
    const std::function<NcclOptions(int)>& options) {
  auto make = [&](int r) {
    absl::StatusOr<std::unique_ptr<Communicator>> made = CreateNcclCommunicator(options(r));
    EXPECT_TRUE(made.ok()) << r << ": " << made.status();
    return made.ok() ? *std::move(made) : nullptr;
  };
  std::unique_ptr<Communicator> rank1;
  std::thread other([&] { rank1 = make(1); });
  std::unique_ptr<Communicator> rank0 = make(0);
  other.join();
  return {std::move(rank0), std::move(rank1)};
}
std::pair<std::unique_ptr<Communicator>, std::unique_ptr<Communicator>> MakeTcpPair(int salt) {
  const int port = 20000 + ((::getpid() + salt) % 20000);
  return MakePair([port](int r) {
    return NcclOptions{.rank = r, .world_size = 2, .local_rank = r, .master_addr = "127.0.0.1",
                       .rendezvous_port = port, .init_timeout = absl::Seconds(20)};
  });
}

// Rank 0 waits in a device all-reduce that never completes (60 s deadline); 200 ms in, rank 1
// fails outside any collective: rank 0's wait must end within seconds, naming rank 1 and its error.
void ExpectRank1sFailureEndsRank0sStuckWait(Communicator& rank0, Communicator& rank1) {
  std::vector<float> a(4, 1.f);
  std::unique_ptr<Pending> pending = StartStuck(rank0, a, absl::Seconds(60));
  ASSERT_NE(pending, nullptr);
  std::thread peer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    rank1.Fail(absl::InternalError("handler failed on purpose"));
  });
  const absl::Time start = absl::Now();
  absl::Status s = pending->Wait();
  const absl::Duration waited = absl::Now() - start;
  peer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("rank 1 failed: INTERNAL: handler failed on purpose"), std::string::npos) << s;
  EXPECT_LT(waited, absl::Seconds(10)) << "the wait ran toward its 60 s deadline";
}

TEST(NcclFaults, UnderATcpRendezvousAPeersNoticeEndsAStuckWait) {
  fake::Reset();
  auto [rank0, rank1] = MakeTcpPair(6151);
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  ExpectRank1sFailureEndsRank0sStuckWait(*rank0, *rank1);
}

// A notice that came already fails the next collective before it is issued, also one that would
// complete at once (it would not poll); and the rank that failed does not wait at the shutdown
// meeting for peers that aborted on its notice.
TEST(NcclFaults, UnderATcpRendezvousANoticeFailsEveryLaterCollectiveAndTheFailedRankDoesNotMeet) {
  fake::Reset();
  auto [rank0, rank1] = MakeTcpPair(7177);
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  rank1->Fail(absl::InternalError("handler failed on purpose"));
  absl::SleepFor(absl::Milliseconds(200));
  std::vector<double> v = {1};  // a host all-reduce whose events complete at once
  absl::Status s = rank0->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("rank 1 failed: INTERNAL: handler failed on purpose"), std::string::npos) << s;
  const absl::Time start = absl::Now();
  absl::Status met = rank1->Meet(absl::Now() + absl::Seconds(5));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "the failed rank waited at the meeting: " << met;
  EXPECT_FALSE(met.ok());
  absl::Status met0 = rank0->Meet(absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(Communicator::IsPeerFailure(met0)) << met0;
}

// Start-up failures under a TCP rendezvous (torchrun) are told: a rank that cannot start still
// joins the rendezvous and tells the others, who would otherwise wait out their init timeout.
// `setup0` / `setup1` script each rank's thread before it starts.
std::pair<absl::Status, absl::Status> StartTcpPair(int salt, const std::function<void()>& setup0,
                                                   const std::function<void()>& setup1,
                                                   absl::Duration* rank0_took,
                                                   absl::Duration rank0_timeout = absl::Seconds(60)) {
  const int port = 20000 + ((::getpid() + salt) % 20000);
  auto start = [port, rank0_timeout](int r) {
    return CreateNcclCommunicator({.rank = r, .world_size = 2, .local_rank = r, .master_addr = "127.0.0.1",
                                   .rendezvous_port = port,
                                   .init_timeout = r == 0 ? rank0_timeout : absl::Seconds(60)})
        .status();
  };
  absl::Status s1;
  std::thread other([&] {
    setup1();
    s1 = start(1);
  });
  setup0();
  const absl::Time began = absl::Now();
  absl::Status s0 = start(0);
  *rank0_took = absl::Now() - began;
  other.join();
  fake::no_device = false;
  fake::init_stuck = false;
  fake::init_fails = ncclSuccess;
  return {s0, s1};
}

TEST(NcclFaults, UnderATcpRendezvousARankWithoutADeviceTellsRank0WhileItsInitWaits) {
  fake::Reset();
  absl::Duration took;
  auto [s0, s1] = StartTcpPair(
      8111, [] { fake::init_stuck = true; }, [] { fake::no_device = true; }, &took);
  EXPECT_EQ(s1.code(), absl::StatusCode::kFailedPrecondition) << s1;
  EXPECT_NE(s1.message().find("no CUDA device visible to rank 1"), std::string::npos) << s1;
  EXPECT_EQ(s0.code(), absl::StatusCode::kAborted) << s0;
  EXPECT_NE(s0.message().find("rank 1 failed: FAILED_PRECONDITION: NCCL backend: no CUDA device visible to rank 1"),
            std::string::npos)
      << s0;
  EXPECT_NE(s0.message().find("ncclCommInitRank"), std::string::npos) << s0;
  EXPECT_LT(took, absl::Seconds(15)) << "rank 0 waited toward its 60 s init timeout";
}

TEST(NcclFaults, UnderATcpRendezvousRank0sStartUpFailureReachesEveryPeerInPlaceOfTheId) {
  fake::Reset();
  absl::Duration took;
  auto [s0, s1] = StartTcpPair(
      8233, [] { fake::no_device = true; }, [] {}, &took);
  EXPECT_EQ(s0.code(), absl::StatusCode::kFailedPrecondition) << s0;
  EXPECT_EQ(s1.code(), absl::StatusCode::kAborted) << s1;
  EXPECT_TRUE(Communicator::IsPeerFailure(s1)) << s1;
  EXPECT_NE(s1.message().find("rank 0 failed: FAILED_PRECONDITION: NCCL backend: no CUDA device visible to rank 0"),
            std::string::npos)
      << s1;
}

TEST(NcclFaults, UnderATcpRendezvousAnInitFailureOfTheRanksOwnIsToldToAPeerStillInItsInit) {
  fake::Reset();
  absl::Duration took;
  auto [s0, s1] = StartTcpPair(
      8357, [] { fake::init_stuck = true; }, [] { fake::init_fails = ncclInvalidUsage; }, &took);
  EXPECT_EQ(s1.code(), absl::StatusCode::kInternal) << s1;
  EXPECT_EQ(s0.code(), absl::StatusCode::kAborted) << s0;
  EXPECT_NE(s0.message().find("rank 1 failed: INTERNAL: ncclCommInitRank: fake NCCL error"), std::string::npos) << s0;
  EXPECT_LT(took, absl::Seconds(15)) << "rank 0 waited toward its 60 s init timeout";
}

// A system or remote error in init is what every rank sees of a lost peer: not told (it would
// name this healthy rank), so the peer still in its init ends at its own deadline.
TEST(NcclFaults, UnderATcpRendezvousARemoteErrorInInitIsNotToldAsThisRanksFailure) {
  fake::Reset();
  absl::Duration took;
  auto [s0, s1] = StartTcpPair(
      8599, [] { fake::init_stuck = true; }, [] { fake::init_fails = ncclRemoteError; }, &took,
      /*rank0_timeout=*/absl::Seconds(3));
  EXPECT_EQ(s1.code(), absl::StatusCode::kInternal) << s1;
  EXPECT_FALSE(Communicator::IsPeerFailure(s0)) << s0;
  EXPECT_EQ(s0.code(), absl::StatusCode::kDeadlineExceeded) << s0 << " (rank 1's remote error was sent as its failure)";
}

// A rank whose start failed waits for the rendezvous only to tell the others, within its init
// timeout, then returns its own error, not the rendezvous's deadline. (The one-minute cap below
// a longer init timeout is not tested: it would take a minute.)
TEST(NcclFaults, ARankWhoseStartFailedReturnsItsOwnErrorWhenNoPeerCameToHearIt) {
  fake::Reset();
  const int port = 20000 + ((::getpid() + 8641) % 20000);
  fake::no_device = true;
  const absl::Time began = absl::Now();
  absl::Status s = CreateNcclCommunicator({.rank = 1, .world_size = 2, .local_rank = 1, .master_addr = "127.0.0.1",
                                           .rendezvous_port = port, .init_timeout = absl::Seconds(2)})
                       .status();
  fake::no_device = false;
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("no CUDA device visible to rank 1"), std::string::npos) << s;
  EXPECT_LT(absl::Now() - began, absl::Seconds(10));
}

// What rank 0 shares is checked: another build's raw id, a short id or an oversize failure is
// kDataLoss and its bytes are never printed; a failure's text is printed with anything that is
// not printable UTF-8 (a cut character, a terminal escape, a C1 control) escaped as \xNN.
absl::Status FromRank0(const std::string& payload, int salt) {
  fake::Reset();
  const int port = 20000 + ((::getpid() + salt) % 20000);
  std::thread rank0([&] {
    absl::StatusOr<std::string> sent = ShareFromRank0(0, 2, "127.0.0.1", port, payload, absl::Now() + absl::Seconds(10));
    EXPECT_TRUE(sent.ok()) << sent.status();
  });
  absl::Status s = CreateNcclCommunicator({.rank = 1, .world_size = 2, .local_rank = 1, .master_addr = "127.0.0.1",
                                           .rendezvous_port = port, .init_timeout = absl::Seconds(10)})
                       .status();
  rank0.join();
  return s;
}

TEST(NcclFaults, BytesFromRank0ThatAreNeitherAnIdNorAFailureAreDataLoss) {
  const std::string raw_id = std::string("F\x01\xff\x00", 4) + std::string(124, '\x07');
  const std::string short_id = "EMBER-NCCL-ID1\nshort";
  const std::string oversize = "EMBER-NCCL-FAILED1\n" + std::string(1025, 'a');
  int salt = 8701;
  for (const std::string& payload : {raw_id, short_id, oversize}) {
    absl::Status s = FromRank0(payload, salt++);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_FALSE(Communicator::IsPeerFailure(s)) << s;
    EXPECT_EQ(s.message().find("aaaa"), std::string::npos) << s;
    EXPECT_NE(s.message().find(payload == oversize ? "a failure of 1025 bytes" : "neither an NCCL unique id nor a failure"),
              std::string::npos)
        << s;
  }
  EXPECT_NE(FromRank0(short_id, salt++).message().find("sent 20 bytes"), std::string::npos);
}

TEST(NcclFaults, ARank0FailuresTextIsPrintedWithWhatIsNotPrintableUtf8Escaped) {
  const std::string text = "INTERNAL: broken \xc3 \x1b[31m \xc2\x9b \xed\xa0\x80 ok \xc3\xa9 \xe2\x82\xac";
  absl::Status s = FromRank0("EMBER-NCCL-FAILED1\n" + text, 8731);
  EXPECT_TRUE(Communicator::IsPeerFailure(s)) << s;
  EXPECT_NE(s.message().find("rank 0 failed: INTERNAL: broken \\xc3 \\x1b[31m \\xc2\\x9b \\xed\\xa0\\x80 ok \xc3\xa9 \xe2\x82\xac"),
            std::string::npos)
      << s;
}

// Nothing is told through a rendezvous file (a file outlives its job: a stale failure would fail
// the next attempt of the same run id): rank 0 returns at once and writes nothing, its peer ends
// at its deadline.
TEST(NcclFaults, UnderAFileRendezvousAStartUpFailureWritesNoFile) {
  fake::Reset();
  const std::string path = ::testing::TempDir() + "/nccl_rendezvous_" + std::to_string(::getpid());
  auto start = [&](int r, absl::Duration timeout) {
    return CreateNcclCommunicator({.rank = r, .world_size = 2, .local_rank = r, .rendezvous_file = path,
                                   .rendezvous_run_id = "job-1", .init_timeout = timeout})
        .status();
  };
  fake::no_device = true;
  const absl::Time began = absl::Now();
  absl::Status s0 = start(0, absl::Seconds(20));
  fake::no_device = false;
  EXPECT_LT(absl::Now() - began, absl::Seconds(2));
  EXPECT_EQ(s0.code(), absl::StatusCode::kFailedPrecondition) << s0;
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "rank 0 wrote " << path;
  absl::Status s1 = start(1, absl::Milliseconds(500));
  EXPECT_EQ(s1.code(), absl::StatusCode::kDeadlineExceeded) << s1;
}

// Under a file rendezvous (no MPI, no MASTER_ADDR) a failure after the start is told through a
// notice file beside the rendezvous file, named by the attempt's id. Two ranks of the production
// backend in one process, rank 0 on the calling thread (it polls the notices).
std::pair<std::unique_ptr<Communicator>, std::unique_ptr<Communicator>> MakeFilePair(const std::string& path,
                                                                                     const std::string& run_id) {
  return MakePair([&](int r) {
    return NcclOptions{.rank = r, .world_size = 2, .local_rank = r, .rendezvous_file = path,
                       .rendezvous_run_id = run_id, .init_timeout = absl::Seconds(20)};
  });
}

// The notice files beside `path` (their names: "<path>.notice-<16 hex digits>").
std::vector<std::string> NoticeFiles(const std::string& path) {
  std::vector<std::string> found;
  const std::string dir = path.substr(0, path.rfind('/'));
  const std::string stem = path.substr(path.rfind('/') + 1) + ".notice-";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind(stem, 0) == 0) found.push_back(dir + "/" + name);
    }
    ::closedir(d);
  }
  return found;
}

TEST(NcclFaults, UnderAFileRendezvousAPeersNoticeEndsAStuckWaitAndTheFailedRankDoesNotMeet) {
  fake::Reset();
  const std::string path = ::testing::TempDir() + "/nccl_notice_" + std::to_string(::getpid());
  auto [rank0, rank1] = MakeFilePair(path, "job-7");
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  EXPECT_TRUE(NoticeFiles(path).empty()) << "a healthy start wrote a notice";
  ExpectRank1sFailureEndsRank0sStuckWait(*rank0, *rank1);
  EXPECT_EQ(NoticeFiles(path).size(), 1u);
  // The failed rank does not come to the shutdown meeting (an all-gather on NCCL) that its peers,
  // aborted on its notice, would never join.
  const int gathers = fake::allgathers;
  absl::Status met = rank1->Meet(absl::Now() + absl::Seconds(5));
  EXPECT_FALSE(met.ok());
  EXPECT_EQ(fake::allgathers, gathers) << "the failed rank ran the meeting's all-gather: " << met;
}

// The first notice stays: a later failure of another rank (often a consequence of the first, seen
// before that rank looked for notices) does not replace it.
TEST(NcclFaults, UnderAFileRendezvousTheFirstNoticeStays) {
  fake::Reset();
  const std::string path = ::testing::TempDir() + "/nccl_first_" + std::to_string(::getpid());
  auto [rank0, rank1] = MakeFilePair(path, "first");
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  rank1->Fail(absl::InternalError("the first failure"));
  rank0->Fail(absl::InternalError("a later failure"));  // rank 0 has not looked yet: it tells too
  const std::vector<std::string> files = NoticeFiles(path);
  ASSERT_EQ(files.size(), 1u);
  std::ifstream in(files[0]);
  const std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(kept.find("\n1\nINTERNAL: the first failure"), std::string::npos) << kept;
}

// The notice file's name of an id of zeros (fake::fixed_id), as NoticeFileFor makes it.
std::string FixedIdNoticeFile(const std::string& path) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof(ncclUniqueId); ++i) h = (h ^ 0u) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return path + ".notice-" + hex;
}

// A new attempt never reads the notice an earlier attempt left: its stuck wait ends at its own
// deadline, not with the old failure. NCCL draws a new id each attempt (the name differs); with
// `fixed_id` the id repeats (NCCL_COMM_ID), and rank 0 removes the old notice before it publishes
// the id.
void ExpectAnEarlierAttemptsNoticeIsNotRead(bool fixed_id, const std::string& tag) {
  fake::Reset();
  fake::fixed_id = fixed_id;
  const std::string path = ::testing::TempDir() + "/nccl_" + tag + "_" + std::to_string(::getpid());
  {
    auto [rank0, rank1] = MakeFilePair(path, tag + "-1");
    ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
    rank1->Fail(absl::InternalError("the first attempt failed"));
    ASSERT_EQ(NoticeFiles(path).size(), 1u);
  }
  auto [rank0, rank1] = MakeFilePair(path, tag + "-2");
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  std::vector<float> a(4, 1.f);
  std::unique_ptr<Pending> pending = StartStuck(*rank0, a, absl::Milliseconds(1500));
  ASSERT_NE(pending, nullptr);
  absl::Status s = pending->Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_EQ(s.message().find("first attempt"), std::string::npos) << s;
}

TEST(NcclFaults, UnderAFileRendezvousAnEarlierAttemptsNoticeIsNotRead) {
  ExpectAnEarlierAttemptsNoticeIsNotRead(false, "stale");
}

TEST(NcclFaults, UnderAFileRendezvousARepeatedIdsOldNoticeIsRemovedBeforeTheIdIsShared) {
  ExpectAnEarlierAttemptsNoticeIsNotRead(true, "fixed");
}

// A notice that cannot be written (here its temporary name is taken by a directory) is logged, and
// the failed rank then does come to the shutdown meeting: that is how its peers learn of it.
TEST(NcclFaults, UnderAFileRendezvousAFailedRankWhoseNoticeCouldNotBeWrittenStillMeets) {
  fake::Reset();
  fake::fixed_id = true;
  const std::string path = ::testing::TempDir() + "/nccl_unwritable_" + std::to_string(::getpid());
  auto [rank0, rank1] = MakeFilePair(path, "unwritable");
  ASSERT_TRUE(rank0 != nullptr && rank1 != nullptr);
  const std::string blocker = FixedIdNoticeFile(path) + ".rank1.tmp";
  ASSERT_EQ(::mkdir(blocker.c_str(), 0755), 0);
  rank1->Fail(absl::InternalError("handler failed on purpose"));
  EXPECT_NE(::access(FixedIdNoticeFile(path).c_str(), F_OK), 0) << "a notice was written";
  const int gathers = fake::allgathers;
  absl::Status met = rank1->Meet(absl::Now() + absl::Seconds(5));
  EXPECT_GT(fake::allgathers, gathers) << "the failed rank skipped the meeting though no notice was written: " << met;
  ::rmdir(blocker.c_str());
}

// The notice file is parsed, never trusted: bytes that are not a notice of this job's ranks are
// ignored (logged once; the wait ends at its deadline), and a notice's text is printed with what
// is not printable UTF-8 escaped.
TEST(NcclFaults, UnderAFileRendezvousANoticeFileIsParsedNotTrusted) {
  const std::string path = ::testing::TempDir() + "/nccl_parse_" + std::to_string(::getpid());
  int attempt = 0;
  auto wait_with = [&](const std::string& bytes) {
    fake::Reset();
    auto [rank0, rank1] = MakeFilePair(path, "parse-" + std::to_string(++attempt));
    EXPECT_TRUE(rank0 != nullptr && rank1 != nullptr);
    if (rank0 == nullptr || rank1 == nullptr) return absl::InternalError("no pair");
    rank1->Fail(absl::InternalError("to be overwritten"));  // names the file; then its bytes replaced
    const std::vector<std::string> files = NoticeFiles(path);
    EXPECT_EQ(files.size(), 1u);
    if (files.size() != 1) return absl::InternalError("not one notice file");
    std::FILE* f = std::fopen(files[0].c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    // A notice that is there already fails the collective as it is issued; otherwise its wait.
    std::vector<float> a(4, 1.f);
    auto pending = rank0->StartAllReduce(Buffer{a.data(), DType::kFloat32, a.size(), 0}, ReduceOp::kSum,
                                         absl::Now() + absl::Milliseconds(1200));
    absl::Status s = pending.status();
    if (pending.ok()) {
      fake::stuck.insert(fake::last_event);
      s = (*pending)->Wait();
    }
    ::unlink(files[0].c_str());  // the next attempt's is then the only one
    return s;
  };
  for (const std::string& bad :
       {std::string("garbage"), std::string("EMBER-NCCL-NOTICE1\n"), std::string("EMBER-NCCL-NOTICE1\n7\nrank out of range"),
        std::string("EMBER-NCCL-NOTICE1\n-1\nnegative"), std::string("EMBER-NCCL-NOTICE1\nx\ny"),
        std::string("EMBER-NCCL-NOTICE1\n +1 \nspaces"), std::string("EMBER-NCCL-NOTICE1\n01\nleading zero"),
        std::string("EMBER-NCCL-NOTICE1\n1\r\ncarriage return"), std::string("EMBER-NCCL-NOTICE1\n1\n"),
        std::string("EMBER-NCCL-NOTICE1\n0\nrank 0's own"), "EMBER-NCCL-NOTICE1\n1\n" + std::string(3000, 'x')}) {
    absl::Status s = wait_with(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << "'" << bad << "': " << s;
  }
  absl::Status s = wait_with(std::string("EMBER-NCCL-NOTICE1\n1\nbad \xff byte"));
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("rank 1 failed: bad \\xff byte"), std::string::npos) << s;
}

// The same under an MPI launcher (the notice on the bootstrap's channel).
TEST(NcclFaults, ANoticeThatCameAlreadyFailsACollectiveThatWouldCompleteAtOnce) {
  fake::Reset();
  testing::FakeWorld bootstrap(2);
  std::unique_ptr<Communicator> c = MakeWithNotices(bootstrap);
  ASSERT_NE(c, nullptr);
  bootstrap.comm(1)->Fail(absl::InternalError("handler failed on purpose"));
  std::vector<double> v = {1};
  absl::Status s = c->AllReduce(absl::MakeSpan(v), ReduceOp::kSum, absl::Now() + absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("rank 1 failed: INTERNAL: handler failed on purpose"), std::string::npos) << s;
}

}  // namespace
}  // namespace ember::dist
