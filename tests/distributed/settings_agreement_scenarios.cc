#include "tests/distributed/settings_agreement_scenarios.h"

#include <string>
#include <vector>

namespace ember::dist::testing {

std::vector<std::string> ScenarioNames() {
  return {"same", "lr", "two_last", "extra", "order", "context", "long", "every", "empty_value"};
}

std::string ScenarioContext(const std::string& name, int rank) {
  if (name == "context" && rank == 1) return "Engine::Run";
  return "trainer flags";
}

SettingList ScenarioSettings(const std::string& name, int rank, int world) {
  const bool last = rank == world - 1;
  SettingList s;
  if (name == "order" && rank == 1) {
    s.AddDouble("--lr", 0.1).Add("--data", "/data/train.csv");
  } else {
    s.Add("--data", name == "two_last" && last ? "/data/other.csv" : "/data/train.csv");
    s.AddDouble("--lr", name == "lr" && rank == 1 ? 0.2 : 0.1);
  }
  s.AddInt("--seed", name == "two_last" && last ? 7 : (name == "every" ? rank : 1));
  s.AddBool("--async_save", false);
  if (name == "extra" && last) s.AddBool("--eval_only", true);
  if (name == "long") {
    std::string v(300, 'a');
    if (rank == 1) v[250] = 'b';
    s.Add("--model", v);
  }
  if (name == "empty_value") s.Add("--output_dir", rank == 0 ? "" : "out");
  return s;
}

std::string ScenarioExpected(const std::string& name, int world) {
  const bool two = world == 2;
  if (name == "same") return "";
  if (name == "lr") {
    return two ? "trainer flags differ across ranks: --lr is 0.1 on rank 0, 0.2 on rank 1"
               : "trainer flags differ across ranks: --lr is 0.1 on ranks 0,2,3, 0.2 on rank 1";
  }
  if (name == "two_last") {
    return two ? "trainer flags differ across ranks: --data is /data/train.csv on rank 0, /data/other.csv on "
                 "rank 1; --seed is 1 on rank 0, 7 on rank 1"
               : "trainer flags differ across ranks: --data is /data/train.csv on ranks 0-2, /data/other.csv on "
                 "rank 3; --seed is 1 on ranks 0-2, 7 on rank 3";
  }
  if (name == "extra") {
    return two ? "trainer flags differ across ranks: --eval_only is (absent) on rank 0, true on rank 1"
               : "trainer flags differ across ranks: --eval_only is (absent) on ranks 0-2, true on rank 3";
  }
  if (name == "order") {
    return two ? "trainer flags differ across ranks: the settings are in another order: --data --lr --seed "
                 "--async_save on rank 0, --lr --data --seed --async_save on rank 1"
               : "trainer flags differ across ranks: the settings are in another order: --data --lr --seed "
                 "--async_save on ranks 0,2,3, --lr --data --seed --async_save on rank 1";
  }
  if (name == "context") {
    return two ? "settings agreements differ across ranks (the ranks are not at the same point of the "
                 "program): \"trainer flags\" on rank 0, \"Engine::Run\" on rank 1"
               : "settings agreements differ across ranks (the ranks are not at the same point of the "
                 "program): \"trainer flags\" on ranks 0,2,3, \"Engine::Run\" on rank 1";
  }
  if (name == "long") {
    const std::string a(200, 'a');
    // The digests of the two 300-character values (FNV-1a + SplitMix64, first 8 hex digits) are
    // not written here: the test checks the prefix and the shape around them.
    return two ? "trainer flags differ across ranks: --model is " + a + "...[300 chars, digest "
               : "trainer flags differ across ranks: --model is " + a + "...[300 chars, digest ";
  }
  if (name == "every") {
    return two ? "trainer flags differ across ranks: --seed is 0 on rank 0, 1 on rank 1"
               : "trainer flags differ across ranks: --seed is 0 on rank 0, 1 on rank 1, 2 on rank 2, 3 on "
                 "rank 3";
  }
  if (name == "empty_value") {
    return two ? "trainer flags differ across ranks: --output_dir is \"\" on rank 0, out on rank 1"
               : "trainer flags differ across ranks: --output_dir is \"\" on rank 0, out on ranks 1-3";
  }
  return "unknown scenario " + name;
}

}  // namespace ember::dist::testing
