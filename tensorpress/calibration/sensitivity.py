"""What automatic mixed precision measures on the base model, in one streamed pass each way.

Forward (all measurement windows, one decoder layer in memory at a time): the Hessian H = Σ x xᵀ of every
target Linear's input, handed to a callback that turns it into candidate errors right away (so no
Hessian outlives its layer), and the layer inputs of the first `keep` batches, kept for the backward.

Backward (those batches, layers in reverse, one in memory at a time): the output Fisher of every target
Linear. For a perturbation δy of a module's output, the per-token KL(P_base ‖ P_perturbed) is
½ δyᵀ F δy with F = E_ŷ~P[∇_y log p(ŷ) ∇_y log p(ŷ)ᵀ]; one backward of Σ_t log p(ŷ_t) with labels ŷ_t
sampled from the base model's own next-token distributions gives an unbiased sample of F (cross-token
terms vanish in expectation). Keeping only its diagonal, averaged over tokens:

    ΔKL ≈ ½ Σ_j Ḡ_j ē_j,   Ḡ_j = mean_t (∂ Σ log p(ŷ) / ∂y_tj)²,   ē_j = mean_t δy_tj² = (ΔW Ĥ ΔWᵀ)_jj

with Ĥ = H / tokens. Quantization noise is nearly independent across output rows, so the dropped
off-diagonal terms of ΔW Ĥ ΔWᵀ average out. Costs one forward and one backward of a few windows.

That diagonal drops the cross-*token* terms too, and those do not average out: a row's error ΔW_j is the
same at every token, and inputs x_t share large common directions, so δy_tj = ΔW_j x_t is correlated
along the sequence — attention then sums it coherently (v_proj's KL was under-predicted 4–8× on the
sample, k_proj's over-predicted 2×). Keeping every token pair of one row, the same Fisher sample gives

    ΔKL ≈ ½ E_w Σ_j (ΔW_j · G_wj)² / tokens,   G_w = Σ_t g_t x_tᵀ  (out, in), the weight gradient of window w

(rows still independent). The backward computes G_w per window and module and scores given error
matrices with it ("coherent" estimate; measured/predicted 0.35–1.2 where the diagonal gave 0.12–2.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tensorpress.calibration.forward import run_layer
from tensorpress.calibration.stats import Hessian
from tensorpress.errors import TensorpressError
from tensorpress.model.architecture import Skeleton, get_weight, in_out, materialize, release

# on_layer(layer index, layer module, {full name: its Hessian}) — called while the layer is materialized
LayerCallback = Callable[[int, nn.Module, dict[str, Hessian]], None]
# probe(full name, weight (out, in) float32) → error matrices ΔW (out, in) to score coherently
Probe = Callable[[str, torch.Tensor], list[torch.Tensor]]


def forward_hessians(
    skel: Skeleton,
    read,
    inputs: list[torch.Tensor],
    kwargs_list: list[dict],
    names: list[str],
    on_layer: LayerCallback,
    keep: int,
    device: str,
    progress=None,
) -> list[list[torch.Tensor]]:
    """Run the base model's layers over every batch (inputs are replaced by the last layer's outputs).

    Returns, per layer, the inputs of the first `keep` batches (for `output_fisher`)."""
    kept: list[list[torch.Tensor]] = []
    layers = range(len(skel.layers))
    for i in progress.track(layers, "measure", total=len(layers)) if progress else layers:
        layer = skel.layers[i]
        prefix = skel.layer_prefix(i)
        materialize(layer, prefix, skel, read, torch.float32, device)
        mine = [n for n in names if n.startswith(prefix)]
        kept.append(list(inputs[:keep]))
        stats = _hessians_of_layer(layer, prefix, mine, inputs, kwargs_list, device)  # inputs ← outputs
        on_layer(i, layer, stats)
        release(layer)
    kept.append(list(inputs[:keep]))  # the final hidden states, input of the head
    return kept


def _hessians_of_layer(layer, prefix, names, inputs, kwargs_list, device) -> dict[str, Hessian]:
    """H of each module in `names` over every batch (modules fed the very same tensor share one), in the
    same forward that replaces each batch's inputs by the layer's outputs."""
    out: dict[str, Hessian] = {}
    owner: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []

    def hook_for(name: str):
        def hook(_m, inp) -> None:
            x = inp[0]
            if name not in owner:  # first batch: find who shares this input
                lead = next((n for t, n in seen if t.data_ptr() == x.data_ptr() and t.shape == x.shape), None)
                owner[name] = lead or name
                if lead is None:
                    seen.append((x, name))
                    in_f = x.shape[-1]
                    zeros = torch.zeros(in_f, device=device)  # Σ|x| too: AWQ's statistic
                    out[name] = Hessian(torch.zeros(in_f, in_f, device=device), abs_sum=zeros)
                out[owner[name]].members.append(name)
            if owner[name] == name:
                out[name].add(x.detach())

        return hook

    handles = [layer.get_submodule(n[len(prefix) :]).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            for b, x in enumerate(inputs):
                inputs[b] = run_layer(layer, x, kwargs_list[b]).detach()
                seen.clear()  # sharing is settled by the first batch; later inputs need not be kept alive
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in owner]
    if missing:
        raise TensorpressError(f"auto precision: {', '.join(missing)} saw no calibration tokens")
    return {n: out[owner[n]] for n in names}


def output_fisher(
    skel: Skeleton,
    read,
    kept: list[list[torch.Tensor]],
    kwargs_list: list[dict],
    names: list[str],
    head_weight: str,
    seed: int,
    device: str,
    progress=None,
    probe: Probe | None = None,
) -> tuple[dict[str, torch.Tensor], int, dict[str, list[float]]]:
    """Ḡ (out,) per module in `names`: mean over scored tokens of the squared gradient of Σ log p(ŷ) with
    respect to the module's output, ŷ sampled from the base model (see the module docstring).

    `kept`: per layer (and one more entry: the final hidden states) the inputs of the batches to use;
    `head_weight`: the checkpoint tensor holding the output head's weight (the embedding when tied);
    `probe`: error matrices per module to score with the coherent estimate.
    Returns Ḡ per module, the number of scored tokens, and per module the coherent ΔKL of each probe."""
    grads, tokens = _head_gradients(skel, read, kept[-1], head_weight, seed, device)
    sums: dict[str, torch.Tensor] = {}
    coherent: dict[str, list[float]] = {}
    layers = range(len(skel.layers) - 1, -1, -1)
    for i in progress.track(layers, "sensitivity", total=len(layers)) if progress else layers:
        layer = skel.layers[i]
        prefix = skel.layer_prefix(i)
        materialize(layer, prefix, skel, read, torch.float32, device)
        mine = [n for n in names if n.startswith(prefix)]
        handles = []
        for n in mine:
            mod = layer.get_submodule(n[len(prefix) :])
            errs = probe(n, get_weight(mod).detach().float()) if probe is not None else []
            coherent[n] = [0.0] * len(errs)
            handles.append(mod.register_forward_hook(_grad_hooks(n, sums, coherent, errs)))
        try:
            for b, x in enumerate(kept[i]):
                x = x.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    y = run_layer(layer, x, kwargs_list[b])
                    y.backward(grads[b])
                grads[b] = x.grad.detach()
        finally:
            for h in handles:
                h.remove()
        release(layer)
    coherent = {n: [0.5 * v / tokens for v in vals] for n, vals in coherent.items()}
    return {n: s / tokens for n, s in sums.items()}, tokens, coherent


def _grad_hooks(n: str, sums: dict, coherent: dict, errs: list[torch.Tensor]):
    """Forward hook on module n: when its output's gradient g arrives, add Σ_t g² to sums[n] and, per window
    w and error matrix ΔW, Σ_j (ΔW_j · G_wj)² to coherent[n] (G_w = g_wᵀ x_w, the window's weight gradient)."""

    E = torch.stack(errs, 1) if errs else None  # (out, K, in): every error matrix, one batched product

    def fwd(_m, inp, out) -> None:
        x = inp[0].detach()

        def on_grad(g: torch.Tensor) -> None:
            g = g.detach().float()
            sq = g.pow(2).reshape(-1, g.shape[-1]).sum(0)
            sums[n] = sums[n] + sq if n in sums else sq
            if E is None:
                return
            xs = x.float().reshape(-1, x.shape[-2], x.shape[-1])  # (windows, L, in)
            gs = g.reshape(-1, g.shape[-2], g.shape[-1])  # (windows, L, out)
            for w in range(gs.shape[0]):
                G = gs[w].T @ xs[w]  # (out, in)
                dots = torch.bmm(E, G.unsqueeze(2)).squeeze(2)  # (out, K): ΔW_j(k) · G_wj
                for k, v in enumerate(dots.pow(2).sum(0).tolist()):
                    coherent[n][k] += v

        out.register_hook(on_grad)

    return fwd


def _head_gradients(
    skel: Skeleton, read, finals: list[torch.Tensor], head_weight: str, seed: int, device: str
) -> tuple[list[torch.Tensor], int]:
    """∂ Σ_t log p(ŷ_t) / ∂h for the final hidden states h of each batch, ŷ_t ~ the base model's
    next-token distribution at t (every position but the last, as the evaluation scores them)."""
    norm = skel.final_norm()
    if norm is None:
        raise TensorpressError(f"auto precision: cannot find the final norm of {skel.arch}")
    norm_name = next(n for n, m in skel.model.named_modules() if m is norm)
    materialize(norm, norm_name + ".", skel, read, torch.float32, device)
    W = read(head_weight).to(device=device, dtype=torch.float32)  # (V, H)
    head = skel.module(skel.lm_head_name())
    bias = getattr(head, "bias", None)
    b_head = read(skel.name_map[skel.lm_head_name() + ".bias"]).float() if bias is not None else None
    gen = torch.Generator().manual_seed(seed)
    grads: list[torch.Tensor] = []
    tokens = 0
    try:
        for h in finals:
            g_batch = torch.zeros_like(h)
            for w in range(h.shape[0]):  # one window at a time: (L, V) logits only
                x = h[w : w + 1].detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = nn.functional.linear(norm(x), W, b_head)[0, :-1]  # (L-1, V)
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    y = torch.multinomial(logp.detach().exp(), 1, generator=gen)  # (L-1, 1)
                    logp.gather(-1, y).sum().backward()
                g_batch[w] = x.grad[0]
                tokens += logits.shape[0]
            grads.append(g_batch)
    finally:
        release(norm)
    return grads, tokens


def module_shapes(skel: Skeleton, names: list[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of each named Linear, from the meta skeleton (no weight is read)."""
    out = {}
    for n in names:
        in_f, out_f = in_out(skel.module(n))
        out[n] = (out_f, in_f)
    return out
