"""Automatic mixed precision: the knapsack, byte accounting, the budget config, and whole runs on tiny models."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

import tensorpress
from tensorpress.cli.main import main
from tensorpress.formats.compressed_tensors import pack_tensors, packed_bytes
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.sizes import size_stats
from tensorpress.pipeline.auto import knapsack
from tensorpress.pipeline.auto.budget import parse_size
from tests.conftest import make_model

CALIB = {"samples": 8, "seqlen": 32, "batch_size": 4}
STEPS = [{"gptq": {"bits": 4, "group_size": 32}, "ignore": ["lm_head"]}]


@pytest.fixture(autouse=True)
def _own_measurement_cache(tmp_path, monkeypatch):
    """Measurements are cached per model and calibration; tests keep theirs out of the user's cache."""
    monkeypatch.setattr("tensorpress.pipeline.auto.measure.cache_dir", lambda: tmp_path / "cache")


def recipe(text_file, **budget) -> dict:
    body = {"bits": [2, 3, 4, 8], "samples": 8, "fisher_samples": 4, **budget}
    return {"calibration": {**CALIB, "text": str(text_file)}, "budget": body, "steps": STEPS}


def total(cost, picks) -> int:
    return sum(cost[i][k] for i, k in enumerate(picks))


# ------------------------------------------------------------------------------------------- knapsack


def test_knapsack_is_optimal_and_within_budget_on_small_instances():
    rng = random.Random(0)
    for _ in range(200):
        cost = [[rng.randint(1, 40) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 5))]
        loss = [[rng.random() for _ in row] for row in cost]
        budget = rng.randint(sum(map(min, cost)), sum(map(max, cost)) + 3)
        feasible = [
            sum(loss[i][k] for i, k in enumerate(ks))
            for ks in itertools.product(*[range(len(r)) for r in cost])
            if total(cost, ks) <= budget
        ]
        picks = knapsack.choose(cost, loss, budget)
        assert total(cost, picks) <= budget
        assert sum(loss[i][k] for i, k in enumerate(picks)) == pytest.approx(min(feasible), abs=1e-12)


