#include "handlers/serialization/pickle.h"

#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace ember::serialization {
namespace {

// ---- dtype <-> storage class ------------------------------------------------------------

struct StorageType {
  torch::ScalarType dtype;
  const char* name;
};

constexpr StorageType kStorageTypes[] = {
    {torch::kFloat32, "FloatStorage"},     {torch::kFloat64, "DoubleStorage"},
    {torch::kFloat16, "HalfStorage"},      {torch::kBFloat16, "BFloat16Storage"},
    {torch::kUInt8, "ByteStorage"},        {torch::kInt8, "CharStorage"},
    {torch::kInt16, "ShortStorage"},       {torch::kInt32, "IntStorage"},
    {torch::kInt64, "LongStorage"},        {torch::kBool, "BoolStorage"},
    {torch::kComplexFloat, "ComplexFloatStorage"},
    {torch::kComplexDouble, "ComplexDoubleStorage"},
};

const char* StorageName(torch::ScalarType dtype) {
  for (const StorageType& t : kStorageTypes) {
    if (t.dtype == dtype) return t.name;
  }
  return nullptr;
}

// Debian's Abseil has its own string_view (not std::string_view).
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::optional<torch::ScalarType> StorageDtype(std::string_view global) {
  if (global.substr(0, 6) != "torch.") return std::nullopt;
  global.remove_prefix(6);
  for (const StorageType& t : kStorageTypes) {
    if (global == t.name) return t.dtype;
  }
  return std::nullopt;
}

// ---- Pickle writer (protocol 2) ---------------------------------------------------------

class PickleWriter {
 public:
  absl::Status Write(const Value& value) {
    out_.push_back('\x80');
    out_.push_back('\x02');
    EMBER_RETURN_IF_ERROR(Emit(value, 0));
    out_.push_back('.');
    return absl::OkStatus();
  }

  Pickled Take() { return {std::move(out_), std::move(storages_)}; }

 private:
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void Op(char c) { out_.push_back(c); }

  void Global(std::string_view module, std::string_view name) {
    Op('c');
    out_.append(module);
    Op('\n');
    out_.append(name);
    Op('\n');
  }

  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      Op('K');
      out_.push_back(static_cast<char>(v));
    } else if (v >= 0 && v < 65536) {
      Op('M');
      uint16_t u = static_cast<uint16_t>(v);
      unsigned char b[2] = {static_cast<unsigned char>(u & 0xff),
                            static_cast<unsigned char>(u >> 8)};
      Raw(b, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op('J');
      uint32_t u = static_cast<uint32_t>(static_cast<int32_t>(v));
      unsigned char b[4];
      for (int i = 0; i < 4; ++i) b[i] = static_cast<unsigned char>(u >> (8 * i));
      Raw(b, 4);
    } else {
      // LONG1: little-endian two's complement, 8 bytes always suffices.
      Op('\x8a');
      out_.push_back('\x08');
      uint64_t u = static_cast<uint64_t>(v);
      unsigned char b[8];
      for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(u >> (8 * i));
      Raw(b, 8);
    }
  }

  void Float(double d) {
    Op('G');
    uint64_t u;
    std::memcpy(&u, &d, 8);
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(u >> (8 * (7 - i)));
    Raw(b, 8);
  }

  void String(std::string_view s) {
    Op('X');
    uint32_t n = static_cast<uint32_t>(s.size());
    unsigned char b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<unsigned char>(n >> (8 * i));
    Raw(b, 4);
    out_.append(s);
  }

  void IntTuple(c10::IntArrayRef values) {
    if (values.empty()) {
      Op(')');
      return;
    }
    if (values.size() > 3) Op('(');
    for (int64_t v : values) Int(v);
    if (values.size() == 1) Op('\x85');
    if (values.size() == 2) Op('\x86');
    if (values.size() == 3) Op('\x87');
    if (values.size() > 3) Op('t');
  }

  void EmptyOrderedDict() {
    Global("collections", "OrderedDict");
    Op(')');
    Op('R');
  }

