// File: engine/state_dict.h
//
// StateDict: an ordered string-keyed map of scalars (none, bool, int, double, string), the
// torch-free form of a Python state_dict that the engine and scalar-only handlers exchange
// with checkpoints. Key order is insertion order, as in Python's OrderedDict. Not thread-safe.
//
// Example:
//   StateDict d;
//   d.Set("epoch_length", int64_t{4});
//   if (const int64_t* n = d.GetIf<int64_t>("epoch_length")) ...
#ifndef EMBER_ENGINE_STATE_DICT_H_
#define EMBER_ENGINE_STATE_DICT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace ember {

using StateScalar = std::variant<std::monostate, bool, int64_t, double, std::string>;

class StateDict {
 public:
  using Item = std::pair<std::string, StateScalar>;

  StateDict() = default;
  StateDict(std::initializer_list<Item> items) {
    for (const Item& item : items) Set(item.first, item.second);
  }

  // Inserts or replaces `key` (a replaced key keeps its position).
  void Set(const std::string& key, StateScalar value) {
    for (Item& item : items_) {
      if (item.first == key) {
        item.second = std::move(value);
        return;
      }
    }
    items_.emplace_back(key, std::move(value));
  }

  bool Contains(const std::string& key) const { return Find(key) != nullptr; }
  const StateScalar* Find(const std::string& key) const {
    for (const Item& item : items_) {
      if (item.first == key) return &item.second;
    }
    return nullptr;
  }
  // The value of `key` if present and of type T, else nullptr.
  template <typename T>
  const T* GetIf(const std::string& key) const {
    const StateScalar* value = Find(key);
    return value == nullptr ? nullptr : std::get_if<T>(value);
  }

  const std::vector<Item>& items() const { return items_; }
  size_t size() const { return items_.size(); }

  // Python's repr of the keys, "dict_keys(['a', 'b'])", as ignite's messages show them.
  std::string KeysRepr() const {
    std::string out = "dict_keys([";
    for (size_t i = 0; i < items_.size(); ++i) {
      if (i > 0) out += ", ";
      out += "'" + items_[i].first + "'";
    }
    return out + "])";
  }

  friend bool operator==(const StateDict& a, const StateDict& b) { return a.items_ == b.items_; }

 private:
  std::vector<Item> items_;
};

}  // namespace ember

#endif  // EMBER_ENGINE_STATE_DICT_H_
