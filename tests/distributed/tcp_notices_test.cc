// TcpNotices (distributed/tcp_notices.h): the failure notices of NCCL under torchrun, over the TCP
// rendezvous's connections kept open: a star through rank 0, which passes a rank's notice on.
#include "distributed/tcp_notices.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/tcp_rendezvous.h"
#include "gtest/gtest.h"

namespace ember::dist {
namespace {

// Three ranks joined as the rendezvous leaves them: rank 0 holds a connection to each other rank.
struct Star {
  std::vector<std::unique_ptr<TcpNotices>> rank;
  explicit Star(int world) {
    std::vector<int> at0(static_cast<size_t>(world), -1);
    std::vector<std::vector<int>> others;
    for (int r = 1; r < world; ++r) {
      int pair[2];
      EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
      at0[static_cast<size_t>(r)] = pair[0];
      std::vector<int> mine(static_cast<size_t>(world), -1);
      mine[0] = pair[1];
      others.push_back(std::move(mine));
    }
    rank.push_back(std::make_unique<TcpNotices>(0, world, std::move(at0)));
    for (int r = 1; r < world; ++r) {
      rank.push_back(std::make_unique<TcpNotices>(r, world, std::move(others[static_cast<size_t>(r - 1)])));
    }
  }
};

// Polls `n` until a notice comes or 2 s passed.
std::optional<std::pair<int, std::string>> PollFor(TcpNotices& n) {
  const absl::Time until = absl::Now() + absl::Seconds(2);
  while (absl::Now() < until) {
    if (auto got = n.Poll(); got.has_value()) return got;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return std::nullopt;
}

TEST(TcpNotices, ARanksNoticeReachesEveryRankThroughRank0) {
  Star star(3);
  EXPECT_FALSE(star.rank[1]->Poll().has_value()) << "a notice out of nothing";
  star.rank[2]->Send("INTERNAL: handler failed on purpose");
  EXPECT_FALSE(star.rank[1]->Poll().has_value()) << "rank 1 heard it before rank 0 passed it on";
  auto at0 = PollFor(*star.rank[0]);  // rank 0 reads it and passes it on
  ASSERT_TRUE(at0.has_value());
  EXPECT_EQ(at0->first, 2);
  EXPECT_EQ(at0->second, "INTERNAL: handler failed on purpose");
  auto at1 = PollFor(*star.rank[1]);
  ASSERT_TRUE(at1.has_value());
  EXPECT_EQ(*at1, *at0);
  EXPECT_FALSE(star.rank[2]->Poll().has_value()) << "the notice came back to the rank that sent it";
  EXPECT_EQ(star.rank[1]->Poll(), at1) << "the first notice is kept";
}

TEST(TcpNotices, Rank0sOwnNoticeReachesEveryRank) {
  Star star(4);
  star.rank[0]->Send("RESOURCE_EXHAUSTED: disk full");
  for (int r = 1; r < 4; ++r) {
    auto got = PollFor(*star.rank[static_cast<size_t>(r)]);
    ASSERT_TRUE(got.has_value()) << r;
    EXPECT_EQ(got->first, 0);
    EXPECT_EQ(got->second, "RESOURCE_EXHAUSTED: disk full");
  }
}

TEST(TcpNotices, AClosedPeerIsNoNoticeAndALongTextIsCut) {
  Star star(3);
  star.rank[2].reset();  // rank 2 ended (or died): its connection closes, naming nobody
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(star.rank[0]->Poll().has_value());
  star.rank[1]->Send(std::string(5000, 'x'));
  auto got = PollFor(*star.rank[0]);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->second.size(), TcpNotices::kMaxNoticeBytes);
}

TEST(TcpNotices, BytesThatAreNotANoticeDropTheConnection) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  TcpNotices at0(0, 2, {-1, pair[0]});
  const std::string junk = "GET / HTTP/1.0\r\n\r\n";
  ASSERT_EQ(::write(pair[1], junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  EXPECT_FALSE(at0.Poll().has_value());
  EXPECT_FALSE(at0.Poll().has_value());
  ::close(pair[1]);
}

// Rank 0 hears each rank on that rank's own connection only: a frame on rank 2's connection that
// names rank 1 would blame a healthy rank (and would reach rank 1 naming itself).
TEST(TcpNotices, Rank0TakesANoticeOnlyFromTheRankItNames) {
  int pair1[2], pair2[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair1), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair2), 0);
  TcpNotices at0(0, 3, {-1, pair1[0], pair2[0]});
  auto frame = [](uint32_t origin, const std::string& text) {
    const uint32_t o = htonl(origin), n = htonl(static_cast<uint32_t>(text.size()));
    return std::string("EMBN") + std::string(reinterpret_cast<const char*>(&o), 4) +
           std::string(reinterpret_cast<const char*>(&n), 4) + text;
  };
  const std::string forged = frame(1, "INTERNAL: not mine to say");
  ASSERT_EQ(::write(pair2[1], forged.data(), forged.size()), static_cast<ssize_t>(forged.size()));
  EXPECT_FALSE(PollFor(at0).has_value()) << "a frame naming another rank was believed";
  const std::string own = frame(1, "INTERNAL: mine");
  ASSERT_EQ(::write(pair1[1], own.data(), own.size()), static_cast<ssize_t>(own.size()));
  auto got = PollFor(at0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->first, 1);
  EXPECT_EQ(got->second, "INTERNAL: mine");
  ::close(pair1[1]);
  ::close(pair2[1]);
}

// The production path: the NCCL id's rendezvous (ShareFromRank0KeepingConnections) leaves the
// connections these notices travel on.
TEST(TcpNotices, OverTheRendezvousConnections) {
  const int world = 3;
  const int port = 20000 + ((::getpid() + 4099) % 20000);
  std::vector<std::vector<int>> kept(world);
  std::vector<absl::StatusOr<std::string>> got(world, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      got[r] = ShareFromRank0KeepingConnections(r, world, "127.0.0.1", port, r == 0 ? "the id" : "",
                                                absl::Now() + absl::Seconds(20), &kept[r]);
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::unique_ptr<TcpNotices>> n;
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(got[r].ok()) << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], "the id");
    ASSERT_EQ(kept[r].size(), static_cast<size_t>(world));
    for (int p = 0; p < world; ++p) {
      const bool expected = r == 0 ? p != 0 : p == 0;
      EXPECT_EQ(kept[r][static_cast<size_t>(p)] >= 0, expected) << "rank " << r << ", entry " << p;
    }
    n.push_back(std::make_unique<TcpNotices>(r, world, kept[r]));
  }
  n[1]->Send("INTERNAL: rank 1's handler failed");
  ASSERT_TRUE(PollFor(*n[0]).has_value());
  auto at2 = PollFor(*n[2]);
  ASSERT_TRUE(at2.has_value());
  EXPECT_EQ(at2->first, 1);
  EXPECT_EQ(at2->second, "INTERNAL: rank 1's handler failed");
}

}  // namespace
}  // namespace ember::dist
