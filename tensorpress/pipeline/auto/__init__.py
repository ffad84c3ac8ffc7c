"""Automatic mixed precision: measure, then allocate, before the layer loop compresses as usual.

    budget (bits/weight or bytes) ──▶ exact byte budget B of the quantized Linears
    one streamed forward of the base model on `samples` windows (just the `fisher_samples` ones when nothing
        needs H): each module's Hessian H (diag H fits GGUF grids; AWQ's scales with `awq_scaled`; with
        `estimator: gptq`, ē(c) = diag(ΔW Ĥ ΔWᵀ) (out,) of GPTQ's and of rounding's ΔW)
    one streamed backward on `fisher_samples` windows with labels sampled from the base model: per window w
        the module's weight gradient G_w (out, in), and per candidate c its rounding error ΔW(c)
    predicted ΔKL(module, c) = ½ E_w Σ_j (ΔW_j(c) · G_wj)² / tokens   (calibration/sensitivity.py)
        × Ḡ·ē_gptq(c) / Ḡ·ē_rtn(c) with `estimator: gptq`
        × Ḡ·ē_awq+gptq(r) / Ḡ·ē_rtn(r) with `estimator: repaired`, r the reference width nearest c's bits
    multiple-choice knapsack (knapsack.py): one candidate per module, Σ bytes ≤ B, Σ ΔKL minimal

The chosen schemes go to the quantizer (and to AWQ's search) through the per-module scheme map; the
layer loop then compresses sequentially, so errors propagate as in any run.
"""
