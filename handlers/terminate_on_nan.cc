#include "handlers/terminate_on_nan.h"

#include <torch/torch.h>

#include <cmath>
#include <complex>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/log.h"
#include "handlers/serialization/value.h"

namespace ember {
namespace {

bool TensorNonFinite(const torch::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return false;
  if (!torch::isFloatingType(t.scalar_type()) && !torch::isComplexType(t.scalar_type())) return false;
  return !torch::isfinite(t).all().item<bool>();
}

bool ValueNonFinite(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kDouble:
      return !std::isfinite(v.as_double());
    case Value::Kind::kTensor:
      return TensorNonFinite(v.as_tensor());
    case Value::Kind::kList:
    case Value::Kind::kTuple:
    case Value::Kind::kDict:
      for (const Value& item : v.values()) {
        if (ValueNonFinite(item)) return true;
      }
      return false;
    default:  // None, bool, int, str: finite or skipped
      return false;
  }
}

}  // namespace

absl::StatusOr<bool> TerminateOnNan::HasNonFinite(const std::any& output) {
  if (!output.has_value()) {
    return absl::InvalidArgumentError(
        "TerminateOnNan: the step returned no output (state().output is empty); return the loss "
        "(a number or a tensor) from the step, or give TerminateOnNan an output_transform");
  }
  if (auto* d = std::any_cast<double>(&output)) return !std::isfinite(*d);
  if (auto* f = std::any_cast<float>(&output)) return !std::isfinite(*f);
  if (std::any_cast<int>(&output) || std::any_cast<int64_t>(&output) ||
      std::any_cast<bool>(&output) || std::any_cast<uint64_t>(&output) ||
      std::any_cast<std::string>(&output)) {
    return false;
  }
  if (auto* c = std::any_cast<std::complex<double>>(&output)) {
    return !std::isfinite(c->real()) || !std::isfinite(c->imag());
  }
  if (auto* t = std::any_cast<torch::Tensor>(&output)) return TensorNonFinite(*t);
  if (auto* v = std::any_cast<Value>(&output)) return ValueNonFinite(*v);
  if (auto* vd = std::any_cast<std::vector<double>>(&output)) {
    for (double x : *vd) {
      if (!std::isfinite(x)) return true;
    }
    return false;
  }
  if (auto* vf = std::any_cast<std::vector<float>>(&output)) {
    for (float x : *vf) {
      if (!std::isfinite(x)) return true;
    }
    return false;
  }
  if (auto* vt = std::any_cast<std::vector<torch::Tensor>>(&output)) {
    for (const auto& t : *vt) {
      if (TensorNonFinite(t)) return true;
    }
    return false;
  }
  if (auto* md = std::any_cast<std::map<std::string, double>>(&output)) {
    for (const auto& [k, x] : *md) {
      if (!std::isfinite(x)) return true;
    }
    return false;
  }
  if (auto* mt = std::any_cast<std::map<std::string, torch::Tensor>>(&output)) {
    for (const auto& [k, t] : *mt) {
      if (TensorNonFinite(t)) return true;
    }
    return false;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "TerminateOnNan: cannot check an output of type ", output.type().name(),
      "; allowed: numbers, torch::Tensor, ember::Value, std::vector or std::map of numbers or "
      "tensors (or give an output_transform)"));
}

absl::Status TerminateOnNan::Propose(Engine& engine, absl::Span<double> values) {
  const std::any& output = engine.state().output;
  absl::StatusOr<bool> bad = transform_ ? HasNonFinite(transform_(output)) : HasNonFinite(output);
  if (!bad.ok()) return bad.status();
  values[0] = *bad ? 1.0 : 0.0;
  return absl::OkStatus();
}

absl::Status TerminateOnNan::Decide(Engine& engine, const Agreement& agreement) {
  if (agreement.value(0) == 0.0) return absl::OkStatus();
  bad_ranks_.clear();
  for (int r = 0; r < agreement.world_size(); ++r) {
    if (agreement.rank_value(r, 0) != 0.0) bad_ranks_.push_back(r);
  }
  terminated_at_ = engine.state().iteration;
  LogWarning(absl::StrCat("TerminateOnNan: non-finite output on rank(s) ", absl::StrJoin(bad_ranks_, ", "),
                          " at iteration ", engine.state().iteration, " (epoch ", engine.state().epoch,
                          "); terminating ",
                          agreement.world_size() > 1 ? absl::StrCat("all ", agreement.world_size(), " ranks")
                                                     : std::string("the run")));
  engine.TerminateBy(kName);
  return absl::OkStatus();
}

}  // namespace ember
