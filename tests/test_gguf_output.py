"""GGUF output end to end on tiny models.

Oracles: gguf-py's reader + dequantizer of the written file gives bit-for-bit the weights the pipeline
computed with (every type; rows that are multiples of 256 for the K-types, 576-wide rows for their
fallback path); transformers' own GGUF loader gives the same logits as `tensorpress.load`; a GGUF input
keeps its tokenizer through a GGUF → GGUF run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import tensorpress
from tensorpress.errors import TensorpressError
from tensorpress.formats.ggml_types import TYPES
from tensorpress.formats.gguf_names import llama_unpermute_rows
from tensorpress.pipeline import layers
from tensorpress.pipeline.gguf_mix import TensorSlot, mix_types, preset_type
from tests.conftest import make_model


def _model(folder: Path, arch: str, hidden: int, inter: int) -> Path:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(
        arch,
        vocab_size=320,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=arch == "qwen2",
    )
    return make_model(folder, arch, config=cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-models")
    return {
        "llama256": _model(root / "llama256", "llama", 256, 512),
        "qwen2_256": _model(root / "qwen2_256", "qwen2", 256, 512),
        "mistral256": _model(root / "mistral256", "mistral", 256, 512),
        "llama576": _model(root / "llama576", "llama", 576, 1536),
    }


def _calib(text_file: Path) -> dict:
    return {"text": str(text_file), "samples": 4, "seqlen": 32}


def _compress_capturing(src: Path, recipe: dict, out: Path, monkeypatch) -> dict[str, torch.Tensor]:
    """Run compress; return module → the dequantized weight the pipeline computed with."""
    seen: dict[str, torch.Tensor] = {}
    original = layers.packed_tensors

    def spy(owner, qw):
        seen[owner] = qw.dequantize().clone()
        return original(owner, qw)

    monkeypatch.setattr(layers, "packed_tensors", spy)
    tensorpress.compress(src, recipe, out)
    return seen


def _file_weights(out: Path, config: dict) -> dict[str, np.ndarray]:
    """llama.cpp name → gguf-py's dequantization of the written tensor, rows back in HF order."""
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    res = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        if config["model_type"] in ("llama", "mistral") and re.search(r"attn_[qk]\.weight$", t.name):
            heads = config["num_attention_heads"] if "attn_q" in t.name else config["num_key_value_heads"]
            w = llama_unpermute_rows(w, config["num_attention_heads"], heads)
        res[t.name] = (t.tensor_type.name, w)
    return res


def _gguf_name(hf: str) -> str:
    m = re.search(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)", hf)
    role = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    role |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    return f"blk.{m.group(1)}.{role[m.group(3)]}.weight"


@pytest.mark.parametrize("type_name", list(TYPES))
def test_file_holds_exactly_the_weights_computed_with(models, text_file, tmp_path, monkeypatch, type_name):
    src = models["llama256"]  # 256 wide: every type fits (the 576-wide fallback: the next test)
    recipe = {
        "calibration": _calib(text_file),
        "gguf": {"type": type_name, "pure": True},
        "steps": [{"gptq": {}, "ignore": ["lm_head"]}],
    }
    seen = _compress_capturing(src, recipe, tmp_path / "o", monkeypatch)
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    stored = _file_weights(tmp_path / "o", config)
    assert len(seen) == 14  # 7 Linears × 2 layers (the head is quantized at export, on the mix's type)
    for module, w in seen.items():
        kind, fw = stored[_gguf_name(module)]
        assert kind == type_name
        assert np.array_equal(fw.view(np.uint32), w.numpy().view(np.uint32)), module


def test_fallback_for_rows_not_multiple_of_256(models, text_file, tmp_path):
    recipe = {"calibration": _calib(text_file), "gguf": {"type": "Q4_K_M"}, "steps": [{"rtn": {}}]}
    out = tmp_path / "o"
    tensorpress.compress(models["llama576"], recipe, out)
    types = json.loads((out / "config.json").read_text())["tensorpress"]["gguf"]["tensors"]
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q5_0"  # 576 wide: Q4_K → Q5_0
    assert types["model.layers.0.mlp.down_proj.weight"] == "Q4_K"  # 1536 wide: no fallback needed
    assert types["model.layers.1.mlp.down_proj.weight"] == "Q6_K"  # the last layer gets more bits
    assert types["model.layers.1.self_attn.v_proj.weight"] == "Q8_0"  # Q6_K → Q8_0 on 576-wide rows
    assert types["model.norm.weight"] == "F32"


