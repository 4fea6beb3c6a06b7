// torch.save format: round trips of every supported dtype, shape, stride and container, and
// malformed input of every kind (truncation at every cut, flipped bytes, hostile pickles,
// inconsistent records) giving a clear error that names the file, never a crash.
#include <caffe2/serialize/inline_container.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"
#include "tests/handlers/interop_recipe.h"

namespace ember {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;

Value RoundTrip(const Value& v) {
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<Value> back = ReadTorchSave(*bytes, "roundtrip.pt");
  EXPECT_TRUE(back.ok()) << back.status();
  return back.ok() ? *back : Value();
}

TEST(TorchSave, EveryDtypeRoundTripsBitForBit) {
  for (const auto& [name, dtype] : testing::RecipeDtypes()) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{}, {0}, {5}, {3, 4}, {2, 0, 3}, {2, 3, 1, 2}}) {
      torch::Tensor t = shape.empty() ? testing::RecipeTensor(dtype, {1}).reshape({})
                                      : testing::RecipeTensor(dtype, shape);
      Value back = RoundTrip(Value(t));
      ASSERT_TRUE(back.is_tensor()) << name;
      EXPECT_TRUE(TensorsBitwiseEqual(back.as_tensor(), t)) << name << " " << t.sizes();
    }
  }
}

TEST(TorchSave, SpecialFloatsInTensorsAreBitExact) {
  torch::Tensor t = torch::tensor({0.0, -0.0, std::numeric_limits<double>::infinity(),
                                   -std::numeric_limits<double>::infinity(),
                                   std::numeric_limits<double>::quiet_NaN(), 1e-310});
  EXPECT_TRUE(TensorsBitwiseEqual(RoundTrip(Value(t)).as_tensor(), t));
}

TEST(TorchSave, ViewsKeepOffsetsStridesAndSharing) {
  torch::Tensor base = testing::RecipeTensor(torch::kFloat32, {4, 6});
  Value v = Value::Dict();
  v.Set("base", base);
  v.Set("t", base.t());
  v.Set("col", base.select(1, 3));
  v.Set("step", base.slice(1, 1, 6, 2));
  v.Set("again", base);  // the same tensor twice
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  ASSERT_TRUE(bytes.ok());
  // One storage record for all of them.
  EXPECT_EQ(bytes->find("data/1"), std::string::npos);
  absl::StatusOr<Value> back = ReadTorchSave(*bytes, "views.pt");
  ASSERT_TRUE(back.ok()) << back.status();
  const torch::Tensor& b = back->Find(Value("base"))->as_tensor();
  const torch::Tensor& col = back->Find(Value("col"))->as_tensor();
  EXPECT_TRUE(TensorsBitwiseEqual(col, base.select(1, 3)));
  EXPECT_EQ(col.storage_offset(), 3);
  EXPECT_EQ(col.stride(0), 6);
  EXPECT_TRUE(TensorsBitwiseEqual(back->Find(Value("step"))->as_tensor(), base.slice(1, 1, 6, 2)));
  EXPECT_EQ(b.storage().data(), col.storage().data());
  // Writing through one view is seen by the others, as in Python.
  b.fill_(1.0);
  EXPECT_EQ(col[0].item<float>(), 1.0f);
}

