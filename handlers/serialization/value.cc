#include "handlers/serialization/value.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace ember {
namespace {

[[noreturn]] void WrongKind(const char* wanted, const Value& v) {
  std::fprintf(stderr, "ember::Value: %s requested from a %s value\n", wanted, v.kind_name());
  std::abort();
}

bool KeysEqual(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kBool:
      return a.as_bool() == b.as_bool();
    case Value::Kind::kInt:
      return a.as_int() == b.as_int();
    case Value::Kind::kDouble:
      return a.as_double() == b.as_double();
    case Value::Kind::kString:
      return a.as_string() == b.as_string();
    default:
      return false;
  }
}

std::string PyString(const std::string& s) { return absl::StrCat("'", s, "'"); }

}  // namespace

Value Value::List(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kList;
  v.items_ = std::move(items);
  return v;
}

Value Value::Tuple(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kTuple;
  v.items_ = std::move(items);
  return v;
}

Value Value::Dict(bool ordered) {
  Value v;
  v.kind_ = Kind::kDict;
  v.ordered_ = ordered;
  return v;
}

const char* Value::kind_name() const {
  switch (kind_) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kDouble:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kTensor:
      return "Tensor";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return ordered_ ? "OrderedDict" : "dict";
  }
  return "?";
}

bool Value::as_bool() const {
  if (kind_ != Kind::kBool) WrongKind("bool", *this);
  return int_ != 0;
}

int64_t Value::as_int() const {
  if (kind_ != Kind::kInt && kind_ != Kind::kBool) WrongKind("int", *this);
  return int_;
}

double Value::as_double() const {
  if (kind_ == Kind::kDouble) return double_;
  if (kind_ == Kind::kInt || kind_ == Kind::kBool) return static_cast<double>(int_);
  WrongKind("float", *this);
}

const std::string& Value::as_string() const {
  if (kind_ != Kind::kString) WrongKind("str", *this);
  return string_;
}

const torch::Tensor& Value::as_tensor() const {
  if (kind_ != Kind::kTensor) WrongKind("Tensor", *this);
  return tensor_;
}

namespace {
absl::Status Mismatch(absl::string_view what, const char* expected, const Value& found) {
  return absl::InvalidArgumentError(
      absl::StrCat("'", what, "': expected ", expected, ", found ", found.kind_name()));
}
}  // namespace

absl::StatusOr<double> Value::ToDouble(absl::string_view what) const {
  if (!is_number()) return Mismatch(what, "a number", *this);
  return as_double();
}

absl::StatusOr<int64_t> Value::ToInt(absl::string_view what) const {
  if (!is_int() && !is_bool()) return Mismatch(what, "an int", *this);
  return int_;
}

absl::StatusOr<bool> Value::ToBool(absl::string_view what) const {
  if (!is_bool()) return Mismatch(what, "a bool", *this);
  return int_ != 0;
}

absl::StatusOr<std::string> Value::ToString(absl::string_view what) const {
  if (!is_string()) return Mismatch(what, "a str", *this);
  return string_;
}

absl::StatusOr<torch::Tensor> Value::ToTensor(absl::string_view what) const {
  if (!is_tensor()) return Mismatch(what, "a tensor", *this);
  return tensor_;
}

void Value::Set(Value key, Value value) {
  if (kind_ != Kind::kDict) WrongKind("dict", *this);
  if (Value* existing = FindMutable(key)) {
    *existing = std::move(value);
    return;
  }
  keys_.push_back(std::move(key));
  items_.push_back(std::move(value));
}

const Value* Value::Find(const Value& key) const {
  if (kind_ != Kind::kDict) return nullptr;
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (KeysEqual(keys_[i], key)) return &items_[i];
  }
  return nullptr;
}

Value* Value::FindMutable(const Value& key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->Find(key));
}

bool Value::Erase(const Value& key) {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (KeysEqual(keys_[i], key)) {
      keys_.erase(keys_.begin() + static_cast<std::ptrdiff_t>(i));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
  }
  return false;
}

std::string Value::DebugString() const {
  switch (kind_) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return int_ ? "True" : "False";
    case Kind::kInt:
      return absl::StrCat(int_);
    case Kind::kDouble:
      return absl::StrFormat("%g", double_);
    case Kind::kString:
      return PyString(string_);
    case Kind::kTensor: {
      if (!tensor_.defined()) return "tensor(undefined)";
      return absl::StrCat("tensor(", std::string(c10::toString(tensor_.scalar_type())), "[",
                          absl::StrJoin(tensor_.sizes(), ", "), "])");
    }
    case Kind::kList:
    case Kind::kTuple: {
      std::vector<std::string> parts;
      for (const Value& v : items_) parts.push_back(v.DebugString());
      return kind_ == Kind::kList ? absl::StrCat("[", absl::StrJoin(parts, ", "), "]")
                                  : absl::StrCat("(", absl::StrJoin(parts, ", "),
                                                 items_.size() == 1 ? ",)" : ")");
    }
    case Kind::kDict: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < keys_.size(); ++i) {
        parts.push_back(absl::StrCat(keys_[i].DebugString(), ": ", items_[i].DebugString()));
      }
      return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
    }
  }
  return "?";
}

bool TensorsBitwiseEqual(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  torch::Tensor ca = a.detach().cpu().contiguous();
  torch::Tensor cb = b.detach().cpu().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

bool operator==(const Value& a, const Value& b) {
  if (a.kind_ != b.kind_) return false;
  switch (a.kind_) {
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kBool:
    case Value::Kind::kInt:
      return a.int_ == b.int_;
    case Value::Kind::kDouble:
      return std::memcmp(&a.double_, &b.double_, sizeof(double)) == 0;
    case Value::Kind::kString:
      return a.string_ == b.string_;
    case Value::Kind::kTensor:
      return TensorsBitwiseEqual(a.tensor_, b.tensor_);
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return a.items_ == b.items_;
    case Value::Kind::kDict:
      if (a.keys_.size() != b.keys_.size()) return false;
      for (size_t i = 0; i < a.keys_.size(); ++i) {
        if (!KeysEqual(a.keys_[i], b.keys_[i]) || !(a.items_[i] == b.items_[i])) return false;
      }
      return true;
  }
  return false;
}

}  // namespace ember
