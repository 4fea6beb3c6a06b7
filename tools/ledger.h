// File: tools/ledger.h
//
// The sample ledger of the trainer (--ledger): each rank appends, after each iteration, the ids of
// the samples it trained on to OUTPUT_DIR/ledger/from-ITERATION.rank-RANK.jsonl (one file per
// rank and start point of a run: a resumed run on another world size writes new files beside
// the old ones). The first line of each file is its header:
//   {"ledger": 1, "dataset_size": N, "global_batch": B, "epoch_length": L, "world_size": M,
//    "rank": R, "from_iteration": I}
// then one line per iteration: {"epoch": e, "iteration": i, "ids": [...]}.
//
// TrimLedger(dir, I) is called when a run resumes at iteration I: lines of iterations after I
// (written past the checkpoint by a run that was killed, and trained again now) are dropped, and
// so are torn last lines; files rewritten atomically. CheckLedger reads every file and checks,
// for every epoch, that no sample was used twice and, for every finished epoch (each of its L
// iterations recorded), that exactly L * B samples were used, each once; every id in [0, N).
//
// Thread-compatible; the writer is used by one rank's training thread.
#ifndef EMBER_TOOLS_LEDGER_H_
#define EMBER_TOOLS_LEDGER_H_

#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ember::tools {

struct LedgerHeader {
  int64_t dataset_size = 0;
  int64_t global_batch = 0;
  int64_t epoch_length = 0;
  int world_size = 0;
  int rank = 0;
  int64_t from_iteration = 0;
};

class LedgerWriter {
 public:
  // Creates OUTPUT_DIR/ledger/ if needed and starts this rank's file (replacing one of the same
  // start point: an earlier attempt that resumed from the same checkpoint).
  static absl::StatusOr<std::unique_ptr<LedgerWriter>> Open(const std::string& output_dir, const LedgerHeader& header);
  ~LedgerWriter();
  // Appends one iteration's line, flushed (in the page cache: it survives a crash of the process,
  // not of the machine). The line that completes an epoch is also fsynced, before the epoch-end
  // checkpoint that covers it becomes durable; one fsync per epoch, not per line.
  absl::Status Append(int64_t epoch, int64_t iteration, const torch::Tensor& ids);
  // Makes every line so far durable (fsync): call it before a checkpoint taken mid-epoch (a
  // preemption's) is saved, so that the ledger is never behind a durable checkpoint.
  absl::Status Sync();
  const std::string& path() const { return path_; }

 private:
  LedgerWriter(std::FILE* f, std::string path, int64_t epoch_length)
      : file_(f), path_(std::move(path)), epoch_length_(epoch_length) {}
  std::FILE* file_;
  std::string path_;
  int64_t epoch_length_;
};

// Drops the lines after `iteration` from every ledger file of OUTPUT_DIR; returns how many.
absl::StatusOr<int> TrimLedger(const std::string& output_dir, int64_t iteration);

struct LedgerReport {
  bool ok = true;
  std::vector<std::string> lines;  // one per epoch, then each violation
};
absl::StatusOr<LedgerReport> CheckLedger(const std::string& output_dir);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_LEDGER_H_
