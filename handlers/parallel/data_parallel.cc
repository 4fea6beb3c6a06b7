#include "handlers/parallel/data_parallel.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"
#include "distributed/settings_agreement.h"
#include "distributed/single_process_communicator.h"
#include "handlers/checkpoint/snapshot_fence.h"

namespace ember {
namespace {

absl::StatusOr<dist::DType> ToDType(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return dist::DType::kFloat32;
    case torch::kFloat64:
      return dist::DType::kFloat64;
    case torch::kFloat16:
      return dist::DType::kFloat16;
    case torch::kBFloat16:
      return dist::DType::kBFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat("DataParallel: a parameter of dtype ", c10::toString(t),
                                                     " requires a gradient; allowed: float32, float64, float16, bfloat16"));
  }
}

}  // namespace

// Runs after a parameter's AccumulateGrad node has written its gradient.
class DataParallel::ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(DataParallel* owner, size_t param) : owner_(owner), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    owner_->OnGradientReady(param_);
    return outputs;
  }

 private:
  DataParallel* owner_;
  size_t param_;
};

DataParallel::DataParallel(torch::nn::Module& module, DataParallelOptions options)
    : comm_(options.comm != nullptr ? options.comm : dist::DefaultCommunicator()),
      options_(options),
      owner_(std::this_thread::get_id()) {
  if (comm_ == nullptr) {
    // Alone, each rank would step on its own gradients: the replicas would drift apart while the
    // job looked healthy (and rank 0 would save its own model under an averaged score).
    status_ = dist::CheckWorldExists("DataParallel", "the gradients would be averaged over this rank alone", ".comm");
    if (!status_.ok()) {
      without_world_ = true;
      return;
    }
    if (options_.reduce_alone) {
      // This process is the whole job, and the bucket path is asked for: it reduces through a
      // communicator of one rank.
      own_comm_ = std::make_unique<dist::SingleProcessCommunicator>();
      comm_ = own_comm_.get();
    }
  }
  if (options_.bucket_bytes < 1) {
    status_ = absl::InvalidArgumentError(absl::StrCat("DataParallel: bucket_bytes = ", options_.bucket_bytes,
                                                      "; allowed: >= 1 (bytes of gradients per all-reduce)"));
    return;
  }
  for (const auto& p : module.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    names_.push_back(p.key());
    params_.push_back(p.value());
  }
  // Buckets in reverse parameter order (backward's order), one device and dtype per bucket.
  const bool device_buffers = comm_ != nullptr && comm_->device_buffers();
  std::map<std::pair<std::string, torch::ScalarType>, size_t> open;  // (device, dtype) -> bucket
  std::vector<int64_t> used;
  bucket_of_.assign(params_.size(), 0);
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    if (absl::StatusOr<dist::DType> t = ToDType(p.scalar_type()); !t.ok()) {
      status_ = t.status();
      return;
    }
    const auto key = std::make_pair(p.device().str(), p.scalar_type());
    const int64_t bytes = p.numel() * p.element_size();
    auto it = open.find(key);
    if (it == open.end() || (used[it->second] > 0 && used[it->second] + bytes > options_.bucket_bytes)) {
      buckets_.emplace_back();
      used.push_back(0);
      it = open.insert_or_assign(key, buckets_.size() - 1).first;
    }
    buckets_[it->second].params.push_back(k);
    used[it->second] += bytes;
    bucket_of_[k] = it->second;
  }
  for (Bucket& b : buckets_) {
    const torch::Tensor& first = params_[b.params.front()];
    int64_t n = 0;
    for (size_t i : b.params) n += params_[i].numel();
    b.numel = n;
    b.staged = !first.device().is_cpu() && !device_buffers;
    b.flat = torch::empty({n}, first.options().device(b.staged ? torch::Device(torch::kCPU) : first.device())
                                   .requires_grad(false));
    b.unready = static_cast<int>(b.params.size());
  }
  ready_.assign(params_.size(), false);
  status_ = Broadcast(module);
  if (!status_.ok() || !reduces() || !options_.overlap) return;
  // The hooks may issue collectives themselves when they run on this thread (autograd runs CPU
  // work on the caller's thread) or when the backend is thread-agnostic while this thread waits
  // (NCCL); otherwise they only mark readiness and AllReduceGradients starts the buckets.
  hooks_may_start_ = true;
  for (size_t i = 0; i < params_.size(); ++i) {
    std::shared_ptr<torch::autograd::Node> acc = torch::autograd::impl::grad_accumulator(params_[i]);
    const uintptr_t key = acc->add_post_hook(std::make_unique<ReadyHook>(this, i));
    hooks_.emplace_back(std::move(acc), key);
  }
}

