#include "tools/data.h"

#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file_system.h"
#include "base/status_macros.h"

namespace ember::tools {
namespace {

constexpr char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

// Why `path` cannot be read as a data file (or, with `directory`, listed as a data directory),
// or OK: names the real cause (absent, the wrong kind, permission denied), not only "missing".
absl::Status Readable(const std::string& path, bool directory = false) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat", path);
  if (S_ISDIR(st.st_mode) != directory) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, directory ? " is not a directory" : " is a directory, not a data file"));
  }
  if (::access(path.c_str(), directory ? R_OK | X_OK : R_OK) != 0) return ErrnoStatus(errno, "open", path);
  return absl::OkStatus();
}

bool Exists(const std::string& path) { return FileSystem::Default()->Exists(path); }

// At most this many classes (a label is a class index; a typo such as 2000000000 must not
// allocate an output layer of that size).
constexpr int64_t kMaxClasses = 10000;

// Reads a whole file through zlib (which reads plain files transparently).
absl::StatusOr<std::string> ReadMaybeGz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int err;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      return absl::DataLossError(absl::StrCat(path, ": corrupt or truncated gzip data: ", msg));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  gzclose(f);
  return out;
}

uint32_t BigEndian32(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<unsigned char>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3]));
}

// An IDX file in the given directory, gzipped or not.
absl::StatusOr<std::string> FindIdx(const std::string& dir, const std::string& stem) {
  EMBER_RETURN_IF_ERROR(Readable(dir, /*directory=*/true));
  for (const char* suffix : {".gz", ""}) {
    std::string path = absl::StrCat(dir, "/", stem, suffix);
    if (Exists(path)) {
      EMBER_RETURN_IF_ERROR(Readable(path));
      return path;
    }
  }
  return absl::NotFoundError(absl::StrCat("no ", stem, " or ", stem, ".gz in ", dir));
}

absl::StatusOr<Dataset> LoadIdxDir(const std::string& dir, const std::string& name) {
  Dataset d;
  d.name = name;
  d.num_classes = 10;
  EMBER_ASSIGN_OR_RETURN(std::string tri, FindIdx(dir, "train-images-idx3-ubyte"));
  EMBER_ASSIGN_OR_RETURN(std::string trl, FindIdx(dir, "train-labels-idx1-ubyte"));
  EMBER_ASSIGN_OR_RETURN(std::string tei, FindIdx(dir, "t10k-images-idx3-ubyte"));
  EMBER_ASSIGN_OR_RETURN(std::string tel, FindIdx(dir, "t10k-labels-idx1-ubyte"));
  EMBER_ASSIGN_OR_RETURN(d.train.x, ReadIdxImages(tri));
  EMBER_ASSIGN_OR_RETURN(d.train.y, ReadIdxLabels(trl));
  EMBER_ASSIGN_OR_RETURN(d.val.x, ReadIdxImages(tei));
  EMBER_ASSIGN_OR_RETURN(d.val.y, ReadIdxLabels(tel));
  if (d.train.x.size(0) != d.train.y.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(tri, " has ", d.train.x.size(0), " images but ", trl,
                                                   " has ", d.train.y.size(0), " labels"));
  }
  if (d.val.x.size(0) != d.val.y.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(tei, " has ", d.val.x.size(0), " images but ", tel,
                                                   " has ", d.val.y.size(0), " labels"));
  }
  if (d.train.x.size(1) != d.val.x.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("train and test images differ in size (", d.train.x.size(1),
                                                   " vs ", d.val.x.size(1), " pixels)"));
  }
  return d;
}

Dataset Synthetic(uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t classes = 10, dims = 64;
  torch::Tensor centers = torch::randn({classes, dims}, gen, torch::kFloat32) * 0.5;
  auto make = [&](int64_t n) {
    Split s;
    s.y = torch::randint(0, classes, {n}, gen, torch::kInt64);
    s.x = centers.index_select(0, s.y) + torch::randn({n, dims}, gen, torch::kFloat32);
    return s;
  };
  Dataset d;
  d.name = "synthetic";
  d.num_classes = classes;
  d.train = make(8192);
  d.val = make(2048);
  return d;
}

}  // namespace

absl::StatusOr<torch::Tensor> ReadIdxImages(const std::string& path) {
  EMBER_ASSIGN_OR_RETURN(std::string bytes, ReadMaybeGz(path));
  if (bytes.size() < 16) return absl::DataLossError(absl::StrCat(path, ": too short for an IDX image header"));
  const uint32_t magic = BigEndian32(bytes, 0);
  if (magic != 2051) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad magic number ", magic,
                                                   " (an IDX image file starts with 2051)"));
  }
  const uint64_t n = BigEndian32(bytes, 4), rows = BigEndian32(bytes, 8), cols = BigEndian32(bytes, 12);
  if (n == 0 || rows == 0 || cols == 0 || rows * cols > (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": implausible sizes ", n, " x ", rows, " x ", cols));
  }
  if (bytes.size() != 16 + n * rows * cols) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes.size() - 16, " bytes of pixels, expected ", n, " x ",
                                            rows, " x ", cols, " = ", n * rows * cols, " (truncated?)"));
  }
  torch::Tensor pixels = torch::from_blob(bytes.data() + 16, {static_cast<int64_t>(n), static_cast<int64_t>(rows * cols)},
                                          torch::kUInt8);
  return pixels.to(torch::kFloat32).div_(255.0);
}

