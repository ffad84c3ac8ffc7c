"""AWQ: scaling keeps every architecture's function, the search only ever lowers the error, recipes compose."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import tensorpress
from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.awq import AWQ, AWQConfig, head_map, search_scales_linear
from tensorpress.errors import TensorpressError
from tensorpress.formats.quantized import QuantScheme
from tensorpress.pipeline.recipe import load_recipe
from tests.conftest import tiny_config


def layer_work(arch: str, seed: int = 0) -> tuple[LayerWork, torch.nn.Module]:
    """Layer 0 of a random fp32 tiny model, with real inputs captured at its entrance.

    Norm weights get a few large channels so activations have outliers, as trained LLMs do.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).float().eval()
    layer = model.get_decoder().layers[0] if arch != "gpt2" else model.transformer.h[0]
    for _name, m in layer.named_modules():
        if "Norm" in type(m).__name__:
            m.weight.data = 0.5 + torch.rand_like(m.weight)
            m.weight.data[:4] *= 20
            if getattr(m, "bias", None) is not None:
                m.bias.data = 0.1 * torch.randn_like(m.bias)
    captured = []

    def grab(_m, args, kwargs):
        kw = dict(kwargs)
        x = args[0] if args else kw.pop("hidden_states")
        for k in ("past_key_values", "past_key_value", "layer_past", "use_cache", "output_attentions"):
            kw.pop(k, None)
        captured.append((x.detach(), kw))
        raise StopIteration

    h = layer.register_forward_pre_hook(grab, with_kwargs=True)
    for _ in range(2):
        try:
            with torch.no_grad():
                model(input_ids=torch.randint(0, 320, (2, 32)), use_cache=False)
        except StopIteration:
            pass
    h.remove()
    prefix = "model.layers.0." if arch != "gpt2" else "transformer.h.0."
    work = LayerWork(
        0, prefix, layer, torch.float32, calib_inputs=[c[0] for c in captured], calib_kwargs=[c[1] for c in captured]
    )
    return work, layer


def forward_all(work: LayerWork) -> list[torch.Tensor]:
    """The layer's output on every calibration batch."""
    with torch.no_grad():
        outs = [work.module(x, **kw) for x, kw in zip(work.calib_inputs, work.calib_kwargs, strict=True)]
    return [o[0] if isinstance(o, tuple) else o for o in outs]


def targets_of(work: LayerWork) -> list[str]:
    from tensorpress.model.architecture import is_linear

    return [work.prefix + n for n, m in work.module.named_modules() if is_linear(m)]


def run(work: LayerWork) -> torch.Tensor:
    with torch.no_grad():
        out = work.module(work.calib_inputs[1], **work.calib_kwargs[1])
    return out[0] if isinstance(out, tuple) else out


def awq_for(bits: int = 3, **cfg) -> AWQ:
    recipe = load_recipe({"steps": [{"awq": cfg}, {"rtn": {"bits": bits, "group_size": 32}}]})
    c = AWQ(recipe.steps[0].config)
    c.prepare(recipe, recipe.steps[0])
    return c


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "opt", "gpt2"])
@pytest.mark.parametrize("objective", ["linear", "block"])
def test_awq_scaling_leaves_the_layer_function_unchanged(arch, objective):
    work, layer = layer_work(arch)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    ref = run(work)
    awq_for(objective=objective).apply(work, targets_of(work))
    out = run(work)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert not any("left unscaled" in n for n in work.notes), work.notes
    changed = [k for k, v in layer.state_dict().items() if not torch.equal(v, before[k])]
    norms = [k for k in changed if "norm" in k or "ln_" in k]
    assert norms, f"no norm was folded into on {arch}: {changed}"
    if arch in ("llama", "mistral", "qwen2"):  # v→o through grouped-query heads, and up→down
        assert any(k.endswith("v_proj.weight") for k in changed)
        assert any(k.endswith("up_proj.weight") for k in changed)


def test_scale_search_never_worse_than_no_scaling_and_helps_with_outliers():
    torch.manual_seed(0)
    X = torch.randn(4096, 64)
    X[:, :3] *= 30  # outlier input channels
    W = torch.randn(48, 64) * 0.05
    H = X.T @ X
    found = search_scales_linear([(W, QuantScheme(3, 32))], H, X.abs().mean(0), torch.float32, 20, False)
    assert found.loss <= found.loss0
    assert found.alpha > 0 and found.loss < 0.9 * found.loss0
    assert found.scales[:3].min() > found.scales[3:].max()  # the outlier channels are protected
    duo = search_scales_linear([(W, QuantScheme(3, 32))], H, X.abs().mean(0), torch.float32, 20, True)
    assert duo.loss <= duo.loss0


def test_grouped_query_head_map():
    m = head_map(4, 8, 2)  # 2 kv heads of dim 2, 4 query heads
    assert m.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert head_map(8, 8, 2) is None
    with pytest.raises(ValueError):
        head_map(3, 8, 2)


def test_awq_without_a_quantizer_after_it_is_rejected():
    with pytest.raises(TensorpressError, match=r"steps\[1\]\.awq: awq only rescales"):
        load_recipe({"steps": [{"rtn": {"bits": 4}}, {"awq": {}}]})


