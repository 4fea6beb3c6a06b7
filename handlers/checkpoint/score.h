// File: handlers/checkpoint/score.h
//
// Score: a checkpoint's score, a number that remembers whether it is an integer or a bool, since
// ignite formats those without decimals. FormatScore is ignite's formatting in file names:
// int -> "3", bool -> "True", float -> "%.4f" ("nan", "inf", "-inf").
//
// Example:
//   ember::FormatScore(0.91234) == "0.9123";  ember::FormatScore(3) == "3"
#ifndef EMBER_HANDLERS_SCORE_H_
#define EMBER_HANDLERS_SCORE_H_

#include <cstdint>
#include <string>

namespace ember {

struct Score {
  enum class Kind : uint8_t { kFloat, kInt, kBool };
  double value = 0;
  Kind kind = Kind::kFloat;
  Score(double v) : value(v) {}                                  // NOLINT
  Score(float v) : value(v) {}                                   // NOLINT
  Score(int v) : value(v), kind(Kind::kInt) {}                   // NOLINT
  Score(int64_t v) : value(static_cast<double>(v)), kind(Kind::kInt) {}  // NOLINT
  Score(bool v) : value(v ? 1 : 0), kind(Kind::kBool) {}         // NOLINT
};

std::string FormatScore(const Score& score);

}  // namespace ember

#endif  // EMBER_HANDLERS_SCORE_H_
