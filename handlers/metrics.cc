#include "handlers/metrics.h"


#include <algorithm>
#include <cstdlib>
#include <string>
#include <typeinfo>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "base/type_name.h"

namespace ember {
namespace {


absl::StatusOr<const Prediction*> PredictionOf(const Engine& engine, const char* metric) {
  const Prediction* p = engine.state().output_as<Prediction>();
  if (p == nullptr || !p->y_pred.defined() || !p->y.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(
        metric, ": the step must return an ember::Prediction{y_pred, y} (at iteration ",
        engine.state().iteration, ")"));
  }
  if (p->y_pred.size(0) != p->y.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(metric, ": y_pred has ", p->y_pred.size(0), " rows but y has ",
                                                   p->y.size(0), " (iteration ", engine.state().iteration, ")"));
  }
  return p;
}

double Ratio(absl::Span<const double> s) { return s[1] > 0 ? s[0] / s[1] : 0.0; }

}  // namespace

absl::Status Accuracy::Update(const Engine& engine, absl::Span<double> sums) {
  EMBER_ASSIGN_OR_RETURN(const Prediction* p, PredictionOf(engine, "Accuracy"));
  torch::NoGradGuard no_grad;
  if (p->y_pred.dim() != 1 && p->y_pred.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("Accuracy: y_pred must be [N, C] scores or [N] 0/1 predictions, got ",
                                                   p->y_pred.dim(), " dimensions"));
  }
  torch::Tensor predicted = p->y_pred.dim() == 2 ? p->y_pred.argmax(1) : p->y_pred.round();
  sums[0] += predicted.to(p->y.scalar_type()).eq(p->y).sum().item<double>();
  sums[1] += static_cast<double>(p->y.size(0));
  return absl::OkStatus();
}

double Accuracy::Compute(absl::Span<const double> sums) const { return Ratio(sums); }

absl::Status Loss::Update(const Engine& engine, absl::Span<double> sums) {
  EMBER_ASSIGN_OR_RETURN(const Prediction* p, PredictionOf(engine, "Loss"));
  torch::NoGradGuard no_grad;
  const double n = static_cast<double>(p->y.size(0));
  sums[0] += fn_(p->y_pred, p->y).item<double>() * n;
  sums[1] += n;
  return absl::OkStatus();
}

double Loss::Compute(absl::Span<const double> sums) const { return Ratio(sums); }

absl::Status Average::Update(const Engine& engine, absl::Span<double> sums) {
  sums[0] += value_(engine);
  sums[1] += 1;
  return absl::OkStatus();
}

double Average::Compute(absl::Span<const double> sums) const { return Ratio(sums); }

absl::Status Metrics::Attach(Engine& engine) {
  size_t offset = 0;
  for (Entry& e : metrics_) {
    e.offset = offset;
    offset += e.metric->num_sums();
  }
  local_.assign(offset, 0.0);
  global_.assign(offset, 0.0);
  ops_.assign(offset, dist::Reduction::kSum);
  layout_ = dist::kLayoutSeed;
  for (const Entry& e : metrics_) {
    layout_ = dist::LayoutDigest(layout_, absl::StrCat(e.name, ":", ReadableTypeName(typeid(*e.metric))),
                                 absl::MakeConstSpan(ops_.data(), e.metric->num_sums()));
  }
  EMBER_RETURN_IF_ERROR(
      engine.AddEventHandler(Events::Started(), [this] { std::fill(local_.begin(), local_.end(), 0.0); }).status());
  EMBER_RETURN_IF_ERROR(engine.AddEventHandler(Events::IterationCompleted(), [this](Engine& e) -> absl::Status {
    for (Entry& m : metrics_) {
      EMBER_RETURN_IF_ERROR(m.metric->Update(e, absl::MakeSpan(local_).subspan(m.offset, m.metric->num_sums())));
    }
    return absl::OkStatus();
  }).status());
  return engine.AddEventHandler(Events::Completed(), [this](Engine& e) { return Complete(e); }).status();
}

std::string Metrics::Describe() const {
  std::vector<std::string> parts;
  for (const Entry& m : metrics_) {
    parts.push_back(absl::StrCat(m.name, " (", ReadableTypeName(typeid(*m.metric)), ", ", m.metric->num_sums(), " sums)"));
  }
  return absl::StrCat("Metrics at COMPLETED: ", parts.empty() ? std::string("none") : absl::StrJoin(parts, ", "));
}

absl::Status Metrics::Complete(Engine& engine) {
  dist::Communicator* comm = &engine.communicator();
  if (consensus_ == nullptr || consensus_->comm() != comm) consensus_ = std::make_unique<dist::Consensus>(comm);
  per_rank_.resize(local_.size() * static_cast<size_t>(comm->world_size()));
  dist::AgreementId id;
  id.event = Events::Completed().id();
  id.iteration = 0;  // ranks may evaluate different numbers of batches (uneven shards)
  id.layout = layout_;
  id.describe = [this] { return Describe(); };
  absl::Status s = consensus_->Reduce(absl::MakeConstSpan(local_), absl::MakeConstSpan(ops_), absl::MakeSpan(global_),
                                      absl::MakeSpan(per_rank_), absl::Now() + engine.collective_timeout(), id);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("Metrics: agreement of ", global_.size(), " sums: ", s.message()));
  for (const Entry& m : metrics_) {
    engine.state().metrics[m.name] = m.metric->Compute(absl::MakeConstSpan(global_).subspan(m.offset, m.metric->num_sums()));
  }
  return absl::OkStatus();
}

}  // namespace ember