DataParallel::~DataParallel() {
  for (auto& [node, key] : hooks_) node->del_post_hook(key);
  // Waits for what is in flight; a bucket given up on stays with the transport.
  for (Bucket& b : buckets_) {
    if (b.pending == nullptr) continue;
    if (!b.pending->Wait().ok()) Abandon(b);
    b.pending.reset();
  }
}

// A bucket whose all-reduce was given up on (its wait failed) may still be written by the
// transport (communicator.h): its memory goes to dist::AbandonToTransport, and the bucket is left
// empty (nothing is allocated on the failure path; the communicator is poisoned, so no step
// reduces again, and Start() would size it afresh).
void DataParallel::Abandon(Bucket& bucket) {
  dist::AbandonToTransport(std::make_shared<torch::Tensor>(bucket.flat));
  bucket.flat = torch::empty({0}, bucket.flat.options());
}

std::string DataParallel::Describe(size_t bucket) const {
  std::vector<std::string> names;
  for (size_t i : buckets_[bucket].params) names.push_back(names_[i]);
  return absl::StrCat("DataParallel: step ", step_ + 1, ": gradient all-reduce of bucket ", bucket, " of ",
                      buckets_.size(), " (", absl::StrJoin(names, ", "), ")");
}

absl::Status DataParallel::Broadcast(torch::nn::Module& module) {
  if (world_size() == 1) return absl::OkStatus();
  // First, once: every rank holds the same parameters and buffers (names, shapes, dtypes) and
  // options, so that the broadcast below and the buckets of every step match.
  dist::SettingList settings;
  settings.AddInt("bucket_bytes", options_.bucket_bytes).AddBool("overlap", options_.overlap);
  const auto describe = [](const torch::Tensor& t) {
    return absl::StrCat(c10::toString(t.scalar_type()), "[", absl::StrJoin(t.sizes(), ","), "]",
                        t.requires_grad() ? "" : " (no grad)");
  };
  for (const auto& p : module.named_parameters()) settings.Add(absl::StrCat("parameter ", p.key()), describe(p.value()));
  for (const auto& b : module.named_buffers()) settings.Add(absl::StrCat("buffer ", b.key()), describe(b.value()));
  EMBER_RETURN_IF_ERROR(dist::AgreeOnSettings(*comm_, "DataParallel parameters", settings, options_.deadline));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> state;
  for (const auto& p : module.named_parameters()) state.push_back(p.value());
  for (const auto& b : module.named_buffers()) state.push_back(b.value());
  std::string bytes;
  for (const torch::Tensor& t : state) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    bytes.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  const size_t expected = bytes.size();
  EMBER_RETURN_IF_ERROR(comm_->Broadcast(bytes, 0, absl::Now() + options_.deadline));
  if (bytes.size() != expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        "DataParallel: rank 0's module has ", bytes.size(), " bytes of parameters and buffers, this rank's ",
        expected, ": every rank must construct the same model"));
  }
  size_t at = 0;
  for (torch::Tensor& t : state) {
    const size_t n = t.numel() * t.element_size();
    torch::Tensor src = torch::from_blob(bytes.data() + at, t.sizes(), t.options().device(torch::kCPU));
    t.copy_(src);
    at += n;
  }
  return absl::OkStatus();
}

void DataParallel::OnGradientReady(size_t param) {
  if (!hook_error_.ok()) return;
  const size_t b = bucket_of_[param];
  if (ready_[param]) {
    if (b < next_) {
      hook_error_ = absl::FailedPreconditionError(absl::StrCat(
          "DataParallel: step ", step_ + 1, ": parameter ", names_[param],
          " got a second gradient after its bucket was sent (two backward passes before AllReduceGradients?); "
          "to accumulate gradients over several backward passes, construct DataParallel with overlap = false"));
    }
    return;
  }
  ready_[param] = true;
  --buckets_[b].unready;
  const bool may_start =
      hooks_may_start_ && (std::this_thread::get_id() == owner_ || comm_->backend() == "nccl");
  if (!may_start) return;
  // The last bucket is AllReduceGradients' (it may carry the engine's agreement).
  while (next_ + 1 < buckets_.size() && buckets_[next_].unready == 0) {
    if (absl::Status s = Start(next_++); !s.ok()) {
      hook_error_ = s;
      return;
    }
    ++started_early_;
  }
}

