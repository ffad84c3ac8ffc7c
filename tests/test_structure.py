"""Structural compressors: prune (magnitude / Wanda / SparseGPT, N:M, OWL), svd, eora; storage and loader."""

import json

import pytest
import torch

import tensorpress
from tensorpress.compressors.eora import eora_factors
from tensorpress.compressors.gptq_sweep import gptq_quantize
from tensorpress.compressors.prune import sparsegpt_prune
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.compressors.sparsity import SparseGPTSelect, magnitude_keep, owl_sparsities, wanda_keep
from tensorpress.compressors.svd import factors, spectrum, whitening
from tensorpress.errors import TensorpressError
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.sizes import size_stats
from tensorpress.formats.sparse import SparseWeight, decode_sparse, pack_bits, pack_sparse, unpack_bits
from tensorpress.model.structure import LowRankLinear
from tensorpress.pipeline.recipe import load_recipe


def layer(out_f=24, in_f=64, tokens=512, seed=0):
    """A weight and correlated inputs with a few loud channels, as in real LLM layers."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    mix = torch.randn(in_f, in_f, generator=g) / in_f**0.5
    X = mix @ torch.randn(in_f, tokens, generator=g)  # (in, tokens)
    X[:4] *= 8
    return W, X, X @ X.t()


def out_err(W, W2, X):
    return float(((W - W2) @ X).norm() ** 2)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_masks_have_exactly_n_zeros_per_m(n, m):
    W, _X, H = layer()
    keeps = {
        "magnitude": magnitude_keep(W, 0, (n, m)),
        "wanda": wanda_keep(W, torch.diag(H), 0, (n, m)),
        "sparsegpt": sparsegpt_prune(W, H, 0, (n, m), block_size=32)[1],
    }
    for method, keep in keeps.items():
        zeros = (~keep).reshape(W.shape[0], -1, m).sum(-1)
        assert bool((zeros == n).all()), method
    Wp, keep = sparsegpt_prune(W, H, 0, (n, m), block_size=32)
    assert bool((Wp[~keep] == 0).all()) and bool((Wp[keep] != 0).all())


def test_unstructured_sparsity_and_papers_ordering():
    W, X, H = layer(out_f=32, in_f=96, tokens=1024)
    mag = magnitude_keep(W, 0.5, None)
    wan = wanda_keep(W, torch.diag(H), 0.5, None)
    assert int((~wan).sum(1).unique().numel()) == 1 and int((~wan).sum(1)[0]) == 48  # per output row
    assert int((~mag).sum()) == W.numel() // 2
    Ws, keep = sparsegpt_prune(W, H, 0.5, None, block_size=32)
    assert abs(float((~keep).float().mean()) - 0.5) < 0.02
    e_mag, e_wan, e_sgpt = out_err(W, W * mag, X), out_err(W, W * wan, X), out_err(W, Ws, X)
    assert e_sgpt < e_wan < e_mag, (e_sgpt, e_wan, e_mag)


def test_whitened_truncation_loss_equals_dropped_singular_values():
    W, X, H = layer(out_f=40, in_f=64)
    S, shift = whitening(H)
    assert shift == 0
    U, sigma, Vh = spectrum(W, S)
    for r in (1, 8, 20):
        up, down = factors(U, sigma, Vh, r, S)
        loss = out_err(W.double(), up @ down, X.double())
        dropped = float((sigma[r:] ** 2).sum())
        assert loss == pytest.approx(dropped, rel=1e-6)
        Up, sp, Vp = spectrum(W, None)
        plain = factors(Up, sp, Vp, r, None)
        assert loss < out_err(W.double(), plain[0] @ plain[1], X.double())


def test_whitening_shifts_a_singular_gram_matrix():
    X = torch.randn(16, 4)  # rank 4 < 16: H is singular
    S, shift = whitening(X @ X.t())
    assert shift > 0 and bool(torch.isfinite(S).all())


def test_eora_lowers_output_error_and_beats_plain_svd_of_the_error():
    W, X, H = layer(out_f=32, in_f=64, tokens=256)
    W_hat = rtn_quantize(W, QuantScheme(3, 32), torch.float32).dequantize()
    dW = W - W_hat
    B, A = eora_factors(dW, H, 8)
    e0 = out_err(W, W_hat, X)
    e_eora = out_err(W.double(), W_hat.double() + B @ A, X.double())
    U, s, Vh = torch.linalg.svd(dW, full_matrices=False)
    e_plain = out_err(W, W_hat + (U[:, :8] * s[:8]) @ Vh[:8], X)
    assert e_eora < e_plain < e0


@pytest.mark.parametrize("in_f", [8, 13, 64, 100])
def test_bitmask_round_trips(in_f):
    mask = torch.rand(7, in_f, generator=torch.Generator().manual_seed(in_f)) < 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (7, -(-in_f // 8))
    assert torch.equal(unpack_bits(packed, in_f), mask)


@pytest.mark.parametrize("pattern", [None, (2, 4), (3, 8)])
@pytest.mark.parametrize("scheme", [None, QuantScheme(4, 32, True), QuantScheme(3, 16, False)])
def test_sparse_format_round_trips(pattern, scheme):
    W, _X, H = layer(out_f=12, in_f=64)
    keep = wanda_keep(W, torch.diag(H), 0.6, pattern)
    Wp = (W * keep).to(torch.bfloat16).float()
    qw = rtn_quantize(Wp, scheme, torch.bfloat16) if scheme else None
    expected = qw.dequantize().masked_fill(~keep, 0) if qw else Wp
    sw = SparseWeight(keep, Wp, pattern)
    t = pack_sparse("m", sw, qw, torch.bfloat16)
    desc = sw.describe()
    got = decode_sparse("m", scheme, t.__getitem__, set(t), desc)
    assert torch.equal(got, expected)
    assert ("m.weight_mask_index" in t) == bool(pattern) and ("m.weight_mask" in t) != bool(pattern)


def test_joint_sparsegpt_gptq_keeps_exact_zeros_and_beats_prune_then_round():
    W, X, H = layer(out_f=32, in_f=128, tokens=1024)
    scheme = QuantScheme(4, 32, True)
    res = gptq_quantize(W, H, scheme, torch.float32, block_size=32, prune=SparseGPTSelect(0.5, None))
    deq = res.qw.dequantize()
    assert bool((deq[res.pruned] == 0).all())
    assert abs(float(res.pruned.float().mean()) - 0.5) < 0.02
    Ws, keep = sparsegpt_prune(W, H, 0.5, None, block_size=32)
    naive = rtn_quantize(Ws, scheme, torch.float32).dequantize() * keep
    assert out_err(W, deq, X) < out_err(W, naive, X)


def test_owl_sparsities_keep_the_mean_and_follow_outliers():
    ratios = [0.01, 0.05, 0.02, 0.08]
    sp = owl_sparsities(ratios, 0.5, 0.08)
    assert sum(sp) / len(sp) == pytest.approx(0.5)
    assert max(sp) - min(sp) == pytest.approx(0.16)
    assert sp[3] == min(sp) and sp[0] == max(sp)  # most outliers → least pruned


BAD = [
    ([{"gptq": {}}, {"svd": {"ratio": 0.5}}], r"steps\[1\]\.svd: .*svd after steps\[0\]\.gptq"),
    ([{"rtn": {}}, {"prune": {"sparsity": 0.5}}], r"steps\[1\]\.prune: .*prune after steps\[0\]\.rtn"),
    ([{"svd": {"rank": 4}}, {"prune": {"sparsity": 0.5}}], r"steps\[1\]\.prune: .*low-rank"),
    ([{"prune": {"sparsity": 0.5}}, {"prune": {"sparsity": 0.5}}], r"steps\[1\]\.prune: .*pruned twice"),
    ([{"svd": {"rank": 4}}, {"rtn": {}}, {"eora": {}}], r"steps\[2\]\.eora: .*low-rank factors"),
    ([{"prune": {"sparsity": 0.5}}, {"gptq": {"actorder": "static"}}], r"steps\[1\]\.gptq: .*actorder"),
    ([{"rtn": {}}, {"eora": {}}, {"eora": {}}], r"steps\[2\]\.eora: .*eora must be the last"),
    ([{"prune": {"pattern": "2:4"}}, {"gptq": {"block_size": 30}}], r"steps\[1\]\.gptq: .*multiple of M=4"),
]


@pytest.mark.parametrize("steps,needle", BAD)
def test_nonsense_compositions_rejected_naming_the_step(tiny_models, tmp_path, steps, needle):
    steps = [dict(s, ignore=["lm_head"]) for s in steps]
    with pytest.raises(TensorpressError, match=needle):
        tensorpress.compress(tiny_models["llama"], {"steps": steps}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_recipe_level_rejections():
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.eora: .*put a rtn, gptq or prune step before it"):
        load_recipe({"steps": [{"eora": {}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.prune\.sparsity: give exactly one"):
        load_recipe({"steps": [{"prune": {"sparsity": 0.5, "pattern": "2:4"}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.prune\.pattern: .*0 < N < M"):
        load_recipe({"steps": [{"prune": {"pattern": "4:2"}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.svd\.rank: give exactly one"):
        load_recipe({"steps": [{"svd": {}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.prune\.layerwise: owl needs 'sparsity'"):
        load_recipe({"steps": [{"prune": {"pattern": "2:4", "layerwise": "owl"}}]})


def test_structural_steps_on_lm_head_rejected(tiny_models, tmp_path):
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.svd: svd cannot target lm_head"):
        tensorpress.compress(tiny_models["llama"], {"steps": [{"svd": {"method": "plain", "rank": 4}}]}, tmp_path / "x")


def _prune(method, **kw):
    return {"prune": {"method": method, **kw}, "ignore": ["lm_head"]}


ROUND_TRIPS = {
    "magnitude-50": [_prune("magnitude", sparsity=0.5)],
    "wanda-2of4+rtn-asym": [_prune("wanda", pattern="2:4"), {"rtn": {"bits": 4, "group_size": 32, "symmetric": False}}],
    "sparsegpt-50": [_prune("sparsegpt", sparsity=0.5)],
    "sparsegpt-50+gptq (joint)": [_prune("sparsegpt", sparsity=0.5), {"gptq": {"bits": 4, "group_size": 32}}],
    "wanda-owl": [_prune("wanda", sparsity=0.5, layerwise="owl", owl_lambda=0.1)],
    "svd-plain": [{"svd": {"method": "plain", "ratio": 0.6}}],
    "svd-whitened+gptq": [{"svd": {"method": "whitened", "ratio": 0.6}}, {"gptq": {"bits": 4, "group_size": 32}}],
    "gptq+eora-q4": [{"gptq": {"bits": 3, "group_size": 32}}, {"eora": {"rank": 4, "bits": 4, "group_size": 32}}],
    "wanda+eora": [_prune("wanda", sparsity=0.5), {"eora": {"rank": 4}}],
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_pipeline_and_loader_round_trip(tiny_models, text_file, tmp_path, monkeypatch, name):
    """The loaded model holds exactly the weights the pipeline computed with (snapshotted before release)."""
    import tensorpress.pipeline.layers as pipeline

    snap: dict[str, torch.Tensor] = {}
    real_release = pipeline.release

    def release(module, recurse=True):
        if hasattr(module, "self_attn"):  # a decoder layer, released right after it was packed
            i = sum(1 for k in snap if k.endswith(".self_attn.o_proj"))
            for n, m in module.named_modules():
                if isinstance(m, torch.nn.Linear | LowRankLinear) and not n.endswith((".svd_u", ".svd_v")):
                    snap[f"model.layers.{i}.{n}"] = m.weight.detach().clone()
        real_release(module, recurse)

    monkeypatch.setattr(pipeline, "release", release)
    steps = [dict(s, ignore=["lm_head"]) for s in ROUND_TRIPS[name]]
    calib = {"text": str(text_file), "samples": 8, "seqlen": 32, "batch_size": 4}
    out = tmp_path / "out"
    tensorpress.compress(tiny_models["llama"], {"calibration": calib, "steps": steps}, out)
    cfg = json.loads((out / "config.json").read_text())
    structure = cfg["tensorpress"]["structure"]
    model = tensorpress.load(out)
    checked = 0
    for full, w in snap.items():
        mod = model.get_submodule(full)
        assert torch.allclose(mod.weight, w, atol=1e-6, rtol=0), (name, full)
        checked += 1
        if "svd" in structure.get(full, {}):
            assert isinstance(mod, LowRankLinear) and mod.rank == structure[full]["svd"]["rank"]
        if "sparse" in structure.get(full, {}) and "eora" not in structure[full]:
            zeros = float((mod.weight == 0).float().mean())
            assert zeros >= (0.39 if "owl" in name else 0.5), (full, zeros)
    assert checked == 2 * 7  # every decoder Linear of both layers
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert bool(torch.isfinite(model(input_ids=ids).logits).all())
    if "joint" in name:  # kept codes 0.5 × 4 + scales 16/32 + mask 1 (+ word padding of one packed stream)
        assert size_stats(out)["bits_per_weight"] == pytest.approx(3.5, abs=0.01)
    if "owl" in name:
        dens = [d["density"] for k, d in structure.items() if "sparse" in d]
        by_layer = {k.split(".")[2] for k in structure}
        assert len(by_layer) == 2 and len(set(dens)) > 1  # layers get different sparsities


def test_sparse_bytes_track_counted_bits(tiny_models, tmp_path):
    from tensorpress.formats.safetensors_io import read_header, weight_files

    out = tmp_path / "mag"
    tensorpress.compress(tiny_models["llama"], {"steps": [_prune("magnitude", sparsity=0.5)]}, out)
    sz = size_stats(out)
    assert sz["bits_per_weight"] == pytest.approx(9.0)  # 1-bit mask + 8 bits of BF16 per weight, on average
    infos = read_header(weight_files(out)[0])[0]
    m = "model.layers.0.mlp.down_proj"
    stored = sum(i.nbytes for n, i in infos.items() if n.startswith(m + ".weight_") and not n.endswith("_shape"))
    assert stored <= 0.57 * 2 * 96 * 160
    base = size_stats(tiny_models["llama"])
    assert sz["size_bytes"] < base["size_bytes"]


def test_svd_rank_that_saves_nothing_stays_dense(tiny_models, tmp_path):
    out = tmp_path / "s"
    res = tensorpress.compress(
        tiny_models["llama"], {"steps": [{"svd": {"method": "plain", "rank": 60}, "ignore": ["lm_head"]}]}, out
    )
    # q_proj 96×96 breaks even at 48: left dense; gate 160×96 breaks even at 60: left dense too.
    assert any("left dense" in n and "q_proj" in n for n in res.notes)
    model = tensorpress.load(out)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)


@pytest.mark.parametrize("steps", [[{"svd": {"method": "plain", "ratio": 0.5}}], [_prune("magnitude", pattern="2:4")]])
def test_decompress_gives_a_plain_checkpoint(tiny_models, tmp_path, steps):
    from tensorpress.model.decompress import decompress

    steps = [dict(s, ignore=["lm_head"]) for s in steps]
    out = tmp_path / "c"
    tensorpress.compress(tiny_models["llama"], {"steps": steps}, out)
    dense = decompress(out, tmp_path / "d")
    assert "tensorpress" not in json.loads((dense / "config.json").read_text())
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tensorpress.load(out)(input_ids=ids).logits
        b = tensorpress.load(dense)(input_ids=ids).logits
    assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()))


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_one_pass_hessians_are_shared_only_by_modules_fed_the_same_tensor(tiny_models, arch):
    """All of a layer's Linears in one replay: freed activations must not make two inputs look alike."""
    from tensorpress.calibration.forward import capture_inputs
    from tensorpress.calibration.layer_work import LayerWork
    from tensorpress.calibration.stats import collect_hessians
    from tensorpress.model.architecture import build_skeleton, in_out, is_linear, materialize
    from tensorpress.model.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny_models[arch])
    skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
    ids = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(1))
    inputs, kws = capture_inputs(skel, ckpt, ids, 2, "cpu")
    layer, prefix = skel.layers[0], skel.layer_prefix(0)
    materialize(layer, prefix, skel, ckpt.tensor, torch.float32, "cpu")
    work = LayerWork(0, prefix, layer, torch.bfloat16, calib_inputs=inputs, calib_kwargs=kws)
    names = [prefix + n for n, m in layer.named_modules() if is_linear(m)]
    hess = collect_hessians(work, names)
    for n in names:
        assert hess[n].H.shape[0] == in_out(work.linear(n))[0]
    groups = {id(h) for h in hess.values()}
    assert len(groups) == 4  # q/k/v share, o alone, gate/up (or fc1) share, down (or fc2) alone


def test_rank_rules():
    from tensorpress.compressors.svd import SVDConfig, break_even_rank, choose_rank

    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0])  # σ² = 16, 4, 1, 1 of 22
    assert choose_rank(60, 40, sigma, SVDConfig(energy=16 / 22)) == 1
    assert choose_rank(60, 40, sigma, SVDConfig(energy=0.9)) == 2
    assert choose_rank(60, 40, sigma, SVDConfig(rank=9)) == 4
    r = choose_rank(60, 40, sigma, SVDConfig(ratio=0.8))
    assert r == 19 and r * (60 + 40) <= 0.8 * 60 * 40 and break_even_rank(60, 40) == 24