@pytest.mark.parametrize("arch", ["llama256", "qwen2_256", "mistral256"])
def test_transformers_gguf_loader_gives_same_logits(models, text_file, tmp_path, arch):
    from transformers import AutoModelForCausalLM

    recipe = {
        "calibration": _calib(text_file),
        "gguf": {"type": "Q4_K_M"},
        "steps": [{"awq": {}, "ignore": ["lm_head"]}, {"gptq": {}, "ignore": ["lm_head"]}],
    }
    out = tmp_path / "o"
    tensorpress.compress(models[arch], recipe, out)
    assert not list(out.glob("*.safetensors"))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = tensorpress.load(out)
    theirs = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_eval_inspect_and_sizes_read_the_gguf(models, text_file, tmp_path):
    recipe = {"calibration": _calib(text_file), "gguf": {"type": "Q4_0"}, "steps": [{"rtn": {}}]}
    out = tmp_path / "o"
    res = tensorpress.compress(models["llama256"], recipe, out, eval_text=str(text_file), windows=2, seqlen=32)
    rep = res.report
    assert rep["ppl"] > 1 and rep["kl"] > 0
    assert rep["size_bytes"] == (out / "model.gguf").stat().st_size
    # Q4_0 Linears (4.5 bits) and the untied head on the mix's Q8_0 (8.5 bits)
    assert 4.5 < rep["bits_per_weight"] < 8.5
    info = tensorpress_inspect(out)
    assert {q["scheme"] for q in info["quantized"]} >= {"Q4_0"}
    m = tensorpress.evaluate(out, base=models["llama256"], text=str(text_file), windows=2, seqlen=32)
    assert m["ppl"] == pytest.approx(rep["ppl"])


def tensorpress_inspect(path: Path) -> dict:
    from tensorpress.formats.inspection import inspect_path

    return inspect_path(path)


def test_gguf_input_keeps_its_tokenizer(models, text_file, tmp_path):
    from tensorpress.formats.gguf_meta import copy_tokenizer_kv

    recipe = {"gguf": {"type": "Q8_0"}, "steps": [{"rtn": {}}]}
    first = tmp_path / "first"
    tensorpress.compress(models["llama256"], recipe, first)
    second = tmp_path / "second"
    tensorpress.compress(first / "model.gguf", recipe, second)
    a, b = copy_tokenizer_kv(first / "model.gguf"), copy_tokenizer_kv(second / "model.gguf")
    assert a == b and a["tokenizer.ggml.model"] == "gpt2"


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ({"gguf": {"type": "Q4_K_M"}, "steps": [{"gptq": {"bits": 3}}]}, r"steps\[0\]\.gptq\.bits: is set by"),
        ({"gguf": {"type": "Q7_K"}, "steps": [{"rtn": {}}]}, r"gguf\.type: unknown GGUF type"),
        ({"gguf": {"type": "Q4_0"}, "steps": [{"svd": {"rank": 8}}, {"rtn": {}}]}, r"steps\[0\]\.svd: GGUF output"),
        ({"gguf": {"type": "Q4_0", "colour": 1}, "steps": [{"rtn": {}}]}, r"gguf\.colour: unknown key"),
        ({"gguf": "Q4_0", "steps": [{"rtn": {}}]}, r"gguf: must be a mapping"),
    ],
)
def test_bad_gguf_recipes_rejected(recipe, match):
    from tensorpress.pipeline.recipe import load_recipe

    with pytest.raises(TensorpressError, match=match):
        load_recipe(recipe)


def test_unsupported_architecture_named(tiny_models, tmp_path):
    with pytest.raises(TensorpressError, match="gpt2"):
        tensorpress.compress(tiny_models["gpt2"], {"gguf": {"type": "Q8_0"}, "steps": [{"rtn": {}}]}, tmp_path / "o")


