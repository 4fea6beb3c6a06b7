// TimeLimit against every timelimit_* scenario of golden-training-public.jsonl (recorded on
// ignite v0.5.3): the run scenarios are replayed from their inputs on a fake clock (limit_sec,
// the time between construction and run, the step's clock advance, data length, epochs) and the
// trace [EVENT, epoch, iteration, seconds] and the final epoch and iteration are compared; the
// error scenarios are replayed call by call (ignite's TypeErrors are compile-time errors here).
// Then Ember's additions: the outcome after a stop, the agreement across ranks (FakeWorld), the
// safety mode (step and save measured, agreed as the slowest rank's), and the Slurm budget with
// strictly parsed SLURM_JOB_END_TIME values.
#include "handlers/time_limit.h"

#include <any>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/log.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/conformance/golden.h"

namespace ember {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::Golden;

// ignite's TypeError cases are compile-time errors: limit_sec accepts integers only.
template <typename T>
concept AcceptsLimit = requires(T v) { TimeLimitOptions{.limit_sec = v}; };
static_assert(AcceptsLimit<int> && AcceptsLimit<int64_t>);
static_assert(!AcceptsLimit<double>, "TimeLimit(limit_sec=1.5) must not compile");
static_assert(!AcceptsLimit<std::nullptr_t> && !AcceptsLimit<std::nullopt_t>,
              "TimeLimit(limit_sec=None) must not compile");

// The names of every scenario of the file with this prefix.
std::set<std::string> ScenariosWithPrefix(const std::string& prefix) {
  std::ifstream in("tests/conformance/golden-training-public.jsonl");
  EXPECT_TRUE(in.good()) << "golden-training-public.jsonl not found";
  std::set<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("scenario")) continue;
    const std::string name = j["scenario"];
    if (name.rfind(prefix, 0) == 0) names.insert(name);
  }
  return names;
}

// The number after `prefix` in `text` ("advances the clock by 1.0").
double NumberAfter(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  EXPECT_NE(at, std::string::npos) << "'" << prefix << "' not in '" << text << "'";
  if (at == std::string::npos) return 0;
  double v = 0;
  EXPECT_EQ(std::sscanf(text.c_str() + at + prefix.size(), "%lf", &v), 1) << text;
  return v;
}

Event EventNamed(const std::string& name) {
  if (name == "ITERATION_COMPLETED") return Events::IterationCompleted();
  if (name == "EPOCH_COMPLETED") return Events::EpochCompleted();
  if (name == "TERMINATE") return Events::Terminate();
  if (name == "COMPLETED") return Events::Completed();
  ADD_FAILURE() << "unknown event " << name;
  return Events::Completed();
}

// A replay of one run scenario, on `world_rank` of `comm` (a single process by default), with
// this rank's fake clock `ahead` seconds in advance of the others'.
struct Replay {
  std::unique_ptr<FakeClock> clock;  // outlives the handler and the trainer that read it
  double start_offset = 0;           // the handler's start time - the clock's origin
  json trace = json::array();
  std::unique_ptr<TimeLimit> limit;
  std::unique_ptr<Engine> trainer;
  std::vector<std::string> log;
};

void RunScenario(const json& in, Replay& r, dist::Communicator* comm = nullptr, double ahead = 0.0) {
  const double origin = NumberAfter(in["clock"], "starting at ");
  const double step = NumberAfter(in["process_function"], "advances the clock by ");
  r.clock = std::make_unique<FakeClock>(origin);
  FakeClock& clock = *r.clock;
  ASSERT_EQ(in["attached_to"], "ITERATION_COMPLETED");
  auto created = TimeLimit::Create({.limit_sec = in["limit_sec"].get<int64_t>(), .clock = &clock});
  ASSERT_TRUE(created.ok()) << created.status();
  r.limit = *std::move(created);
  r.start_offset = clock.NowSeconds() - r.limit->elapsed_seconds() - origin;
  clock.Advance(ahead);
  clock.Advance(in["advance_between_construction_and_run"].get<double>());
  r.trainer = std::make_unique<Engine>([&](Engine&, const int&) { clock.Advance(step); });
  if (comm != nullptr) {
    r.trainer->set_communicator(comm);
    r.trainer->set_collective_timeout(absl::Seconds(10));  // ranks that stop apart fail, not hang
  }
  // The trace handlers, registered before TimeLimit (the scenario's order).
  for (const char* name : {"ITERATION_COMPLETED", "EPOCH_COMPLETED", "TERMINATE", "COMPLETED"}) {
    r.trainer->On(EventNamed(name), [&, name](Engine& e) {
      r.trace.push_back({name, e.state().epoch, e.state().iteration, clock.NowSeconds() - origin - ahead});
    });
  }
  r.trainer->On(Events::IterationCompleted(), *r.limit);
  std::vector<int> data(in["data_len"].get<size_t>(), 0);
  // The log sink is process-wide: captured in a single process only (not by FakeWorld's threads).
  std::optional<ScopedLogSink> sink;
  if (comm == nullptr) sink.emplace([&](LogSeverity, std::string_view m) { r.log.emplace_back(m); });
  ASSERT_TRUE(r.trainer->Run(data, {.max_epochs = in["max_epochs"].get<int64_t>()}).ok());
}