TEST(TorchSave, ScalarsAndContainers) {
  Value v = Value::Dict(/*ordered=*/true);
  v.Set("none", Value());
  v.Set("t", true);
  v.Set("f", false);
  for (int64_t i : {int64_t{0}, int64_t{255}, int64_t{256}, int64_t{65535}, int64_t{65536},
                    int64_t{-1}, int64_t{-129}, int64_t{2147483647}, int64_t{-2147483648LL},
                    int64_t{2147483648LL}, std::numeric_limits<int64_t>::max(),
                    std::numeric_limits<int64_t>::min()}) {
    v.Set(absl::StrCat("i", i), i);
  }
  v.Set("pi", 3.14159);
  v.Set("nan", std::numeric_limits<double>::quiet_NaN());
  v.Set("ninf", -std::numeric_limits<double>::infinity());
  v.Set("empty_str", "");
  v.Set("utf8", "\xe2\x9c\x93");
  v.Set("list", Value::List({1, Value::List(), Value::Tuple(), Value::Dict()}));
  v.Set("tuples", Value::List({Value::Tuple({1}), Value::Tuple({1, 2}), Value::Tuple({1, 2, 3}),
                               Value::Tuple({1, 2, 3, 4})}));
  Value int_keys = Value::Dict();
  int_keys.Set(3, "three");
  int_keys.Set(-1, "minus one");
  v.Set("int_keys", int_keys);
  Value back = RoundTrip(v);
  EXPECT_TRUE(back == v) << back.DebugString();
  EXPECT_TRUE(back.ordered());
}

TEST(TorchSave, ModuleAndOptimizerStateRoundTrip) {
  torch::manual_seed(3);
  torch::nn::Sequential model(torch::nn::Linear(4, 8), torch::nn::BatchNorm1d(8),
                              torch::nn::Linear(8, 2));
  for (const char* kind : {"sgd", "adam", "adamw"}) {
    SCOPED_TRACE(kind);
    std::unique_ptr<torch::optim::Optimizer> opt;
    if (std::string(kind) == "sgd") {
      opt = std::make_unique<torch::optim::SGD>(model->parameters(),
                                                torch::optim::SGDOptions(0.1).momentum(0.9));
    } else if (std::string(kind) == "adam") {
      opt = std::make_unique<torch::optim::Adam>(model->parameters(),
                                                 torch::optim::AdamOptions(0.01).amsgrad(true));
    } else {
      opt = std::make_unique<torch::optim::AdamW>(model->parameters());
    }
    for (int i = 0; i < 3; ++i) {
      opt->zero_grad();
      model->forward(torch::randn({5, 4})).pow(2).sum().backward();
      opt->step();
    }
    absl::StatusOr<Value> opt_sd = OptimizerStateDict(*opt);
    ASSERT_TRUE(opt_sd.ok()) << opt_sd.status();
    Value ckpt = Value::Dict();
    ckpt.Set("model", ModuleStateDict(*model));
    ckpt.Set("optimizer", *opt_sd);
    Value back = RoundTrip(ckpt);

    torch::nn::Sequential other(torch::nn::Linear(4, 8), torch::nn::BatchNorm1d(8),
                                torch::nn::Linear(8, 2));
    ASSERT_TRUE(LoadModuleStateDict(*other, *back.Find(Value("model"))).ok());
    EXPECT_TRUE(ModuleStateDict(*other) == ModuleStateDict(*model));
    std::unique_ptr<torch::optim::Optimizer> other_opt;
    if (std::string(kind) == "sgd") {
      other_opt = std::make_unique<torch::optim::SGD>(other->parameters(), torch::optim::SGDOptions(1));
    } else if (std::string(kind) == "adam") {
      other_opt = std::make_unique<torch::optim::Adam>(other->parameters());
    } else {
      other_opt = std::make_unique<torch::optim::AdamW>(other->parameters());
    }
    ASSERT_TRUE(LoadOptimizerStateDict(*other_opt, *back.Find(Value("optimizer"))).ok());
    // One more identical step on both gives identical weights: the state was fully restored.
    torch::Tensor x = torch::randn({5, 4});
    for (auto* pair : {&opt, &other_opt}) {
      (*pair)->zero_grad();
    }
    model->forward(x).pow(2).sum().backward();
    other->forward(x).pow(2).sum().backward();
    opt->step();
    other_opt->step();
    EXPECT_TRUE(ModuleStateDict(*other) == ModuleStateDict(*model));
  }
}

