"""Calibration statistics gathered with forward hooks while the pipeline replays a layer.

Hessians H = Σ x xᵀ over every calibration token reaching a Linear (fp32 accumulation, as GPTQ and
SparseGPT need). Modules fed the very same tensor (q/k/v, gate/up) share one Hessian: it is computed
once. The replay stops as soon as the last module of interest has seen its input, so statistics for
q/k/v do not pay for the attention or the MLP.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.model.architecture import in_out


class _StopReplay(Exception):
    pass


@dataclass
class Hessian:
    H: torch.Tensor  # (in, in) fp32, Σ x xᵀ
    n: int = 0  # tokens accumulated
    abs_sum: torch.Tensor | None = None  # (in,) Σ |x| (AWQ statistics), when asked for
    sq_sum: torch.Tensor | None = None  # (in,) Σ x², when asked for (Wanda); H is then left empty
    members: list[str] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        if self.H.numel():
            accumulate_gram(self.H, x)
        if self.sq_sum is not None:
            self.sq_sum += (x * x).sum(0)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]

    def mean_abs(self) -> torch.Tensor:
        """(in,) mean |x| per input channel (AWQ's activation statistic)."""
        if self.abs_sum is None:
            raise RuntimeError("internal: Hessian collected without abs statistics")
        return self.abs_sum / max(self.n, 1)


def accumulate_gram(H: torch.Tensor, x: torch.Tensor, min_blocked: int = 1024, blocks: int = 4) -> None:
    """H += xᵀx for x (tokens, in), exactly symmetric.

    For wide inputs (MLP down projections) only the block upper triangle is multiplied and the lower
    one mirrored: ~(blocks+1)/(2·blocks) of the flops — BLAS has syrk, torch does not expose it.
    """
    d = x.shape[1]
    if d < min_blocked:
        H.addmm_(x.t(), x)
        return
    xt = x.t().contiguous()  # (in, tokens)
    edges = [d * i // blocks for i in range(blocks + 1)]
    for a, b in itertools.pairwise(edges):
        H[a:b, a:].addmm_(xt[a:b], x[:, a:])  # block row: diagonal block and everything right of it
    for a, b in itertools.pairwise(edges):
        H[b:, a:b] = H[a:b, b:].t()


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


_STAGES: dict[tuple, list[list[str]]] = {}  # layer structure + relative targets → relative stages


def structure_key(work: LayerWork, targets: list[str]) -> tuple:
    """Identifies a layer's structure and its relative targets: facts found by replaying one layer
    (stage order, which norm feeds which Linear) hold for every layer with the same key."""
    rel = tuple(n[len(work.prefix) :] for n in targets)
    return (type(work.module), rel, tuple((n, type(m)) for n, m in work.module.named_modules()))


def execution_stages(work: LayerWork, targets: list[str]) -> list[list[str]]:
    """Targets grouped by shared input, in execution order (q/k/v → o → gate/up → down for Llama).

    Found by replaying one calibration batch with hooks, so it works for any architecture; remembered
    for layers of the same structure, so a model pays for it once rather than once per layer.
    """
    key = structure_key(work, targets)
    if key not in _STAGES:
        _STAGES[key] = [[n[len(work.prefix) :] for n in st] for st in _find_stages(work, targets)]
    return [[work.prefix + n for n in st] for st in _STAGES[key]]


def _find_stages(work: LayerWork, targets: list[str]) -> list[list[str]]:
    order: list[tuple[str, int]] = []

    def hook_for(name: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            # The tensor itself is kept so its address cannot be reused by a later input this replay.
            order.append((name, inp[0]))
            if len(order) == len(targets):
                raise _StopReplay

        return hook

    handles = [work.linear(n).register_forward_pre_hook(hook_for(n)) for n in targets]
    try:
        work.replay(batches=1)
    except _StopReplay:
        pass
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    last = None
    for name, x in order:
        if stages and last is not None and _same_tensor(x, last):
            stages[-1].append(name)
        else:
            stages.append([name])
        last = x
    seen = {n for s in stages for n in s}
    missing = [n for n in targets if n not in seen]
    if missing:  # modules the forward never reached still get (empty) statistics, in one last stage
        stages.append(missing)
    return stages


def collect_hessians(work: LayerWork, names: list[str], with_abs: bool = False) -> dict[str, Hessian]:
    """Replay every calibration batch through the layer and accumulate H for each module in `names`.

    `with_abs` also sums |x| per input channel (for AWQ).
    """
    device = next(work.module.parameters()).device
    out: dict[str, Hessian] = {}
    leader_of: dict[str, str] = {}  # module → the module whose Hessian it shares
    fired: set[str] = set()
    batch_inputs: list[tuple[torch.Tensor, str]] = []  # inputs seen this batch (kept alive: no address reuse)

    def hook_for(name: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            x = inp[0]
            if name not in leader_of:
                leader = next((n for t, n in batch_inputs if _same_tensor(t, x)), None)
                leader_of[name] = leader or name
                if leader is None:
                    batch_inputs.append((x, name))
                    in_f = in_out(work.linear(name))[0]
                    out[name] = Hessian(torch.zeros(in_f, in_f, device=device))
                    if with_abs:
                        out[name].abs_sum = torch.zeros(in_f, device=device)
                out[leader_of[name]].members.append(name)
            if leader_of[name] == name:
                out[name].add(x.detach())
            fired.add(name)
            if len(fired) == len(names):
                raise _StopReplay

        return hook

    handles = [work.linear(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        for b in range(work.num_batches()):
            fired.clear()
            batch_inputs.clear()
            with contextlib.suppress(_StopReplay):
                work.replay(batches=[b])
    finally:
        for h in handles:
            h.remove()
    return {n: out[leader_of[n]] for n in names if n in leader_of}


StageHandler = Callable[[list[str], dict[str, Hessian]], None]


class _Abort(BaseException):
    """Unwinds a paused replay thread when the replay is abandoned."""


def staged_replay(
    work: LayerWork, targets: list[str], handle: StageHandler, with_abs: bool = False, diagonal: bool = False
) -> None:
    """True-sequential compression of one layer in a single forward pass over the calibration set.

    The reference GPTQ (and llm-compressor) replays the layer once per group of modules (q/k/v, then o,
    then gate/up, then down) so that each group's statistics see the already-compressed groups before it,
    and once more to propagate the compressed output to the next layer. Here every calibration batch runs
    through the layer in its own thread, one thread at a time; each thread pauses at the first module of
    every stage after adding its input to that stage's Hessian. When all batches have reached the stage,
    `handle(stage, hessians)` compresses it, and the threads go on with the compressed weights. Each
    sublayer therefore runs once, and the layer outputs that come out at the end are the compressed
    layer's outputs: they are left in `work.outputs` so the pipeline does not run the layer again.

    The cost is memory: every batch's activations at the pause point are alive at once (about
    tokens × (2·hidden + intermediate) floats at the MLP). `true_sequential: false` is the low-memory path.
    Stages are visited in the order the forward reaches them; a module no batch reaches is handled last
    with empty statistics (n = 0). `diagonal` accumulates only Σ x² per input (`sq_sum`; H stays empty),
    all a Wanda-style score needs.

    Functions in `work.before_stage` (left there by the step before, see AWQ) run before each `handle`
    with the stage's paused inputs, which they may change in place; they are consumed by this call.
    """
    stages = execution_stages(work, targets)
    before, work.before_stage = work.before_stage, []
    with_abs = with_abs or bool(before)
    device = next(work.module.parameters()).device
    stats: list[Hessian] = []
    for stage in stages:
        in_f = in_out(work.linear(stage[0]))[0]
        if diagonal:
            h = Hessian(torch.zeros(0, device=device), members=list(stage), sq_sum=torch.zeros(in_f, device=device))
        else:
            h = Hessian(torch.zeros(in_f, in_f, device=device), members=list(stage))
        if with_abs:
            h.abs_sum = torch.zeros(in_f, device=device)
        stats.append(h)
    handled = [False] * len(stages)
    n = work.num_batches()
    local = threading.local()
    go = [threading.Event() for _ in range(n)]
    events: queue.Queue = queue.Queue()
    abort = False
    passed: list[set[int]] = [set() for _ in range(n)]
    held: dict[int, torch.Tensor] = {}  # batch → its input to the stage it is paused at
    skipped: set[str] = set()

    def hook_for(s: int):
        def hook(_m: nn.Module, inp: tuple) -> None:
            b = getattr(local, "b", None)
            if b is None or s in passed[b]:
                return  # a replay outside this function, or a second call within one forward
            passed[b].add(s)
            if handled[s]:  # reached out of the recorded order (data-dependent routing)
                skipped.add(stages[s][0])
                return
            stats[s].add(inp[0].detach())
            if before:
                held[b] = inp[0]
            events.put(("pause", b, s))
            go[b].wait()
            go[b].clear()
            if abort:
                raise _Abort

        return hook

    def worker(b: int) -> None:
        local.b = b
        try:
            with torch.no_grad():
                out = work.module(work.calib_inputs[b], **work.calib_kwargs[b])
            out = out[0] if isinstance(out, (tuple, list)) else out
            events.put(("done", b, out.detach()))
        except _Abort:
            events.put(("aborted", b, None))
        except BaseException as e:  # handed to the main thread
            events.put(("error", b, e))

    def compress_stage(s: int, inputs: list[torch.Tensor]) -> None:
        hessians = {name: stats[s] for name in stages[s]}
        for f in before:
            f(stages[s], hessians, inputs)
        handle(stages[s], hessians)
        handled[s] = True

    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in range(n)]
    handles = [work.linear(stage[0]).register_forward_pre_hook(hook_for(s)) for s, stage in enumerate(stages)]
    outputs: list[torch.Tensor | None] = [None] * n
    paused: dict[int, int] = {}
    try:
        to_run = list(range(n))
        started: set[int] = set()
        while True:
            for b in to_run:  # exactly one thread runs at a time
                if b in started:
                    go[b].set()
                else:
                    started.add(b)
                    threads[b].start()
                kind, bb, val = events.get()
                if kind == "error":
                    raise val
                if kind == "pause":
                    paused[bb] = val
                elif kind == "done":
                    outputs[bb] = val
            if not paused:
                break
            s = min(paused.values())
            to_run = sorted(b for b, st in paused.items() if st == s)
            compress_stage(s, [held.pop(b) for b in to_run if b in held])
            for b in to_run:
                del paused[b]
        for s in range(len(stages)):
            if not handled[s]:
                compress_stage(s, [])
    except BaseException:
        abort = True
        for b in paused:
            go[b].set()
        for b in paused:
            threads[b].join()
        raise
    finally:
        for h in handles:
            h.remove()
    if skipped:
        work.notes.append(
            f"layer {work.index}: {', '.join(sorted(skipped))} reached out of order by some batches; their inputs "
            "were not in the statistics (use true_sequential: false for data-dependent routing)"
        )
    work.outputs = outputs if all(o is not None for o in outputs) else None  # type: ignore[assignment]


def compress_by_stage(work: LayerWork, targets: list[str], handle: StageHandler, true_sequential: bool) -> None:
    """Call `handle(stage, hessians)` for the layer's targets: stage by stage in one pass (`staged_replay`)
    when true-sequential, else once for all targets with Hessians of the uncompressed layer."""
    if true_sequential:
        staged_replay(work, targets, handle)
    else:
        handle(targets, collect_hessians(work, targets))
