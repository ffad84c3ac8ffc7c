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

from tensorpress.calibration.windows import EVAL_SEQLEN, EVAL_WINDOWS, eval_windows, load_tokenizer
from tensorpress.errors import TensorpressError
from tensorpress.infra.progress import Progress
from tensorpress.model.loader import load


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
    base: str | Path | BaseReference | None,
    tokens: torch.Tensor,
    device: str = "cpu",
    progress: Progress | None = None,
    batch: int = 1,
    tokenizer=None,
    allow_long_context: bool = False,
) -> dict:
    """Evaluate `model` (and `base`, when given) on token windows (W, L): `evaluate_texts` of one text."""
    bases = {"": base} if isinstance(base, BaseReference) else None
    base_model = None if isinstance(base, BaseReference) else base
    out = evaluate_texts(
        model, base_model, {"": tokens}, device, progress, batch, tokenizer, allow_long_context, bases=bases
    )
    out.pop("texts")
    out.pop("text")
    return out


def evaluate_texts(
    model: str | Path,
    base: str | Path | None,
    tokens: dict[str, torch.Tensor],
    device: str = "cpu",
    progress: Progress | None = None,
    batch: int = 1,
    tokenizer=None,
    allow_long_context: bool = False,
    bases: dict[str, BaseReference] | None = None,
) -> dict:
    """Evaluate `model` against a base on the windows (W, L) of each text, loading each model once.

    The base is a checkpoint run alongside (window by window), or `bases`: per text a `BaseReference`
    computed once earlier on the same windows (a batch evaluates many compressed models against one base).
    Returns the first text's metrics at the top level (what gates and summaries read) and every text's
    under "texts". With `tokenizer`, greedy continuations of the fixed prompts are added (`continuations`).
    """
    progress = progress or Progress()
    comp = load(model, device=device)
    vocab = comp.config.vocab_size
    limit = getattr(comp.config, "max_position_embeddings", None)
    for ids in tokens.values():
        if isinstance(limit, int) and ids.shape[1] > limit and not allow_long_context:
            raise TensorpressError(
                f"--seqlen {ids.shape[1]}: longer than the model's max_position_embeddings ({limit}); "
                "pass --allow-long-context to evaluate anyway"
            )
        if int(ids.max()) >= vocab:
            raise TensorpressError(f"evaluation text has token ids ≥ the model's vocab size {vocab}")
    ref = load(base, device=device) if base is not None and bases is None else None
    if ref is not None and ref.config.vocab_size != vocab:
        raise TensorpressError(
            f"--base {base}: a vocabulary of {ref.config.vocab_size} tokens, but {model} has {vocab}; "
            "KL and top-1 agreement need the same vocabulary"
        )
    texts = []
    for text, ids in tokens.items():
        reference = bases[text] if bases is not None else None
        if reference is not None:
            reference.check_tokens(ids)
        label = f"eval windows ({text})" if len(tokens) > 1 else "eval windows"
        texts.append({"text": text, **_score(comp, ref, reference, ids, device, progress, batch, label)})
    out = {**texts[0], "texts": texts}
    if tokenizer is not None:
        from tensorpress.evaluation.continuations import continuation_table, greedy_continuations

        ours = greedy_continuations(comp, tokenizer, device=device)
        first = next(iter(bases.values())) if bases else None
        if first is not None:
            theirs = first.continuations
        elif ref is not None:
            theirs = greedy_continuations(ref, tokenizer, device=device)
        else:
            theirs = None
        out["continuations"] = continuation_table(ours, theirs)
    return out


def _score(comp, ref, reference: BaseReference | None, tokens: torch.Tensor, device, progress, batch, label) -> dict:
    """ppl of `comp` on the windows, and against the base (a model `ref` or a stored `reference`) its
    base ppl, KL and top-1 agreement."""
    has_base = ref is not None or reference is not None
    nll_c = nll_b = kl_sum = 0.0
    agree = n = 0
    starts = range(0, len(tokens), batch)
    for start in progress.track(starts, label, total=len(starts)):
        ids = tokens[start : start + batch].to(device)
        lc = _logits(comp, ids)
        s, k = window_stats(lc, ids)
        nll_c += s
        n += k
        if has_base:
            if ref is not None:
                logp_b = F.log_softmax(_logits(ref, ids)[:, :-1], dim=-1)
            else:
                logp_b = reference.logp(start, start + len(ids)).to(device)
            nll_b += token_nll(logp_b, ids)
            kl, top1 = compare_window(logp_b, lc)
            kl_sum += kl
            agree += top1
    out = {"ppl": math.exp(nll_c / n), "tokens": n, "windows": len(tokens), "seqlen": tokens.shape[1]}
    if has_base:
        out.update(ppl_base=math.exp(nll_b / n), kl=kl_sum / n, top1_agreement=agree / n)
    return out


def token_nll(logp: torch.Tensor, ids: torch.Tensor) -> float:
    """Sum of NLL of the scored tokens given next-token log-probs (B, L-1, V) and ids (B, L)."""
    return float(-logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().sum())