TEST(TorchSave, ModuleLoadErrorsNameTheKeys) {
  torch::nn::Linear model(3, 2);
  Value sd = ModuleStateDict(*model);
  sd.Erase(Value("bias"));
  sd.Set("extra", torch::zeros({1}));
  absl::Status s = LoadModuleStateDict(*model, sd);
  EXPECT_THAT(std::string(s.message()), HasSubstr("Missing key(s) in state_dict: \"bias\""));
  EXPECT_THAT(std::string(s.message()), HasSubstr("Unexpected key(s) in state_dict: \"'extra'\""));
  EXPECT_TRUE(LoadModuleStateDict(*model, sd, /*strict=*/false).ok());
  Value wrong = ModuleStateDict(*model);
  wrong.Set("weight", torch::zeros({2, 4}));
  EXPECT_THAT(std::string(LoadModuleStateDict(*model, wrong).message()),
              HasSubstr("size mismatch for weight: copying a param with shape [2, 4], the shape in "
                        "the current model is [2, 3]"));
}

// ---- Malformed input --------------------------------------------------------------------

std::string ValidArchive() {
  Value v = Value::Dict();
  v.Set("w", testing::RecipeTensor(torch::kFloat32, {16, 16}));
  v.Set("n", 5);
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  EXPECT_TRUE(bytes.ok());
  return *bytes;
}

// Issue 10.6: a checkpoint whose checksum is valid but whose content has the wrong types fails
// with an error naming the key and the type found; it never aborts.
TEST(TorchSaveMalformed, WrongTypesInAValidArchiveAreErrorsNamingTheKey) {
  torch::nn::Linear model(3, 2);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.01));
  model->forward(torch::ones({1, 3})).sum().backward();
  adam.step();
  Value sd = *OptimizerStateDict(adam);
  auto reload = [](const Value& v) { return *ReadTorchSave(*SerializeTorchSave(v), "x.pt"); };
  auto group = [&](Value& root) -> Value& { return root.FindMutable("param_groups")->mutable_items()[0]; };

  Value bad_betas = sd;
  group(bad_betas).Set("betas", Value::Tuple({Value("a"), Value("b")}));
  absl::Status s = LoadOptimizerStateDict(adam, reload(bad_betas));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'param_groups[0]['betas'][0]': expected a number, found str"));

  Value bad_lr = sd;
  group(bad_lr).Set("lr", Value::List());
  EXPECT_THAT(std::string(LoadOptimizerStateDict(adam, reload(bad_lr)).message()),
              HasSubstr("'param_groups[0]['lr']': expected a number, found list"));

  Value bad_state = sd;
  bad_state.FindMutable("state")->FindMutable(int64_t{0})->Set("exp_avg", torch::ones({7}));
  EXPECT_THAT(std::string(LoadOptimizerStateDict(adam, reload(bad_state)).message()),
              HasSubstr("'state[0]['exp_avg']': shape [7] does not match the parameter's [2, 3]"));

  Value bad_step = sd;
  bad_step.FindMutable("state")->FindMutable(int64_t{0})->Set("step", torch::ones({3}));
  EXPECT_THAT(std::string(LoadOptimizerStateDict(adam, reload(bad_step)).message()),
              HasSubstr("'state[0]['step']'"));
  // Nothing was changed by the failed loads: the original still loads and steps.
  ASSERT_TRUE(LoadOptimizerStateDict(adam, reload(sd)).ok());
  EXPECT_EQ(Value("x").ToInt("k").status().message(), "'k': expected an int, found str");
}

TEST(TorchSaveMalformed, EveryTruncationIsAnErrorNamingTheFile) {
  const std::string bytes = ValidArchive();
  for (size_t cut = 0; cut < bytes.size(); cut += (cut < 200 || bytes.size() - cut < 200) ? 1 : 97) {
    absl::StatusOr<Value> v = ReadTorchSave(std::string_view(bytes).substr(0, cut), "cut.pt");
    ASSERT_FALSE(v.ok()) << "cut at " << cut << " of " << bytes.size();
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("cut.pt")) << cut;
  }
}