void CheckRunScenario(const std::string& name) {
  const json s = Golden(name);
  ASSERT_FALSE(s.is_null());
  const json& in = s["inputs"];
  const json& want = s["expected"];
  ASSERT_EQ(in["class"], "TimeLimit");
  Replay r;
  RunScenario(in, r);
  EXPECT_EQ(r.trace, want["trace"]) << name;
  EXPECT_EQ(r.trainer->state().epoch, want["final_epoch"].get<int64_t>());
  EXPECT_EQ(r.trainer->state().iteration, want["final_iteration"].get<int64_t>());
  // The clock started at construction: start_time - clock origin.
  EXPECT_EQ(r.start_offset, want["start_time_offset"].get<double>());
  // Ember: the outcome says who stopped the run, where, and after how long.
  ASSERT_TRUE(r.limit->stopped());
  EXPECT_EQ(r.trainer->outcome().terminated_by, TimeLimit::kName);
  EXPECT_EQ(r.limit->stop()->iteration, want["final_iteration"].get<int64_t>());
  EXPECT_EQ(r.limit->stop()->epoch, want["final_epoch"].get<int64_t>());
  EXPECT_EQ(r.limit->stop()->elapsed_sec, want["trace"].back()[3].get<double>());
  EXPECT_FALSE(r.limit->stop()->early);
  ASSERT_EQ(r.log.size(), 1u);
  EXPECT_THAT(r.log[0], HasSubstr(absl::StrCat("Reached the time limit: ", in["limit_sec"].get<int64_t>(),
                                               " sec. Stop training")));
  EXPECT_THAT(r.log[0], HasSubstr(absl::StrCat("iteration ", want["final_iteration"].get<int64_t>())));
}

TEST(TimeLimitGolden, IterationCompleted) { CheckRunScenario("timelimit_iteration_completed"); }
TEST(TimeLimitGolden, ClockStartsAtConstruction) { CheckRunScenario("timelimit_clock_starts_at_construction"); }

TEST(TimeLimitGolden, Errors) {
  const json s = Golden("timelimit_errors");
  ASSERT_FALSE(s.is_null());
  const json& cases = s["inputs"]["cases"];
  const json& results = s["expected"]["results"];
  ASSERT_EQ(cases.size(), results.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string call = cases[i]["call"];
    const json& raised = results[i]["raised"];
    const std::string arg = call.substr(call.find('=') + 1, call.rfind(')') - call.find('=') - 1);
    int64_t limit = 0;
    if (raised["type"] == "TypeError") {
      // Not an integer: C++ rejects it at compile time (the static_asserts above).
      EXPECT_FALSE(absl::SimpleAtoi(arg, &limit)) << call;
      EXPECT_TRUE(arg == "None" || arg.find('.') != std::string::npos) << call;
      continue;
    }
    ASSERT_EQ(raised["type"], "ValueError") << call;
    ASSERT_TRUE(absl::SimpleAtoi(arg, &limit)) << call;
    auto created = TimeLimit::Create({.limit_sec = limit});
    ASSERT_FALSE(created.ok()) << call;
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << call;
    EXPECT_THAT(std::string(created.status().message()), StartsWith(raised["message"].get<std::string>())) << call;
    EXPECT_THAT(std::string(created.status().message()), HasSubstr(absl::StrCat("got ", limit))) << call;
  }
}