dist::AgreementId DataParallel::StepId() const {
  dist::AgreementId id;
  id.event = dist::AgreementId::kNoEvent;
  id.iteration = step_ + 1;
  static const uint64_t kLayout = dist::LayoutDigest(dist::kLayoutSeed, "DataParallel step without an engine", {});
  id.layout = kLayout;
  id.describe = [this] {
    return absl::StrCat("reduces the gradients of step ", step_ + 1, " without an engine's agreement");
  };
  return id;
}

absl::Status DataParallel::HandBackAgreement(Engine* engine, const Bucket& bucket, size_t n) {
  // Every rank's bytes, summed with zeros: each slot holds exactly one rank's byte.
  const int world = comm_->world_size();
  torch::Tensor slots = bucket.flat.slice(0, bucket.numel).to(torch::kCPU, torch::kFloat64).contiguous();
  const double* in = slots.data_ptr<double>();
  std::vector<double> gathered(n * static_cast<size_t>(world));
  for (size_t v = 0; v < gathered.size(); ++v) {
    unsigned char bytes[8];
    for (int k = 0; k < 8; ++k) {
      const double x = in[v * 8 + k];
      if (!(x >= 0 && x <= 255 && x == static_cast<double>(static_cast<int>(x)))) {
        return absl::InternalError(absl::StrCat(Describe(buckets_.size() - 1), ": the carried agreement's slot ",
                                                v * 8 + k, " reduced to ", x,
                                                ", not a byte: did another rank carry a different number of values?"));
      }
      bytes[k] = static_cast<unsigned char>(x);
    }
    std::memcpy(&gathered[v], bytes, 8);
  }
  if (engine != nullptr) return engine->CarryAgreement(gathered);
  return own_->CheckGathered(gathered, StepId(), absl::Now() + options_.deadline);
}

absl::Status DataParallel::Start(size_t b, absl::Span<const double> carry) {
  torch::NoGradGuard no_grad;
  Bucket& bucket = buckets_[b];
  const int world = comm_->world_size();
  const int64_t carry_slots = static_cast<int64_t>(carry.size()) * world * 8;
  if (bucket.flat.numel() != bucket.numel + carry_slots) {
    // Room for every rank's agreement bytes after the gradients (the number of values is fixed by
    // the engine's handlers, so this happens once).
    bucket.flat = torch::empty({bucket.numel + carry_slots}, bucket.flat.options());
  }
  if (carry_slots > 0) {
    // This rank's bytes in its own slots; every other rank leaves them zero, so the SUM is the
    // all-gather.
    torch::Tensor slots = torch::zeros({carry_slots}, torch::kFloat32);
    float* out = slots.data_ptr<float>() + static_cast<int64_t>(comm_->rank()) * static_cast<int64_t>(carry.size()) * 8;
    for (size_t i = 0; i < carry.size(); ++i) {
      unsigned char bytes[8];
      std::memcpy(bytes, &carry[i], 8);
      for (int k = 0; k < 8; ++k) out[i * 8 + k] = static_cast<float>(bytes[k]);
    }
    bucket.flat.slice(0, bucket.numel).copy_(slots);
  }
  int64_t at = 0;
  for (size_t i : bucket.params) {
    const int64_t n = params_[i].numel();
    const torch::Tensor& g = params_[i].grad();
    if (g.defined()) {
      bucket.flat.slice(0, at, at + n).copy_(g.reshape({-1}));
    } else {
      bucket.flat.slice(0, at, at + n).zero_();
    }
    at += n;
  }
  if (bucket.staged) ++staged_;
  dist::Buffer buffer{bucket.flat.data_ptr(), *ToDType(bucket.flat.scalar_type()), static_cast<size_t>(bucket.flat.numel()),
                      bucket.flat.device().is_cpu() ? dist::Buffer::kHost : bucket.flat.device().index()};
  absl::StatusOr<std::unique_ptr<dist::Pending>> p =
      comm_->StartAllReduce(buffer, dist::ReduceOp::kSum, absl::Now() + options_.deadline);
  if (!p.ok()) return absl::Status(p.status().code(), absl::StrCat(Describe(b), ": ", p.status().message()));
  bucket.pending = *std::move(p);
  return absl::OkStatus();
}