def compare_window(logp_b: torch.Tensor, logits_c: torch.Tensor) -> tuple[float, int]:
    """Σ KL(P_base ‖ P_comp) over scored tokens and the count of equal argmaxes.

    logp_b: base log-probs (B, L-1, V); logits_c: compressed logits (B, L, V)."""
    logp_c = F.log_softmax(logits_c[:, :-1], dim=-1)
    kl = float((logp_b.exp() * (logp_b - logp_c)).sum(-1).double().sum())
    agree = int((logp_b.argmax(-1) == logp_c.argmax(-1)).sum())
    return kl, agree


class BaseReference:
    """The base model's next-token log-probs on the eval windows, computed once and read back per window.

    A batch compares many compressed models with one base: instead of re-running the base for every
    recipe, its log-softmax (W, L-1, V) float32 is written once to `path` (a raw file, memory-mapped
    back), so every comparison is exactly what a side-by-side run would compute.
    """

    def __init__(self, path: Path, tokens: torch.Tensor, vocab: int, continuations: list[str] | None = None):
        self.path = Path(path)
        self.tokens = tokens
        self.vocab = vocab
        self.continuations = continuations
        self._map = None

    @classmethod
    def compute(
        cls,
        base: str | Path,
        tokens: torch.Tensor,
        path: Path,
        device: str = "cpu",
        progress: Progress | None = None,
        tokenizer=None,
    ) -> BaseReference:
        import numpy as np

        progress = progress or Progress()
        ref = load(base, device=device)
        vocab = ref.config.vocab_size
        if int(tokens.max()) >= vocab:
            raise TensorpressError(f"evaluation text has token ids ≥ the base model's vocab size {vocab}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        w, seqlen = tokens.shape
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(w, seqlen - 1, vocab))
        for i in progress.track(range(w), "base eval windows", total=w):
            ids = tokens[i : i + 1].to(device)
            out[i] = F.log_softmax(_logits(ref, ids)[:, :-1], dim=-1)[0].cpu().numpy()
        out.flush()
        del out
        conts = None
        if tokenizer is not None:
            from tensorpress.evaluation.continuations import greedy_continuations

            conts = greedy_continuations(ref, tokenizer, device=device)
        return cls(path, tokens.clone(), vocab, conts)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.shape != self.tokens.shape or not torch.equal(tokens, self.tokens):
            raise TensorpressError("base reference was computed on other evaluation windows")

    def logp(self, start: int, stop: int) -> torch.Tensor:
        """Base log-probs of windows [start, stop): (stop-start, L-1, V) float32."""
        import numpy as np

        if self._map is None:
            self._map = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._map[start:stop]))

    def close(self) -> None:
        """Drop the memory map and delete the file."""
        self._map = None
        self.path.unlink(missing_ok=True)


def evaluate(
    model: str | Path,
    base: str | Path | None = None,
    text: str | list[str] = "kjv:eval",
    windows: int = EVAL_WINDOWS,
    seqlen: int = EVAL_SEQLEN,
    device: str = "cpu",
    progress: Progress | None = None,
    allow_long_context: bool = False,
) -> dict:
    """Evaluate a checkpoint folder on one text or several; `base` defaults to none (ppl only)."""
    from tensorpress.model.checkpoint import resolve_folder

    folder = resolve_folder(str(model))
    tokenizer = load_tokenizer(folder)
    tokens = {t: eval_windows(t, tokenizer, windows, seqlen) for t in ([text] if isinstance(text, str) else text)}
    return evaluate_texts(folder, base, tokens, device=device, progress=progress, allow_long_context=allow_long_context)


def evaluate_many(
    models: dict[str, str | Path],
    base: str | Path,
    tokens: torch.Tensor,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Evaluate several checkpoints against one base on the same windows, running the base once.

    Same formulas as `evaluate_tokens`; all models are held in memory together (fine for comparisons of
    small models in benchmarks and batches). Returns name → metrics, plus "base" → {"ppl": …}.
    """
    progress = progress or Progress()
    ref = load(base, device=device)
    comps = {name: load(path, device=device) for name, path in models.items()}
    sums = {name: {"nll": 0.0, "kl": 0.0, "agree": 0} for name in comps}
    nll_b, n = 0.0, 0
    for ids in progress.track(tokens.split(1), "eval windows", total=len(tokens)):
        ids = ids.to(device)
        lb = _logits(ref, ids)
        s, k = window_stats(lb, ids)
        nll_b += s
        n += k
        logp_b = F.log_softmax(lb[:, :-1], dim=-1)
        top_b = lb[:, :-1].argmax(-1)
        for name, comp in comps.items():
            lc = _logits(comp, ids)
            acc = sums[name]
            acc["nll"] += window_stats(lc, ids)[0]
            logp_c = F.log_softmax(lc[:, :-1], dim=-1)
            acc["kl"] += float((logp_b.exp() * (logp_b - logp_c)).sum(-1).double().sum())
            acc["agree"] += int((top_b == lc[:, :-1].argmax(-1)).sum())
    common = {"tokens": n, "windows": len(tokens), "seqlen": tokens.shape[1], "ppl_base": math.exp(nll_b / n)}
    out = {
        name: {**common, "ppl": math.exp(a["nll"] / n), "kl": a["kl"] / n, "top1_agreement": a["agree"] / n}
        for name, a in sums.items()
    }
    out["base"] = {**common, "ppl": common["ppl_base"]}
    return out
