// File: base/status_error.h
//
// StatusError: an exception that carries an absl::Status across code that reports errors by
// throwing (a step function, a handler, LibTorch). The engine converts it back to the same
// Status at its boundary, so a step that returns absl::Status and one that throws end the same
// way. ThrowIfError is the bridge in the other direction.
#ifndef EMBER_BASE_STATUS_ERROR_H_
#define EMBER_BASE_STATUS_ERROR_H_

#include <exception>
#include <string>
#include <utility>

#include "absl/status/status.h"

namespace ember {

class StatusError : public std::exception {
 public:
  explicit StatusError(absl::Status status)
      : status_(std::move(status)), what_(status_.ToString()) {}
  const absl::Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  absl::Status status_;
  std::string what_;
};

inline void ThrowIfError(absl::Status status) {
  if (!status.ok()) throw StatusError(std::move(status));
}

}  // namespace ember

#endif  // EMBER_BASE_STATUS_ERROR_H_
