#include "handlers/parallel/sharded_source.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"
#include "distributed/settings_agreement.h"

namespace ember {

namespace {

absl::Status Validate(const ShardedSourceOptions& o, int world) {
  if (o.global_batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedSource: global_batch must be >= 1, got ", o.global_batch));
  }
  if (o.global_batch % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ShardedSource: the global batch (", o.global_batch, ") is not divisible by the world size (", world,
        "): every rank reads the same share of each global batch; choose a global batch that is a multiple of ",
        world));
  }
  if (o.dataset_size < o.global_batch) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedSource: dataset_size (", o.dataset_size,
                                                   ") is smaller than one global batch (", o.global_batch, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardedSampler::Place> ShardedSampler::Check(const ShardedSourceOptions& o,
                                                            dist::Communicator* comm) {
  if (comm == nullptr) comm = dist::DefaultCommunicator();
  if (comm == nullptr) {
    // Alone, every rank would read the whole dataset in the same order: each sample N times.
    EMBER_RETURN_IF_ERROR(dist::CheckWorldExists("ShardedSource", "each rank would read every sample",
                                                 "its communicator"));
  }
  const int world = comm != nullptr ? comm->world_size() : 1;
  const int rank = comm != nullptr ? comm->rank() : 0;
  const absl::Status valid = Validate(o, world);
  if (world > 1) {
    // Every rank reads its share of the same order: the same options everywhere (a rank whose
    // options are invalid says so to the others).
    dist::SettingList settings;
    settings.Add("arguments", valid.ok() ? "valid" : valid.message())
        .AddInt("dataset_size", o.dataset_size)
        .AddInt("global_batch", o.global_batch)
        .Add("seed", absl::StrCat(o.seed))
        .AddBool("shuffle", o.shuffle);
    EMBER_RETURN_IF_ERROR(dist::AgreeOnSettings(*comm, "ShardedSource options", settings, absl::Seconds(300)));
  }
  EMBER_RETURN_IF_ERROR(valid);
  return Place{rank, world};
}

absl::StatusOr<std::unique_ptr<ShardedSampler>> ShardedSampler::Create(ShardedSourceOptions options,
                                                                       dist::Communicator* comm) {
  EMBER_ASSIGN_OR_RETURN(Place place, Check(options, comm));
  return std::unique_ptr<ShardedSampler>(new ShardedSampler(options, place.rank, place.world_size));
}

torch::Tensor ShardedSampler::Order(uint64_t seed, int64_t epoch, int64_t dataset_size, bool shuffle) {
  if (!shuffle) return torch::arange(dataset_size, torch::kInt64);
  // A generator of its own: the order never depends on (or disturbs) the global torch RNG.
  torch::Generator gen = at::detail::createCPUGenerator(seed * 1000003 + static_cast<uint64_t>(epoch));
  return torch::randperm(dataset_size, gen, torch::kInt64);
}

void ShardedSampler::Restart() {
  const int64_t epoch_samples = batches_per_epoch() * options_.global_batch;
  if (!(restored_ && epoch_ > 0 && consumed_ < epoch_samples)) {
    ++epoch_;
    consumed_ = 0;
  }
  restored_ = false;
  order_ = Order(options_.seed, epoch_, options_.dataset_size, options_.shuffle);
}

std::optional<torch::Tensor> ShardedSampler::NextIds() {
  if (!order_.defined()) Restart();
  if (consumed_ + options_.global_batch > batches_per_epoch() * options_.global_batch) return std::nullopt;
  const int64_t share = per_rank_batch();
  const int64_t begin = consumed_ + rank_ * share;
  torch::Tensor ids = order_.slice(0, begin, begin + share);
  consumed_ += options_.global_batch;
  if (on_batch_) on_batch_(epoch_, ids);
  return ids;
}

Value ShardedSampler::StateDict() const {
  Value d = Value::Dict();
  d.Set("epoch", epoch_);
  d.Set("consumed", consumed_);
  d.Set("dataset_size", options_.dataset_size);
  d.Set("global_batch", options_.global_batch);
  d.Set("seed", static_cast<int64_t>(options_.seed));
  d.Set("shuffle", options_.shuffle);
  return d;
}

absl::Status ShardedSampler::LoadStateDict(const Value& state) {
  if (!state.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedSource state must be a dict, got ", state.kind_name()));
  }
  auto get_int = [&](const char* key) -> absl::StatusOr<int64_t> {
    const Value* v = state.Find(key);
    if (v == nullptr) return absl::InvalidArgumentError(absl::StrCat("ShardedSource state: missing '", key, "'"));
    return v->ToInt(absl::StrCat("ShardedSource state['", key, "']"));
  };
  EMBER_ASSIGN_OR_RETURN(int64_t epoch, get_int("epoch"));
  EMBER_ASSIGN_OR_RETURN(int64_t consumed, get_int("consumed"));
  EMBER_ASSIGN_OR_RETURN(int64_t dataset_size, get_int("dataset_size"));
  EMBER_ASSIGN_OR_RETURN(int64_t global_batch, get_int("global_batch"));
  EMBER_ASSIGN_OR_RETURN(int64_t seed, get_int("seed"));
  const Value* shuffle_v = state.Find("shuffle");
  if (shuffle_v == nullptr) return absl::InvalidArgumentError("ShardedSource state: missing 'shuffle'");
  EMBER_ASSIGN_OR_RETURN(bool shuffle, shuffle_v->ToBool("ShardedSource state['shuffle']"));
  auto differs = [](const char* what, auto saved, auto now) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ShardedSource: the checkpoint was written with ", what, " ", saved, ", this run has ", now,
        ": the saved position would not describe the same sample order"));
  };
  if (dataset_size != options_.dataset_size) return differs("dataset_size", dataset_size, options_.dataset_size);
  if (global_batch != options_.global_batch) return differs("global_batch", global_batch, options_.global_batch);
  if (static_cast<uint64_t>(seed) != options_.seed) return differs("seed", seed, options_.seed);
  if (shuffle != options_.shuffle) return differs("shuffle", shuffle, options_.shuffle);
  if (epoch < 0 || consumed < 0 || consumed > batches_per_epoch() * global_batch || consumed % global_batch != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedSource state: bad position (epoch ", epoch, ", consumed ",
                                                   consumed, ") for ", batches_per_epoch(), " batches of ",
                                                   global_batch));
  }
  epoch_ = epoch;
  consumed_ = consumed;
  restored_ = true;
  order_ = torch::Tensor();
  return absl::OkStatus();
}

}  // namespace ember
