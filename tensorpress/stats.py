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
    abs_mean: torch.Tensor | None = None  # (in,) Σ |x| (for AWQ-style statistics), filled on demand
    sq_sum: torch.Tensor | None = None  # (in,) Σ x² (= diag(H), kept for convenience)
    members: list[str] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.H.addmm_(x.t(), x)
        self.n += x.shape[0]


def execution_stages(work: LayerWork, targets: list[str]) -> list[list[str]]:
    """Targets grouped by shared input, in execution order (q/k/v → o → gate/up → down for Llama).

    Found by replaying one calibration batch with hooks, so it works for any architecture.
    """
    order: list[tuple[str, int]] = []
    alive: list[torch.Tensor] = []  # keeps inputs' memory from being reused, so equal pointers mean equal inputs

    def hook_for(name: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            alive.append(inp[0])
            order.append((name, inp[0].data_ptr()))
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
    last_ptr = None
    for name, ptr in order:
        if stages and ptr == last_ptr:
            stages[-1].append(name)
        else:
            stages.append([name])
        last_ptr = ptr
    seen = {n for s in stages for n in s}
    missing = [n for n in targets if n not in seen]
    if missing:  # modules the forward never reached still get (empty) statistics, in one last stage
        stages.append(missing)
    return stages


def collect_hessians(work: LayerWork, names: list[str]) -> dict[str, Hessian]:
    """Replay every calibration batch through the layer and accumulate H for each module in `names`."""
    device = next(work.module.parameters()).device
    out: dict[str, Hessian] = {}
    leader_of: dict[str, str] = {}  # module → the module whose Hessian it shares
    fired: set[str] = set()
    # data_ptr → (first module fed that tensor, the tensor): holding the tensor keeps its memory from being
    # reused by a later, different input during the same batch (which would wrongly share a Hessian).
    batch_ptrs: dict[int, tuple[str, torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            x = inp[0]
            if name not in leader_of:
                ptr = x.data_ptr()
                seen = batch_ptrs.get(ptr)
                leader = seen[0] if seen is not None and seen[1].shape == x.shape else None
                leader_of[name] = leader or name
                if leader is None:
                    batch_ptrs[ptr] = (name, x)
                    in_f = in_out(work.linear(name))[0]
                    out[name] = Hessian(torch.zeros(in_f, in_f, device=device))
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
            batch_ptrs.clear()
            with contextlib.suppress(_StopReplay):
                work.replay(batches=[b])
    finally:
        for h in handles:
            h.remove()
    return {n: out[leader_of[n]] for n in names if n in leader_of}
