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

// The same with every object's keys in the recorded order (nlohmann::json sorts them), for tests
// of ignite's key order; a missing scenario is a test failure, and null is returned.
nlohmann::ordered_json GoldenOrdered(const std::string& name);

// Structural comparison of a C++ result with a recorded one, as gtest failures that name the JSON
// path (e.g. "rows[3].lr"): numbers exactly (rel == 0) or within the relative tolerance `rel`;
// arrays element by element; objects key by key, both ways. Two recorded forms stand for Python
// objects that Ember stores as data: "<object C>" (an object ignite pickles whole, e.g. a
// scheduler adapter or the EMA warm-up lambda) matches any object, and a key whose recorded value
// is "<bound method ...>" (ReduceLROnPlateau's _reduce_lr) may be absent.
void ExpectJsonNear(const nlohmann::json& actual, const nlohmann::json& expected, double rel,
                    const std::string& path);

}  // namespace ember::testing

#endif  // EMBER_TESTS_CONFORMANCE_GOLDEN_H_
