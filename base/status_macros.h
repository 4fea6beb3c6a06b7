// File: base/status_macros.h
//
// EMBER_RETURN_IF_ERROR and EMBER_ASSIGN_OR_RETURN: early return on a non-OK absl::Status.
// Debian's Abseil 20220623 has no such macros of its own.
//
// Example:
//   absl::StatusOr<Config> LoadConfig(const std::string& path) {
//     EMBER_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
//     EMBER_RETURN_IF_ERROR(Validate(text));
//     return Parse(text);
//   }
#ifndef EMBER_BASE_STATUS_MACROS_H_
#define EMBER_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define EMBER_STATUS_CONCAT_INNER_(a, b) a##b
#define EMBER_STATUS_CONCAT_(a, b) EMBER_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if not OK.
#define EMBER_RETURN_IF_ERROR(expr)                                      \
  do {                                                                   \
    ::absl::Status ember_status_ = (expr);                               \
    if (!ember_status_.ok()) return ember_status_;                       \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise
// moves the value into `lhs` (a declaration such as `auto x` or an existing lvalue).
#define EMBER_ASSIGN_OR_RETURN(lhs, rexpr) \
  EMBER_ASSIGN_OR_RETURN_IMPL_(EMBER_STATUS_CONCAT_(ember_statusor_, __LINE__), lhs, rexpr)

#define EMBER_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // EMBER_BASE_STATUS_MACROS_H_
