// File: engine/state.h
//
// State: what an Engine knows about its run, as ignite's engine.state. Handlers read it and
// may write `metrics` and `user`; the engine owns the counters. Not thread-safe: it belongs to
// the thread that drives Engine::Run.
//
// Counters follow ignite: `iteration` and `epoch` count from 1 once running (0 = not started);
// `iteration` is absolute (it does not restart at each epoch). `max_epochs` empty means "no run
// configured yet" (the next Run starts fresh).
#ifndef EMBER_ENGINE_STATE_H_
#define EMBER_ENGINE_STATE_H_

#include <any>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <typeinfo>

#include "engine/state_dict.h"

namespace ember {

struct State {
  int64_t iteration = 0;
  int64_t epoch = 0;
  std::optional<int64_t> epoch_length;  // empty while unknown (data of unknown length)
  std::optional<int64_t> max_epochs;
  std::optional<int64_t> max_iters;

  // What the step function returned for the current iteration; empty before the step ran, or
  // when it returns void. std::any stores scalars and tensors without allocating.
  std::any output;

  // The current batch (null outside GET_BATCH_COMPLETED .. ITERATION_COMPLETED, or when the
  // engine runs without data). Read it with batch_as<T>(), which checks the type.
  const void* batch = nullptr;
  const std::type_info* batch_type = nullptr;

  // Metrics by name (evaluators and handlers fill it; scores read it).
  std::map<std::string, double> metrics;

  // Seconds taken by the last epoch and by the whole run (set at EPOCH_COMPLETED / COMPLETED),
  // empty before; reset at each Run start to 0, as ignite does.
  std::optional<double> epoch_time;
  std::optional<double> run_time;

  // User entries saved with the engine's state_dict (ignite's state_dict_user_keys).
  StateDict user;

  template <typename T>
  const T* batch_as() const {
    if (batch == nullptr || batch_type == nullptr || *batch_type != typeid(T)) return nullptr;
    return static_cast<const T*>(batch);
  }
  // The output as T, or nullptr when it is empty or of another type.
  template <typename T>
  const T* output_as() const {
    return std::any_cast<T>(&output);
  }
};

}  // namespace ember

#endif  // EMBER_ENGINE_STATE_H_
