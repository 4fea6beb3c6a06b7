// File: distributed/communicator.h
//
// Communicator: the collectives Ember needs across the ranks of a data-parallel job, behind one
// interface with a single-process, an MPI, an NCCL and an in-process fake (tests) backend.
//
// Contract (as c10d's ProcessGroup): every rank must call the collectives in the same order,
// with the same sizes; that is the only way calls match up across processes. Each call takes a
// deadline: if some rank has not joined by then, the call returns kDeadlineExceeded instead of
// hanging. After any non-OK result the communicator is poisoned: every later call returns
// kFailedPrecondition naming the first error (the peers' state is unknown; the job must end).
//
// Failure notices: the first error that poisons a communicator of several ranks (but a
// collective's missed deadline or lost transport, which every peer waiting on the same collective
// detects by itself, and a peer's own notice) is also sent to every other rank (a short message,
// "rank R failed: <error>", at most 1 KiB: a longer one keeps its beginning and its end, see
// NoticeText; on the backend's control channel; MPI does not wait for it, Gloo waits at most
// 600 ms and then closes this rank's connections). A rank waiting in a collective, now or later,
// fails with kAborted and that
// text (IsPeerFailure() is true of it) instead of waiting out its deadline or completing with a
// value a failed rank never contributed. Fail() is the entry for an error outside a collective (a
// handler's error that ended Engine::Run on this rank only). The MPI, Gloo and fake backends carry
// the notices (Gloo's also closes the failed rank's connections, which is what ends a peer's
// wait: gloo_communicator.h); NCCL has no side channel of its own: under an MPI launcher its
// notices go out on the MPI bootstrap's, which its waits poll (NcclOptions::notices); under a TCP
// rendezvous (torchrun) on the rendezvous's connections, kept open (tcp_notices.h); under a file
// rendezvous it has none, and its peers wait for their deadline.
//
// Matching spaces: control traffic (Meet, the notices) never matches training collectives. The
// MPI backend gives each kind of collective a duplicate of MPI_COMM_WORLD of its own (gradient
// buffers of StartAllReduce; the blocking AllReduce; AllGather, which carries the agreements;
// Broadcast and Barrier; control), so that a collective of one kind can never complete or
// corrupt one of another kind (a barrier completing an all-gather, a 4-double metric all-reduce
// meeting a 50858-float gradient bucket: that pair waits for its deadline or a notice instead).
//
// Strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL in the environment, read when the communicator is
// made; like PyTorch's TORCH_DISTRIBUTED_DEBUG=DETAIL): before EVERY collective the ranks
// all-gather a fixed-size fingerprint of it (kind, sequence number, element count, element type,
// operation or root) and compare them; a mismatch fails every rank with kFailedPrecondition
// naming each rank's collective ("collective #12 differs across ranks: rank 0 AllReduce of 4
// float64 (SUM); rank 1 StartAllReduce of 50858 float32 (SUM)") before the collective reaches
// the transport. It costs one more small collective per collective: for debugging. A Broadcast's
// fingerprint has no count (only the root knows the size). The mode must be the same on every
// rank: dist::Launch/LaunchWorld agree on it right after making the communicator (one all-gather),
// and a rank set differently fails every rank at once, naming the ranks.
//
// Thread safety: a communicator is used by one thread at a time (the training thread); the
// counters may be read from any thread.
//
// Example:
//   double score = LocalScore();
//   EMBER_RETURN_IF_ERROR(comm->AllReduce(absl::MakeSpan(&score, 1), ReduceOp::kSum,
//                                         absl::Now() + absl::Seconds(60)));
//   score /= comm->world_size();
#ifndef EMBER_DISTRIBUTED_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_COMMUNICATOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "distributed/buffer.h"

namespace ember::dist {

enum class ReduceOp { kSum, kMin, kMax };

const char* ReduceOpName(ReduceOp op);

// A collective that has been started and has not been waited for (Communicator::StartAllReduce).
// Wait() returns once it completed on this rank, or kDeadlineExceeded at the deadline given when
// it started (the communicator is then poisoned); its buffer must stay valid and untouched until
// then. A second Wait() returns the first result. Destroying a Pending that was not waited for
// waits for it (a started collective cannot be taken back).
//
// A collective whose wait failed (a deadline, a peer's failure notice) is given up on, not
// cancelled: MPI cannot cancel a collective, and it may still write the buffer whenever this
// process calls into it again (a failure notice, the shutdown meeting) and a late peer's data
// arrives. So after a failed Wait() the buffer must never be freed or reused: hand its owner to
// AbandonToTransport(). The communicator's own collectives on memory it does not own
// (AllReduce/AllGather/Broadcast of spans and strings, the blocking AllReduce of a host Buffer,
// the shutdown meeting) post on staging memory of their own and do this themselves; DataParallel
// does it for its buckets. A Pending destroyed without Wait() waits in its destructor: on failure
// the buffer is still the transport's, so wait explicitly and check the result.
class Pending {
 public:
  virtual ~Pending() = default;
  virtual absl::Status Wait() = 0;
};

// Keeps `memory` allocated until the process exits: the memory of a collective given up on
// (above). At most one buffer per collective in flight when the communicator failed (a failed
// communicator starts no other).
// Thread-safe.
void AbandonToTransport(std::shared_ptr<const void> memory);
// How many allocations were abandoned so far (tests).
int64_t AbandonedToTransport();

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // This rank's index among the ranks of its host (it picks the GPU).
  virtual int local_rank() const = 0;
  // "single", "mpi", "nccl", "fake".
  virtual std::string backend() const = 0;
  // Whether StartAllReduce takes device buffers (NCCL); the others reduce host buffers only.
  virtual bool device_buffers() const { return false; }

