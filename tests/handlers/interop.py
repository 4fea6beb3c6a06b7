"""Python side of the serialization interoperability test (run with Debian's /usr/bin/python3).

  interop.py check FILE   loads Ember's file with torch.load and checks it bit for bit, and that
                          its pickle uses only the globals PyTorch 2.x's weights_only reader allows
  interop.py write DIR    writes py_matrix.pt (torch.save) and legacy.pt (the pre-1.6 format)
"""
import io
import math
import pickletools
import sys
import zipfile

import torch

DTYPES = [("float32", torch.float32), ("float64", torch.float64), ("float16", torch.float16),
          ("bfloat16", torch.bfloat16), ("int8", torch.int8), ("int16", torch.int16),
          ("int32", torch.int32), ("int64", torch.int64), ("uint8", torch.uint8),
          ("bool", torch.bool)]

ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2"} | {
    f"torch {n}" for n in ["FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
                           "ByteStorage", "CharStorage", "ShortStorage", "IntStorage",
                           "LongStorage", "BoolStorage", "ComplexFloatStorage",
                           "ComplexDoubleStorage"]}


def recipe(dtype, shape):
    numel = math.prod(shape)
    base = torch.arange(numel, dtype=torch.float64)
    if dtype == torch.bool:
        t = base.remainder(3).eq(0)
    elif dtype.is_floating_point:
        t = base.mul(0.37).sub(3.0).to(dtype)
    elif dtype == torch.uint8:
        t = base.remainder(256).to(dtype)
    else:
        t = base.sub(float(numel // 2)).to(dtype)
    return t.reshape(shape)


def recipe_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.copy_(recipe(torch.float32, list(p.shape)).add(i))
            i += 1
        for b in model.buffers():
            if b.dtype == torch.int64:
                b.fill_(7)
            else:
                b.copy_(recipe(torch.float32, list(b.shape)).abs().add(i))
                i += 1
    return model


def same(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and bool((a.reshape(-1).contiguous().view(torch.uint8) == b.reshape(-1).contiguous().view(torch.uint8)).all()))


def check(path):
    failures = []

    def expect(ok, what):
        if not ok:
            failures.append(what)

    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        data = z.read(pkl)
        names = z.namelist()
    globals_used = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    expect(globals_used <= ALLOWED_GLOBALS, f"disallowed globals {globals_used - ALLOWED_GLOBALS}")
    expect(any(n.endswith("/ember_checksum") for n in names), "no ember_checksum record")

    m = torch.load(path, weights_only=False)
    for name, dtype in DTYPES:
        expect(same(m[name], recipe(dtype, [3, 4])), name)
    base = recipe(torch.float32, [3, 4])
    expect(same(m["base"], base), "base")
    expect(same(m["transposed"], base.t()) and not m["transposed"].is_contiguous(), "transposed")
    expect(same(m["narrow"], base[1:]) and m["narrow"].storage_offset() == 4, "narrow")
    expect(same(m["strided"], base[:, ::2]), "strided")
    ptrs = {m[k].storage().data_ptr() for k in ("base", "transposed", "narrow", "strided")}
    expect(len(ptrs) == 1, "views do not share one storage")
    expect(m["scalar0d"].dim() == 0 and m["scalar0d"].item() == 2.5, "scalar0d")
    expect(m["empty"].shape == (0, 3), "empty")
    expect(same(m["high_rank"], recipe(torch.float64, [2, 1, 3, 1, 2])), "high_rank")
    n = m["nested"]
    expect(n["list"] == [1, 2.5, "s", None, True], f"list {n['list']}")
    expect(n["tuple"] == (1, (2, 3)), "tuple")
    expect(n["big"] == 2**40 and n["neg"] == -5 and n["negbig"] == -(2**40), "ints")
    expect(n["int32min"] == -2147483648, "int32min")
    expect(math.isnan(n["nan"]) and n["inf"] == math.inf, "nan/inf")
    expect(n["unicode"] == "héllo ✓", "unicode")
    expect(n["int_keys"] == {0: "zero", 7: "seven"}, "int keys")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.load_state_dict(m["model"])  # strict
    ref = recipe_model().state_dict()
    for k, v in ref.items():
        expect(same(model.state_dict()[k], v), f"model {k}")
    expect(list(m["model"].keys()) == list(ref.keys()), "model key order")
    if failures:
        print("FAIL:", "; ".join(failures))
        sys.exit(1)
    print(f"OK: {path} loads in torch {torch.__version__}; globals {sorted(globals_used)}")


def write(directory):
    m = {name: recipe(dtype, [3, 4]) for name, dtype in DTYPES}
    base = recipe(torch.float32, [3, 4])
    m.update(base=base, transposed=base.t(), narrow=base[1:], strided=base[:, ::2],
             scalar0d=torch.tensor(2.5), empty=torch.zeros(0, 3))
    m["nested"] = {"list": [1, 2.5, "s", None, True], "tuple": (1, (2, 3)), "big": 2**40,
                   "negbig": -(2**40), "nan": math.nan, "unicode": "héllo ✓",
                   "bytes": b"\x00\x01\xff"}
    model = recipe_model()
    m["model"] = model.state_dict()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.ones(2, 4)).sum().backward()
    sgd.step()
    m["optimizer"] = sgd.state_dict()
    m["model"] = recipe_model().state_dict()
    torch.save(m, f"{directory}/py_matrix.pt")
    torch.save({"a": torch.ones(2)}, f"{directory}/legacy.pt", _use_new_zipfile_serialization=False)
    print(f"wrote {directory}/py_matrix.pt and legacy.pt with torch {torch.__version__}")


if __name__ == "__main__":
    {"check": check, "write": write}[sys.argv[1]](sys.argv[2])