// Every timelimit_* scenario of the file is one of those replayed above.
TEST(TimeLimitGolden, EveryScenarioIsReplayed) {
  EXPECT_EQ(ScenariosWithPrefix("timelimit_"),
            (std::set<std::string>{"timelimit_iteration_completed", "timelimit_clock_starts_at_construction",
                                   "timelimit_errors"}));
}

// ---- Multi-rank: the stop is agreed ---------------------------------------------------------------

// The golden run on N ranks, one rank's clock `ahead` seconds in advance: every rank stops at the
// first iteration where that rank is over the limit (ignite would stop it alone).
TEST(TimeLimitMultiRank, OneRankOverStopsEveryRankAtTheSameIteration) {
  const json in = Golden("timelimit_iteration_completed")["inputs"];
  const double step = NumberAfter(in["process_function"], "advances the clock by ");
  for (int n : {2, 4}) {
    for (int ahead_rank = 0; ahead_rank < n; ++ahead_rank) {
      const double ahead = 2.0;
      dist::testing::FakeWorld world(n);
      std::vector<int64_t> stopped_at(n, -1);
      std::vector<std::string> by(n);
      world.RunOnEveryRank([&](dist::Communicator& c) {
        Replay r;
        RunScenario(in, r, &c, c.rank() == ahead_rank ? ahead : 0.0);
        ASSERT_TRUE(r.limit->stopped());
        stopped_at[c.rank()] = r.limit->stop()->iteration;
        by[c.rank()] = r.trainer->outcome().Summary();
      });
      // First k with ahead + k * step > limit_sec.
      int64_t want = 1;
      while (!(ahead + want * step > in["limit_sec"].get<double>())) ++want;
      for (int r = 0; r < n; ++r) {
        EXPECT_EQ(stopped_at[r], want) << "world " << n << ", rank " << r << " (rank " << ahead_rank << " ahead)";
        EXPECT_EQ(by[r], by[0]) << "rank " << r;
        EXPECT_THAT(by[r], HasSubstr("terminated by TimeLimit"));
      }
    }
  }
}

// The proposal reads only the clock (proposes_in_step): it rides a collective the step makes
// anyway (DataParallel's), and the stop is the same as with the firing's own agreement.
TEST(TimeLimitMultiRank, AgreementCarriedByTheStepsCollective) {
  const json in = Golden("timelimit_iteration_completed")["inputs"];
  const double step = NumberAfter(in["process_function"], "advances the clock by ");
  const int n = 2;
  dist::testing::FakeWorld world(n);
  std::vector<int64_t> stopped_at(n, -1), carried(n, -1), agreements(n, -1);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    FakeClock clock;
    auto limit = TimeLimit::Create({.limit_sec = in["limit_sec"].get<int64_t>(), .clock = &clock});
    ASSERT_TRUE(limit.ok()) << limit.status();
    clock.Advance(c.rank() == 1 ? 2.0 : 0.0);
    Engine trainer([&](Engine& e) -> absl::Status {
      clock.Advance(step);
      absl::StatusOr<absl::Span<const double>> mine = e.ProposeAhead(std::any());
      if (!mine.ok()) return mine.status();
      std::vector<double> all(mine->size() * n);
      absl::Status s = c.AllGather(*mine, absl::MakeSpan(all), absl::Now() + absl::Seconds(10));
      if (!s.ok()) return s;
      return e.CarryAgreement(all);
    });
    trainer.set_communicator(&c);
    trainer.set_collective_timeout(absl::Seconds(10));
    trainer.On(Events::IterationCompleted(), **limit);
    ASSERT_TRUE(trainer.Run({.max_epochs = in["max_epochs"].get<int64_t>(),
                             .epoch_length = in["data_len"].get<int64_t>()})
                    .ok());
    ASSERT_TRUE((*limit)->stopped());
    stopped_at[c.rank()] = (*limit)->stop()->iteration;
    carried[c.rank()] = trainer.carried_agreements();
    agreements[c.rank()] = trainer.agreements();
  });
  int64_t want = 1;
  while (!(2.0 + want * step > in["limit_sec"].get<double>())) ++want;
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(stopped_at[r], want) << "rank " << r;
    EXPECT_EQ(carried[r], want) << "rank " << r;  // every iteration's agreement was carried
  }
  EXPECT_EQ(agreements[0], agreements[1]);
}

