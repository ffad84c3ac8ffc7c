"""Single-pass true-sequential replay: same statistics and codes as replaying the layer once per stage."""

import threading

import pytest
import torch

from tensorpress.calibration.stats import collect_hessians, execution_stages, staged_replay
from tensorpress.compressors.gptq import GPTQ, GPTQConfig
from tests.test_awq import forward_all, layer_work, targets_of


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2", "mistral"])
def test_single_pass_matches_one_replay_per_stage(arch):
    gptq = GPTQ(GPTQConfig(bits=3, group_size=32, actorder="static"))
    fast, _ = layer_work(arch)
    slow, _ = layer_work(arch)
    targets = targets_of(fast)

    gptq.apply(fast, targets)  # true_sequential: the threaded single pass
    for stage in execution_stages(slow, targets):  # the reference: collect, quantize, replay again
        gptq._stage(slow, stage, collect_hessians(slow, stage))

    assert len(execution_stages(slow, targets)) >= 3  # really sequential (attention in, out, MLP …)
    for name in targets:
        assert torch.equal(fast.quantized[name].codes, slow.quantized[name].codes), name
        assert torch.equal(fast.quantized[name].scale, slow.quantized[name].scale), name
    assert fast.outputs is not None and len(fast.outputs) == len(fast.calib_inputs)
    for got, want in zip(fast.outputs, forward_all(slow), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_stage_handlers_see_earlier_stages_compressed():
    """The o_proj statistics must come from attention computed with the already-changed q/k/v."""
    work, _ = layer_work("llama")
    targets = targets_of(work)
    seen: dict[str, torch.Tensor] = {}

    def handle(stage, hessians):
        seen[stage[0]] = hessians[stage[0]].H.clone()
        for name in stage:  # a drastic change: zero every weight of the stage
            work.set_weight(name, torch.zeros_like(work.weight(name)))

    staged_replay(work, targets, handle)
    o_proj = work.prefix + "self_attn.o_proj"
    assert torch.count_nonzero(seen[o_proj]) == 0  # zero v_proj → zero attention output → H = 0
    for out, x in zip(work.outputs, work.calib_inputs, strict=True):  # every weight zero: output = input
        assert torch.equal(out, x)


def test_failing_handler_unwinds_every_thread_and_removes_hooks():
    work, layer = layer_work("llama")
    targets = targets_of(work)
    before = threading.active_count()

    def handle(stage, hessians):
        raise ValueError(f"boom at {stage[0]}")

    with pytest.raises(ValueError, match=r"boom at .*q_proj"):
        staged_replay(work, targets, handle)
    assert threading.active_count() == before
    assert all(not m._forward_pre_hooks for m in layer.modules())
    assert work.outputs is None


@pytest.mark.parametrize("d", [40, 1100])  # plain addmm below 1024 inputs, block upper triangle above
def test_gram_accumulation_is_symmetric_and_exact(d):
    from tensorpress.calibration.stats import accumulate_gram

    torch.manual_seed(0)
    H = torch.zeros(d, d)
    ref = torch.zeros(d, d, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(200, d)
        accumulate_gram(H, x)
        ref += x.double().T @ x.double()
    assert torch.equal(H, H.T)
    assert float((H.double() - ref).abs().max() / ref.abs().max()) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_wanda_in_one_pass_matches_one_replay_per_stage(arch, pattern):
    """Wanda's Σx² gathered in the single pass give the masks of replaying the layer for every stage."""
    from tensorpress.compressors.prune import Prune, input_sq_sums
    from tensorpress.pipeline.recipe import load_recipe

    cfg = {"method": "wanda", "true_sequential": True, **({"pattern": pattern} if pattern else {"sparsity": 0.5})}
    step = load_recipe({"steps": [{"prune": cfg}]}).steps[0]
    fast, _ = layer_work(arch)
    slow, _ = layer_work(arch)
    targets = targets_of(fast)
    prune_fast, prune_slow = Prune(step.config), Prune(step.config)
    prune_fast.apply(fast, targets)
    for stage in execution_stages(slow, targets):
        prune_slow._stage(slow, stage, input_sq_sums(slow, stage), 0.5, step.config.nm)

    for name in targets:
        assert torch.equal(fast.sparse[name].mask, slow.sparse[name].mask), name
    assert fast.outputs is not None
    for got, want in zip(fast.outputs, forward_all(slow), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
