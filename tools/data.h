// File: tools/data.h
//
// The trainer's datasets: IDX files (MNIST / Fashion-MNIST layout, gzipped or not, read through
// zlib), CSV files (label first, then features), and a seeded synthetic problem generated in
// memory. Every loader validates what it reads and reports the file and the problem (bad magic
// number, truncated data, counts that disagree, a malformed CSV line with its number).
//
//   --data=fashion-mnist        /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
//   --data=mnist:DIR            DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
//   --data=csv:PATH             PATH (train; the last 1/6 is held out for validation)
//   --data=synthetic            seeded blobs, 10 classes, 64 features
//
// Thread-compatible; the tensors are CPU float32 features (scaled to [0, 1] for images) and int64
// labels.
#ifndef EMBER_TOOLS_DATA_H_
#define EMBER_TOOLS_DATA_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ember::tools {

struct Split {
  torch::Tensor x;  // [N, D] float32
  torch::Tensor y;  // [N] int64
  int64_t size() const { return x.defined() ? x.size(0) : 0; }
};

struct Dataset {
  std::string name;
  Split train;
  Split val;
  int64_t num_classes = 0;
};

absl::StatusOr<Dataset> LoadDataset(const std::string& spec, uint64_t seed);

// IDX readers (exposed for tests).
absl::StatusOr<torch::Tensor> ReadIdxImages(const std::string& path);  // [N, rows*cols] float32
absl::StatusOr<torch::Tensor> ReadIdxLabels(const std::string& path);  // [N] int64
absl::StatusOr<Split> ReadCsv(const std::string& path);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_DATA_H_
