"""Token windows: random windows for calibration (drawn from one or several weighted texts), consecutive
windows for evaluation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from tensorpress.calibration.mix import mix_parts
from tensorpress.calibration.text import TextPart, read_text
from tensorpress.errors import TensorpressError

EVAL_WINDOWS = 48  # evaluation windows by default (the GPTQ papers' protocol at 512 tokens)
EVAL_SEQLEN = 512  # tokens per evaluation window by default
Sources = Sequence[tuple[str, float]]  # (text spec, weight): what a recipe's `calibration` resolves to


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


def text_parts(spec: str, tokenizer=None) -> list[TextPart]:
    """The texts one spec stands for: a plain text is one part, the mix one part per source text."""
    if spec == "mix" or spec.startswith("mix:"):
        return mix_parts(spec, tokenizer)
    return [TextPart(spec, read_text(spec))]


def part_ids(part: TextPart, tokenizer) -> torch.Tensor:
    """A part's token stream; the mix's parts (the same text every run) are tokenized once per tokenizer
    and kept in the cache, so calibrating on the mix costs no more than on one plain text."""
    if not part.name.startswith("mix:") or not hasattr(tokenizer, "backend_tokenizer"):
        return tokenize(part.text, tokenizer)
    from tensorpress.infra.cache import cache_dir

    key = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    key.update(part.text.encode("utf-8"))
    path = cache_dir() / "mix" / "tokens" / f"{key.hexdigest()[:32]}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    ids = tokenize(part.text, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(ids, tmp)
    tmp.replace(path)
    return ids


def weighted_parts(sources: Sources, tokenizer) -> list[TextPart]:
    """Every source expanded into its parts (a mix gives one per source text), weights multiplied out
    and normalized to sum 1."""
    parts: list[TextPart] = []
    for spec, weight in sources:
        for part in text_parts(spec, tokenizer):
            parts.append(TextPart(part.name, part.text, part.weight * weight))
    total = sum(p.weight for p in parts)
    return [TextPart(p.name, p.text, p.weight / total) for p in parts]


def allocate_samples(weights: Sequence[float], samples: int) -> list[int]:
    """Split `samples` windows over parts in proportion to `weights` (largest remainder; sums exactly)."""
    exact = [w * samples for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: samples - sum(counts)]:
        counts[i] += 1
    return counts


def calibration_windows(sources: Sources | str, tokenizer, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`samples` windows of `seqlen` tokens at seeded random offsets (as in the GPTQ papers). (S, L).

    Several sources (or a mix) share the windows in proportion to their weights, each part's windows
    drawn from its own token stream, then shuffled together so that any prefix of the windows (AWQ's
    search samples, a sensitivity pass) sees every part. One plain text draws exactly as it always has."""
    if isinstance(sources, str):
        sources = [(sources, 1.0)]
    parts = weighted_parts(sources, tokenizer)
    g = torch.Generator().manual_seed(seed)
    windows = []
    for part, count in zip(parts, allocate_samples([p.weight for p in parts], samples), strict=True):
        ids = part_ids(part, tokenizer)
        if ids.numel() <= seqlen:
            raise TensorpressError(
                f"text '{part.name}': {ids.numel()} tokens, too short for calibration windows of {seqlen}"
            )
        if count == 0:
            continue
        starts = torch.randint(0, ids.numel() - seqlen + 1, (count,), generator=g)
        windows += [ids[s : s + seqlen] for s in starts.tolist()]
    out = torch.stack(windows)
    if len(parts) > 1:
        out = out[torch.randperm(len(out), generator=g)]
    return out


def decode_windows(windows: torch.Tensor, tokenizer) -> list[str]:
    """Each window (S, L) back to text, special tokens kept (a chat template's markers are part of it)."""
    return [tokenizer.decode(w.tolist(), skip_special_tokens=False) for w in windows]


def eval_windows(spec: str, tokenizer, windows: int, seqlen: int) -> torch.Tensor:
    """The first `windows` non-overlapping windows of `seqlen` tokens. (W, L)."""
    if windows < 1 or seqlen < 2:
        raise TensorpressError(f"evaluation needs windows ≥ 1 and seqlen ≥ 2 (got {windows}, {seqlen})")
    ids = tokenize("\n\n".join(p.text for p in text_parts(spec, tokenizer)), tokenizer)
    need = windows * seqlen
    if ids.numel() < need:
        raise TensorpressError(
            f"text '{spec}': {ids.numel()} tokens, too short for {windows} windows of {seqlen} (needs {need})"
        )
    return ids[:need].reshape(windows, seqlen)
