"""Token windows: random windows for calibration, consecutive windows for evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

from tensorpress.calibration.text import read_text
from tensorpress.errors import TensorpressError


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise TensorpressError(f"model '{folder}': cannot load its tokenizer ({type(e).__name__})") from e


def tokenize(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one id stream (no special tokens: windows cut it anywhere). Shape (n,)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_windows(spec: str, tokenizer, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`samples` windows of `seqlen` tokens at seeded random offsets (as in the GPTQ papers). (S, L)."""
    ids = tokenize(read_text(spec), tokenizer)
    if ids.numel() <= seqlen:
        raise TensorpressError(f"text '{spec}': {ids.numel()} tokens, too short for calibration windows of {seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (samples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def eval_windows(spec: str, tokenizer, windows: int, seqlen: int) -> torch.Tensor:
    """The first `windows` non-overlapping windows of `seqlen` tokens. (W, L)."""
    if windows < 1 or seqlen < 2:
        raise TensorpressError(f"evaluation needs windows ≥ 1 and seqlen ≥ 2 (got {windows}, {seqlen})")
    ids = tokenize(read_text(spec), tokenizer)
    need = windows * seqlen
    if ids.numel() < need:
        raise TensorpressError(
            f"text '{spec}': {ids.numel()} tokens, too short for {windows} windows of {seqlen} (needs {need})"
        )
    return ids[:need].reshape(windows, seqlen)
