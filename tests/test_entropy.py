"""The lossless entropy step: exact round trips, corruption and crafted sizes caught, recipe placement,
outputs that load, evaluate and decompress to exactly their input."""

import json
import struct

import numpy as np
import pytest
import torch

import tensorpress
from tensorpress.cli.main import main
from tensorpress.errors import TensorpressError
from tensorpress.formats import entropy
from tensorpress.formats.entropy import code_entropy, decode_tensor, encode_tensor
from tensorpress.formats.entropy_table import TABLE_KEY
from tensorpress.formats.pack_quantized import pack_int32
from tensorpress.formats.safetensors_io import SafetensorsReader, read_header
from tensorpress.formats.sizes import size_stats
from tensorpress.model.decompress import decompress

ENTROPY = {"steps": [{"entropy": {"level": "max"}}]}
RTN_ENTROPY = {"steps": [{"rtn": {"bits": 4, "group_size": 32}, "ignore": ["lm_head"]}, {"entropy": {}}]}


@pytest.fixture
def small_frames(monkeypatch):
    """Frames of 4 KiB so small tensors still cross frame boundaries."""
    monkeypatch.setattr(entropy, "FRAME_BYTES", 4096)


def weights(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(dtype)


def specials(dtype: torch.dtype) -> torch.Tensor:
    """Every corner of the bit patterns: signed zeros, subnormals, |w| ≥ 2, huge, inf, nan."""
    v = [0.0, -0.0, 1e-40, -1e-39, 2.0, -3.5, 100.0, 6e4, float("inf"), float("-inf"), float("nan"), 1.0, -1.0]
    return torch.tensor(v, dtype=torch.float32).to(dtype)


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Raw bit patterns, so NaN payloads and -0.0 compare exactly."""
    return t.reshape(-1).view(torch.uint8)


def roundtrip(t: torch.Tensor, level: str = "max", bits: int | None = None, threads: int = 2) -> tuple[int, dict]:
    blob, e = encode_tensor(t, level, bits, threads=threads)
    d = decode_tensor("t", np.frombuffer(blob, np.uint8), e, threads=threads)
    assert d.dtype == t.dtype and d.shape == t.shape
    assert torch.equal(bits_of(d), bits_of(t.contiguous()))
    return len(blob), e


@pytest.mark.parametrize("level", ["fast", "max"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n", [0, 1, 7, 2049, 20001])
def test_float_roundtrip_is_bit_exact(small_frames, level, dtype, n):
    t = weights(n, dtype)
    if n > 20:
        t[: len(specials(dtype))] = specials(dtype)
    roundtrip(t.reshape(-1, 1) if n % 7 == 0 and n else t, level)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.float64, torch.uint8])
def test_other_dtypes_roundtrip(small_frames, dtype):
    t = (torch.arange(5003) % 7 - 3).to(dtype)
    roundtrip(t)
    roundtrip(t[:1])
    roundtrip(t[:0].reshape(0, 3))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("cols", [1, 33, 96, 100])
def test_int_codes_roundtrip(small_frames, bits, cols):
    g = torch.Generator().manual_seed(bits)
    # A peaked distribution, as real codes are: entropy well below `bits`.
    half = 2 ** (bits - 1)
    codes = (torch.randn(37, cols, generator=g) * half / 2).round().clamp(-half, half - 1)
    packed = pack_int32(codes.to(torch.int8), bits)
    _, e = roundtrip(packed, bits=bits)
    assert e.get("codes_bits") == bits  # went through the code path, not plain bytes


def test_codes_with_garbage_padding_fall_back_to_bytes():
    packed = pack_int32(torch.zeros(4, 10, dtype=torch.int8), 3)  # 30 of 32 bits used
    packed[0, 0] |= 1 << 31  # a set padding bit: codes alone cannot reproduce the words
    _, e = roundtrip(packed, bits=3)
    assert "codes_bits" not in e and e["layout"] == "bytes"


def test_ratios_near_the_exponent_bound():
    t = weights(1 << 20, torch.bfloat16)
    fast, _ = roundtrip(t, "fast")
    best, _ = roundtrip(t, "max")
    raw = t.numel() * 2
    u = t.view(torch.int16).to(torch.int32) & 0xFFFF
    p = torch.bincount((u >> 7) & 0xFF, minlength=256).double() / t.numel()
    h_exp = float(-(p[p > 0] * p[p > 0].log2()).sum())
    bound = (h_exp + 8) / 16  # exponent entropy + raw sign and mantissa
    # max: Huffman's redundancy, partly paid back by the mantissa's slack; fast trades ratio for speed
    assert best < raw * (bound + 0.005) < fast < raw * 0.68


def test_int4_rtn_codes_within_003_bits_of_entropy():
    from tensorpress.compressors.quantize import rtn_quantize
    from tensorpress.formats.quantized import QuantScheme

    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 1024, generator=g) * torch.rand(512, 1, generator=g)  # rows of different scales
    codes = rtn_quantize(w, QuantScheme(4, 64, True), torch.bfloat16).codes
    packed = pack_int32(codes, 4)
    size, _ = roundtrip(packed, bits=4)
    n, h = code_entropy(packed, 4)
    assert n == codes.numel() and 2.5 < h < 3.9
    assert 8 * size / n < h + 0.03


# ---- crafted and corrupted inputs ---------------------------------------------------------------------


def test_crafted_huge_shape_rejected_before_allocation(monkeypatch):
    blob, e = encode_tensor(weights(1000, torch.bfloat16), "max")

    def no_alloc(*a, **k):
        raise AssertionError("allocated before validating")

    monkeypatch.setattr(entropy.np, "empty", no_alloc)
    coded = np.frombuffer(blob, np.uint8)
    for bad in (
        {"shape": [1 << 40]},  # frames do not add up to it
        {"shape": [1 << 22], "frames": [[1 << 22, 0, 40, 40, 4]]},  # 4 Mi values in 84 bytes
        {"frames": [[1 << 30, 0, *e["frames"][0][2:]]]},  # a frame beyond the bound
        {"frames": e["frames"] + e["frames"]},  # spans more bytes than stored
        {"layout": "nope"},
        {"dtype": "F32"},  # fp32 data with a bf16 layout
    ):
        with pytest.raises(TensorpressError, match="tensor big: corrupt entropy-coded entry"):
            decode_tensor("big", coded, e | bad)


@pytest.fixture(scope="module")
def coded_llama(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ent") / "llama-ent"
    tensorpress.compress(tiny_models["llama"], ENTROPY, out)
    return out


def _flip(path, name: str, where: float) -> None:
    """Flip a byte of tensor `name`'s stored (coded) bytes, `where` ∈ [0, 1) along them."""
    infos, _ = read_header(path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    info = infos[name]
    pos = 8 + n + info.begin + int(where * info.nbytes)
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.02, 0.5, 0.97])
def test_corrupted_stream_names_the_tensor(coded_llama, tmp_path, where):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(coded_llama, bad)
    name = "model.layers.1.mlp.up_proj.weight"
    _flip(bad / "model.safetensors", name, where)
    with pytest.raises(TensorpressError, match=f"tensor {name}"):
        tensorpress.load(bad)