// ---- Safety mode ------------------------------------------------------------------------------------

struct SafetyRun {
  int64_t stopped_at = -1;
  std::optional<TimeLimit::Stop> stop;
  std::vector<std::string> log;
};

// A run of up to 100 iterations whose step takes `step` fake seconds and whose iterations k with
// k % save_every == 0 save for `save` seconds (a plain handler before TimeLimit, counted in
// save_time).
SafetyRun RunSafety(TimeLimitOptions o, double step, int save_every = 0, double save = 0,
                    dist::Communicator* comm = nullptr, double ahead = 0) {
  FakeClock clock;
  double saved = 0;
  o.clock = &clock;
  if (save_every > 0) o.save_time = [&] { return absl::Seconds(saved); };
  SafetyRun out;
  auto limit = TimeLimit::Create(std::move(o));
  EXPECT_TRUE(limit.ok()) << limit.status();
  if (!limit.ok()) return out;
  clock.Advance(ahead);
  Engine trainer([&](Engine&) { clock.Advance(step); });
  if (comm != nullptr) {
    trainer.set_communicator(comm);
    trainer.set_collective_timeout(absl::Seconds(10));  // ranks that stop apart fail, not hang
  }
  trainer.On(Events::IterationCompleted(), [&](Engine& e) {
    if (save_every > 0 && e.state().iteration % save_every == 0) {
      clock.Advance(save);
      saved += save;
    }
  });
  trainer.On(Events::IterationCompleted(), **limit);
  std::optional<ScopedLogSink> sink;  // process-wide: not from FakeWorld's threads
  if (comm == nullptr) sink.emplace([&](LogSeverity, std::string_view m) { out.log.emplace_back(m); });
  EXPECT_TRUE(trainer.Run({.max_epochs = 1, .epoch_length = 100}).ok());
  out.stop = (*limit)->stop();
  if (out.stop) out.stopped_at = out.stop->iteration;
  return out;
}

TEST(TimeLimitSafety, OffByDefaultStopsOnlyOnceTheLimitIsPassed) {
  SafetyRun r = RunSafety({.limit_sec = 10, .final_save_reserve_sec = 2}, 1.0);
  EXPECT_EQ(r.stopped_at, 11);  // elapsed 11 > 10
  EXPECT_FALSE(r.stop->early);
}

TEST(TimeLimitSafety, StopsWhenTheNextStepAndTheReserveWouldPassTheLimit) {
  // elapsed k + next step 1 + reserve 2 > 10 first at k = 8 (at k = 1 no step is measured yet).
  SafetyRun r = RunSafety({.limit_sec = 10, .safety = true, .final_save_reserve_sec = 2}, 1.0);
  EXPECT_EQ(r.stopped_at, 8);
  ASSERT_TRUE(r.stop);
  EXPECT_TRUE(r.stop->early);
  EXPECT_EQ(r.stop->elapsed_sec, 8.0);
  EXPECT_EQ(r.stop->next_step_sec, 1.0);
  EXPECT_EQ(r.stop->save_reserve_sec, 2.0);
  EXPECT_FALSE(r.stop->save_measured);
  ASSERT_EQ(r.log.size(), 1u);
  EXPECT_THAT(r.log[0], HasSubstr("elapsed 8.000 s + next step 1.000 s + final save 2.000 s (the reserve given) "
                                  "would exceed the budget of 10.000 sec"));
  EXPECT_THAT(r.log[0], HasSubstr("iteration 8"));
}

TEST(TimeLimitSafety, MeasuredSaveReplacesTheReserveAndIsNotCountedAsStepTime) {
  // Steps of 1 s; every 3rd iteration saves for 4 s. Elapsed at k: k + 4 * (k / 3). With the
  // measured save (4) and the step without its save (1): k + 4(k/3) + 5 > 30 first at k = 12.
  // (The given reserve 0 instead of the measured save: k = 14; the save counted as step time,
  // step 5: k = 10.)
  SafetyRun r = RunSafety({.limit_sec = 30, .safety = true, .final_save_reserve_sec = 0}, 1.0, 3, 4.0);
  EXPECT_EQ(r.stopped_at, 12);
  ASSERT_TRUE(r.stop);
  EXPECT_TRUE(r.stop->save_measured);
  EXPECT_EQ(r.stop->save_reserve_sec, 4.0);
  EXPECT_EQ(r.stop->next_step_sec, 1.0);
  EXPECT_EQ(r.stop->elapsed_sec, 28.0);
  EXPECT_THAT(r.log[0], HasSubstr("final save 4.000 s (the reserve or the longest save measured)"));
}