TEST(TorchSaveMalformed, EveryFlippedByteIsDetectedOrHarmless) {
  const std::string bytes = ValidArchive();
  absl::StatusOr<Value> good = ReadTorchSave(bytes, "good.pt");
  ASSERT_TRUE(good.ok());
  int detected = 0;
  for (size_t i = 0; i < bytes.size(); i += 7) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    absl::StatusOr<Value> v = ReadTorchSave(bad, "flip.pt");
    if (v.ok()) {
      // Bytes the reader ignores (zip metadata, padding) may change; the content may not.
      EXPECT_TRUE(*v == *good) << "flipped byte " << i << " changed the content silently";
    } else {
      ++detected;
      EXPECT_THAT(std::string(v.status().message()), HasSubstr("flip.pt"));
    }
  }
  EXPECT_GT(detected, 0);
}

TEST(TorchSaveMalformed, CorruptedTensorDataFailsTheChecksum) {
  std::string bytes = ValidArchive();
  // The tensor record holds 1024 bytes of floats; change one in the middle of it.
  size_t at = bytes.find("data/0");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 600] = static_cast<char>(bytes[at + 600] ^ 1);
  absl::StatusOr<Value> v = ReadTorchSave(bytes, "bitrot.pt");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(v.status().message()),
              ::testing::AnyOf(HasSubstr("CRC-32 mismatch in record data/0"),
                               HasSubstr("unreadable torch.save archive")));
}

// A file's tensors are built on the buffer the file was read into (no copy of each record): they
// stay valid after everything else loaded is dropped, and a flipped tensor byte in the file is
// still refused (checked in place before any tensor is built).
TEST(TorchSave, FileLoadIsInPlaceAndStillChecked) {
  const std::string path = ::testing::TempDir() + "/in_place.pt";
  const torch::Tensor a = torch::arange(256, torch::kFloat32);
  const torch::Tensor b = torch::arange(64, torch::kInt64);
  Value v = Value::Dict();
  v.Set("a", a);
  v.Set("b", b);
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto write = [&](const std::string& content) {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(content.data(), 1, content.size(), f), content.size());
    std::fclose(f);
  };
  write(*bytes);
  torch::Tensor kept;
  {
    ArchiveCheck check;
    absl::StatusOr<Value> back = ReadTorchSaveFile(path, nullptr, &check);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(check.has_checksum);
    const Value* got = back->Find("a");
    ASSERT_NE(got, nullptr);
    kept = got->as_tensor();
    const Value* got_b = back->Find("b");
    ASSERT_NE(got_b, nullptr);
    EXPECT_TRUE(torch::equal(got_b->as_tensor(), b));
  }
  EXPECT_TRUE(torch::equal(kept, a));  // the file's buffer outlives the Value
  kept = torch::Tensor();

  std::string flipped = *bytes;
  const size_t at = flipped.find("data/0");
  ASSERT_NE(at, std::string::npos);
  flipped[at + 600] = static_cast<char>(flipped[at + 600] ^ 1);
  write(flipped);
  absl::StatusOr<Value> bad = ReadTorchSaveFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("in_place.pt"));
}