def test_corrupted_raw_mantissa_caught_by_checksum(tmp_path):
    t = weights(3000, torch.bfloat16)
    blob, e = encode_tensor(t, "fast")
    data = bytearray(blob)
    data[-10] ^= 1  # the raw low-byte stream: no zstd to notice, only the CRC
    with pytest.raises(TensorpressError, match="tensor w: checksum mismatch"):
        decode_tensor("w", np.frombuffer(bytes(data), np.uint8), e)


def test_damaged_table_names_the_file(coded_llama, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(coded_llama, bad)
    p = bad / "model.safetensors"
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"][TABLE_KEY] = "{not json"
    blob = json.dumps(header).encode()
    blob += b" " * (n - len(blob)) if len(blob) <= n else b""
    assert len(blob) == n
    p.write_bytes(raw[:8] + blob + raw[8 + n :])
    with pytest.raises(TensorpressError, match=r"model\.safetensors: corrupt entropy table"):
        tensorpress.load(bad)


# ---- recipes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, msg",
    [
        ([{"entropy": {}}, {"rtn": {}}], r"steps\[0\].entropy: must be the last step .* rtn follows"),
        ([{"entropy": {}}, {"entropy": {}}], r"steps\[0\].entropy: must be the last step"),
        ([{"entropy": {}, "ignore": ["lm_head"]}], r"steps\[0\].entropy: takes no targets/ignore"),
        ([{"entropy": {"level": "best"}}], r"steps\[0\].entropy.level: must be 'fast' \| 'max'"),
        ([{"entropy": {"lvl": "max"}}], r"steps\[0\].entropy.lvl: unknown key"),
    ],
)
def test_recipe_placement_errors(steps, msg):
    from tensorpress.pipeline.recipe import load_recipe

    with pytest.raises(TensorpressError, match=msg):
        load_recipe({"steps": steps})


def test_shipped_recipes_parse():
    from tensorpress.pipeline.recipe import load_recipe

    assert load_recipe("entropy-max").steps[-1].name == "entropy"
    r = load_recipe("rtn-w4g64-entropy")
    assert [s.name for s in r.steps] == ["rtn", "entropy"]


# ---- whole outputs ------------------------------------------------------------------------------------


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_entropy_output_loads_to_identical_logits(coded_llama, tiny_models):
    base = tensorpress.load(tiny_models["llama"])
    comp = tensorpress.load(coded_llama)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(base, ids), logits(comp, ids))
    # Every stored tensor decodes to exactly the input's.
    plain, coded = tiny_models["llama"] / "model.safetensors", coded_llama / "model.safetensors"
    with SafetensorsReader([plain]) as a, SafetensorsReader([coded]) as b:
        assert len(b.coded) == len(a.names()) and set(b.names()) == set(a.names())
        for name in a.names():
            assert torch.equal(bits_of(a.get(name)), bits_of(b.get(name))), name
    stored = (coded_llama / "model.safetensors").stat().st_size
    assert stored < 0.75 * (tiny_models["llama"] / "model.safetensors").stat().st_size


