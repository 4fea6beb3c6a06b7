// CombineWithBootstrap (launch.h), what backend "nccl" returns under an MPI launcher: the training
// communicator runs every collective (gradient buffers included, device_buffers forwarded); the
// bootstrap runs the shutdown meeting and carries a failing rank's notice. Two fake worlds of 2
// ranks stand in for NCCL (main) and MPI (bootstrap); each rank's communicators are borrowed.
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/launch.h"
#include "distributed/testing/fake_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember::dist {
namespace {

using ::testing::HasSubstr;

// A communicator that forwards to one owned by a fake world (the combination owns its parts).
class Borrowed final : public Communicator {
 public:
  explicit Borrowed(Communicator* c) : c_(c) {}
  int rank() const override { return c_->rank(); }
  int world_size() const override { return c_->world_size(); }
  int local_rank() const override { return c_->local_rank(); }
  std::string backend() const override { return c_->backend(); }
  bool device_buffers() const override { return c_->device_buffers(); }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, ReduceOp op, absl::Time d) override { return c_->AllReduce(v, op, d); }
  absl::Status DoAllReduce(absl::Span<float> v, ReduceOp op, absl::Time d) override { return c_->AllReduce(v, op, d); }
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& b, ReduceOp op, absl::Time d) override {
    return c_->StartAllReduce(b, op, d);
  }
  absl::Status DoAllGather(absl::Span<const double> s, absl::Span<double> r, absl::Time d) override {
    return c_->AllGather(s, r, d);
  }
  absl::Status DoBroadcast(std::string& b, int root, absl::Time d) override { return c_->Broadcast(b, root, d); }
  absl::Status DoBarrier(absl::Time d) override { return c_->Barrier(d); }
  void DoNotifyFailure(const absl::Status& error) override { c_->Fail(error); }

 private:
  Communicator* c_;
};

struct Worlds {
  testing::FakeWorld boot{2}, main{2};
  std::unique_ptr<Communicator> Combined(int r) {
    return CombineWithBootstrap(std::make_unique<Borrowed>(boot.comm(r)), std::make_unique<Borrowed>(main.comm(r)));
  }
};

TEST(CombineWithBootstrap, CollectivesRunOnMainAndTheMeetingOnTheBootstrap) {
  Worlds w;
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(w.Combined(r));
  std::vector<absl::Status> met(2);
  std::vector<float> reduced(2);
  w.main.RunOnEveryRank([&](Communicator& c) {
    const int r = c.rank();
    Communicator& comm = *comms[static_cast<size_t>(r)];
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    float grad[3] = {1.0f + r, 2, 3};
    auto pending = comm.StartAllReduce(Buffer::Host(grad, 3), ReduceOp::kSum, deadline);
    ASSERT_TRUE(pending.ok()) << pending.status();
    ASSERT_TRUE((*pending)->Wait().ok());
    reduced[static_cast<size_t>(r)] = grad[0];
    double v = 1;
    ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, deadline).ok());
    met[static_cast<size_t>(r)] = comm.Meet(deadline);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(reduced[static_cast<size_t>(r)], 3.0f);
    EXPECT_TRUE(met[static_cast<size_t>(r)].ok()) << met[static_cast<size_t>(r)];
    EXPECT_EQ(w.main.comm(r)->collectives(), 2) << "the gradient buffer and the all-reduce, on main";
    EXPECT_EQ(w.boot.comm(r)->collectives(), 1) << "the shutdown meeting, on the bootstrap only";
    EXPECT_EQ(comms[static_cast<size_t>(r)]->device_buffers(), w.main.comm(r)->device_buffers());
  }
}

TEST(CombineWithBootstrap, AFailedRankIsReportedAtTheBootstrapsMeeting) {
  Worlds w;
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < 2; ++r) comms.push_back(w.Combined(r));
  std::vector<absl::Status> met(2);
  w.main.RunOnEveryRank([&](Communicator& c) {
    const int r = c.rank();
    Communicator& comm = *comms[static_cast<size_t>(r)];
    if (r == 1) comm.Fail(absl::InternalError("handler failed on purpose"));
    met[static_cast<size_t>(r)] = comm.Meet(absl::Now() + absl::Seconds(10));
  });
  EXPECT_EQ(met[1].code(), absl::StatusCode::kInternal) << met[1];
  EXPECT_EQ(met[0].code(), absl::StatusCode::kAborted) << met[0];
  EXPECT_THAT(std::string(met[0].message()), HasSubstr("rank 1 failed"));
  EXPECT_FALSE(w.boot.comm(1)->poisoned().ok()) << "the failure reached the bootstrap";
  EXPECT_EQ(w.main.comm(0)->collectives(), 0) << "nothing ran on main";
}

}  // namespace
}  // namespace ember::dist