  absl::Status Tensor(const torch::Tensor& input) {
    if (!input.defined()) return absl::InvalidArgumentError("cannot save an undefined tensor");
    if (input.layout() != torch::kStrided) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot save a tensor with layout ", std::string(c10::toString(input.layout())),
                       "; only dense (strided) tensors are supported"));
    }
    if (input.is_quantized()) {
      return absl::InvalidArgumentError("cannot save a quantized tensor");
    }
    const char* storage_name = StorageName(input.scalar_type());
    if (storage_name == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot save a tensor of dtype ", std::string(c10::toString(input.scalar_type()))));
    }
    torch::Tensor t = input.device().is_cpu() ? input : input.detach().to(torch::kCPU);
    const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    std::string key;
    auto it = keys_.find(impl);
    if (it != keys_.end()) {
      key = it->second;
    } else {
      key = absl::StrCat(storages_.size());
      keys_.emplace(impl, key);
      storages_.push_back({key, t, t.storage().data(), t.storage().nbytes()});
    }
    const int64_t numel = static_cast<int64_t>(t.storage().nbytes() / t.element_size());
    Global("torch._utils", "_rebuild_tensor_v2");
    Op('(');
    // persistent id: ('storage', torch.<Type>Storage, key, 'cpu', numel)
    Op('(');
    String("storage");
    Global("torch", storage_name);
    String(key);
    String("cpu");
    Int(numel);
    Op('t');
    Op('Q');
    Int(t.storage_offset());
    IntTuple(t.sizes());
    IntTuple(t.strides());
    Op(t.requires_grad() ? '\x88' : '\x89');
    EmptyOrderedDict();
    Op('t');
    Op('R');
    return absl::OkStatus();
  }

  absl::Status Emit(const Value& v, int depth) {
    if (depth > 512) return absl::InvalidArgumentError("value nesting deeper than 512 levels");
    switch (v.kind()) {
      case Value::Kind::kNone:
        Op('N');
        return absl::OkStatus();
      case Value::Kind::kBool:
        Op(v.as_bool() ? '\x88' : '\x89');
        return absl::OkStatus();
      case Value::Kind::kInt:
        Int(v.as_int());
        return absl::OkStatus();
      case Value::Kind::kDouble:
        Float(v.as_double());
        return absl::OkStatus();
      case Value::Kind::kString:
        String(v.as_string());
        return absl::OkStatus();
      case Value::Kind::kTensor:
        return Tensor(v.as_tensor());
      case Value::Kind::kList:
        Op(']');
        if (!v.items().empty()) {
          Op('(');
          for (const Value& item : v.items()) EMBER_RETURN_IF_ERROR(Emit(item, depth + 1));
          Op('e');
        }
        return absl::OkStatus();
      case Value::Kind::kTuple:
        Op('(');
        for (const Value& item : v.items()) EMBER_RETURN_IF_ERROR(Emit(item, depth + 1));
        Op('t');
        return absl::OkStatus();
      case Value::Kind::kDict:
        if (v.ordered()) {
          EmptyOrderedDict();
        } else {
          Op('}');
        }
        if (v.size() > 0) {
          Op('(');
          for (size_t i = 0; i < v.size(); ++i) {
            EMBER_RETURN_IF_ERROR(Emit(v.keys()[i], depth + 1));
            EMBER_RETURN_IF_ERROR(Emit(v.values()[i], depth + 1));
          }
          Op('u');
        }
        return absl::OkStatus();
    }
    return absl::InternalError("unknown value kind");
  }

  std::string out_;
  std::vector<PickledStorage> storages_;
  std::unordered_map<const c10::StorageImpl*, std::string> keys_;
};

// ---- Pickle reader ----------------------------------------------------------------------

struct Obj;
using ObjPtr = std::shared_ptr<Obj>;

struct Obj {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kTensor, kList, kTuple, kDict, kGlobal };
  Kind kind = kNone;
  bool ordered = false;
  int64_t i = 0;
  double d = 0;
  std::string s;  // str, bytes, or "module.name" for a global
  torch::Tensor t;
  std::vector<ObjPtr> items;  // list/tuple items, dict values
  std::vector<ObjPtr> keys;   // dict keys

  static ObjPtr Make(Kind k) {
    auto o = std::make_shared<Obj>();
    o->kind = k;
    return o;
  }
};



class Unpickler {
 public:
  Unpickler(std::string_view data, std::string name, StorageLoader loader)
      : data_(data), name_(std::move(name)), loader_(std::move(loader)) {}