// What a resume on several ranks runs (tools' ReadOnRootAndShare): VerifyTorchSave on the bytes
// rank 0 read (every CRC-32: a flipped tensor byte is refused), then ReadVerifiedTorchSave on every
// rank's copy: the same content, tensors in place on the shared buffer (which they keep alive),
// the structure still checked (every truncation refused, naming the file).
TEST(TorchSave, VerifiedBytesParseInPlaceWithTheStructureChecked) {
  const torch::Tensor a = torch::arange(256, torch::kFloat32);
  Value v = Value::Dict();
  v.Set("a", a);
  v.Set("n", Value(int64_t{7}));
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<ArchiveCheck> check = VerifyTorchSave(*bytes, "verified.pt");
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_TRUE(check->has_checksum);
  EXPECT_GE(check->records, 2);

  auto shared = std::make_shared<std::string>(*bytes);
  const char* begin = shared->data();
  const char* end = begin + shared->size();
  torch::Tensor kept;
  {
    absl::StatusOr<Value> back = ReadVerifiedTorchSave(std::move(shared), "verified.pt");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(*back == v);
    kept = back->Find("a")->as_tensor();
    const char* data = static_cast<const char*>(kept.data_ptr());
    EXPECT_TRUE(data >= begin && data + kept.nbytes() <= end) << "the tensor was copied, not read in place";
  }
  EXPECT_TRUE(torch::equal(kept, a));  // the buffer outlives the Value

  std::string flipped = *bytes;
  const size_t at = flipped.find("data/0");
  ASSERT_NE(at, std::string::npos);
  flipped[at + 600] = static_cast<char>(flipped[at + 600] ^ 1);
  absl::StatusOr<ArchiveCheck> bad = VerifyTorchSave(flipped, "verified.pt");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("verified.pt"));
  // The contract, pinned: ReadVerifiedTorchSave computes no CRC (its caller verified the bytes, and
  // BroadcastChecked compared them across ranks), so the same flip loads; ReadTorchSave refuses it.
  absl::StatusOr<Value> unchecked = ReadVerifiedTorchSave(std::make_shared<std::string>(flipped), "verified.pt");
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  EXPECT_FALSE(torch::equal(unchecked->Find("a")->as_tensor(), a));
  EXPECT_FALSE(ReadTorchSave(flipped, "verified.pt").ok());

  for (size_t cut = 0; cut < bytes->size(); cut += 61) {
    absl::StatusOr<Value> c = ReadVerifiedTorchSave(std::make_shared<std::string>(bytes->substr(0, cut)), "cut.pt");
    ASSERT_FALSE(c.ok()) << "cut at " << cut << " of " << bytes->size();
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("cut.pt")) << cut;
  }
  EXPECT_FALSE(ReadVerifiedTorchSave(nullptr, "null.pt").ok());
}

// A record outside the archive's folder, or two records of one name: this reader and PyTorch's
// could load different bytes for one tensor (a later record of a name used to win here, where
// torch.load takes the first, or refuses a record outside the folder), so the archive is refused.
TEST(TorchSaveMalformed, RecordsOutsideTheFolderOrRepeatedAreRefused) {
  Value v = Value::Dict();
  v.Set("a", torch::arange(256, torch::kFloat32));
  v.Set("b", torch::arange(64, torch::kInt64));
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_TRUE(ReadTorchSave(*bytes, "good.pt").ok());
  // Same-length renames of record data/1, in its local header and in the central directory.
  auto renamed = [&](const std::string& to) {
    std::string out = *bytes;
    const std::string from = "archive/data/1";
    int n = 0;
    for (size_t at = out.find(from); at != std::string::npos; at = out.find(from, at + 1), ++n) {
      out.replace(at, from.size(), to);
    }
    EXPECT_EQ(n, 2);
    return out;
  };
  absl::StatusOr<Value> outside = ReadTorchSave(renamed("zzzzzzz/data/1"), "outside.pt");
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kDataLoss) << outside.status();
  EXPECT_THAT(std::string(outside.status().message()),
              HasSubstr("('zzzzzzz/data/1') is not in the archive's folder 'archive/'"));
  absl::StatusOr<Value> twice = ReadTorchSave(renamed("archive/data/0"), "twice.pt");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kDataLoss) << twice.status();
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("('archive/data/0') repeats a record name"));
  const std::string path = ::testing::TempDir() + "/twice.pt";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const std::string twice_bytes = renamed("archive/data/0");
  ASSERT_EQ(std::fwrite(twice_bytes.data(), 1, twice_bytes.size(), f), twice_bytes.size());
  std::fclose(f);
  EXPECT_EQ(ReadTorchSaveFile(path).status().code(), absl::StatusCode::kDataLoss);
}