absl::Status DataParallel::AllReduceGradients() { return Reduce(nullptr, nullptr); }

absl::Status DataParallel::AllReduceGradients(Engine& engine, const std::any& step_output) {
  return Reduce(&engine, &step_output);
}

absl::Status DataParallel::Reduce(Engine* engine, const std::any* step_output) {
  // The optimizer step follows: a background checkpoint snapshot must have finished copying.
  struct Fence {
    ~Fence() { WaitForSnapshots(); }
  } fence;
  if (without_world_) return status_;  // one rank of several, alone: never a silent success
  EMBER_RETURN_IF_ERROR(status_);
  if (!reduces()) return absl::OkStatus();
  torch::NoGradGuard no_grad;
  absl::Status result = hook_error_;
  // The buckets backward did not complete (parameters without a gradient this step), in order,
  // then the last one, with the engine's agreement when it agrees through this communicator.
  const size_t last = buckets_.size() - 1;
  while (result.ok() && next_ < last) result = Start(next_++);
  absl::Span<const double> carry;
  if (engine != nullptr && &engine->communicator() != comm_) engine = nullptr;
  if (result.ok() && engine != nullptr) {
    absl::StatusOr<absl::Span<const double>> mine = engine->ProposeAhead(*step_output);
    if (mine.ok()) {
      carry = *mine;
    } else {
      result = mine.status();
    }
  } else if (result.ok() && comm_->world_size() > 1) {
    // The step's own identity, in the same slots (the last bucket has one size on every rank).
    if (own_ == nullptr) own_ = std::make_unique<dist::Consensus>(comm_);
    own_slots_.resize(dist::kAgreementSlots);
    own_->Pack(StepId(), {}, absl::MakeSpan(own_slots_));
    carry = own_slots_;
  }
  if (result.ok()) {
    result = Start(last, carry);
    ++next_;
  }
  const double scale = 1.0 / static_cast<double>(comm_->world_size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    if (bucket.pending == nullptr) continue;
    absl::Status s = bucket.pending->Wait();
    bucket.pending.reset();
    if (!s.ok()) {
      if (result.ok()) result = absl::Status(s.code(), absl::StrCat(Describe(b), ": ", s.message()));
      Abandon(bucket);
      continue;
    }
    if (!result.ok()) continue;
    ++reduced_;
    if (b == last && !carry.empty()) {
      result = HandBackAgreement(engine, bucket, carry.size());
      if (!result.ok()) continue;
      if (engine != nullptr) ++carried_;
    }
    bucket.flat.slice(0, 0, bucket.numel).mul_(scale);
    int64_t at = 0;
    for (size_t i : bucket.params) {
      const int64_t n = params_[i].numel();
      torch::Tensor averaged = bucket.flat.slice(0, at, at + n).view_as(params_[i]);
      if (params_[i].grad().defined()) {
        params_[i].mutable_grad().copy_(averaged);
      } else if (comm_->world_size() > 1) {
        // Another rank may have one: this rank takes the average like every other.
        params_[i].mutable_grad() = averaged.to(params_[i].options()).clone();
      }
      // Alone (reduce_alone), a parameter without a gradient keeps none, as without reducing
      // and as in PyTorch DDP (an optimizer skips it; a zero gradient would still move it
      // through momentum or weight decay).
      at += n;
    }
  }
  // The next step starts afresh.
  next_ = 0;
  std::fill(ready_.begin(), ready_.end(), false);
  for (Bucket& bucket : buckets_) bucket.unready = static_cast<int>(bucket.params.size());
  hook_error_ = absl::OkStatus();
  if (result.ok()) {
    ++step_;
  } else {
    // A local error (a second gradient, a failed proposal) left buckets the peers wait for:
    // tell them (a failed collective has poisoned the communicator already; the first error stays).
    comm_->Fail(result);
  }
  return result;
}

}  // namespace ember
