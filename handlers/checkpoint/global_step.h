// File: handlers/checkpoint/global_step.h
//
// GlobalStepFromEngine is ignite's global_step_from_engine: for a checkpoint attached to an
// evaluator, the step in its file names comes from another engine (the trainer): that engine's
// counter for the event the checkpoint's engine is at (its epoch at EPOCH_*/COMPLETED, its
// iteration at ITERATION_*), falling back to its epoch for events without a counter (ignite
// HEAD's fallback_attr="epoch"). `other` must outlive the returned function.
//
// Example:
//   ModelCheckpoint::Create({.disk = {.dirname = "runs"},
//                            .checkpoint = {.global_step_transform = GlobalStepFromEngine(trainer)}},
//                           objects);
#ifndef EMBER_HANDLERS_GLOBAL_STEP_H_
#define EMBER_HANDLERS_GLOBAL_STEP_H_

#include <cstdint>
#include <functional>

#include "engine/engine.h"

namespace ember {

std::function<int64_t(const Engine&, Event)> GlobalStepFromEngine(const Engine& other);

}  // namespace ember

#endif  // EMBER_HANDLERS_GLOBAL_STEP_H_
