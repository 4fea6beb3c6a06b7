// ema_interop_tool DIR: trains Sequential(Linear(4, 3), BatchNorm1d(3)) for 6 iterations with an
// EMAHandler (momentum 0.3, handle_buffers "update"), saves {"model", "ema_model"} (and a GradScaler in DIR/scaler) with a
// Checkpoint (DiskSaver into DIR) at COMPLETED, and writes DIR/ema_reference.txt: one line per
// tensor of the EMA model, read from the module itself (named_parameters, named_buffers), not
// through Ember's state_dict: "name dtype shape hex-bytes". ema_interop.py checks that torch.load
// reads the checkpoint's "ema_model" equal to it and in the key order of Python's state_dict.
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "handlers/checkpoint/checkpoint.h"
#include "handlers/checkpoint/disk_saver.h"
#include "handlers/ema_handler.h"
#include "handlers/parallel/grad_scaler.h"

namespace {

std::string Hex(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().cpu();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 15]);
  }
  return out.empty() ? "-" : out;
}

void Dump(std::ofstream& out, const std::string& name, const torch::Tensor& t) {
  std::string shape;
  for (int64_t d : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
  out << name << " " << c10::toString(t.scalar_type()) << " " << (shape.empty() ? "()" : shape) << " " << Hex(t)
      << "\n";
}

int Run(const std::string& dir) {
  torch::manual_seed(3);
  torch::nn::Sequential model(torch::nn::Linear(4, 3), torch::nn::BatchNorm1d(3));
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  auto ema = ember::EMAHandler::Create(model.ptr(), {.momentum = 0.3, .handle_buffers = "update"});
  if (!ema.ok()) return std::fprintf(stderr, "%s\n", ema.status().ToString().c_str()), 1;
  ember::Engine trainer([&](ember::Engine& e) {
    torch::manual_seed(e.state().iteration);
    const torch::Tensor x = torch::randn({8, 4});
    optimizer.zero_grad();
    torch::Tensor loss = model->forward(x).pow(2).mean();
    loss.backward();
    optimizer.step();
    return loss.item<double>();
  });
  if (auto s = (*ema)->Attach(trainer); !s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  auto saver = ember::DiskSaver::Create({.dirname = dir});
  if (!saver.ok()) return std::fprintf(stderr, "%s\n", saver.status().ToString().c_str()), 1;
  // A GradScaler's state beside it (issue 28.5): one backoff, one success.
  auto scaler = ember::GradScaler::Create({.init_scale = 1024, .growth_interval = 7});
  if (!scaler.ok()) return std::fprintf(stderr, "%s\n", scaler.status().ToString().c_str()), 1;
  (*scaler)->Update(/*found_inf=*/true);
  (*scaler)->Update(/*found_inf=*/false);
  auto ckpt = ember::Checkpoint::Create({{"model", *model}, {"ema_model", (*ema)->ema_model()}},
                                        std::shared_ptr<ember::SaveHandler>(*std::move(saver)));
  if (!ckpt.ok()) return std::fprintf(stderr, "%s\n", ckpt.status().ToString().c_str()), 1;
  if (auto s = (*ckpt)->Attach(trainer, ember::Events::Completed()); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }
  // The scaler's checkpoint apart: its floats are pickled as BINFLOAT, which torch 1.13's
  // weights_only reader refuses (as for a checkpoint Python writes with a GradScaler in it).
  auto scaler_saver = ember::DiskSaver::Create({.dirname = dir + "/scaler"});
  if (!scaler_saver.ok()) return std::fprintf(stderr, "%s\n", scaler_saver.status().ToString().c_str()), 1;
  auto scaler_ckpt = ember::Checkpoint::Create({{"scaler", **scaler}},
                                               std::shared_ptr<ember::SaveHandler>(*std::move(scaler_saver)));
  if (!scaler_ckpt.ok()) return std::fprintf(stderr, "%s\n", scaler_ckpt.status().ToString().c_str()), 1;
  if (auto s = (*scaler_ckpt)->Attach(trainer, ember::Events::Completed()); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }
  if (auto s = trainer.Run({.max_epochs = 2, .epoch_length = 3}); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }
  std::ofstream out(dir + "/ema_reference.txt");
  for (const auto& item : (*ema)->ema_model().named_parameters()) Dump(out, item.key(), item.value());
  for (const auto& item : (*ema)->ema_model().named_buffers()) Dump(out, item.key(), item.value());
  return out.good() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: ema_interop_tool DIR\n"), 2;
  return Run(argv[1]);
}
