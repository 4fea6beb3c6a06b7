// File: handlers/serialization/value.h
//
// Value: the in-memory form of what a checkpoint holds, a tree of Python-like objects:
// None, bool, int, float (double), str, torch.Tensor, list, tuple and dict (insertion-ordered;
// `ordered()` marks a collections.OrderedDict, as module state_dicts are in Python). Dict keys
// are scalars (str, int, bool, float, None): module state_dicts use str keys, optimizer
// state_dicts int keys.
//
// A Value is cheap to copy for tensors (they share storage, as torch tensors do) and deep for
// containers. Not thread-safe; copy it to hand it to another thread (the tensors are shared:
// clone them first when the owner keeps training, as the asynchronous saver does).
//
// Example:
//   ember::Value sd = ember::Value::Dict(/*ordered=*/true);
//   sd.Set("weight", torch::ones({2, 3}));
//   sd.Set("step", int64_t{7});
//   if (const ember::Value* w = sd.Find("weight"); w && w->is_tensor()) ...
#ifndef EMBER_HANDLERS_SERIALIZATION_VALUE_H_
#define EMBER_HANDLERS_SERIALIZATION_VALUE_H_

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ember {

class Value {
 public:
  enum class Kind : uint8_t { kNone, kBool, kInt, kDouble, kString, kTensor, kList, kTuple, kDict };

  Value() = default;
  Value(std::nullptr_t) {}  // NOLINT
  Value(bool v) : kind_(Kind::kBool), int_(v ? 1 : 0) {}  // NOLINT
  Value(int v) : kind_(Kind::kInt), int_(v) {}            // NOLINT
  Value(int64_t v) : kind_(Kind::kInt), int_(v) {}        // NOLINT
  Value(double v) : kind_(Kind::kDouble), double_(v) {}   // NOLINT
  Value(std::string v) : kind_(Kind::kString), string_(std::move(v)) {}  // NOLINT
  Value(const char* v) : kind_(Kind::kString), string_(v) {}            // NOLINT
  Value(torch::Tensor v) : kind_(Kind::kTensor), tensor_(std::move(v)) {}  // NOLINT

  static Value List(std::vector<Value> items = {});
  static Value Tuple(std::vector<Value> items = {});
  static Value Dict(bool ordered = false);

  Kind kind() const { return kind_; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_double() const { return kind_ == Kind::kDouble; }
  bool is_number() const { return is_int() || is_double() || is_bool(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_tensor() const { return kind_ == Kind::kTensor; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence() const { return is_list() || is_tuple(); }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool ordered() const { return ordered_; }

  // Checked accessors for data read from a file: an error (kInvalidArgument) naming `what` (the
  // key, e.g. "param_groups[0]['betas'][1]") and the kind found, never an abort. ToDouble takes
  // int and bool too; ToInt takes bool.
  absl::StatusOr<double> ToDouble(absl::string_view what) const;
  absl::StatusOr<int64_t> ToInt(absl::string_view what) const;
  absl::StatusOr<bool> ToBool(absl::string_view what) const;
  absl::StatusOr<std::string> ToString(absl::string_view what) const;
  absl::StatusOr<torch::Tensor> ToTensor(absl::string_view what) const;

  // Unchecked scalar accessors; call only on the matching kind (checked with an assert-like
  // abort): for values the program built itself, never for values read from a file.
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;  // int and bool convert
  const std::string& as_string() const;
  const torch::Tensor& as_tensor() const;

  // Sequences.
  const std::vector<Value>& items() const { return items_; }
  std::vector<Value>& mutable_items() { return items_; }
  void Append(Value v) { items_.push_back(std::move(v)); }

  // Dicts (insertion order; Set on an existing key replaces its value in place).
  void Set(Value key, Value value);
  const Value* Find(const Value& key) const;
  Value* FindMutable(const Value& key);
  bool Erase(const Value& key);
  const std::vector<Value>& keys() const { return keys_; }
  const std::vector<Value>& values() const { return items_; }
  size_t size() const { return is_dict() ? keys_.size() : items_.size(); }

  // Python's repr, for messages and tools: {'a': 1, 'w': tensor(float32[2, 3])}.
  std::string DebugString() const;
  const char* kind_name() const;

  // Structural equality; tensors compare equal when dtype, shape and bytes are equal
  // (bitwise, so NaN == NaN).
  friend bool operator==(const Value& a, const Value& b);

 private:
  Kind kind_ = Kind::kNone;
  bool ordered_ = false;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  torch::Tensor tensor_;
  std::vector<Value> items_;  // list/tuple items, or dict values
  std::vector<Value> keys_;   // dict keys
};

// True when the tensors have the same dtype, shape and the same bytes element by element.
bool TensorsBitwiseEqual(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace ember

#endif  // EMBER_HANDLERS_SERIALIZATION_VALUE_H_