TEST(TimeLimitSafety, AMeasuredSaveShorterThanTheReserveDoesNotLowerIt) {
  // Steps of 1 s, a 0.5 s save every 3rd iteration (an asynchronous checkpoint's blocked time),
  // a reserve of 5 s for the final save: the reserve stands. Elapsed at k: k + 0.5 floor(k/3);
  // k + 0.5 floor(k/3) + 1 + 5 > 30 first at k = 21 (with the measured 0.5 instead: k = 25).
  SafetyRun r = RunSafety({.limit_sec = 30, .safety = true, .final_save_reserve_sec = 5}, 1.0, 3, 0.5);
  EXPECT_EQ(r.stopped_at, 21);
  ASSERT_TRUE(r.stop);
  EXPECT_TRUE(r.stop->save_measured);
  EXPECT_EQ(r.stop->save_reserve_sec, 5.0);
}

// Ranks given different reserves (before any save is measured) decide on the largest: one stop,
// at one iteration, on every rank (each rank using its own reserve stops them apart, and the
// rank that goes on waits in an agreement nobody else joins).
TEST(TimeLimitSafety, RanksWithDifferentReservesStopTogether) {
  dist::testing::FakeWorld world(2);
  std::vector<SafetyRun> runs(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    runs[c.rank()] = RunSafety({.limit_sec = 20, .safety = true, .final_save_reserve_sec = c.rank() == 0 ? 0.0 : 6.0},
                               1.0, 0, 0, &c);
  });
  // k + 1 + 6 > 20 first at k = 14.
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs[r].stopped_at, 14) << "rank " << r;
    ASSERT_TRUE(runs[r].stop);
    EXPECT_EQ(runs[r].stop->save_reserve_sec, 6.0) << "rank " << r;
  }
}

TEST(TimeLimitSafety, StepTimeIsAgreedAsTheSlowestRanks) {
  // Rank 0 started 10 s earlier with 1 s steps; rank 1's steps take 1.5 s. Agreed:
  // max(10 + k, 1.5k) + 1.5 > 20 first at k = 9 (rank 0 with its own step time would stop at 10).
  dist::testing::FakeWorld world(2);
  std::vector<SafetyRun> runs(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    runs[c.rank()] = RunSafety({.limit_sec = 20, .safety = true}, c.rank() == 0 ? 1.0 : 1.5, 0, 0, &c,
                               c.rank() == 0 ? 10.0 : 0.0);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs[r].stopped_at, 9) << "rank " << r;
    ASSERT_TRUE(runs[r].stop);
    EXPECT_EQ(runs[r].stop->next_step_sec, 1.5) << "rank " << r;
    EXPECT_EQ(runs[r].stop->elapsed_sec, 19.0) << "rank " << r;
  }
}

TEST(TimeLimitSafety, InvalidReserve) {
  for (double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    auto created = TimeLimit::Create({.safety = true, .final_save_reserve_sec = bad});
    ASSERT_FALSE(created.ok()) << bad;
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(created.status().message()),
                HasSubstr("final_save_reserve_sec must be a finite number of seconds >= 0, got"));
  }
}

// ---- Slurm budget -----------------------------------------------------------------------------------

TimeLimitOptions SlurmOptions(std::map<std::string, std::string> env, FakeClock* clock, int64_t now_unix) {
  return {.budget = TimeLimitOptions::Budget::kSlurmJobEnd,
          .clock = clock,
          .wall_clock = [now_unix] { return absl::FromUnixSeconds(now_unix); },
          .getenv = [env](const std::string& name) -> std::optional<std::string> {
            auto it = env.find(name);
            if (it == env.end()) return std::nullopt;
            return it->second;
          }};
}

