// AgreeOnSettings on in-process fake worlds of 2 and 4 ranks: the scenarios every rank must see
// identically (settings_agreement_scenarios.h), the poisoning, the cost, the deadline; and the
// single-process world, which exchanges nothing.
#include "distributed/settings_agreement.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "distributed/single_process_communicator.h"
#include "distributed/testing/fake_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/distributed/settings_agreement_scenarios.h"

namespace ember::dist {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(SettingList, CanonicalValues) {
  SettingList s;
  s.AddDouble("a", 0.1).AddDouble("b", 1e-5).AddDouble("c", 3.0).AddInt("d", -42).AddBool("e", true).Add("f", "x");
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s.settings()[0].value, "0.1");
  EXPECT_EQ(s.settings()[1].value, "1e-05");
  EXPECT_EQ(s.settings()[2].value, "3");
  EXPECT_EQ(s.settings()[3].value, "-42");
  EXPECT_EQ(s.settings()[4].value, "true");
  EXPECT_EQ(s.settings()[5].value, "x");
  EXPECT_EQ(CanonicalDouble(0.1 + 0.2), "0.30000000000000004");
}

TEST(SettingsAgreement, SingleProcessExchangesNothing) {
  SingleProcessCommunicator comm;
  SettingList s;
  s.AddInt("--seed", 1);
  EXPECT_TRUE(AgreeOnSettings(comm, "trainer flags", s, absl::Seconds(5)).ok());
  EXPECT_EQ(comm.collectives(), 0);
}

TEST(SettingsAgreement, PoisonedCommunicatorReturnsItsError) {
  SingleProcessCommunicator comm;
  comm.Poison(absl::InternalError("rank 1 failed: boom"));
  absl::Status s = AgreeOnSettings(comm, "Engine::Run", SettingList(), absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 1 failed: boom"));
}

class SettingsAgreementWorld : public ::testing::TestWithParam<int> {};

TEST_P(SettingsAgreementWorld, EveryScenarioGivesTheSameOutcomeOnEveryRank) {
  const int n = GetParam();
  for (const std::string& name : testing::ScenarioNames()) {
    SCOPED_TRACE(name);
    testing::FakeWorld world(n);
    std::vector<absl::Status> got(n), after(n);
    std::vector<int64_t> collectives(n);
    world.RunOnEveryRank([&](Communicator& c) {
      const int r = c.rank();
      got[r] = AgreeOnSettings(c, testing::ScenarioContext(name, r), testing::ScenarioSettings(name, r, n),
                               absl::Seconds(20));
      collectives[r] = c.collectives();
      after[r] = c.Barrier(absl::Now() + absl::Seconds(20));
    });
    const std::string expected = testing::ScenarioExpected(name, n);
    for (int r = 0; r < n; ++r) {
      SCOPED_TRACE(r);
      if (expected.empty()) {
        EXPECT_TRUE(got[r].ok()) << got[r];
        EXPECT_EQ(collectives[r], 1) << "agreeing costs one all-reduce";
        EXPECT_TRUE(after[r].ok()) << after[r];
        continue;
      }
      EXPECT_EQ(got[r].code(), absl::StatusCode::kInvalidArgument) << got[r];
      if (name == "long") {
        EXPECT_THAT(std::string(got[r].message()), StartsWith(expected));
        EXPECT_EQ(got[r].message(), got[0].message()) << "every rank builds the same message";
      } else {
        EXPECT_EQ(got[r].message(), expected);
      }
      EXPECT_EQ(collectives[r], 1 + n) << "a mismatch costs one broadcast per rank more";
      // Poisoned: the next collective fails with the same error, on every rank.
      EXPECT_EQ(after[r].code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(std::string(after[r].message()), HasSubstr(std::string(got[r].message())));
    }
  }
}

TEST_P(SettingsAgreementWorld, ValuesCutForTheMessageAreStillComparedWhole) {
  const int n = GetParam();
  testing::FakeWorld world(n);
  std::vector<absl::Status> got(n);
  world.RunOnEveryRank([&](Communicator& c) {
    got[c.rank()] = AgreeOnSettings(c, "trainer flags", testing::ScenarioSettings("long", c.rank(), n),
                                    absl::Seconds(20));
  });
  const std::string m(got[0].message());
  // Two groups (rank 1's value differs at character 250), each with its own digest.
  const size_t first = m.find("digest ");
  const size_t second = m.find("digest ", first + 1);
  ASSERT_NE(second, std::string::npos) << m;
  EXPECT_NE(m.substr(first + 7, 8), m.substr(second + 7, 8)) << m;
  EXPECT_THAT(m, HasSubstr(n == 2 ? " on rank 0, " : " on ranks 0,2,3, ")) << m;
  EXPECT_TRUE(absl::EndsWith(m, " on rank 1")) << m;
}

TEST_P(SettingsAgreementWorld, AMissingRankFailsAtTheDeadline) {
  const int n = GetParam();
  testing::FakeWorld world(n);
  world.Kill(n - 1);
  std::vector<absl::Status> got(n);
  std::vector<absl::Duration> took(n);
  world.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == n - 1) return;
    const absl::Time start = absl::Now();
    SettingList s;
    s.AddInt("--seed", 1);
    got[c.rank()] = AgreeOnSettings(c, "trainer flags", s, absl::Milliseconds(300));
    took[c.rank()] = absl::Now() - start;
  });
  for (int r = 0; r < n - 1; ++r) {
    // Its own deadline, or the first survivor's failure notice naming it.
    EXPECT_TRUE(got[r].code() == absl::StatusCode::kDeadlineExceeded || got[r].code() == absl::StatusCode::kAborted)
        << got[r];
    EXPECT_THAT(std::string(got[r].message()), StartsWith("agreeing on trainer flags: "));
    EXPECT_THAT(std::string(got[r].message()), HasSubstr("did not join before the deadline"));
    EXPECT_LT(took[r], absl::Seconds(10));
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, SettingsAgreementWorld, ::testing::Values(2, 4));

}  // namespace
}  // namespace ember::dist