def test_preset_mixes_follow_llama_quantize():
    cfg = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}
    mods = {
        f"model.layers.{i}.{m}": w for i in range(30) for m, w in [("self_attn.v_proj", 576), ("mlp.down_proj", 1536)]
    }
    mods["model.embed_tokens"] = 576
    q4km = mix_types("Q4_K_M", mods, cfg)
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}  # use_more_bits(i, 30)
    assert {i for i in range(30) if q4km[f"model.layers.{i}.mlp.down_proj"] == "Q6_K"} == more
    assert q4km["model.layers.3.mlp.down_proj"] == "Q4_K"
    assert q4km["model.layers.0.self_attn.v_proj"] == "Q8_0" and q4km["model.layers.3.self_attn.v_proj"] == "Q5_0"
    assert q4km["model.embed_tokens"] == "Q8_0"  # tied: the head's rule; 576 is not a multiple of 256
    q3 = mix_types("Q3_K_M", mods, cfg)
    assert q3["model.layers.0.mlp.down_proj"] == "Q5_K" and q3["model.layers.1.mlp.down_proj"] == "Q4_K"
    assert q3["model.layers.0.self_attn.v_proj"] == "Q5_1" and q3["model.layers.2.self_attn.v_proj"] == "Q5_0"
    q2 = mix_types("Q2_K", mods, cfg)
    assert q2["model.layers.4.mlp.down_proj"] == "Q3_K" and q2["model.layers.4.self_attn.v_proj"] == "Q4_0"
    assert preset_type("Q2_K", TensorSlot("attn_q", 3, 2048), 30, 3, True) == "Q2_K"


def test_auto_precision_allocates_gguf_types(models, text_file, tmp_path, monkeypatch):
    """A budget with GGUF output: the knapsack picks a GGUF type per tensor, the file holds those types, the
    bits per weight of the allocated tensors stay under the target, and transformers reads the mixed file."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("tensorpress.pipeline.auto.measure.cache_dir", lambda: tmp_path / "cache")
    recipe = {
        "calibration": _calib(text_file),
        "gguf": {"type": "Q4_K_M"},
        "budget": {"bits_per_weight": 4.0, "samples": 4, "fisher_samples": 4},
        "steps": [{"gptq": {}, "ignore": ["lm_head"]}],
    }
    out = tmp_path / "o"
    tensorpress.compress(models["llama256"], recipe, out)
    cfg = json.loads((out / "config.json").read_text())["tensorpress"]
    auto, stored = cfg["auto"], cfg["gguf"]["tensors"]
    chosen = {n: m["type"] for n, m in auto["modules"].items()}
    assert len(chosen) == 14 and len(set(chosen.values())) > 1  # really mixed
    assert all(stored[n + ".weight"] == t for n, t in chosen.items())
    assert 0.9 * 4.0 <= auto["bits_per_weight"] <= 4.0
    nbytes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert sum(nbytes[_gguf_name(n)] for n in chosen) == auto["bytes"]
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(tensorpress.load(out)(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5)


def test_auto_precision_gguf_recipe_errors(models, text_file, tmp_path):
    base = {"calibration": _calib(text_file), "steps": [{"gptq": {}, "ignore": ["lm_head"]}]}
    with pytest.raises(TensorpressError, match=r"budget\.size: with GGUF output give bits_per_weight"):
        tensorpress.compress(models["llama256"], {**base, "gguf": {}, "budget": {"size": "1MB"}}, tmp_path / "a")
    with pytest.raises(TensorpressError, match=r"--target-size 1MB: with GGUF output give --target-bpw"):
        tensorpress.compress(models["llama256"], {**base, "gguf": {}}, tmp_path / "t", target_size="1MB")
    with pytest.raises(TensorpressError, match=r"budget\.estimator: repaired is not for GGUF output"):
        recipe = {**base, "gguf": {}, "budget": {"estimator": "repaired", "bits_per_weight": 4}}
        tensorpress.compress(models["llama256"], recipe, tmp_path / "r")
    with pytest.raises(TensorpressError, match=r"budget\.types: GGUF types are candidates only with GGUF output"):
        tensorpress.compress(models["llama256"], {**base, "budget": {"types": ["Q4_K"]}}, tmp_path / "b")
    with pytest.raises(TensorpressError, match=r"budget\.types: unknown GGUF type 'Q9_K'"):
        recipe = {**base, "gguf": {}, "budget": {"types": ["Q9_K"], "bits_per_weight": 4}}
        tensorpress.compress(models["llama256"], recipe, tmp_path / "c")