  absl::StatusOr<Value> Load() {
    EMBER_ASSIGN_OR_RETURN(ObjPtr result, Run());
    return ToValue(result, 0);
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::DataLossError(
        absl::StrCat(name_, ": data.pkl at byte ", pos_, ": ", what));
  }
  absl::Status Unsupported(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": data.pkl at byte ", pos_, ": ", what,
                                                   " (Ember loads tensors, containers and "
                                                   "scalars only; it never runs code from a "
                                                   "checkpoint)"));
  }

  absl::StatusOr<std::string_view> Take(size_t n) {
    if (data_.size() - pos_ < n) return Error("truncated pickle");
    std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<uint64_t> LittleEndian(size_t n) {
    EMBER_ASSIGN_OR_RETURN(std::string_view b, Take(n));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(b[i])) << (8 * i);
    return v;
  }
  absl::StatusOr<std::string_view> Line() {
    size_t end = data_.find('\n', pos_);
    if (end == std::string_view::npos) return Error("truncated pickle (unterminated line)");
    std::string_view out = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }

  absl::StatusOr<ObjPtr> Pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return Error("stack underflow");
    ObjPtr o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  absl::StatusOr<std::vector<ObjPtr>> PopMark() {
    if (marks_.empty()) return Error("no MARK on the stack");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ObjPtr> out(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
                            std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return out;
  }
  absl::StatusOr<ObjPtr> Top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return Error("stack underflow");
    return stack_.back();
  }
  void Push(ObjPtr o) { stack_.push_back(std::move(o)); }
  ObjPtr Str(std::string s) {
    ObjPtr o = Obj::Make(Obj::kStr);
    o->s = std::move(s);
    return o;
  }
  ObjPtr Int(int64_t v) {
    ObjPtr o = Obj::Make(Obj::kInt);
    o->i = v;
    return o;
  }
  ObjPtr Tuple(std::vector<ObjPtr> items) {
    ObjPtr o = Obj::Make(Obj::kTuple);
    o->items = std::move(items);
    return o;
  }

  absl::Status Memoize(uint64_t index) {
    EMBER_ASSIGN_OR_RETURN(ObjPtr top, Top());
    if (index > (1u << 28)) return Error("memo index too large");
    memo_[index] = top;
    return absl::OkStatus();
  }
  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " not found"));
    Push(it->second);
    return absl::OkStatus();
  }

  absl::Status SetItems(const ObjPtr& dict, std::vector<ObjPtr>& kv) {
    if (dict->kind != Obj::kDict) return Error("SETITEMS on a non-dict");
    if (kv.size() % 2 != 0) return Error("odd number of items for SETITEMS");
    for (size_t i = 0; i < kv.size(); i += 2) {
      const ObjPtr& key = kv[i];
      if (key->kind != Obj::kStr && key->kind != Obj::kInt && key->kind != Obj::kBool &&
          key->kind != Obj::kFloat && key->kind != Obj::kNone && key->kind != Obj::kBytes) {
        return Unsupported("dict key that is not a str, int, float, bool or None");
      }
      bool replaced = false;
      for (size_t j = 0; j < dict->keys.size(); ++j) {
        const ObjPtr& k = dict->keys[j];
        if (k->kind == key->kind && k->s == key->s && k->i == key->i && k->d == key->d) {
          dict->items[j] = kv[i + 1];
          replaced = true;
          break;
        }
      }
      if (!replaced) {
        dict->keys.push_back(key);
        dict->items.push_back(kv[i + 1]);
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ObjPtr> Global(std::string module, std::string name) {
    static const char* const kAllowed[] = {
        "collections.OrderedDict",       "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "_codecs.encode",
        "torch.Size",                    "torch.device",
        "builtins.set",                  "builtins.frozenset",
    };
    std::string full = absl::StrCat(module, ".", name);
    bool allowed = StorageDtype(full).has_value();
    for (const char* a : kAllowed) allowed = allowed || full == a;
    if (!allowed) return Unsupported(absl::StrCat("unsupported global '", full, "'"));
    ObjPtr o = Obj::Make(Obj::kGlobal);
    o->s = std::move(full);
    return o;
  }

  absl::StatusOr<std::vector<int64_t>> IntList(const ObjPtr& o, const char* what) {
    if (o->kind != Obj::kTuple && o->kind != Obj::kList) {
      return Error(absl::StrCat(what, " is not a tuple"));
    }
    std::vector<int64_t> out;
    for (const ObjPtr& item : o->items) {
      if (item->kind != Obj::kInt) return Error(absl::StrCat(what, " holds a non-integer"));
      out.push_back(item->i);
    }
    return out;
  }

  absl::StatusOr<ObjPtr> RebuildTensor(const std::vector<ObjPtr>& args) {
    if (args.size() < 4) return Error("_rebuild_tensor_v2 needs at least 4 arguments");
    if (args[0]->kind != Obj::kTensor) return Error("_rebuild_tensor_v2 without a storage");
    if (args[1]->kind != Obj::kInt) return Error("storage offset is not an integer");
    const torch::Tensor& storage = args[0]->t;
    const int64_t offset = args[1]->i;
    EMBER_ASSIGN_OR_RETURN(std::vector<int64_t> size, IntList(args[2], "tensor size"));
    EMBER_ASSIGN_OR_RETURN(std::vector<int64_t> stride, IntList(args[3], "tensor stride"));
    if (size.size() != stride.size()) {
      return Error(absl::StrFormat("tensor has %d sizes but %d strides", size.size(), stride.size()));
    }
    const int64_t numel = storage.numel();
    if (offset < 0 || offset > numel) {
      return Error(absl::StrCat("storage offset ", offset, " outside a storage of ", numel,
                                " elements"));
    }
    bool empty = false;
    int64_t last = offset;
    for (size_t i = 0; i < size.size(); ++i) {
      if (size[i] < 0 || stride[i] < 0) return Error("negative tensor size or stride");
      if (size[i] == 0) empty = true;
    }
    if (!empty) {
      for (size_t i = 0; i < size.size(); ++i) {
        if (size[i] > 0 && stride[i] > (INT64_MAX - last) / size[i]) {
          return Error("tensor extent overflows");
        }
        last += (size[i] - 1) * stride[i];
      }
      if (last >= numel) {
        return Error(absl::StrCat("tensor of size [", absl::StrJoin(size, ", "), "] stride [",
                                  absl::StrJoin(stride, ", "), "] at offset ", offset,
                                  " reads past its storage of ", numel, " elements"));
      }
    }
    ObjPtr o = Obj::Make(Obj::kTensor);
    o->t = torch::empty({0}, storage.options()).set_(storage.storage(), offset, size, stride);
    if (args.size() > 4 && args[4]->kind == Obj::kBool && args[4]->i &&
        torch::isFloatingType(o->t.scalar_type())) {
      o->t.set_requires_grad(true);
    }
    return o;
  }

  absl::StatusOr<ObjPtr> Reduce(const ObjPtr& callable, const ObjPtr& args) {
    if (callable->kind != Obj::kGlobal) return Unsupported("REDUCE on a non-global");
    if (args->kind != Obj::kTuple) return Error("REDUCE arguments are not a tuple");
    const std::string& f = callable->s;
    const std::vector<ObjPtr>& a = args->items;
    if (f == "collections.OrderedDict") {
      ObjPtr d = Obj::Make(Obj::kDict);
      d->ordered = true;
      if (!a.empty() && (a[0]->kind == Obj::kList || a[0]->kind == Obj::kTuple)) {
        std::vector<ObjPtr> kv;
        for (const ObjPtr& pair : a[0]->items) {
          if (pair->kind != Obj::kTuple || pair->items.size() != 2) {
            return Error("OrderedDict argument is not a list of pairs");
          }
          kv.push_back(pair->items[0]);
          kv.push_back(pair->items[1]);
        }
        EMBER_RETURN_IF_ERROR(SetItems(d, kv));
      }
      return d;
    }
    if (f == "torch._utils._rebuild_tensor_v2") return RebuildTensor(a);
    if (f == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != Obj::kTensor) return Error("_rebuild_parameter without data");
      ObjPtr o = Obj::Make(Obj::kTensor);
      o->t = a[0]->t.detach();
      if (a.size() > 1 && a[1]->kind == Obj::kBool && a[1]->i &&
          torch::isFloatingType(o->t.scalar_type())) {
        o->t.set_requires_grad(true);
      }
      return o;
    }
    if (f == "_codecs.encode") {
      if (a.empty() || a[0]->kind != Obj::kStr) return Error("_codecs.encode without a str");
      // Protocol 2 writes bytes as encode(latin-1 text): map code points back to bytes.
      ObjPtr o = Obj::Make(Obj::kBytes);
      const std::string& s = a[0]->s;
      for (size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
          o->s.push_back(static_cast<char>(c));
        } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size()) {
          o->s.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(s[++i]) & 0x3f)));
        } else {
          return Error("_codecs.encode of a non-latin-1 string");
        }
      }
      return o;
    }
    if (f == "torch.Size" || f == "builtins.set" || f == "builtins.frozenset") {
      ObjPtr o = Obj::Make(f == "torch.Size" ? Obj::kTuple : Obj::kList);
      if (!a.empty()) o->items = a[0]->items;
      return o;
    }
    if (f == "torch.device") {
      std::string device;
      for (const ObjPtr& part : a) {
        if (part->kind == Obj::kStr) device += part->s;
        if (part->kind == Obj::kInt) absl::StrAppend(&device, ":", part->i);
      }
      return Str(device);
    }
    return Unsupported(absl::StrCat("cannot call '", f, "'"));
  }

  absl::StatusOr<ObjPtr> PersistentLoad(const ObjPtr& pid) {
    if (pid->kind != Obj::kTuple || pid->items.size() < 5 || pid->items[0]->kind != Obj::kStr ||
        pid->items[0]->s != "storage") {
      return Unsupported("persistent id that is not a ('storage', ...) tuple");
    }
    const ObjPtr& type = pid->items[1];
    const ObjPtr& key = pid->items[2];
    const ObjPtr& numel = pid->items[4];
    if (type->kind != Obj::kGlobal) return Error("storage type is not a class");
    std::optional<torch::ScalarType> dtype = StorageDtype(type->s);
    if (!dtype) return Unsupported(absl::StrCat("storage type '", type->s, "'"));
    if (key->kind != Obj::kStr || numel->kind != Obj::kInt || numel->i < 0) {
      return Error("malformed storage key or size");
    }
    ObjPtr o = Obj::Make(Obj::kTensor);
    EMBER_ASSIGN_OR_RETURN(o->t, loader_(key->s, *dtype, numel->i));
    return o;
  }

  absl::StatusOr<ObjPtr> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error("truncated pickle (no STOP)");
      if (++ops_ > (1ll << 31)) return Error("too many opcodes");
      const size_t op_pos = pos_;
      const unsigned char op = static_cast<unsigned char>(data_[pos_++]);
      switch (op) {
        case 0x80: {  // PROTO
          EMBER_ASSIGN_OR_RETURN(uint64_t proto, LittleEndian(1));
          if (proto > 5) return Error(absl::StrCat("unsupported pickle protocol ", proto));
          break;
        }
        case 0x95:  // FRAME
          EMBER_RETURN_IF_ERROR(LittleEndian(8).status());
          break;
        case '.': {  // STOP
          if (stack_.size() != 1 || !marks_.empty()) return Error("STOP with a malformed stack");
          return stack_.back();
        }
        case '(':
          marks_.push_back(stack_.size());
          break;
        case '0':
          EMBER_RETURN_IF_ERROR(Pop().status());
          break;
        case '1':
          EMBER_RETURN_IF_ERROR(PopMark().status());
          break;
        case '2': {
          EMBER_ASSIGN_OR_RETURN(ObjPtr top, Top());
          Push(top);
          break;
        }
        case 'N':
          Push(Obj::Make(Obj::kNone));
          break;
        case 0x88:
        case 0x89: {
          ObjPtr o = Obj::Make(Obj::kBool);
          o->i = op == 0x88;
          Push(o);
          break;
        }
        case 'K': {
          EMBER_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(1));
          Push(Int(static_cast<int64_t>(v)));
          break;
        }
        case 'M': {
          EMBER_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(2));
          Push(Int(static_cast<int64_t>(v)));
          break;
        }
        case 'J': {
          EMBER_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(4));
          Push(Int(static_cast<int32_t>(static_cast<uint32_t>(v))));
          break;
        }
        case 0x8a: {  // LONG1
          EMBER_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(1));
          if (n > 8) return Unsupported(absl::StrCat("integer of ", n, " bytes"));
          EMBER_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(n));
          if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);
          Push(Int(static_cast<int64_t>(v)));
          break;
        }
        case 'I': {  // INT (text)
          EMBER_ASSIGN_OR_RETURN(std::string_view line, Line());
          if (line == "01" || line == "00") {
            ObjPtr o = Obj::Make(Obj::kBool);
            o->i = line == "01";
            Push(o);
            break;
          }
          int64_t v;
          if (!absl::SimpleAtoi(AV(line), &v)) return Error("malformed INT");
          Push(Int(v));
          break;
        }
        case 'G': {
          EMBER_ASSIGN_OR_RETURN(std::string_view b, Take(8));
          uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = (u << 8) | static_cast<unsigned char>(b[i]);
          ObjPtr o = Obj::Make(Obj::kFloat);
          std::memcpy(&o->d, &u, 8);
          Push(o);
          break;
        }
        case 'X':
        case 0x8c:
        case 0x8d:
        case 'T':
        case 'U':
        case 'B':
        case 'C':
        case 0x8e: {
          const size_t width = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
          EMBER_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(width));
          if (n > data_.size()) return Error("truncated pickle (string too long)");
          EMBER_ASSIGN_OR_RETURN(std::string_view s, Take(n));
          ObjPtr o = Obj::Make((op == 'B' || op == 'C' || op == 0x8e) ? Obj::kBytes : Obj::kStr);
          o->s = std::string(s);
          Push(o);
          break;
        }
        case '}':
          Push(Obj::Make(Obj::kDict));
          break;
        case ']':
          Push(Obj::Make(Obj::kList));
          break;
        case ')':
          Push(Tuple({}));
          break;
        case 'd': {
          EMBER_ASSIGN_OR_RETURN(std::vector<ObjPtr> kv, PopMark());
          ObjPtr d = Obj::Make(Obj::kDict);
          EMBER_RETURN_IF_ERROR(SetItems(d, kv));
          Push(d);
          break;
        }
        case 'l': {
          EMBER_ASSIGN_OR_RETURN(std::vector<ObjPtr> items, PopMark());
          ObjPtr l = Obj::Make(Obj::kList);
          l->items = std::move(items);
          Push(l);
          break;
        }
        case 't': {
          EMBER_ASSIGN_OR_RETURN(std::vector<ObjPtr> items, PopMark());
          Push(Tuple(std::move(items)));
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
          size_t n = op - 0x84;
          std::vector<ObjPtr> items(n);
          for (size_t i = n; i > 0; --i) {
            EMBER_ASSIGN_OR_RETURN(items[i - 1], Pop());
          }
          Push(Tuple(std::move(items)));
          break;
        }
        case 'a': {
          EMBER_ASSIGN_OR_RETURN(ObjPtr item, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr list, Top());
          if (list->kind != Obj::kList) return Error("APPEND to a non-list");
          list->items.push_back(item);
          break;
        }
        case 'e': {
          EMBER_ASSIGN_OR_RETURN(std::vector<ObjPtr> items, PopMark());
          EMBER_ASSIGN_OR_RETURN(ObjPtr list, Top());
          if (list->kind != Obj::kList) return Error("APPENDS to a non-list");
          for (ObjPtr& item : items) list->items.push_back(std::move(item));
          break;
        }
        case 's': {
          EMBER_ASSIGN_OR_RETURN(ObjPtr value, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr key, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr dict, Top());
          std::vector<ObjPtr> kv = {key, value};
          EMBER_RETURN_IF_ERROR(SetItems(dict, kv));
          break;
        }
        case 'u': {
          EMBER_ASSIGN_OR_RETURN(std::vector<ObjPtr> kv, PopMark());
          EMBER_ASSIGN_OR_RETURN(ObjPtr dict, Top());
          EMBER_RETURN_IF_ERROR(SetItems(dict, kv));
          break;
        }
        case 'c': {
          EMBER_ASSIGN_OR_RETURN(std::string_view module, Line());
          EMBER_ASSIGN_OR_RETURN(std::string_view name, Line());
          EMBER_ASSIGN_OR_RETURN(ObjPtr g, Global(std::string(module), std::string(name)));
          Push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          EMBER_ASSIGN_OR_RETURN(ObjPtr name, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr module, Pop());
          if (name->kind != Obj::kStr || module->kind != Obj::kStr) {
            return Error("STACK_GLOBAL without strings");
          }
          EMBER_ASSIGN_OR_RETURN(ObjPtr g, Global(module->s, name->s));
          Push(g);
          break;
        }
        case 'R': {
          EMBER_ASSIGN_OR_RETURN(ObjPtr args, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr callable, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr result, Reduce(callable, args));
          Push(result);
          break;
        }
        case 0x81: {  // NEWOBJ
          EMBER_ASSIGN_OR_RETURN(ObjPtr args, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr cls, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr result, Reduce(cls, args));
          Push(result);
          break;
        }
        case 'b': {  // BUILD: only OrderedDict's instance state (state_dict._metadata)
          EMBER_ASSIGN_OR_RETURN(ObjPtr state, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr obj, Top());
          if (obj->kind != Obj::kDict || !obj->ordered) return Unsupported("BUILD on a non-OrderedDict");
          if (state->kind != Obj::kDict && state->kind != Obj::kNone) return Error("malformed BUILD state");
          break;
        }
        case 'Q': {
          EMBER_ASSIGN_OR_RETURN(ObjPtr pid, Pop());
          EMBER_ASSIGN_OR_RETURN(ObjPtr storage, PersistentLoad(pid));
          Push(storage);
          break;
        }
        case 'q': {
          EMBER_ASSIGN_OR_RETURN(uint64_t i, LittleEndian(1));
          EMBER_RETURN_IF_ERROR(Memoize(i));
          break;
        }
        case 'r': {
          EMBER_ASSIGN_OR_RETURN(uint64_t i, LittleEndian(4));
          EMBER_RETURN_IF_ERROR(Memoize(i));
          break;
        }
        case 0x94:
          EMBER_RETURN_IF_ERROR(Memoize(memo_.size()));
          break;
        case 'h': {
          EMBER_ASSIGN_OR_RETURN(uint64_t i, LittleEndian(1));
          EMBER_RETURN_IF_ERROR(Recall(i));
          break;
        }
        case 'j': {
          EMBER_ASSIGN_OR_RETURN(uint64_t i, LittleEndian(4));
          EMBER_RETURN_IF_ERROR(Recall(i));
          break;
        }
        default:
          pos_ = op_pos;
          return Unsupported(absl::StrFormat("unsupported pickle opcode 0x%02x", op));
      }
    }
  }

  absl::StatusOr<Value> ToValue(const ObjPtr& o, int depth) {
    if (depth > 512) return Unsupported("nesting deeper than 512 levels (or a cycle)");
    switch (o->kind) {
      case Obj::kNone:
        return Value();
      case Obj::kBool:
        return Value(o->i != 0);
      case Obj::kInt:
        return Value(o->i);
      case Obj::kFloat:
        return Value(o->d);
      case Obj::kStr:
      case Obj::kBytes:
        return Value(o->s);
      case Obj::kTensor:
        return Value(o->t);
      case Obj::kList:
      case Obj::kTuple: {
        std::vector<Value> items;
        items.reserve(o->items.size());
        for (const ObjPtr& item : o->items) {
          EMBER_ASSIGN_OR_RETURN(Value v, ToValue(item, depth + 1));
          items.push_back(std::move(v));
        }
        return o->kind == Obj::kList ? Value::List(std::move(items))
                                     : Value::Tuple(std::move(items));
      }
      case Obj::kDict: {
        Value d = Value::Dict(o->ordered);
        for (size_t i = 0; i < o->keys.size(); ++i) {
          EMBER_ASSIGN_OR_RETURN(Value k, ToValue(o->keys[i], depth + 1));
          EMBER_ASSIGN_OR_RETURN(Value v, ToValue(o->items[i], depth + 1));
          d.Set(std::move(k), std::move(v));
        }
        return d;
      }
      case Obj::kGlobal:
        return Unsupported(absl::StrCat("a bare reference to '", o->s, "'"));
    }
    return Error("unknown object");
  }

  std::string_view data_;
  size_t pos_ = 0;
  int64_t ops_ = 0;
  std::string name_;
  StorageLoader loader_;
  std::vector<ObjPtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ObjPtr> memo_;
};

}  // namespace

absl::StatusOr<Pickled> Pickle(const Value& value) {
  PickleWriter writer;
  EMBER_RETURN_IF_ERROR(writer.Write(value));
  return writer.Take();
}

absl::StatusOr<Value> Unpickle(std::string_view data, std::string name, StorageLoader loader) {
  Unpickler unpickler(data, std::move(name), std::move(loader));
  return unpickler.Load();
}

}  // namespace ember::serialization