absl::StatusOr<torch::Tensor> ReadIdxLabels(const std::string& path) {
  EMBER_ASSIGN_OR_RETURN(std::string bytes, ReadMaybeGz(path));
  if (bytes.size() < 8) return absl::DataLossError(absl::StrCat(path, ": too short for an IDX label header"));
  const uint32_t magic = BigEndian32(bytes, 0);
  if (magic != 2049) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad magic number ", magic,
                                                   " (an IDX label file starts with 2049)"));
  }
  const uint64_t n = BigEndian32(bytes, 4);
  if (bytes.size() != 8 + n) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes.size() - 8, " labels, header says ", n, " (truncated?)"));
  }
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": the header says 0 labels; a split needs samples"));
  torch::Tensor labels = torch::from_blob(bytes.data() + 8, {static_cast<int64_t>(n)}, torch::kUInt8).to(torch::kInt64);
  if (labels.max().item<int64_t>() > 9) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": label ", labels.max().item<int64_t>(), " outside 0-9"));
  }
  return labels;
}

absl::StatusOr<Split> ReadCsv(const std::string& path) {
  EMBER_RETURN_IF_ERROR(Readable(path));
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  std::vector<float> features;
  std::vector<int64_t> labels;
  int64_t dims = -1;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(text, ',');
    int64_t label;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[0]), &label)) {
      if (line_number == 1) continue;  // a header
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": label '", fields[0],
                                                     "' is not an integer"));
    }
    if (label < 0) return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": negative label ", label));
    if (label >= kMaxClasses) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": label ", label,
                                                     " is too large: labels are class indices 0-", kMaxClasses - 1));
    }
    if (dims < 0) dims = static_cast<int64_t>(fields.size()) - 1;
    if (dims < 1 || static_cast<int64_t>(fields.size()) - 1 != dims) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": ", fields.size() - 1,
                                                     " features, expected ", dims, " (label first, then features)"));
    }
    for (size_t i = 1; i < fields.size(); ++i) {
      float v;
      if (!absl::SimpleAtof(absl::StripAsciiWhitespace(fields[i]), &v) || !std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": feature ", i, " '", fields[i],
                                                       "' is not a finite number"));
      }
      features.push_back(v);
    }
    labels.push_back(label);
  }
  if (labels.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no data rows"));
  Split s;
  const int64_t n = static_cast<int64_t>(labels.size());
  s.x = torch::from_blob(features.data(), {n, dims}, torch::kFloat32).clone();
  s.y = torch::from_blob(labels.data(), {n}, torch::kInt64).clone();
  return s;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& spec, uint64_t seed) {
  if (spec == "synthetic") return Synthetic(seed);
  if (spec == "fashion-mnist") {
    if (!Exists(absl::StrCat(kFashionDir, "/train-images-idx3-ubyte.gz"))) {
      return absl::NotFoundError(absl::StrCat("Fashion-MNIST is not in ", kFashionDir,
                                              "; install Debian's dataset-fashion-mnist (tools/setup.sh does)"));
    }
    return LoadIdxDir(kFashionDir, "fashion-mnist");
  }
  if (absl::StartsWith(spec, "mnist:")) return LoadIdxDir(spec.substr(6), spec);
  if (absl::StartsWith(spec, "csv:")) {
    EMBER_ASSIGN_OR_RETURN(Split all, ReadCsv(spec.substr(4)));
    if (all.size() < 12) return absl::InvalidArgumentError(absl::StrCat(spec, ": only ", all.size(), " rows"));
    Dataset d;
    d.name = spec;
    d.num_classes = all.y.max().item<int64_t>() + 1;
    const int64_t distinct = std::get<0>(at::_unique(all.y)).numel();
    std::fprintf(stderr, "%s: %lld rows, %lld distinct labels, %lld classes (0-%lld)\n", spec.c_str(),
                 static_cast<long long>(all.size()), static_cast<long long>(distinct),
                 static_cast<long long>(d.num_classes), static_cast<long long>(d.num_classes - 1));
    const int64_t held = std::max<int64_t>(1, all.size() / 6);
    d.train = {all.x.slice(0, 0, all.size() - held), all.y.slice(0, 0, all.size() - held)};
    d.val = {all.x.slice(0, all.size() - held), all.y.slice(0, all.size() - held)};
    return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("--data='", spec,
                                                 "': allowed: fashion-mnist, mnist:DIR, csv:PATH, synthetic"));
}

}  // namespace ember::tools
