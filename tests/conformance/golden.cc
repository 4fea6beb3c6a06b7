#include "tests/conformance/golden.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ember::testing {

absl::StatusOr<nlohmann::json> LoadGoldenScenario(const std::string& name) {
  // The engine and checkpoint scenarios, then the training-loop handlers' (schedulers, ...).
  for (const std::string path : {"tests/conformance/golden-public.jsonl",
                                 "tests/conformance/golden-training-public.jsonl"}) {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    std::string line;
    int line_number = 0;
    while (std::getline(in, line)) {
      ++line_number;
      if (line.empty()) continue;
      nlohmann::json scenario = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (scenario.is_discarded()) {
        return absl::DataLossError(absl::StrCat(path, ":", line_number, ": not valid JSON"));
      }
      if (scenario.value("scenario", "") == name) return scenario;
    }
  }
  return absl::NotFoundError(absl::StrCat("scenario '", name,
                                          "' not in tests/conformance/golden-public.jsonl nor "
                                          "golden-training-public.jsonl"));
}

nlohmann::json Golden(const std::string& name) {
  absl::StatusOr<nlohmann::json> scenario = LoadGoldenScenario(name);
  EXPECT_TRUE(scenario.ok()) << scenario.status();
  return scenario.ok() ? *scenario : nlohmann::json();
}

nlohmann::ordered_json GoldenOrdered(const std::string& name) {
  for (const std::string path : {"tests/conformance/golden-public.jsonl",
                                 "tests/conformance/golden-training-public.jsonl"}) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("scenario", "") == name) return j;
    }
  }
  ADD_FAILURE() << "scenario " << name << " not found";
  return nullptr;
}

namespace {

bool Near(double a, double b, double rel) {
  if (a == b) return true;
  return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b));
}

bool StartsWith(const nlohmann::json& j, const char* prefix) {
  return j.is_string() && j.get<std::string>().rfind(prefix, 0) == 0;
}

}  // namespace

void ExpectJsonNear(const nlohmann::json& actual, const nlohmann::json& expected, double rel,
                    const std::string& path) {
  if (StartsWith(expected, "<object ")) {
    EXPECT_TRUE(actual.is_object()) << path << ": " << actual;
    return;
  }
  if (expected.is_number() && actual.is_number()) {
    EXPECT_TRUE(Near(actual.get<double>(), expected.get<double>(), rel))
        << path << ": " << actual << " vs expected " << expected;
    return;
  }
  if (expected.is_array() && actual.is_array()) {
    ASSERT_EQ(actual.size(), expected.size()) << path << ": " << actual << " vs " << expected;
    for (size_t i = 0; i < expected.size(); ++i) {
      ExpectJsonNear(actual[i], expected[i], rel, absl::StrCat(path, "[", i, "]"));
    }
    return;
  }
  if (expected.is_object() && actual.is_object()) {
    for (auto it = expected.begin(); it != expected.end(); ++it) {
      if (StartsWith(it.value(), "<bound method ") && !actual.contains(it.key())) continue;
      ASSERT_TRUE(actual.contains(it.key())) << path << ": missing key " << it.key();
      ExpectJsonNear(actual[it.key()], it.value(), rel, absl::StrCat(path, ".", it.key()));
    }
    for (auto it = actual.begin(); it != actual.end(); ++it) {
      EXPECT_TRUE(expected.contains(it.key())) << path << ": unexpected key " << it.key();
    }
    return;
  }
  EXPECT_EQ(actual, expected) << path;
}

}  // namespace ember::testing
