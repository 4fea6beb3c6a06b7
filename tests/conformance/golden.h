// File: tests/conformance/golden.h
//
// Loads one scenario of golden-public.jsonl or golden-training-public.jsonl (recorded on
// pytorch-ignite v0.5.3; copies of shared/conformance's) by name.
#ifndef EMBER_TESTS_CONFORMANCE_GOLDEN_H_
#define EMBER_TESTS_CONFORMANCE_GOLDEN_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace ember::testing {

// {"scenario", "inputs", "expected"} of the named scenario; NotFound if it is not in the file.
absl::StatusOr<nlohmann::json> LoadGoldenScenario(const std::string& name);

// The same inside a test: a missing scenario is a test failure, and an empty JSON is returned.
nlohmann::json Golden(const std::string& name);

}  // namespace ember::testing

#endif  // EMBER_TESTS_CONFORMANCE_GOLDEN_H_
