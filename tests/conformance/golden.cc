#include "tests/conformance/golden.h"

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

}  // namespace ember::testing
