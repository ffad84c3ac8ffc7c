"""Fitting llama.cpp block types: the stored scales and mins of every block, chosen by a small weighted
search per sub-block, then (K-quants) the sub-scales quantized to the type's integers and the block's
fp16 factors refit by weighted least squares.

The weights of the search are an importance per weight — the diagonal of the layer's input Hessian
when there is one, as llama.cpp weights its search by the imatrix. GPTQ calls `fit` on the current
(error-updated) columns of each block as its sweep reaches them; `quantize_rtn` is the data-free path.
"""

from __future__ import annotations

import torch

from tensorpress.formats.ggml_types import BlockParams, GGMLQuantized, GGMLType, dequant, fp16, grid, round_codes
from tensorpress.formats.quantized import QuantScheme


def _fit_symmetric(x: torch.Tensor, h: torch.Tensor, qmin: int, qmax: int, steps: int = 10) -> torch.Tensor:
    """Scale s per row of x (..., n) minimizing Σ h (x − s·round(x/s))²; codes in [qmin, qmax].

    Candidates map the largest-magnitude weight to qmin·f (f from 0.75 to 1.05, using the extra
    negative level), each followed by a least-squares rescale given its codes.
    """
    idx = x.abs().argmax(-1, keepdim=True)
    ext = torch.gather(x, -1, idx)  # (..., 1) signed extreme
    best_s = ext / qmin
    best_e = torch.full_like(ext, float("inf"))
    for k in range(steps + 1):
        f = 0.75 + 0.30 * k / steps
        s0 = ext / (qmin * f)
        for s in (s0, None):
            if s is None:  # least-squares scale for the codes of s0
                q = _safe_round(x, s0).clamp(qmin, qmax)
                num = (h * x * q).sum(-1, keepdim=True)
                den = (h * q * q).sum(-1, keepdim=True)
                s = torch.where(den > 0, num / den.clamp_min(1e-30), s0)
            q = _safe_round(x, s).clamp(qmin, qmax)
            e = (h * (x - s * q) ** 2).sum(-1, keepdim=True)
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best_s = torch.where(better, s, best_s)
    return best_s[..., 0]