def test_knapsack_rounded_table_never_exceeds_and_fills_the_budget(monkeypatch):
    """With a table too small for exact bytes, costs round up (never over budget) and the fill spends the rest."""
    monkeypatch.setattr(knapsack, "MAX_CELLS", 5_000)
    rng = random.Random(1)
    sizes = [rng.choice([9216, 3072, 24576]) + rng.randint(0, 7) for _ in range(60)]
    bits = [2, 3, 4, 5, 6, 8]
    cost = [[n * (4 * b + 1) // 32 + rng.randint(0, 5) for b in bits] for n in sizes]
    loss = [[rng.uniform(0.5, 2) * n * 4.0**-b for b in bits] for n in sizes]
    for frac in (0.2, 0.5, 0.9):
        budget = int(sum(map(min, cost)) + frac * (sum(map(max, cost)) - sum(map(min, cost))))
        used = total(cost, knapsack.choose(cost, loss, budget))
        assert budget * 0.99 <= used <= budget


def test_knapsack_infeasible_budget():
    with pytest.raises(knapsack.InfeasibleBudget):
        knapsack.choose([[10, 20], [5]], [[1.0, 0.5], [0.0]], 14)


# ---------------------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(("shape", "scheme"), [((96, 160), QuantScheme(3, 32)), ((70, 100), QuantScheme(5, 64, False))])
def test_packed_bytes_equal_what_pack_tensors_writes(shape, scheme):
    from tensorpress.compressors.quantize import rtn_quantize

    qw = rtn_quantize(torch.randn(*shape), scheme, torch.bfloat16)
    stored = sum(t.numel() * t.element_size() for k, t in pack_tensors("m", qw).items() if not k.endswith("_shape"))
    assert stored == packed_bytes(*shape, scheme, 2)


def test_parse_size():
    assert parse_size("90MB") == 90_000_000
    assert parse_size("1.5 GiB") == 3 * 2**29
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError, match="not a size"):
        parse_size("ninety")


# ----------------------------------------------------------------------------------------- whole runs


def allocation(out) -> dict[str, int]:
    report = json.loads((out / "config.json").read_text())["tensorpress"]["auto"]
    return {n: m["bits"] for n, m in report["modules"].items()}


def test_budget_met_and_transformers_loads_mixed_output(tiny_models, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    res = tensorpress.compress(tiny_models["llama"], recipe(text_file, bits_per_weight=3.6), out)
    sizes = size_stats(out)
    assert 3.6 * 0.99 <= sizes["bits_per_weight"] <= 3.6
    bits = set(allocation(out).values())
    assert len(bits) > 1  # really mixed
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == sorted(bits)
    assert res.notes == [] or all("does not divide" not in n for n in res.notes)
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ours = tensorpress.load(out)
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, ours(ids).logits)


def test_group_size_candidates_are_those_dividing_the_width():
    from tensorpress.pipeline.auto.candidates import module_candidates

    cands = [QuantScheme(bits=3, group_size=g) for g in (32, 48, 64, -1)] + [QuantScheme(bits=4, ggml="Q4_K")]

    def offered(in_f, cands=cands):
        return [c.group_size if c.ggml is None else c.ggml for c in module_candidates(cands, in_f)]

    assert offered(96) == [32, 48, -1, "Q5_0"]  # Q4_K's fallback on rows that are not 256-multiples
    assert offered(160) == [32, -1, "Q5_0"]
    assert offered(100, cands[:-1]) == [32, 48, 64, -1]  # none divides: short last groups, as any recipe


def test_mixed_group_sizes_load_in_transformers(tiny_models, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    tensorpress.compress(tiny_models["llama"], recipe(text_file, bits_per_weight=3.4, group_sizes=[32, 48, -1]), out)
    assert 3.4 * 0.99 <= size_stats(out)["bits_per_weight"] <= 3.4
    modules = json.loads((out / "config.json").read_text())["tensorpress"]["auto"]["modules"]
    widths = {n: 160 if n.endswith("down_proj") else 96 for n in modules}
    assert all(m["group_size"] == -1 or widths[n] % m["group_size"] == 0 for n, m in modules.items())
    assert len({(m["bits"], m["group_size"]) for m in modules.values()}) > 2
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    strategies = {(g["weights"]["strategy"], g["weights"]["group_size"]) for g in groups.values()}
    assert len(strategies) > 1
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, tensorpress.load(out)(ids).logits)


def test_asymmetric_candidates_only_at_their_bits_and_only_for_a_symmetric_step():
    from types import SimpleNamespace

    from tensorpress.pipeline.auto.budget import BudgetConfig
    from tensorpress.pipeline.auto.candidates import candidate_schemes, label

    def step(symmetric):
        return SimpleNamespace(config=SimpleNamespace(scheme=lambda: QuantScheme(4, 64, symmetric)))

    budget = BudgetConfig(bits=[2, 3, 8], group_sizes=[64, -1], asymmetric_bits=[2, 3])
    got = [(c.bits, c.group_size, c.symmetric) for c in candidate_schemes(step(True), budget)]
    assert got == [
        (2, 64, True), (2, 64, False), (3, 64, True), (3, 64, False), (8, 64, True),
        (2, -1, True), (2, -1, False), (3, -1, True), (3, -1, False), (8, -1, True),
    ]  # fmt: skip
    assert all(not c.symmetric for c in candidate_schemes(step(False), budget))  # an asymmetric step stays so
    assert len(candidate_schemes(step(False), budget)) == 6
    assert label(QuantScheme(3, -1, False)) == "3 bits per channel asymmetric"
    # a zero point costs what pack_tensors writes: packed zeros per group
    assert packed_bytes(64, 128, QuantScheme(3, 64, False), 2) > packed_bytes(64, 128, QuantScheme(3, 64, True), 2)


def test_mixed_symmetric_and_asymmetric_match_the_compressed_tensors_oracle(tiny_models, text_file, tmp_path):
    """transformers 5.25 cannot load asymmetric pack-quantized weights (upstream), so the oracle here is
    compressed-tensors' own decompressor, fed each module's stored tensors and its config group."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    out = tmp_path / "out"
    body = {"bits_per_weight": 3.4, "group_sizes": [32, -1], "asymmetric_bits": [2, 3, 4]}
    res = tensorpress.compress(tiny_models["llama"], recipe(text_file, **body), out)
    assert 3.4 * 0.99 <= size_stats(out)["bits_per_weight"] <= 3.4
    assert any("asymmetric" in n and "tensorpress.load" in n for n in res.notes)
    cfg = json.loads((out / "config.json").read_text())
    modules = cfg["tensorpress"]["auto"]["modules"]
    assert {m["symmetric"] for m in modules.values()} == {True, False}  # the knapsack took both kinds
    stored = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    ours = dict(tensorpress.load(out).named_modules())
    for group in cfg["quantization_config"]["config_groups"].values():
        scheme = QuantizationScheme(targets=group["targets"], weights=QuantizationArgs(**group["weights"]))
        for target in group["targets"]:
            name = target.removeprefix("re:").strip("^$").replace("\\.", ".")
            state = {k.split(".")[-1]: v for k, v in stored.items() if k.rsplit(".", 1)[0] == name}
            assert ("weight_zero_point" in state) == (not modules[name]["symmetric"])
            dense = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
            assert torch.equal(dense, ours[name].weight.to(dense.dtype)), name  # ct dequantizes in the scale dtype


def test_rerun_with_another_target_reuses_the_measurement_and_reports(tiny_models, text_file, tmp_path):
    from tensorpress.evaluation.charts import bits_grid

    first, second = tmp_path / "first", tmp_path / "second"
    tensorpress.compress(tiny_models["llama"], recipe(text_file, bits_per_weight=3.0), first)
    res = tensorpress.compress(
        tiny_models["llama"],
        recipe(text_file, bits_per_weight=4.5),
        second,
        eval_text=str(text_file),
        windows=2,
        seqlen=32,
    )
    auto = res.report["auto"]
    assert auto["cached"] and auto["measured_kl"] == res.report["kl"]
    assert sum(allocation(second).values()) > sum(allocation(first).values())
    assert auto["bits_per_weight"] == pytest.approx(res.report["bits_per_weight"])
    layers, kinds, grid = bits_grid(auto["modules"])
    assert layers == [0, 1] and kinds[0] == "self_attn.q_proj" and len(kinds) == 7
    assert grid[1][kinds.index("mlp.down_proj")] == auto["modules"]["model.layers.1.mlp.down_proj"]["bits"]
    html = (second / "report.html").read_text()
    assert "Automatic mixed precision" in html and html.count("data:image/png") >= 2
    assert "predicted KL" in (second / "report.md").read_text()


@pytest.mark.parametrize("arch", ["qwen2", "opt"])
def test_tied_head_and_other_layouts(tiny_models, text_file, tmp_path, arch):
    """The sensitivity pass reads a tied output head from the embedding (qwen2) and runs OPT's layers."""
    out = tmp_path / "out"
    tensorpress.compress(tiny_models[arch], recipe(text_file, bits_per_weight=3.5), out)
    assert 3.5 * 0.99 <= size_stats(out)["bits_per_weight"] <= 3.5


def test_size_target_never_exceeded(tiny_models, text_file, tmp_path):
    base = size_stats(tiny_models["llama"])["size_bytes"]
    target = int(base * 0.55)
    out = tmp_path / "out"
    tensorpress.compress(tiny_models["llama"], recipe(text_file, size=target), out)
    assert size_stats(out)["size_bytes"] <= target


def test_same_seed_same_allocation_and_sensitive_module_gets_more_bits(tiny_models, text_file, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):  # each run measures from scratch (no shared measurement cache)
        monkeypatch.setattr(
            "tensorpress.pipeline.auto.measure.cache_dir", lambda out=out: out.with_name(out.name + "-cache")
        )
        tensorpress.compress(tiny_models["llama"], recipe(text_file, bits_per_weight=3.3), a if out == a else b)
    assert allocation(a) == allocation(b)
    info = json.loads((b / "config.json").read_text())["tensorpress"]["auto"]
    assert not info["cached"] and info["seconds"]["sensitivity"] > 0

    # The same model with one MLP output projection scaled up 30×: its error now dominates the residual stream.
    from safetensors.torch import load_file, save_file

    model = make_model(tmp_path / "sensitive", "llama")
    target = "model.layers.0.mlp.down_proj"
    shard = next(model.glob("*.safetensors"))
    tensors = load_file(shard)
    tensors[f"{target}.weight"] = tensors[f"{target}.weight"] * 30
    save_file(tensors, shard, metadata={"format": "pt"})
    c = tmp_path / "c"
    tensorpress.compress(model, recipe(text_file, bits_per_weight=3.3), c)
    before, after = allocation(a), allocation(c)
    assert after[target] > before[target]
    assert after[target] == max(after.values())


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "needle"), [("--target-bpw", "1.5", "below"), ("--target-bpw", "9", "above")]
)
def test_target_outside_candidates_is_one_line_error(capsys, tiny_models, tmp_path, flag, value, needle):
    rc, err = run_cli(
        capsys, "compress", tiny_models["llama"], "--recipe", "auto", "--out", tmp_path / "o", flag, value
    )
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"{flag} {value}" in lines[0] and needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_auto_recipe_without_target_and_unknown_budget_key(capsys, tiny_models, tmp_path):
    rc, err = run_cli(capsys, "compress", tiny_models["llama"], "--recipe", "auto", "--out", tmp_path / "o")
    assert rc == 2 and "--target-bpw" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "r.yaml"
    bad.write_text("budget: {bits_per_weight: 3, colour: red}\nsteps:\n  - rtn: {bits: 4}\n")
    rc, err = run_cli(capsys, "compress", tiny_models["llama"], "--recipe", bad, "--out", tmp_path / "o")
    assert rc == 2 and "budget.colour" in err and len(err.strip().splitlines()) == 1
    bad.write_text("budget: {bits_per_weight: 3, awq_scaled: 'no'}\nsteps:\n  - rtn: {bits: 4}\n")
    rc, err = run_cli(capsys, "compress", tiny_models["llama"], "--recipe", bad, "--out", tmp_path / "o")
    assert rc == 2 and "budget.awq_scaled" in err and len(err.strip().splitlines()) == 1
    bad.write_text("budget: {bits_per_weight: 3, bits: [3, 4], asymmetric_bits: [2]}\nsteps:\n  - rtn: {bits: 4}\n")
    rc, err = run_cli(capsys, "compress", tiny_models["llama"], "--recipe", bad, "--out", tmp_path / "o")
    assert rc == 2 and "budget.asymmetric_bits" in err and len(err.strip().splitlines()) == 1
    bad.write_text("budget: {bits_per_weight: 3, estimator: repaired, awq_scaled: true}\nsteps:\n  - rtn: {bits: 4}\n")
    rc, err = run_cli(capsys, "compress", tiny_models["llama"], "--recipe", bad, "--out", tmp_path / "o")
    assert rc == 2 and "budget.awq_scaled" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- repaired estimate


