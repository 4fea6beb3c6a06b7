// File: tests/distributed/settings_agreement_scenarios.h
//
// The settings-agreement scenarios that run both on FakeWorld (settings_agreement_test) and under
// real mpirun (settings_agreement_mpi_test): each rank's settings, and the exact outcome every
// rank must see, written out by hand for 2 and 4 ranks.
#ifndef EMBER_TESTS_DISTRIBUTED_SETTINGS_AGREEMENT_SCENARIOS_H_
#define EMBER_TESTS_DISTRIBUTED_SETTINGS_AGREEMENT_SCENARIOS_H_

#include <string>
#include <vector>

#include "distributed/settings_agreement.h"

namespace ember::dist::testing {

std::vector<std::string> ScenarioNames();
// Rank `rank`'s context and settings in scenario `name`.
std::string ScenarioContext(const std::string& name, int rank);
SettingList ScenarioSettings(const std::string& name, int rank, int world);
// The message every rank's error must carry (kInvalidArgument), or "" when the ranks agree.
std::string ScenarioExpected(const std::string& name, int world);

}  // namespace ember::dist::testing

#endif  // EMBER_TESTS_DISTRIBUTED_SETTINGS_AGREEMENT_SCENARIOS_H_