TEST(TorchSaveMalformed, NotAnArchive) {
  EXPECT_THAT(std::string(ReadTorchSave("", "empty.pt").status().message()),
              HasSubstr("empty.pt: empty file"));
  EXPECT_THAT(std::string(ReadTorchSave("hello world", "text.pt").status().message()),
              HasSubstr("bad magic bytes"));
  EXPECT_THAT(std::string(ReadTorchSave(std::string("\x80\x02\x8a\x0a", 4), "old.pt").status().message()),
              HasSubstr("legacy (pre-1.6, non-zip)"));
  EXPECT_THAT(std::string(ReadTorchSaveFile("/nonexistent/x.pt").status().message()),
              HasSubstr("open /nonexistent/x.pt: No such file or directory"));
}

// Builds an archive with a hand-written data.pkl and records.
std::string Archive(const std::string& pickle,
                    const std::vector<std::pair<std::string, std::string>>& records = {}) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* d, size_t n) {
    out.append(static_cast<const char*>(d), n);
    return n;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
  return out;
}

std::string ErrorOf(const std::string& archive) {
  absl::StatusOr<Value> v = ReadTorchSave(archive, "hostile.pt");
  EXPECT_FALSE(v.ok()) << (v.ok() ? v->DebugString() : "");
  return v.ok() ? "" : std::string(v.status().message());
}

TEST(TorchSaveMalformed, HostilePicklesNeverRunCode) {
  // os.system("echo pwned"s) via REDUCE.
  EXPECT_THAT(ErrorOf(Archive("\x80\x02"s "cos\nsystem\nX\x0b\x00\x00\x00"s "echo pwnedq\x00\x85R."s)),
              HasSubstr("unsupported global 'os.system'"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02"s "cbuiltins\neval\n."s)), HasSubstr("unsupported global 'builtins.eval'"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02\xff."s)), HasSubstr("unsupported pickle opcode 0xff"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02]"s)), HasSubstr("truncated pickle"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02"s "a."s)), HasSubstr("stack underflow"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02h\x05."s)), HasSubstr("memo key 5 not found"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02X\xff\xff\xff\x7f"s "abc"s)), HasSubstr("truncated pickle"s));
  EXPECT_THAT(ErrorOf(Archive("\x80\x02NN."s)), HasSubstr("STOP with a malformed stack"s));
}

std::string TensorPickle(const std::string& storage, int64_t numel, int64_t offset,
                         const std::string& size_stride) {
  std::string p = "\x80\x02"s "ctorch._utils\n_rebuild_tensor_v2\n("s;
  p += "(X\x07\x00\x00\x00storagectorch\n"s + storage + "\nX\x01\x00\x00\x00"s "0X\x03\x00\x00\x00"s "cpu"s;
  p += "J"s + std::string(reinterpret_cast<const char*>(&numel), 4) + "tQ"s;
  p += "J"s + std::string(reinterpret_cast<const char*>(&offset), 4);
  p += size_stride;
  p += "\x89"s "ccollections\nOrderedDict\n)RtR."s;
  return p;
}

