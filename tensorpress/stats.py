"""Calibration statistics gathered with forward hooks while the pipeline replays a layer.

Hessians H = Σ x xᵀ over every calibration token reaching a Linear (fp32 accumulation, as GPTQ and
SparseGPT need). Modules fed the very same tensor (q/k/v, gate/up) share one Hessian: it is computed
once. The replay stops as soon as the last module of interest has seen its input, so statistics for
q/k/v do not pay for the attention or the MLP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from tensorpress.architecture import in_out
from tensorpress.compressors.base import LayerWork


class _StopReplay(Exception):
    pass


@dataclass
class Hessian:
    H: torch.Tensor  # (in, in) fp32, Σ x xᵀ
    n: int = 0  # tokens accumulated
    abs_sum: torch.Tensor | None = None  # (in,) Σ |x| (AWQ statistics), when asked for
    sq_sum: torch.Tensor | None = None  # (in,) Σ x² (= diag(H), kept for convenience)
    members: list[str] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.H.addmm_(x.t(), x)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]

    def mean_abs(self) -> torch.Tensor:
        """(in,) mean |x| per input channel (AWQ's activation statistic)."""
        if self.abs_sum is None:
            raise RuntimeError("internal: Hessian collected without abs statistics")
        return self.abs_sum / max(self.n, 1)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def execution_stages(work: LayerWork, targets: list[str]) -> list[list[str]]:
    """Targets grouped by shared input, in execution order (q/k/v → o → gate/up → down for Llama).

    Found by replaying one calibration batch with hooks, so it works for any architecture.
    """
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