def test_nearest_reference_width():
    from tensorpress.pipeline.auto.candidates import REFERENCE_BITS, nearest_reference

    cands = [QuantScheme(b, 32, True) for b in (2, 3, 4, 5, 8)]
    assert [REFERENCE_BITS[r] for r in nearest_reference(cands)] == [3, 3, 4, 4, 4]


def loss_tables(model, body: dict) -> tuple[dict[str, list[list[float]]], object]:
    """The predicted-ΔKL table of each estimator (rtn, repaired) for recipe `body`, and the problem."""
    from tensorpress.calibration.windows import load_tokenizer
    from tensorpress.model.architecture import build_skeleton
    from tensorpress.model.checkpoint import open_checkpoint
    from tensorpress.pipeline.auto.measure import measure
    from tensorpress.pipeline.auto.problem import allocation_problem
    from tensorpress.pipeline.plan import plan_targets
    from tensorpress.pipeline.recipe import load_recipe

    loss = {}
    ckpt = open_checkpoint(model)
    skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
    tok = load_tokenizer(model)
    for est in ("rtn", "repaired"):
        rec = load_recipe({**body, "budget": {**body["budget"], "estimator": est}})
        problem = allocation_problem(skel, ckpt, rec, plan_targets(skel, rec))
        loss[est] = measure(problem, skel, ckpt, rec, tok, "cpu")[0]
    ckpt.close()
    return loss, problem