def test_awq_config_rejects_unknown_and_bad_values():
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.awq\.alpha"):
        load_recipe({"steps": [{"awq": {"alpha": 0.5}}, {"rtn": {}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.awq\.grid"):
        load_recipe({"steps": [{"awq": {"grid": 0}}, {"rtn": {}}]})
    with pytest.raises(TensorpressError, match=r"steps\[0\]\.awq\.fused.*must be bool"):
        load_recipe({"steps": [{"awq": {"fused": "yes"}}, {"rtn": {}}]})
    assert AWQConfig().objective == "linear"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_awq_rtn_pipeline_beats_rtn(tiny_models, text_file, tmp_path, arch):
    calib = {"text": str(text_file), "samples": 8, "seqlen": 64}
    scores = {}
    for name, steps in {
        "rtn": [{"rtn": {"bits": 3, "group_size": 32}, "ignore": ["lm_head"]}],
        "awq": [
            {"awq": {"clip": True}, "ignore": ["lm_head"]},
            {"rtn": {"bits": 3, "group_size": 32}, "ignore": ["lm_head"]},
        ],
    }.items():
        res = tensorpress.compress(
            tiny_models[arch],
            {"calibration": calib, "steps": steps},
            tmp_path / name,
            eval_text=str(text_file),
            windows=4,
            seqlen=64,
        )
        scores[name] = res.report["kl"]
    assert scores["awq"] < scores["rtn"], scores


# ------------------------------------------------------------------- fused into gptq's single pass


def fused_awq(work: LayerWork, targets: list[str], bits: int = 3) -> AWQ:
    """An AWQ step set up as the pipeline sets it up before a true-sequential gptq on the same modules."""
    from tensorpress.pipeline.plan import link_steps

    recipe = load_recipe({"steps": [{"awq": {}}, {"gptq": {"bits": bits, "group_size": 32}}]})
    awq = AWQ(recipe.steps[0].config)
    awq.prepare(recipe, recipe.steps[0])
    link_steps(recipe, {0: targets, 1: targets}, {0: awq, 1: None})
    assert awq.fuse
    awq.apply(work, targets)
    assert len(work.before_stage) == 1, work.notes  # nothing ran yet: the search waits for the pass
    return awq


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "opt", "gpt2"])
def test_fused_awq_keeps_the_function_and_hands_on_exact_statistics(arch):
    """With a handler that compresses nothing, the pass must end with the original outputs although the
    weights were rescaled mid-pass, and every Hessian handed on must be that of the inputs as rescaled."""
    from tensorpress.calibration.stats import collect_hessians, staged_replay

    work, layer = layer_work(arch)
    targets = targets_of(work)
    ref = forward_all(work)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    fused_awq(work, targets)
    seen = {}
    staged_replay(work, targets, lambda stage, hessians: seen.update({n: hessians[n].H.clone() for n in stage}))
    for got, want in zip(work.outputs, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    changed = [k for k, v in layer.state_dict().items() if not torch.equal(v, before[k])]
    assert any("norm" in k or "ln_" in k for k in changed), changed
    after = collect_hessians(work, targets)  # the final (scaled) layer's own statistics
    for n in targets:
        torch.testing.assert_close(seen[n], after[n].H, rtol=1e-3, atol=1e-3 * float(after[n].H.abs().max()))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_awq_folds_into_quantized_producers_consistently(arch):
    """v→o and up→down fold into v/up after gptq quantized them: their records must still decode to the
    weights the layer computes with, and the pass's outputs must be the final layer's outputs."""
    from tensorpress.compressors.gptq import GPTQ, GPTQConfig

    work, _ = layer_work(arch)
    targets = targets_of(work)
    fused_awq(work, targets)
    GPTQ(GPTQConfig(bits=3, group_size=32)).apply(work, targets)
    assert not work.before_stage
    for n in targets:
        torch.testing.assert_close(work.quantized[n].dequantize(), work.weight(n), rtol=0, atol=0)
    for got, want in zip(work.outputs, forward_all(work), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fused_awq_beats_gptq_alone_and_skips_its_own_forward(monkeypatch):
    from tensorpress.compressors import awq_edges
    from tensorpress.compressors.gptq import GPTQ, GPTQConfig

    def err(work, ref):
        return sum(float((o - r).pow(2).sum()) for o, r in zip(work.outputs, ref, strict=True))

    plain, _ = layer_work("llama")
    ref = forward_all(plain)
    targets = targets_of(plain)
    GPTQ(GPTQConfig(bits=3, group_size=32)).apply(plain, targets)

    calls = []
    monkeypatch.setattr("tensorpress.calibration.stats.collect_hessians", lambda *a, **k: calls.append(a))
    work, _ = layer_work("llama")
    fused_awq(work, targets)
    GPTQ(GPTQConfig(bits=3, group_size=32)).apply(work, targets)
    assert not calls  # the statistics came from gptq's pass
    assert awq_edges._FOLDS_OK  # the structure's folds were checked once
    assert err(work, ref) < err(plain, ref)


def test_fusion_only_before_a_true_sequential_gptq_on_the_same_modules():
    from tensorpress.pipeline.plan import link_steps

    def fuses(steps, plan=None) -> bool:
        recipe = load_recipe({"steps": steps})
        awq = AWQ(recipe.steps[0].config)
        link_steps(recipe, plan or {i: ["a", "b"] for i in range(len(steps))}, {0: awq, 1: None, 2: None})
        return awq.fuse

    gptq = {"gptq": {"bits": 4, "group_size": 32}}
    assert fuses([{"awq": {}}, gptq])
    assert not fuses([{"awq": {"fused": False}}, gptq])
    assert not fuses([{"awq": {"objective": "block"}}, gptq])
    assert not fuses([{"awq": {}}, {"gptq": {"bits": 4, "true_sequential": False}}])
    assert not fuses([{"awq": {}}, {"rtn": {"bits": 4}}])
    assert not fuses([{"awq": {}}, gptq], plan={0: ["a", "b"], 1: ["a"]})