def test_eval_on_coded_output_equals_eval_on_input(coded_llama, tiny_models, text_file):
    a = tensorpress.evaluate(coded_llama, text=str(text_file), windows=2, seqlen=32)
    b = tensorpress.evaluate(tiny_models["llama"], text=str(text_file), windows=2, seqlen=32)
    assert a["ppl"] == b["ppl"] and a["tokens"] == b["tokens"]


def test_rtn_then_entropy_equals_rtn(tiny_models, tmp_path):
    plain, coded = tmp_path / "rtn", tmp_path / "rtn-ent"
    tensorpress.compress(tiny_models["qwen2"], {"steps": RTN_ENTROPY["steps"][:1]}, plain)
    tensorpress.compress(tiny_models["qwen2"], RTN_ENTROPY, coded)
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(tensorpress.load(plain), ids), logits(tensorpress.load(coded), ids))
    with SafetensorsReader([coded / "model.safetensors"]) as r:
        packed = [n for n in r.names() if n.endswith("weight_packed")]
        assert packed and all(r.coded[n].get("codes_bits") == 4 for n in packed)
    s_plain, s_coded = size_stats(plain), size_stats(coded)
    assert s_coded["params"] == s_plain["params"]
    assert s_coded["bits_per_weight"] < s_plain["bits_per_weight"]  # coded bytes counted for real
    assert s_coded["size_bytes"] < s_plain["size_bytes"]
    # decompress gives the same dense checkpoint from both
    decompress(plain, tmp_path / "d1")
    decompress(coded, tmp_path / "d2")
    with (
        SafetensorsReader([tmp_path / "d1/model.safetensors"]) as a,
        SafetensorsReader([tmp_path / "d2/model.safetensors"]) as b,
    ):
        for name in a.names():
            assert torch.equal(a.get(name), b.get(name)), name


def test_cli_inspect_shows_ratios(coded_llama, capsys):
    assert main(["inspect", str(coded_llama)]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "entropy-coded:" in out and "BF16" in out
    assert main(["inspect", str(coded_llama), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    t = next(t for t in info["tensors"] if t["name"] == "model.embed_tokens.weight")
    assert t["dtype"] == "BF16" and t["shape"] == [320, 96] and 0.5 < t["ratio"] < 0.8
    assert 0.5 < info["summary"]["entropy"]["ratio"] < 0.8
