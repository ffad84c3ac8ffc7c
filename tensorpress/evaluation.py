"""Perplexity, KL divergence and top-1 agreement, base and compressed on the same tokens, same run.

Protocol (the GPTQ papers'): non-overlapping windows of `seqlen` tokens from the start of the text;
within a window every token after the first is scored. ppl = exp(mean NLL over scored tokens).
KL is KL(P_base ‖ P_compressed) of the next-token distributions, averaged over scored tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tensorpress.calibration import eval_windows, load_tokenizer
from tensorpress.errors import TensorpressError
from tensorpress.loader import load
from tensorpress.progress import Progress


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()  # (B, L, V)


def window_stats(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Sum of NLL over every scored token, and their count. logits (B, L, V), ids (B, L)."""
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(nll.double().sum()), nll.numel()


def evaluate_tokens(
    model: str | Path,
    base: str | Path | None,
    tokens: torch.Tensor,
    device: str = "cpu",
    progress: Progress | None = None,
    batch: int = 1,
    base_cache: Path | None = None,
) -> dict:
    """Evaluate `model` (and `base`, when given) on token windows (W, L).

    `base_cache`: a folder where the base model's logits are kept per window (float32), so several
    compressed models are compared with one base evaluation (benchmarks); reused only for the same ids.
    """
    progress = progress or Progress()
    comp = load(model, device=device)
    ref = None
    same = base is not None and Path(base).resolve() == Path(model).resolve()  # base against itself
    if base is not None and not same and not _cached(base_cache, tokens, batch):
        ref = load(base, device=device)
    vocab = comp.config.vocab_size
    if int(tokens.max()) >= vocab:
        raise TensorpressError(f"evaluation text has token ids ≥ the model's vocab size {vocab}")
    nll_c = nll_b = kl_sum = 0.0
    agree = n = 0
    for w, ids in enumerate(progress.track(tokens.split(batch), "eval windows", total=math.ceil(len(tokens) / batch))):
        ids = ids.to(device)
        hit = same and base_cache is not None and _cache_file(base_cache, ids, w).is_file()
        lc = torch.load(_cache_file(base_cache, ids, w)).to(device) if hit else _logits(comp, ids)
        s, k = window_stats(lc, ids)
        nll_c += s
        n += k
        if base is not None:
            lb = _base_logits(ref, ids, base_cache, w, lc if same else None)
            nll_b += window_stats(lb, ids)[0]
            logp_c = F.log_softmax(lc[:, :-1], dim=-1)
            logp_b = F.log_softmax(lb[:, :-1], dim=-1)
            kl_sum += float((logp_b.exp() * (logp_b - logp_c)).sum(-1).double().sum())
            agree += int((lb[:, :-1].argmax(-1) == lc[:, :-1].argmax(-1)).sum())
    out = {"ppl": math.exp(nll_c / n), "tokens": n, "windows": len(tokens), "seqlen": tokens.shape[1]}
    if base is not None:
        out.update(ppl_base=math.exp(nll_b / n), kl=kl_sum / n, top1_agreement=agree / n)
    return out


def _cache_file(cache: Path, ids: torch.Tensor, w: int) -> Path:
    import hashlib

    digest = hashlib.sha1(ids.cpu().numpy().tobytes()).hexdigest()[:16]
    return Path(cache) / f"base-{w:04d}-{digest}.pt"


def _cached(cache: Path | None, tokens: torch.Tensor, batch: int) -> bool:
    return cache is not None and all(_cache_file(cache, ids, w).is_file() for w, ids in enumerate(tokens.split(batch)))


def _base_logits(ref, ids: torch.Tensor, cache: Path | None, w: int, known: torch.Tensor | None) -> torch.Tensor:
    if cache is not None and _cache_file(cache, ids, w).is_file():
        return torch.load(_cache_file(cache, ids, w)).to(ids.device)
    lb = known if known is not None else _logits(ref, ids)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        torch.save(lb.cpu(), _cache_file(cache, ids, w))
    return lb


def evaluate(
    model: str | Path,
    base: str | Path | None = None,
    text: str = "kjv:eval",
    windows: int = 48,
    seqlen: int = 512,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict:
    """Evaluate a checkpoint folder; `base` defaults to none (ppl only)."""
    folder = Path(model)
    from tensorpress.checkpoint import resolve_folder

    folder = resolve_folder(str(model))
    tokenizer = load_tokenizer(folder)
    tokens = eval_windows(text, tokenizer, windows, seqlen)
    metrics = evaluate_tokens(folder, base, tokens, device=device, progress=progress)
    metrics["text"] = text
    return metrics