TEST(TorchSaveMalformed, TensorsThatReadPastTheirStorage) {
  const std::string four_floats(16, '\0');
  // size (4,) stride (1,) offset 0 over 4 elements: fine.
  absl::StatusOr<Value> ok = ReadTorchSave(
      Archive(TensorPickle("FloatStorage"s, 4, 0, "K\x04\x85K\x01\x85"s), {{"data/0"s, four_floats}}),
      "ok.pt"s);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->as_tensor().numel(), 4);
  // offset 1 with 4 elements reads past the end.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("FloatStorage"s, 4, 1, "K\x04\x85K\x01\x85"s),
                              {{"data/0"s, four_floats}})),
              HasSubstr("reads past its storage of 4 elements"s));
  // stride 2 over 4 elements.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("FloatStorage"s, 4, 0, "K\x04\x85K\x02\x85"s),
                              {{"data/0"s, four_floats}})),
              HasSubstr("reads past its storage"s));
  // The record is shorter than numel says.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("FloatStorage"s, 8, 0, "K\x04\x85K\x01\x85"s),
                              {{"data/0"s, four_floats}})),
              HasSubstr("record data/0 has 16 bytes but its Float storage needs 8 elements"s));
  // The record is missing.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("FloatStorage"s, 4, 0, "K\x04\x85K\x01\x85"s))),
              HasSubstr("record data/0 is missing"s));
  // An unknown storage class.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("QInt8Storage"s, 4, 0, "K\x04\x85K\x01\x85"s),
                              {{"data/0"s, four_floats}})),
              HasSubstr("unsupported global 'torch.QInt8Storage'"s));
  // sizes and strides of different lengths.
  EXPECT_THAT(ErrorOf(Archive(TensorPickle("FloatStorage"s, 4, 0, "K\x04\x85K\x01K\x01\x86"s),
                              {{"data/0"s, four_floats}})),
              HasSubstr("tensor has 1 sizes but 2 strides"s));
}

TEST(TorchSaveMalformed, ChecksumRecordFromTheFuture) {
  std::string pickle = "\x80\x02K\x05.";
  std::string archive = Archive(pickle, {{"ember_checksum", "ember-checkpoint 99\n"}});
  absl::StatusOr<Value> v = ReadTorchSave(archive, "future.pt");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("newer Ember (checkpoint format 99"));
}

TEST(TorchSave, WriterErrorsComeBackFromTheSink) {
  Value v = Value::Dict();
  v.Set("w", torch::ones({1024}));
  int calls = 0;
  absl::Status s = WriteTorchSave(v, [&](const void*, size_t) {
    return ++calls == 3 ? absl::ResourceExhaustedError("ENOSPC: no space left on device")
                        : absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("ENOSPC"));
  EXPECT_EQ(WriteTorchSave(Value(torch::Tensor()), [](const void*, size_t) { return absl::OkStatus(); }).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ember

namespace ember {
namespace {

TEST(TorchSave, Zip64LayoutReadsBack) {
  Value v = Value::Dict();
  v.Set("w", testing::RecipeTensor(torch::kFloat64, {7, 3}));
  v.Set("name", "zip64");
  std::string bytes;
  ASSERT_TRUE(serialization_internal::WriteTorchSaveImpl(
                  v, [&](const void* d, size_t n) {
                    bytes.append(static_cast<const char*>(d), n);
                    return absl::OkStatus();
                  },
                  /*force_zip64=*/true)
                  .ok());
  absl::StatusOr<Value> back = ReadTorchSave(bytes, "zip64.pt");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == v);
}

TEST(TorchSave, RecordDataIs64ByteAligned) {
  Value v = Value::Dict();
  v.Set("a", torch::ones({3}));
  v.Set("b", torch::ones({5}, torch::kFloat64));
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  ASSERT_TRUE(bytes.ok());
  std::string_view all(*bytes);
  for (const char* name : {"archive/data/0", "archive/data/1"}) {
    size_t at = all.find(name);
    ASSERT_NE(at, std::string::npos);
    // Local header: 30 bytes, then the name, then the extra field; the data follows.
    size_t header = at - 30;
    uint16_t extra = static_cast<uint8_t>(all[header + 28]) | (static_cast<uint8_t>(all[header + 29]) << 8);
    EXPECT_EQ((at + std::strlen(name) + extra) % 64, 0u) << name;
  }
}

}  // namespace
}  // namespace ember