def _safe_round(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """round(x / s); a zero scale only occurs where the weights it divides are all 0 (codes 0)."""
    return torch.round(x / (s + (s == 0)))


def _fit_affine(
    x: torch.Tensor, h: torch.Tensor, nmax: int, nonneg_offset: bool, steps: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s ≥ 0, lo) per row of x (..., n) for w = s·q + lo, q ∈ [0, nmax], minimizing Σ h (x − w)².

    Candidates spread the range [lo, hi] over nmax + δ steps (δ from −0.5 to 1.5); each is followed by
    the weighted least-squares (s, lo) for its codes. `nonneg_offset` (K-types, whose stored min is
    subtracted and unsigned) keeps lo ≤ 0.
    """
    lo = x.min(-1, keepdim=True).values
    hi = x.max(-1, keepdim=True).values
    if nonneg_offset:
        lo = lo.clamp(max=0)
    rng = hi - lo
    best_s = rng / nmax
    best_lo = lo
    best_e = torch.full_like(lo, float("inf"))
    sw = h.sum(-1, keepdim=True)
    for k in range(steps + 1):
        delta = -0.5 + 2.0 * k / steps
        s = rng / (nmax + delta)
        q = _safe_round(x - lo, s).clamp(0, nmax)
        # weighted LS for (s, lo): [Σhq² Σhq; Σhq Σh] [s; lo] = [Σhqx; Σhx]
        a = (h * q * q).sum(-1, keepdim=True)
        b = (h * q).sum(-1, keepdim=True)
        c = (h * q * x).sum(-1, keepdim=True)
        e_ = (h * x).sum(-1, keepdim=True)
        det = a * sw - b * b
        ok = det.abs() > 1e-12 * (a * sw).abs().clamp_min(1e-30)
        s2 = torch.where(ok, (c * sw - b * e_) / torch.where(ok, det, torch.ones_like(det)), s)
        lo2 = torch.where(ok, (a * e_ - b * c) / torch.where(ok, det, torch.ones_like(det)), lo)
        if nonneg_offset:
            clip = lo2 > 0
            s2 = torch.where(clip, torch.where(a > 0, c / a.clamp_min(1e-30), s), s2)
            lo2 = torch.where(clip, torch.zeros_like(lo2), lo2)
        s2 = s2.clamp_min(0)
        for sc, lc in ((s, lo), (s2, lo2)):
            q = _safe_round(x - lc, sc).clamp(0, nmax)
            err = (h * (x - (sc * q + lc)) ** 2).sum(-1, keepdim=True)
            better = err < best_e
            best_e = torch.where(better, err, best_e)
            best_s = torch.where(better, sc, best_s)
            best_lo = torch.where(better, lc, best_lo)
    return best_s[..., 0], best_lo[..., 0]


def _quantize_subscales(v: torch.Tensor, top: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-block floats v (R, nb, nsub) → fp16 block factor d (R, nb) and integers (R, nb, nsub)."""
    if signed:  # largest magnitude maps to −(top+1): the extra negative level, as for the codes
        idx = v.abs().argmax(-1, keepdim=True)
        ext = torch.gather(v, -1, idx)[..., 0]
        d = fp16(ext / -(top + 1))
        lo_i = -(top + 1)
    else:
        d = fp16(v.max(-1).values.clamp_min(0) / top)
        lo_i = 0
    safe = torch.where(d == 0, torch.ones_like(d), d)[..., None]
    i = torch.where(d[..., None] == 0, torch.zeros_like(v), torch.round(v / safe)).clamp(lo_i, top)
    return d, i.to(torch.int16)


def fit(t: GGMLType, x: torch.Tensor, h: torch.Tensor) -> BlockParams:
    """Stored parameters for the blocks of x (R, nb, block), weighted by importances h (same shape)."""
    R, nb, _ = x.shape
    xs = x.reshape(R, nb, t.nsub, t.sub)
    hs = h.reshape(R, nb, t.nsub, t.sub)
    if not t.k_quant:
        if t.affine:
            s, lo = _fit_affine(xs, hs, t.qmax, nonneg_offset=False)
            return BlockParams(d=fp16(s[..., 0]), m=fp16(lo[..., 0]))
        s = _fit_symmetric(xs, hs, t.qmin, t.qmax)
        return BlockParams(d=fp16(s[..., 0]))
    if t.affine:
        s, lo = _fit_affine(xs, hs, t.qmax, nonneg_offset=True)  # (R, nb, nsub)
        d, sc = _quantize_subscales(s, t.sc_max, signed=False)
        dmin, mi = _quantize_subscales(-lo, t.sc_max, signed=False)
        p = BlockParams(d=d, dmin=dmin, sc=sc, mi=mi)
    else:
        s = _fit_symmetric(xs, hs, t.qmin, t.qmax)
        d, sc = _quantize_subscales(s, t.sc_max, signed=t.sc_signed)
        p = BlockParams(d=d, sc=sc)
    return refit_block_factors(t, p, x, h)


def refit_block_factors(t: GGMLType, p: BlockParams, x: torch.Tensor, h: torch.Tensor) -> BlockParams:
    """K-types: with the integer sub-scales fixed, refit the block's fp16 d (and dmin) by weighted least
    squares on the codes they give; kept only where it lowers the weighted error."""
    R, nb, _ = x.shape
    xs, hs = x.reshape(R, nb, t.nsub, t.sub), h.reshape(R, nb, t.nsub, t.sub)

    def err(pp: BlockParams) -> torch.Tensor:
        s, o = grid(t, pp)
        s, o = s[..., None], (o[..., None] if o is not None else None)
        q = round_codes(xs, s, o, t)
        return (hs * (xs - dequant(q, s, o)) ** 2).sum((-1, -2)), q

    e0, q = err(p)
    a_ = p.sc.float()[..., None] * q  # (R, nb, nsub, sub): the d-coefficient of every weight
    if t.affine:
        b_ = -p.mi.float()[..., None].expand_as(q)  # the dmin-coefficient
        A = (hs * a_ * a_).sum((-1, -2))
        B = (hs * a_ * b_).sum((-1, -2))
        C = (hs * b_ * b_).sum((-1, -2))
        u = (hs * a_ * xs).sum((-1, -2))
        v = (hs * b_ * xs).sum((-1, -2))
        det = A * C - B * B
        ok = det.abs() > 1e-20
        one = torch.ones_like(det)
        d2 = torch.where(ok, (u * C - v * B) / torch.where(ok, det, one), p.d)
        m2 = torch.where(ok, (A * v - B * u) / torch.where(ok, det, one), p.dmin)
        cand = BlockParams(d=fp16(d2), dmin=fp16(m2.clamp_min(0)), sc=p.sc, mi=p.mi)
    else:
        A = (hs * a_ * a_).sum((-1, -2))
        u = (hs * a_ * xs).sum((-1, -2))
        d2 = torch.where(A > 0, u / A.clamp_min(1e-30), p.d)
        cand = BlockParams(d=fp16(d2), sc=p.sc)
    e1, _ = err(cand)
    better = e1 < e0
    p.d = torch.where(better, cand.d, p.d)
    if t.affine:
        p.dmin = torch.where(better, cand.dmin, p.dmin)
    return p


def fit_matrix(t: GGMLType, W: torch.Tensor, h: torch.Tensor | None = None) -> BlockParams:
    """Block parameters of W (out, in) with per-column importance h (in,) (None: uniform)."""
    R, n = W.shape
    if n % t.block:
        raise ValueError(f"{t.name} needs rows that are a multiple of {t.block} wide, got {n}")
    x = W.float().reshape(R, n // t.block, t.block)
    hh = torch.ones(n) if h is None else h.float()
    hh = hh.reshape(1, n // t.block, t.block).expand(R, -1, -1)
    return fit(t, x, hh)


def quantize_rtn(t: GGMLType, W: torch.Tensor, h: torch.Tensor | None = None) -> GGMLQuantized:
    """Importance-weighted round-to-nearest on the type's grid (llama-quantize with an imatrix, roughly)."""
    p = fit_matrix(t, W, h)
    R, n = W.shape
    q0 = GGMLQuantized(t, torch.zeros(R, n, dtype=torch.int8), p)
    s, o = q0.scale_offset()
    q0.codes = round_codes(W.float(), s, o, t).to(torch.int8)
    return q0


def search_scheme(scheme: QuantScheme) -> QuantScheme:
    """The integer scheme closest to a GGUF type, for searches that only need its error behaviour (AWQ's
    scale and clip search): fitting the type's exact grid at every grid point would cost ~10× more."""
    if scheme.ggml is None:
        return scheme
    return QuantScheme(scheme.bits, scheme.group_size, scheme.symmetric)
