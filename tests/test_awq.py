"""AWQ: scaling keeps every architecture's function, the search only ever lowers the error, recipes compose."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import tensorpress
from tensorpress.compressors.awq import AWQ, AWQConfig, head_map, search_scales_linear
from tensorpress.compressors.base import LayerWork
from tensorpress.errors import TensorpressError
from tensorpress.quantization import QuantScheme
from tensorpress.recipe import load_recipe
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


def targets_of(work: LayerWork) -> list[str]:
    from tensorpress.architecture import is_linear

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