TEST(TimeLimitSlurm, BudgetIsTheTimeLeftUntilTheJobEnds) {
  FakeClock clock;
  auto limit = TimeLimit::Create(SlurmOptions({{"SLURM_JOB_END_TIME", "1700003600"}}, &clock, 1700000000));
  ASSERT_TRUE(limit.ok()) << limit.status();
  EXPECT_EQ((*limit)->budget_seconds(), 3600.0);
  Engine trainer([&](Engine&) { clock.Advance(1000); });
  trainer.On(Events::IterationCompleted(), **limit);
  std::vector<std::string> log;
  ScopedLogSink sink([&](LogSeverity, std::string_view m) { log.emplace_back(m); });
  ASSERT_TRUE(trainer.Run({.max_epochs = 1, .epoch_length = 10}).ok());
  EXPECT_EQ(trainer.state().iteration, 4);  // 4000 > 3600
  EXPECT_EQ(trainer.outcome().terminated_by, TimeLimit::kName);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_THAT(log[0], HasSubstr("Reached the time limit: 3600.000 (until SLURM_JOB_END_TIME) sec"));
}

TEST(TimeLimitSlurm, ReadsTheProcessEnvironmentByDefault) {
  ::setenv("SLURM_JOB_END_TIME", absl::StrCat(absl::ToUnixSeconds(absl::Now()) + 7200).c_str(), 1);
  auto limit = TimeLimit::Create({.budget = TimeLimitOptions::Budget::kSlurmJobEnd});
  ::unsetenv("SLURM_JOB_END_TIME");
  ASSERT_TRUE(limit.ok()) << limit.status();
  EXPECT_GT((*limit)->budget_seconds(), 7100.0);
  EXPECT_LE((*limit)->budget_seconds(), 7200.0);
}

TEST(TimeLimitSlurm, MissingEndTimeIsAClearError) {
  FakeClock clock;
  auto none = TimeLimit::Create(SlurmOptions({}, &clock, 1700000000));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("the Slurm budget needs SLURM_JOB_END_TIME (the job's end, a Unix time), which is not set "
                        "(SLURM_JOB_ID is not set either: not a Slurm job)"));
  auto old = TimeLimit::Create(SlurmOptions({{"SLURM_JOB_ID", "4242"}}, &clock, 1700000000));
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(old.status().message()), HasSubstr("SLURM_JOB_ID is '4242'"));
}

TEST(TimeLimitSlurm, MalformedEndTimesAreRejectedNamingTheValue) {
  FakeClock clock;
  for (const std::string bad : {"", " 1700003600", "1700003600 ", "1700003600\n", "+1700003600", "-1700003600",
                                "0", "1700003600.5", "1.7e9", "0x6553f100", "17OO003600", "abc", "Unlimited",
                                "99999999999999999999"}) {
    auto created = TimeLimit::Create(SlurmOptions({{"SLURM_JOB_END_TIME", bad}}, &clock, 1700000000));
    ASSERT_FALSE(created.ok()) << "'" << bad << "'";
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
    EXPECT_THAT(std::string(created.status().message()),
                HasSubstr(absl::StrCat("SLURM_JOB_END_TIME must be the job's end as a Unix time in whole seconds "
                                       "(digits only), got '",
                                       bad, "'")));
    EXPECT_EQ(TimeLimit::ParseSlurmEndTime(bad).status(), created.status());
  }
  auto ok = TimeLimit::ParseSlurmEndTime("01700003600");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(absl::ToUnixSeconds(*ok), 1700003600);
}

TEST(TimeLimitSlurm, EndAlreadyPastIsAnError) {
  FakeClock clock;
  for (int64_t now : {1700003600, 1700009999}) {
    auto created = TimeLimit::Create(SlurmOptions({{"SLURM_JOB_END_TIME", "1700003600"}}, &clock, now));
    ASSERT_FALSE(created.ok());
    EXPECT_EQ(created.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(created.status().message()),
                HasSubstr(absl::StrCat("(SLURM_JOB_END_TIME=1700003600) is already past: now is ", now)));
  }
}

TEST(TimeLimitSlurm, LimitSecIsNotUsedWithTheSlurmBudget) {
  FakeClock clock;
  TimeLimitOptions o = SlurmOptions({{"SLURM_JOB_END_TIME", "1700000100"}}, &clock, 1700000000);
  o.limit_sec = 0;
  auto created = TimeLimit::Create(std::move(o));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ((*created)->budget_seconds(), 100.0);
}

}  // namespace
}  // namespace ember
