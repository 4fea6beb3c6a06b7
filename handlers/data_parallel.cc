#include "handlers/data_parallel.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"

namespace ember {
DataParallel::DataParallel(torch::nn::Module& module, DataParallelOptions options)
    : comm_(options.comm != nullptr ? options.comm : dist::DefaultCommunicator()), options_(options) {
  for (const auto& p : module.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    names_.push_back(p.key());
    params_.push_back(p.value());
  }
  const int64_t bucket_elems = std::max<int64_t>(1, options_.bucket_bytes / static_cast<int64_t>(sizeof(float)));
  int64_t used = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = params_[i].numel();
    if (buckets_.empty() || (used > 0 && used + n > bucket_elems)) {
      buckets_.emplace_back();
      used = 0;
    }
    buckets_.back().push_back(i);
    used += n;
  }
  for (const auto& b : buckets_) {
    int64_t n = 0;
    for (size_t i : b) n += params_[i].numel();
    flat_.push_back(torch::empty({n}, torch::kFloat32));
  }
  status_ = Broadcast(module);
}

absl::Status DataParallel::Broadcast(torch::nn::Module& module) {
  if (world_size() == 1) return absl::OkStatus();
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

absl::Status DataParallel::AllReduceGradients() {
  if (world_size() == 1) return absl::OkStatus();
  torch::NoGradGuard no_grad;
  const float scale = 1.0f / static_cast<float>(comm_->world_size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    torch::Tensor& flat = flat_[b];
    int64_t at = 0;
    for (size_t i : buckets_[b]) {
      const int64_t n = params_[i].numel();
      const torch::Tensor& g = params_[i].grad();
      if (g.defined()) {
        flat.slice(0, at, at + n).copy_(g.reshape({-1}));
      } else {
        flat.slice(0, at, at + n).zero_();
      }
      at += n;
    }
    absl::Status s = comm_->AllReduce(absl::MakeSpan(flat.data_ptr<float>(), flat.numel()), dist::ReduceOp::kSum,
                                      absl::Now() + options_.deadline);
    if (!s.ok()) {
      std::vector<std::string> names;
      for (size_t i : buckets_[b]) names.push_back(names_[i]);
      return absl::Status(s.code(), absl::StrCat("DataParallel: gradient bucket ", b, " of ", buckets_.size(), " (",
                                                 absl::StrJoin(names, ", "), "): ", s.message()));
    }
    flat.mul_(scale);
    at = 0;
    for (size_t i : buckets_[b]) {
      const int64_t n = params_[i].numel();
      torch::Tensor averaged = flat.slice(0, at, at + n).view_as(params_[i]);
      if (params_[i].grad().defined()) {
        params_[i].mutable_grad().copy_(averaged);
      } else {
        params_[i].mutable_grad() = averaged.to(params_[i].options()).clone();
      }
      at += n;
    }
  }
  return absl::OkStatus();
}

}  // namespace ember