  // In-place all-reduce of host buffers.
  absl::Status AllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline);
  absl::Status AllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline);
  // In-place all-reduce of a typed buffer on the host or a device (buffer.h). Returns once the
  // collective is started: the MPI backend posts MPI_Iallreduce; the NCCL backend enqueues device
  // buffers on its own stream after an event on the producer's stream (no host synchronisation,
  // no copy) and stages host buffers through pinned memory. Other backends complete it before
  // returning. Device buffers need the NCCL backend (the others say so, before anything is
  // exchanged, without poisoning the communicator); float16, bfloat16 and
  // int64 host buffers are reduced exactly where the backend has no such type (through float32
  // or float64; int64 sums within +-2^53). Same ordering contract as every collective.
  absl::StatusOr<std::unique_ptr<Pending>> StartAllReduce(const Buffer& buffer, ReduceOp op, absl::Time deadline);
  // StartAllReduce, then Wait; with several ranks a host buffer is reduced through a copy (which a
  // failed wait leaves to the transport, see Pending), so the caller's buffer is free to go after
  // an error. StartAllReduce does not copy: its caller keeps the buffer after a failed Wait().
  absl::Status AllReduce(const Buffer& buffer, ReduceOp op, absl::Time deadline);

  // recv holds world_size() * send.size() values: rank r's send at [r * send.size(), ...).
  absl::Status AllGather(absl::Span<const double> send, absl::Span<double> recv,
                         absl::Time deadline);
  // Makes `bytes` on every rank equal to root's (any size).
  absl::Status Broadcast(std::string& bytes, int root, absl::Time deadline);
  absl::Status Barrier(absl::Time deadline);

  // The shutdown meeting (World::Shutdown), on the control channel: every rank says whether it
  // failed (its communicator is poisoned) and waits for all the others, until `deadline`. OK when
  // no rank failed; kAborted naming the ranks that did (with a failure notice's text when one
  // came) otherwise. Also runs on a poisoned communicator when may_meet() says it can.
  absl::Status Meet(absl::Time deadline);
  // Whether Meet can still complete: false after a deadline passed (a kDeadlineExceeded poison
  // that did not come through Fail) or a collective's transport failed (kInternal, kUnavailable, kUnknown from a
  // collective: a peer may be stuck for good), true otherwise (not poisoned; a local failure,
  // whatever its code; a peer's notice; a mismatch that every rank detected).
  bool may_meet() const;

  // Whether strict mode is on (above); set_strict overrides the environment (tests).
  bool strict() const { return strict_; }
  void set_strict(bool strict) { strict_ = strict; }

  // Number of collectives issued so far (for tests and benchmarks: one per event firing).
  int64_t collectives() const { return collectives_.load(std::memory_order_relaxed); }
  // Time the calling threads spent inside collectives: the blocking calls, and the start and the
  // Wait() of started ones (time a started collective runs while the caller computes is not
  // counted: it is the overlap). For goodput accounting.
  absl::Duration collective_time() const { return absl::Nanoseconds(collective_ns_.load(std::memory_order_relaxed)); }
  void AddCollectiveTime(absl::Duration d) {
    collective_ns_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_relaxed);
  }
  // Bytes this communicator copied between a device and the host (staging host buffers for NCCL,
  // both directions). Device buffers add nothing: a test of the GPU path checks it.
  int64_t host_staged_bytes() const { return staged_bytes_.load(std::memory_order_relaxed); }
  // The error that poisoned the communicator, or OK.
  absl::Status poisoned() const { return poison_; }
  // Poisons with an error that every rank detected by itself, identically, in collectives they all
  // completed (a mismatch of settings, dist::AgreeOnSettings): sends no failure notice, which could
  // abort a peer still completing the last of those collectives. The first error is kept.
  void PoisonDetectedEverywhere(absl::Status error) {
    if (poison_.ok() && !error.ok()) poison_ = std::move(error);
  }
  // Marks the communicator failed from outside (a communicator bootstrapped over it failed, a
  // start-up step timed out): later calls fail, and shutdown skips steps that would wait on the
  // peers (Meet, per may_meet()). The first error is kept. The first poisoning of a communicator
  // of several ranks sends the failure notice (above) unless the error is itself a peer's notice.
  void Poison(absl::Status error);
  // This rank failed outside a collective (`error`): poisons the communicator and tells the
  // peers, so that they fail promptly with "rank R failed: <error>", whatever the error's code (a
  // DEADLINE_EXCEEDED of the user's own, say, which no peer saw). The rank may still meet at
  // shutdown (may_meet). The first error is kept; on a communicator poisoned already it does
  // nothing (the error is then usually that poison, wrapped by a caller: Engine::Run's error
  // after a missed deadline must not name this rank as the one that failed).
  void Fail(absl::Status error);
  // Sends `error` to the peers as this rank's failure even when a collective failed first
  // without telling them (a deadline, a lost transport), for an error that does not come from
  // that failure: a save that failed on the root while a peer stalled (RunOnRoot), so that the
  // healthy peers learn the save's error, not only that a broadcast was given up on. Poisons
  // with it when not poisoned yet. Once per communicator (with the other notices); never
  // after a peer's notice (it would be sent on as this rank's own failure).
  void TellPeers(absl::Status error);
  // Marks `error` (a status of a collective's failure) as a fault of this rank's own (a CUDA
  // error of its kernels, an invalid call), not of the transport: CollectiveFailed tells the
  // peers about it, as Fail would, although its code is a transport's (kInternal).
  static absl::Status LocalFault(absl::Status error);
  static bool IsLocalFault(const absl::Status& error);
  // A collective failed with `error` (Guard, a Pending's Wait): Poison, and when the transport
  // failed (kInternal, kUnavailable, kUnknown) or a deadline passed, the shutdown meeting is
  // skipped (may_meet()). A transport failure tells no peer (every rank whose collective
  // failed sees its own; naming this rank as failed could blame a healthy one).
  void CollectiveFailed(absl::Status error);
  // The first failure notice that arrived from a peer (PeerFailure), or OK if none did (yet):
  // checks the control channel once, without waiting. A backend with no side channel of its own
  // (NCCL) polls the one of the communicator that bootstrapped it (NcclOptions::notices).
  absl::Status PeerNotice() { return ReceivedNotice(); }
  // Whether `error` is a failure notice from another rank (kAborted, "rank R failed: ...").
  static bool IsPeerFailure(const absl::Status& error);
  // The error a backend returns for rank `rank`'s notice `message`.
  static absl::Status PeerFailure(int rank, absl::string_view message);
  // `notice` (a PeerFailure) with " (while this rank waited in <what>)" appended: still a peer
  // failure (IsPeerFailure), so that it is not sent on as this rank's own failure.
  static absl::Status WhileWaiting(const absl::Status& notice, absl::string_view what);
  // `error` with `message` instead of its own, its code and payloads kept (a peer's notice stays
  // one, a local fault stays one).
  static absl::Status WithMessage(const absl::Status& error, absl::string_view message);
  // The text a backend sends for `error` ("CODE: message"), at most `max_bytes` bytes: a longer
  // one keeps its beginning and its end (where the engine puts "[at EVENT, epoch E, iteration
  // I]") around " [... N bytes cut ...] ", cut on UTF-8 character boundaries.
  static std::string NoticeText(const absl::Status& error, size_t max_bytes);

 protected:
  virtual absl::Status DoAllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) = 0;
  virtual absl::Status DoAllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) = 0;
  virtual absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                                   absl::Time deadline) = 0;
  virtual absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) = 0;
  virtual absl::Status DoBarrier(absl::Time deadline) = 0;
  // Default: host buffers only, completed before returning, through DoAllReduce (float16,
  // bfloat16 and int64 widened to float32 / float64 and narrowed back).
  virtual absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& buffer, ReduceOp op,
                                                                    absl::Time deadline);
  void CountStaged(int64_t bytes) { staged_bytes_.fetch_add(bytes, std::memory_order_relaxed); }
  // Sends `error`'s notice to every other rank, without waiting for it to arrive (bounded).
  // Default: nothing (the backend has no channel for it).
  virtual void DoNotifyFailure(const absl::Status& error) { (void)error; }
  // Meet's exchange: every rank's failed flag (world_size() of them), on the control channel.
  // Default: through DoAllGather (the same matching space as the agreements: a backend with a
  // control channel overrides it).
  virtual absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline);
  // The first failure notice that arrived from a peer (PeerFailure), or OK if none did (yet).
  virtual absl::Status ReceivedNotice() { return absl::OkStatus(); }

 private:
  // Checks poisoning, counts, and poisons on error.
  template <typename F>
  absl::Status Guard(const char* what, F&& f);

  std::atomic<int64_t> collectives_{0};
  std::atomic<int64_t> staged_bytes_{0};
  std::atomic<int64_t> collective_ns_{0};
  // Strict mode: exchanges and compares the fingerprint of the next collective.
  absl::Status CheckFingerprint(int kind, uint64_t count, int dtype, int op, absl::Time deadline);
  absl::Status poison_;
  bool broken_ = false;  // a collective's transport failed
  bool failed_locally_ = false;  // the poison came through Fail()
  bool notified_ = false;  // DoNotifyFailure was called (once at most)
  // Sends `error`'s notice unless one was sent already (or the world is one rank).
  void Notify(const absl::Status& error);
  bool strict_ = StrictFromEnvironment();
  uint64_t strict_seq_ = 0;
  static bool StrictFromEnvironment();
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_COMMUNICATOR_H_
