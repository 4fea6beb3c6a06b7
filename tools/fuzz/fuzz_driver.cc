// A short, deterministic fuzz run for bazel test (gcc, no libFuzzer): every file of the seed
// corpus, then mutations of them (bit flips, byte changes, truncations, splices, duplications)
// from a fixed seed, each through LLVMFuzzerTestOneInput. The long, coverage-guided run uses
// libFuzzer: tools/fuzz/run_libfuzzer.sh.
//   fuzz_driver CORPUS_DIR ITERATIONS
#include <dirent.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR ITERATIONS\n", argv[0]);
    return 2;
  }
  std::vector<std::string> corpus;
  if (DIR* d = opendir(argv[1])) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(std::string(argv[1]) + "/" + e->d_name, std::ios::binary);
      std::stringstream s;
      s << in.rdbuf();
      corpus.push_back(s.str());
    }
    closedir(d);
  }
  if (corpus.empty()) corpus.push_back("");
  for (const std::string& c : corpus) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  std::mt19937_64 rng(12345);
  const long iterations = std::atol(argv[2]);
  for (long i = 0; i < iterations; ++i) {
    std::string s = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t at = s.empty() ? 0 : rng() % s.size();
      switch (rng() % 6) {
        case 0: if (!s.empty()) s[at] ^= static_cast<char>(1 << (rng() % 8)); break;
        case 1: if (!s.empty()) s[at] = static_cast<char>(rng()); break;
        case 2: s.resize(s.empty() ? 0 : rng() % s.size()); break;
        case 3: s.insert(at, 1 + rng() % 8, static_cast<char>(rng())); break;
        case 4: { const std::string& o = corpus[rng() % corpus.size()]; if (!o.empty()) s += o.substr(rng() % o.size(), 64); break; }
        case 5: if (!s.empty()) s.insert(at, s.substr(at, 1 + rng() % 16)); break;
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  std::printf("%zu corpus files and %ld mutations: no crash\n", corpus.size(), iterations);
  return 0;
}
