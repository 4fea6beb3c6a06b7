// File: handlers/parallel/sharded_source.h
//
// ShardedSource: this rank's share of a dataset's global batches, in an order that does not
// depend on the number of ranks, and whose position is checkpointed, so that a run resumes at the
// next global batch (not at the start of the epoch) on the same or on another world size.
//
//   - The order of epoch e (1, 2, ...) is a permutation of the sample ids [0, dataset_size) drawn
//     from (seed, e) alone (or the identity, shuffle = false).
//   - A global batch is `global_batch` consecutive ids of that order; an epoch has
//     floor(dataset_size / global_batch) of them (the rest of the order is not used that epoch;
//     with shuffle, other samples are left out each epoch).
//   - Rank r of M reads ids [r * global_batch / M, (r + 1) * global_batch / M) of each global
//     batch: global_batch must be divisible by M (Create says so, naming both numbers).
//   - With several ranks, Create first agrees that every rank has the same dataset_size,
//     global_batch, seed and shuffle, and valid options (dist::AgreeOnSettings, "ShardedSource
//     options": one small collective; call Create on every rank): a mismatch fails Create on every
//     rank naming each option and each rank's value, and poisons the communicator.
//   - Its state_dict is {"epoch", "consumed" (samples of the epoch's order consumed by all ranks),
//     "dataset_size", "global_batch", "seed", "shuffle"}. Loaded, the next pass continues the
//     saved epoch at the saved position (or starts the next epoch when the saved one was
//     finished). A state from another dataset size, global batch, seed or shuffle is refused
//     (kFailedPrecondition naming both values): it would not describe the same order. The world
//     size is not part of it: a checkpoint written on N ranks resumes on M.
//
// With the Engine: each Restart() begins the next pass (the engine calls it when a run starts and
// when the data is exhausted), so a checkpoint taken at ITERATION_COMPLETED of iteration i of an
// epoch records consumed = i * global_batch, which is what the engine's own resume position
// (iteration % epoch_length) expects. `on_batch`, when set, sees (epoch, this rank's ids) of each
// batch as it is read: for a sample ledger.
//
// Thread-compatible. The ids are CPU int64 tensors; `make_batch` builds a Batch from them.
//
// Example:
//   auto train = ember::ShardedSource<Batch>::Create(
//       {.dataset_size = x.size(0), .global_batch = 256, .seed = 1},
//       [&](const torch::Tensor& ids) { return Batch{x.index_select(0, ids), y.index_select(0, ids)}; });
//   // checkpoint it with the model: {"data", **train}; run it: trainer.Run(**train, ...)
#ifndef EMBER_HANDLERS_SHARDED_SOURCE_H_
#define EMBER_HANDLERS_SHARDED_SOURCE_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "distributed/communicator.h"
#include "engine/engine.h"
#include "handlers/serialization/value.h"
#include "handlers/checkpoint/stateful.h"

namespace ember {

struct ShardedSourceOptions {
  int64_t dataset_size = 0;
  int64_t global_batch = 0;
  uint64_t seed = 0;
  bool shuffle = true;
};

// The order and position, without the batches (ShardedSource below adds them).
class ShardedSampler : public Stateful {
 public:
  // `comm` gives the rank and the world size (default: the process's default communicator).
  static absl::StatusOr<std::unique_ptr<ShardedSampler>> Create(ShardedSourceOptions options,
                                                                dist::Communicator* comm = nullptr);

  // The ids of epoch `epoch`, in order: a function of (seed, epoch) alone.
  static torch::Tensor Order(uint64_t seed, int64_t epoch, int64_t dataset_size, bool shuffle);

  int64_t batches_per_epoch() const { return options_.dataset_size / options_.global_batch; }
  int64_t per_rank_batch() const { return options_.global_batch / world_size_; }
  int64_t epoch() const { return epoch_; }        // the epoch being read (0: none yet)
  int64_t consumed() const { return consumed_; }  // of that epoch, by all ranks
  const ShardedSourceOptions& options() const { return options_; }

  // Begins the next pass: the restored epoch where it stopped, else the next epoch.
  void Restart();
  // This rank's ids of the next global batch, or nullopt at the end of the epoch.
  std::optional<torch::Tensor> NextIds();
  void set_on_batch(std::function<void(int64_t epoch, const torch::Tensor& ids)> f) { on_batch_ = std::move(f); }

  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 protected:
  struct Place {
    int rank;
    int world_size;
  };
  // Validates the options against the world of `comm` (default: the default communicator).
  static absl::StatusOr<Place> Check(const ShardedSourceOptions& options, dist::Communicator* comm);
  ShardedSampler(ShardedSourceOptions options, int rank, int world_size)
      : options_(options), rank_(rank), world_size_(world_size) {}

 private:
  ShardedSourceOptions options_;
  int rank_;
  int world_size_;
  int64_t epoch_ = 0;
  int64_t consumed_ = 0;
  bool restored_ = false;  // a loaded position waits for the next Restart()
  torch::Tensor order_;
  std::function<void(int64_t, const torch::Tensor&)> on_batch_;
};

template <typename Batch>
class ShardedSource final : public ShardedSampler, public DataSource<Batch> {
 public:
  using MakeBatch = std::function<Batch(const torch::Tensor& ids)>;

  static absl::StatusOr<std::unique_ptr<ShardedSource>> Create(ShardedSourceOptions options, MakeBatch make_batch,
                                                              dist::Communicator* comm = nullptr) {
    absl::StatusOr<Place> place = Check(options, comm);
    if (!place.ok()) return place.status();
    if (!make_batch) return absl::InvalidArgumentError("ShardedSource: make_batch is empty");
    return std::unique_ptr<ShardedSource>(
        new ShardedSource(options, place->rank, place->world_size, std::move(make_batch)));
  }

  std::optional<int64_t> size() const override { return batches_per_epoch(); }
  void Restart() override { ShardedSampler::Restart(); }
  const Batch* Next() override {
    std::optional<torch::Tensor> ids = NextIds();
    if (!ids) return nullptr;
    current_ = make_(*ids);
    return &current_;
  }

 private:
  ShardedSource(ShardedSourceOptions options, int rank, int world, MakeBatch make)
      : ShardedSampler(options, rank, world), make_(std::move(make)) {}
  MakeBatch make_;
  Batch current_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_SHARDED_SOURCE_H_