def test_repaired_estimate_is_rounding_times_the_repair_at_the_nearest_reference(tiny_models, text_file):
    """Same windows, same labels: the repaired table is the rounding table with one factor per module and
    reference width, and AWQ + GPTQ leave less error than rounding."""
    from tensorpress.pipeline.auto.candidates import nearest_reference

    body = {**recipe(text_file, bits_per_weight=3.5), "steps": [{"awq": {}, "ignore": ["lm_head"]}, *STEPS]}
    loss, problem = loss_tables(tiny_models["llama"], body)
    ratios = []
    for i, cands in enumerate(problem.module_candidates):
        refs = nearest_reference(cands)
        per_ref: dict[int, set[float]] = {}
        for k, r in enumerate(refs):
            per_ref.setdefault(r, set()).add(round(loss["repaired"][i][k] / loss["rtn"][i][k], 6))
        assert all(len(v) == 1 for v in per_ref.values()), per_ref
        ratios += [v.pop() for v in per_ref.values()]
    assert len(set(ratios)) > 1
    assert sorted(ratios)[len(ratios) // 2] < 1.0


def test_repaired_estimate_of_plain_rounding_is_rounding(tiny_models, text_file):
    """An rtn step without awq repairs nothing: both estimators give the same table."""
    rtn = {"rtn": {"bits": 4, "group_size": 32}, "ignore": ["lm_head"]}
    body = {**recipe(text_file, bits_per_weight=3.5), "steps": [rtn]}
    loss, _ = loss_tables(tiny_models["llama"], body)
    flat = [[v for row in loss[e] for v in row] for e in ("rtn", "repaired")]
    assert flat[0] == pytest.approx(flat[1], rel=1e-9)
