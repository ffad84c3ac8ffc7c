"""Tests for gguf_write: tiny random models + tiny trained tokenizers, read back by gguf-py and transformers.

Everything is built in-test (no network, no model cache needed). The real SmolLM2 tokenizer is used in
addition when it is in tensorpress's cache. Why transformers: it is the independent GGUF reader we have
here (llama.cpp is not installed), and its loader undoes llama.cpp's conventions (names, q/k permutation,
tokenizer metadata), so a match proves we wrote what llama.cpp's converter would.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from tensorpress.errors import TensorpressError as GGUFExportError
from tensorpress.formats.gguf_meta import copy_tokenizer_kv, read_gguf_meta
from tensorpress.formats.gguf_names import gguf_tensor_name, llama_permute_rows, llama_unpermute_rows
from tensorpress.formats.gguf_vocab import tokenizer_kv_from_dir
from tensorpress.formats.gguf_write import GGUFTensor, write_gguf

Q8_0 = gguf.GGMLQuantizationType.Q8_0
F16 = gguf.GGMLQuantizationType.F16
F32 = gguf.GGMLQuantizationType.F32

CACHE = Path.home() / ".cache" / "tensorpress"
SMOLLM2_DIR = CACHE / "models" / "SmolLM2-135M-Instruct"
KJV_TEXT = CACHE / "text" / "kjv-eval.txt"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_TOKEN = "<think>"  # a non-special added token -> USER_DEFINED in GGUF
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS_TEXT = (
    "the and of to in that shall he unto I his a for they be is him not them it with all thou thy was God which "
    "my me said but ye their have will thee from as are when this out were upon man by you Israel king son up "
    "there hath then people came had house into on her come one we children s before your also day land men "
    "naïve café résumé Zürich東京 données über señor œuvre"
)
WORDS = _WORDS_TEXT.split()
PUNCT = [".", ",", ";", ":", "!", "?", "'s", "'ll", "n't", " -", " —", " (", ")", '"', "...", "\n", "\n\n", "\t", "  "]


def varied_text(seed: int, n_chars: int, specials: bool = True) -> str:
    """English-ish text with punctuation, digits, unicode, emoji, odd whitespace and (optionally) special tokens."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        r = rng.random()
        if r < 0.62:
            piece = " " + rng.choice(WORDS)
        elif r < 0.80:
            piece = rng.choice(PUNCT)
        elif r < 0.88:
            piece = " " + str(rng.choice([rng.randint(0, 9), rng.randint(10, 999), rng.randint(1000, 10**7)]))
        elif r < 0.92:
            piece = rng.choice([" 3.14159", " 1,000", " 2024-01-31", " $42", " 100%", " x²", " ½"])
        elif r < 0.95:
            piece = rng.choice([" 😀", " ✓", " Ελληνικά", " русский", " العربية", " 한국어"])
        elif specials and r < 0.98:
            piece = rng.choice([*SPECIALS, USER_TOKEN])
        else:
            piece = rng.choice([" I'M", " DON'T", " We've", " it'd", "\r\n"])
        out.append(piece)
        size += len(piece)
    return "".join(out)


def build_bpe_tokenizer(style: str, out_dir: Path, vocab_size: int = 320) -> Path:
    """Train a byte-level BPE in the pre-tokenizer style of a model family and save it as an HF tokenizer."""
    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif style in ("llama3", "qwen2"):
        split = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        raise ValueError(style)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [varied_text(seed, 2000, specials=False) for seed in range(40)]
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token=None,
        pad_token="<|endoftext|>",
    )
    hf.add_tokens([USER_TOKEN])  # non-special added token
    hf.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {style: build_bpe_tokenizer(style, root / style) for style in ("gpt2", "llama3", "qwen2", "smollm")}


@pytest.fixture(scope="session")
def sample_text() -> str:
    """A few thousand characters: KJV from the tensorpress cache when present, plus generated varied text."""
    text = varied_text(12345, 4000)
    if KJV_TEXT.is_file():
        text = KJV_TEXT.read_text(encoding="utf-8")[:4000] + "\n" + text
    return text


def tiny_config(kind: str, vocab_size: int, **overrides: Any) -> Any:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.1,  # larger than default so logits carry real signal
        bos_token_id=None,
        eos_token_id=None,
    )
    common.update(overrides)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind]
    return cls(**common)


def make_model(config: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms are all-ones at init: randomise so a mis-mapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return model


def padded_vocab(tok_dir: Path) -> int:
    """Model vocab bigger than the tokenizer (like Qwen2's 151936), so the token padding path is exercised."""
    n = len(AutoTokenizer.from_pretrained(tok_dir))
    return (n + 31) // 32 * 32


def hf_tensors(model: torch.nn.Module, quant: str) -> tuple[list[GGUFTensor], dict[str, torch.Tensor]]:
    """GGUFTensors for ``model``; 2-D weights as F32/F16/Q8_0 per ``quant``. Also returns the weights as they
    will read back (dequantized), which is the exact reference for the loaded model."""
    out: list[GGUFTensor] = []
    effective: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        arr = t.detach().float().numpy()  # (out, in) or (n,)
        if arr.ndim == 2 and quant == "q8_0":
            raw = gguf.quants.quantize(arr, Q8_0)  # (out, in/32*34) uint8
            out.append(GGUFTensor(name, raw, Q8_0, arr.shape))
            effective[name] = torch.from_numpy(gguf.quants.dequantize(raw, Q8_0).reshape(arr.shape))
        elif arr.ndim == 2 and quant == "f16":
            out.append(GGUFTensor(name, arr.astype(np.float16), F16, arr.shape))
            effective[name] = torch.from_numpy(arr.astype(np.float16).astype(np.float32))
        else:
            out.append(GGUFTensor(name, arr, F32, arr.shape))
            effective[name] = torch.from_numpy(arr)
    return out, effective


def export(
    model: torch.nn.Module, tok_dir: Path, path: Path, quant: str = "f32", **kw: Any
) -> tuple[Path, torch.nn.Module]:
    """Write ``model`` to ``path``; return the path and a reference model holding the effective weights."""
    tensors, effective = hf_tensors(model, quant)
    write_gguf(path, model.config.to_dict(), tok_dir, tensors, **kw)
    ref = type(model)(model.config).eval()
    ref.load_state_dict(effective)
    return path, ref


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load_gguf_model(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def assert_tokenizer_matches(tok_dir: Path, gguf_path: Path, text: str) -> None:
    ref = AutoTokenizer.from_pretrained(tok_dir)
    got = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    assert got(text)["input_ids"] == ref(text)["input_ids"]
    for line in text.splitlines()[:200]:
        assert got(line)["input_ids"] == ref(line)["input_ids"], line


IDS = torch.tensor([[5, 17, 200, 3, 99, 250, 1, 42, 7, 300, 12, 64]])


# ----------------------------------------------------------------------------------------------------------------
# 1 + 2: round trips through transformers' GGUF loader
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "style"),
    [("llama", "gpt2"), ("llama", "llama3"), ("llama", "smollm"), ("mistral", "gpt2"), ("qwen2", "qwen2")],
)
def test_f32_roundtrip_logits_and_tokenizer(
    kind: str, style: str, tok_dirs: dict[str, Path], sample_text: str, tmp_path: Path
) -> None:
    tok_dir = tok_dirs[style]
    model = make_model(tiny_config(kind, padded_vocab(tok_dir)))
    path, _ = export(model, tok_dir, tmp_path / "m-f32.gguf", "f32", file_type=gguf.LlamaFileType.ALL_F32)

    loaded = load_gguf_model(path)
    torch.testing.assert_close(logits(loaded, IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)
    assert_tokenizer_matches(tok_dir, path, sample_text)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_quantized_roundtrip_logits(kind: str, quant: str, tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["qwen2" if kind == "qwen2" else "gpt2"]
    model = make_model(tiny_config(kind, padded_vocab(tok_dir)))
    path, ref = export(model, tok_dir, tmp_path / f"m-{quant}.gguf", quant)

    loaded = load_gguf_model(path)
    got = logits(loaded, IDS)
    # exact vs. the dequantized weights: proves quantized rows (incl. permuted q/k rows) landed in place
    torch.testing.assert_close(got, logits(ref, IDS), atol=1e-4, rtol=1e-4)
    # and close to the original float model, within what the format loses
    orig = logits(model, IDS)
    tol = {"f16": 2e-3, "q8_0": 3e-2}[quant] * orig.abs().max().item()
    assert (got - orig).abs().max().item() < tol

    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    want = {"f16": F16, "q8_0": Q8_0}[quant]
    assert types["blk.0.attn_q.weight"] == want and types["token_embd.weight"] == want
    assert types["blk.0.attn_norm.weight"] == F32


@pytest.mark.e2e
@pytest.mark.skipif(not (SMOLLM2_DIR / "tokenizer.json").is_file(), reason="SmolLM2 not in the tensorpress cache")
def test_real_smollm2_tokenizer(sample_text: str, tmp_path: Path) -> None:
    """The real 49k-token SmolLM2 tokenizer. Metadata is checked on the generated KV (GGUFReader needs ~5 s
    to parse 49k tokens + 49k merges); the file itself is checked by transformers re-building the tokenizer."""
    cfg = json.loads((SMOLLM2_DIR / "config.json").read_text())
    tok_json = json.loads((SMOLLM2_DIR / "tokenizer.json").read_text())
    # recognised without any name hint (its StarCoder-style special tokens), and with one
    kv = tokenizer_kv_from_dir(SMOLLM2_DIR, {"model_type": "llama", "vocab_size": cfg["vocab_size"]})
    assert kv["tokenizer.ggml.pre"] == "smollm"
    assert tokenizer_kv_from_dir(SMOLLM2_DIR, cfg, name_hint="SmolLM2-135M")["tokenizer.ggml.pre"] == "smollm"
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.merges"] == [" ".join(m) for m in tok_json["model"]["merges"]]
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    assert kv["tokenizer.ggml.add_bos_token"] is False
    assert "SmolLM" in kv["tokenizer.chat_template"]  # from chat_template.jinja

    model = make_model(tiny_config("llama", cfg["vocab_size"], tie_word_embeddings=True))
    path, _ = export(model, SMOLLM2_DIR, tmp_path / "smol.gguf", "f32", name="SmolLM2-135M-Instruct")
    assert_tokenizer_matches(SMOLLM2_DIR, path, sample_text)


# ----------------------------------------------------------------------------------------------------------------
# 3: what is in the file
# ----------------------------------------------------------------------------------------------------------------


def test_file_contents_names_metadata_and_permutation(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["gpt2"]
    config = tiny_config("llama", padded_vocab(tok_dir))
    model = make_model(config)
    path, _ = export(model, tok_dir, tmp_path / "m.gguf", "f32", name="tiny-llama", file_type=0)
    reader = gguf.GGUFReader(str(path))
    meta = read_gguf_meta(path)
    tok_json = json.loads((tok_dir / "tokenizer.json").read_text())
    hf_tok = AutoTokenizer.from_pretrained(tok_dir)

    # metadata llama.cpp reads for the llama arch
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "tiny-llama"
    assert meta["general.file_type"] == 0
    assert meta["general.quantization_version"] == 2
    expected = {
        "llama.context_length": 256,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": config.vocab_size,
    }
    for key, value in expected.items():
        assert meta[key] == value, key
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)

    # tokenizer
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.merges"]) == len(tok_json["model"]["merges"])
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config.vocab_size
    vocab = hf_tok.get_vocab()
    for text, tid in vocab.items():
        assert tokens[tid] == text
    assert types[vocab["<|im_start|>"]] == gguf.TokenType.CONTROL
    assert types[vocab[USER_TOKEN]] == gguf.TokenType.USER_DEFINED
    assert types[vocab["a"]] == gguf.TokenType.NORMAL
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]" and types[-1] == gguf.TokenType.UNUSED
    assert meta["tokenizer.ggml.bos_token_id"] == vocab["<|endoftext|>"]
    assert meta["tokenizer.ggml.eos_token_id"] == vocab["<|im_end|>"]
    assert meta["tokenizer.ggml.padding_token_id"] == vocab["<|endoftext|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE

    # llama.cpp tensor names
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_q.weight"} <= names
    assert {"blk.1.attn_k.weight", "blk.1.attn_v.weight", "blk.1.attn_output.weight", "blk.1.ffn_gate.weight"} <= names
    assert {"blk.1.ffn_up.weight", "blk.1.ffn_down.weight", "blk.1.attn_norm.weight", "blk.1.ffn_norm.weight"} <= names
    assert not any(n.startswith("model.") for n in names)

    # q/k permutation round-trips; v is stored as is
    sd = model.state_dict()
    by_name = {t.name: np.asarray(t.data) for t in reader.tensors}
    q = by_name["blk.0.attn_q.weight"]  # (out, in) as read back
    k = by_name["blk.1.attn_k.weight"]
    assert q.shape == (64, 64) and k.shape == (32, 64)
    np.testing.assert_array_equal(llama_unpermute_rows(q, 4, 4), sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(llama_unpermute_rows(k, 4, 2), sd["model.layers.1.self_attn.k_proj.weight"].numpy())
    assert not np.array_equal(q, sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(by_name["blk.0.attn_v.weight"], sd["model.layers.0.self_attn.v_proj.weight"].numpy())


def test_quantized_rows_are_permuted_as_whole_rows(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["gpt2"]
    model = make_model(tiny_config("llama", padded_vocab(tok_dir)))
    path, _ = export(model, tok_dir, tmp_path / "q.gguf", "q8_0")
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: np.asarray(t.data) for t in reader.tensors}["blk.0.attn_k.weight"]  # (32, 2*34) uint8
    hf_k = model.state_dict()["model.layers.0.self_attn.k_proj.weight"].numpy()
    assert raw.dtype == np.uint8 and raw.shape == (32, 68)
    np.testing.assert_array_equal(llama_unpermute_rows(raw, 4, 2), gguf.quants.quantize(hf_k, Q8_0))


def test_qwen2_file_has_biases_and_no_permutation(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["qwen2"]
    model = make_model(tiny_config("qwen2", padded_vocab(tok_dir)))
    path, _ = export(model, tok_dir, tmp_path / "qw.gguf", "f32")
    meta = read_gguf_meta(path)
    assert meta["general.architecture"] == "qwen2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["qwen2.attention.head_count_kv"] == 2
    data = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    sd = model.state_dict()
    for proj in "qkv":
        np.testing.assert_array_equal(data[f"blk.0.attn_{proj}.bias"], sd[f"model.layers.0.self_attn.{proj}_proj.bias"])
    np.testing.assert_array_equal(data["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"])


def test_pre_tokenizer_choice(tok_dirs: dict[str, Path]) -> None:
    def pre(style: str, cfg: dict[str, Any], **kw: Any) -> str:
        return tokenizer_kv_from_dir(tok_dirs[style], cfg, **kw)["tokenizer.ggml.pre"]

    assert pre("gpt2", {"model_type": "llama"}) == "gpt-2"
    assert pre("llama3", {"model_type": "llama"}) == "llama-bpe"
    assert pre("qwen2", {"model_type": "llama"}) == "qwen2"  # recognised by its split regex
    assert pre("gpt2", {"model_type": "qwen2"}) == "qwen2"  # and by model_type
    assert pre("smollm", {"model_type": "llama"}) == "smollm"  # Digits + ByteLevel structure
    assert pre("gpt2", {"model_type": "llama", "_name_or_path": "HuggingFaceTB/SmolLM2-360M"}) == "smollm"
    assert pre("gpt2", {"model_type": "llama"}, name_hint="my-smollm2-q4") == "smollm"
    assert pre("gpt2", {"model_type": "llama"}, pre="tekken") == "tekken"  # explicit override wins


def test_merges_pair_form_and_gap_padding(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Newer tokenizer.json stores merges as pairs; ids may be non-contiguous: both must still export."""
    src = tok_dirs["gpt2"]
    dst = tmp_path / "tok"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    tj = json.loads((src / "tokenizer.json").read_text())
    as_strings = tj["model"]["merges"]
    as_strings = [m if isinstance(m, str) else " ".join(m) for m in as_strings]
    tj["model"]["merges"] = [m.split(" ") for m in as_strings]
    top = max(a["id"] for a in tj["added_tokens"])
    tj["added_tokens"].append({**tj["added_tokens"][0], "id": top + 3, "content": "<|gap|>", "special": True})
    (dst / "tokenizer.json").write_text(json.dumps(tj))

    kv = tokenizer_kv_from_dir(dst, {"model_type": "llama", "vocab_size": top + 10})
    assert kv["tokenizer.ggml.merges"] == as_strings
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == top + 10
    assert tokens[top + 1] == f"[PAD{top + 1}]" and types[top + 1] == gguf.TokenType.UNUSED
    assert tokens[top + 3] == "<|gap|>" and types[top + 3] == gguf.TokenType.CONTROL


def test_copy_tokenizer_kv_roundtrip(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["llama3"]
    model = make_model(tiny_config("llama", padded_vocab(tok_dir)))
    first, _ = export(model, tok_dir, tmp_path / "a.gguf")
    kv = copy_tokenizer_kv(first)
    tensors, _ = hf_tensors(model, "f32")
    second = tmp_path / "b.gguf"
    write_gguf(second, model.config.to_dict(), None, tensors, tokenizer_source=kv)
    a, b = read_gguf_meta(first), read_gguf_meta(second)
    tok_a = {k: v for k, v in a.items() if k.startswith("tokenizer.")}
    tok_b = {k: v for k, v in b.items() if k.startswith("tokenizer.")}
    assert tok_a == tok_b and len(tok_a) >= 10
    types_a = {k: f.types for k, f in gguf.GGUFReader(str(first)).fields.items() if k.startswith("tokenizer.")}
    types_b = {k: f.types for k, f in gguf.GGUFReader(str(second)).fields.items() if k.startswith("tokenizer.")}
    assert types_a == types_b


# ----------------------------------------------------------------------------------------------------------------
# 4: errors, tied embeddings, edge cases
# ----------------------------------------------------------------------------------------------------------------


def test_unsupported_architecture_raises(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = {"model_type": "gpt2", "vocab_size": 320, "n_layer": 2, "n_head": 4, "n_embd": 64}
    with pytest.raises(GGUFExportError, match="gpt2"):
        write_gguf(tmp_path / "x.gguf", cfg, tok_dirs["gpt2"], [])
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(GGUFExportError, match="gemma"):
        gguf_tensor_name("model.embed_tokens.weight", "gemma", 2)


def test_tied_embeddings_have_no_output_weight(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["smollm"]
    model = make_model(tiny_config("llama", padded_vocab(tok_dir), tie_word_embeddings=True))
    tensors, _ = hf_tensors(model, "f32")
    if not any(t.hf_name == "lm_head.weight" for t in tensors):  # the caller may pass it anyway: must be skipped
        w = model.lm_head.weight.detach().numpy()
        tensors.append(GGUFTensor("lm_head.weight", w, F32, w.shape))
    path = tmp_path / "tied.gguf"
    write_gguf(path, model.config.to_dict(), tok_dir, tensors)
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    loaded = load_gguf_model(path)
    assert loaded.config.tie_word_embeddings
    torch.testing.assert_close(logits(loaded, IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok_dir = tok_dirs["gpt2"]
    model = make_model(tiny_config("llama", padded_vocab(tok_dir)))
    cfg = model.config.to_dict()
    tensors, _ = hf_tensors(model, "f32")
    out = tmp_path / "bad.gguf"

    with pytest.raises(GGUFExportError, match="ffn_down"):  # a missing tensor llama.cpp needs
        write_gguf(out, cfg, tok_dir, [t for t in tensors if "layers.1.mlp.down_proj" not in t.hf_name])
    bad_shape = [
        GGUFTensor(t.hf_name, t.data, t.ggml_type, (1, *t.shape)) if "q_proj" in t.hf_name else t for t in tensors
    ]
    with pytest.raises(GGUFExportError, match="shape"):
        write_gguf(out, cfg, tok_dir, bad_shape)
    float_as_q8 = [GGUFTensor(t.hf_name, t.data, Q8_0, t.shape) if "q_proj" in t.hf_name else t for t in tensors]
    with pytest.raises(GGUFExportError, match="uint8"):
        write_gguf(out, cfg, tok_dir, float_as_q8)
    with pytest.raises(GGUFExportError, match="no GGUF tensor name"):
        write_gguf(out, cfg, tok_dir, [*tensors, GGUFTensor("model.extra.weight", np.zeros(4), F32, (4,))])
    with pytest.raises(GGUFExportError, match="tokens"):
        write_gguf(out, {**cfg, "vocab_size": 100}, tok_dir, tensors)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_permutation_unit() -> None:
    # one head of 4 rows: HF rotate-half [x0, x1, y0, y1] -> llama.cpp interleaved [x0, y0, x1, y1]
    w = np.arange(4)[:, None] * np.ones((1, 3))
    np.testing.assert_array_equal(llama_permute_rows(w, 1)[:, 0], [0, 2, 1, 3])
    # GQA: k uses the kv head count; bias (1-D) and byte rows behave the same
    rng = np.random.default_rng(0)
    k = rng.standard_normal((32, 64)).astype(np.float32)
    np.testing.assert_array_equal(llama_unpermute_rows(llama_permute_rows(k, 4, 2), 4, 2), k)
    np.testing.assert_array_equal(llama_permute_rows(k, 4, 2), llama_permute_rows(k, 2))
    np.testing.assert_array_equal(llama_permute_rows(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])
    with pytest.raises(GGUFExportError):
        llama_permute_rows(np.zeros((6, 2)), 2)


def test_llama3_rope_scaling_writes_rope_freqs(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Llama 3.x rope scaling is carried by a rope_freqs tensor in llama.cpp; check it against transformers."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tok_dir = tok_dirs["llama3"]
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    config = tiny_config("llama", padded_vocab(tok_dir), rope_parameters=rope)
    model = make_model(config)
    path, _ = export(model, tok_dir, tmp_path / "rope.gguf")
    freqs = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}["rope_freqs.weight"]
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    np.testing.assert_allclose(freqs, (base / scaled.double()).numpy(), rtol=1e-5)
    assert read_gguf_meta(path)["llama.rope.freq_base"] == pytest.approx(500000.0)


# ----------------------------------------------------------------------------------------------------------------
# SentencePiece-style tokenizers (lower priority path)
# ----------------------------------------------------------------------------------------------------------------


def build_spm_style_tokenizer(out_dir: Path) -> Path:
    """A Llama-2/Mistral-like tokenizer.json: BPE over '▁'-spaced text with <0xXX> byte fallback, BOS added."""
    from tokenizers import processors

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    tok.train_from_iterator([varied_text(seed, 2000, specials=False) for seed in range(40)], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    # like the real files: byte pieces are ordinary vocab entries, only <unk>/<s>/</s> are added tokens
    tj = json.loads((out_dir / "tokenizer.json").read_text())
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["content"] in ("<unk>", "<s>", "</s>")]
    (out_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    return out_dir


def test_spm_style_tokenizer_json_exports_as_llama(sample_text: str, tmp_path: Path) -> None:
    tok_dir = build_spm_style_tokenizer(tmp_path / "spm")
    model = make_model(tiny_config("mistral", padded_vocab(tok_dir)))
    path, _ = export(model, tok_dir, tmp_path / "spm.gguf")
    meta = read_gguf_meta(path)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    vocab = AutoTokenizer.from_pretrained(tok_dir).get_vocab()
    types, scores = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.scores"]
    assert types[vocab["<0x41>"]] == gguf.TokenType.BYTE
    assert types[vocab["<unk>"]] == gguf.TokenType.UNKNOWN
    assert types[vocab["<s>"]] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.bos_token_id"] == vocab["<s>"]
    merged = [t for t in vocab if t.startswith("▁") and len(t) > 2]
    assert merged and all(scores[vocab[t]] < 0 for t in merged)  # merge rank carried as score
    assert_tokenizer_matches(tok_dir, path, sample_text)
    torch.testing.assert_close(logits(load_gguf_model(path), IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)


def test_sentencepiece_model_without_package_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import sentencepiece  # noqa: F401

        pytest.skip("sentencepiece is installed")
    except ImportError:
        pass
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(GGUFExportError, match="sentencepiece"):
        tokenizer_kv_from_dir(tmp_path, {"model_type": "llama", "vocab_size": 32000})
