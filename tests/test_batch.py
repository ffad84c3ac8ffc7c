"""`tensorpress batch` / `batch-merge` on a tiny model: schema, base once, resume, shards, gates, JUnit, HTML."""

from __future__ import annotations

import base64
import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tensorpress
from tensorpress.batch.matrix import load_matrix, parse_matrix, parse_shard, select_shard
from tensorpress.batch.summary import SECONDS_COLUMN, table_rows
from tensorpress.cli.main import main
from tensorpress.errors import TensorpressError
from tensorpress.evaluation.metrics import BaseReference

W4 = "name: w4\nsteps:\n  - rtn: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n"
W8 = "name: w8\nsteps:\n  - rtn: {bits: 8, group_size: 32}\n    ignore: [lm_head]\n"
BAD = "name: bad\nsteps:\n  - rtn: {bits: 4}\n    targets: [c_attn]\n"  # no such module in a Llama: fails at plan


def write_matrix(folder: Path, model: Path, text: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("w4.yaml", W4), ("w8.yaml", W8), ("bad.yaml", BAD)):
        (folder / name).write_text(body)
    m = folder / "matrix.yaml"
    m.write_text(
        f"models: [{model}]\n"
        "recipes: [w4.yaml, w8.yaml, bad.yaml]\n"
        f"eval: {{text: {text}, windows: 2, seqlen: 16}}\n"
        "gates:\n  - {metric: bits_per_weight, max: 6}\n  - {metric: ppl_increase_pct, max: 50}\n" + extra
    )
    return m


class Counter:
    """Counts calls of BaseReference.compute and tensorpress.compress during a batch."""

    def __init__(self, mp: pytest.MonkeyPatch):
        mp.setattr("tensorpress.evaluation.continuations.NEW_TOKENS", 4)
        self.base = self.compress = 0
        real_compute, real_compress = BaseReference.compute.__func__, tensorpress.compress

        def compute(cls, *a, **k):
            self.base += 1
            return real_compute(cls, *a, **k)

        def compress(*a, **k):
            self.compress += 1
            return real_compress(*a, **k)

        mp.setattr(BaseReference, "compute", classmethod(compute))
        mp.setattr("tensorpress.pipeline.run.compress", compress)  # where the batch runner takes it from


@pytest.fixture(scope="module")
def batch(tiny_models, text_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    matrix = write_matrix(root / "m", tiny_models["llama"], text_file)
    with pytest.MonkeyPatch.context() as mp:
        counter = Counter(mp)
        rc = main(["batch", str(matrix), "--out", str(root / "out"), "--quiet"])
    return {"matrix": matrix, "out": root / "out", "rc": rc, "counter": counter, "root": root}


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def rows_without_seconds(out: Path) -> list[list[str]]:
    return [row[:SECONDS_COLUMN] + row[SECONDS_COLUMN + 1 :] for row in table_rows(summary(out))]


# --- the matrix ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("models: [M]\nrecipes: [rtn-w4g64]\nmodel: x\n", "model: unknown key (known: models, recipes, eval, gates)"),
        ("models: [M]\nrecipes: [rtn-w4g64]\neval: {window: 2}\n", "eval.window: unknown key 'window'"),
        ("models: [M]\nrecipes: [rtn-w4g64]\neval: {windows: 0}\n", "eval.windows: must be ≥ 1"),
        ("models: [M]\nrecipes: [rtn-w4g64]\ngates: [{metric: speed, max: 1}]\n", "gates[0].metric: unknown metric"),
        ("models: [M]\nrecipes: [rtn-w4g64]\ngates: [{metric: kl}]\n", "gates[0]: needs max or min"),
        ("models: [M]\nrecipes: [rtn-w4g64]\ngates: [{metric: kl, maxx: 1}]\n", "gates[0].maxx: unknown key"),
        ("models: [M]\nrecipes: [rtn-w4g64]\ngates: [{metric: kl, max: low}]\n", "gates[0].max: must be a number"),
        ("models: [M]\nrecipes: [nope.yaml]\n", "recipes[0]: recipe 'nope.yaml': no such file"),
        ("models: []\nrecipes: [rtn-w4g64]\n", "models: must be a non-empty list"),
        ("models: [M]\nrecipes: [rtn-w4g64, a.yaml, b.yaml]\n", "recipes[2]: same recipe content as recipes[1]"),
        ("models: [M]\nrecipes: [w4.yaml]\n", "recipes[0]: recipe"),  # w4.yaml has an unknown step key
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_matrix_errors_name_the_key(tmp_path, body, needle):
    (tmp_path / "w4.yaml").write_text("steps:\n  - rtn: {bits: 4, groups: 32}\n")
    (tmp_path / "a.yaml").write_text(W4)
    (tmp_path / "b.yaml").write_text(W4)
    m = tmp_path / "matrix.yaml"
    m.write_text(body)
    with pytest.raises(TensorpressError) as e:
        load_matrix(m)
    assert str(e.value).startswith(f"matrix '{m}'") and needle in str(e.value)


def test_matrix_error_is_one_line_on_the_cli(tmp_path, capsys):
    m = tmp_path / "matrix.yaml"
    m.write_text("models: [M]\nrecipes: [rtn-w4g64]\nshards: 2\n")
    rc = main(["batch", str(m), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "shards: unknown key" in err[0]
    assert not (tmp_path / "o").exists()


def test_shards_are_deterministic_disjoint_and_cover(tmp_path):
    (tmp_path / "w8.yaml").write_text(W8)
    (tmp_path / "w4.yaml").write_text(W4)
    raw = {"models": ["a/one", "b/two"], "recipes": ["rtn-w4g64", "w8.yaml", "w4.yaml"]}
    runs = parse_matrix(raw, "m.yaml", tmp_path).runs()
    assert len(runs) == 6 and len({r.id for r in runs}) == 6 and len({r.key for r in runs}) == 6
    for n in (1, 2, 3, 4):
        parts = [select_shard(runs, (k, n)) for k in range(1, n + 1)]
        assert sorted(r.index for p in parts for r in p) == list(range(6))
        again = parse_matrix(raw, "m.yaml", tmp_path).runs()
        assert [[r.key for r in p] for p in parts] == [
            [r.key for r in select_shard(again, (k, n))] for k in range(1, n + 1)
        ]
    assert [r.index for r in select_shard(runs, (2, 4))] == [1, 5]
    for bad in ("0/2", "3/2", "1-2", "x"):
        with pytest.raises(TensorpressError, match=f"--shard {bad}"):
            parse_shard(bad)


# --- a batch -------------------------------------------------------------------------------------------


def test_failing_run_and_gate_give_exit_1_and_junit(batch):
    assert batch["rc"] == 1
    s = summary(batch["out"])
    assert [r["status"] for r in s["runs"]] == ["ok", "ok", "failed"]
    assert "select no Linear module" in s["runs"][2]["error"]
    assert s["runs_failed"] == 1 and s["gates_failed"] == 1 and s["ok"] is False
    assert [row[-1] for row in table_rows(s)] == ["pass", "fail", "error"]
    root = ET.parse(batch["out"] / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {
        "w4",
        "w4 gate: bits_per_weight <= 6",
        "w4 gate: ppl_increase_pct <= 50",
        "w8",
        "w8 gate: bits_per_weight <= 6",
        "w8 gate: ppl_increase_pct <= 50",
        "bad",
        "bad gate: bits_per_weight <= 6",
        "bad gate: ppl_increase_pct <= 50",
    }
    failure = cases["w8 gate: bits_per_weight <= 6"].find("failure")
    assert failure is not None and "8.5 > max 6" in failure.get("message")
    assert cases["w4 gate: bits_per_weight <= 6"].find("failure") is None
    assert cases["bad"].find("error") is not None
    assert cases["bad gate: bits_per_weight <= 6"].find("skipped") is not None
    assert root.get("tests") == "9" and root.get("failures") == "1" and root.get("errors") == "1"
    md = (batch["out"] / "summary.md").read_text()
    assert "| llama | w8 |" in md and "bits_per_weight = 8.5 > max 6" in md and "Verdict: FAIL" in md


def test_base_evaluated_once_and_metrics_equal_a_side_by_side_run(batch, tiny_models, text_file, tmp_path):
    assert batch["counter"].base == 1 and batch["counter"].compress == 3
    assert not (batch["out"] / ".base").exists()  # the temporary base log-probs are gone
    ours = json.loads((batch["out"] / "runs" / "llama__w4" / "report.json").read_text())
    recipe = batch["matrix"].parent / "w4.yaml"
    direct = tensorpress.compress(
        tiny_models["llama"], recipe, tmp_path / "d", eval_text=str(text_file), windows=2, seqlen=16
    )
    for key in ("ppl", "ppl_base", "kl", "top1_agreement", "tokens", "bits_per_weight", "continuations"):
        assert ours[key] == direct.report[key], key
    assert ours["kl"] > 0 and len(ours["continuations"]) == 3
    assert all(c["base"] is not None for c in ours["continuations"])


def test_rerun_skips_finished_and_redoes_failed_or_interrupted(batch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    before = rows_without_seconds(out)
    with pytest.MonkeyPatch.context() as mp:
        c = Counter(mp)
        assert main(["batch", str(batch["matrix"]), "--out", str(out), "--quiet"]) == 1
    assert c.compress == 1 and c.base == 1  # only the failed run again (it needs the base: it might pass now)
    assert rows_without_seconds(out) == before
    (out / "runs" / "llama__w8" / "run.json").unlink()  # as if killed before it finished
    with pytest.MonkeyPatch.context() as mp:
        c = Counter(mp)
        assert main(["batch", str(batch["matrix"]), "--out", str(out), "--quiet"]) == 1
    assert c.compress == 2 and c.base == 1
    assert rows_without_seconds(out) == before


def test_changed_recipe_content_is_rerun(batch, tmp_path):
    from tensorpress.batch.runner import finished

    m = load_matrix(batch["matrix"])
    assert finished(batch["out"], m.runs()[0]) is not None
    (tmp_path / "w4.yaml").write_text(W4.replace("group_size: 32", "group_size: 16"))
    (tmp_path / "w8.yaml").write_text(W8)
    (tmp_path / "bad.yaml").write_text(BAD)
    shutil.copy(batch["matrix"], tmp_path / "matrix.yaml")
    changed = load_matrix(tmp_path / "matrix.yaml").runs()
    assert changed[0].id == m.runs()[0].id and finished(batch["out"], changed[0]) is None
    assert finished(batch["out"], changed[1]) is not None


def test_shards_merged_equal_unsharded(batch, tmp_path):
    for k in (1, 2):
        main(["batch", str(batch["matrix"]), "--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/2", "--quiet"])
    assert [r["index"] for r in summary(tmp_path / "s1")["runs"]] == [0, 2]
    assert [r["index"] for r in summary(tmp_path / "s2")["runs"]] == [1]
    assert summary(tmp_path / "s2")["ok"] is False  # its run fails a gate
    rc = main(["batch-merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "merged"), "--quiet"])
    assert rc == 1
    assert rows_without_seconds(tmp_path / "merged") == rows_without_seconds(batch["out"])
    merged, whole = summary(tmp_path / "merged"), summary(batch["out"])
    for a, b in zip(merged["runs"], whole["runs"], strict=True):
        for m in (a, b):
            if m["metrics"]:
                m["metrics"].pop("seconds")
        assert a == b
    assert merged["missing_runs"] == [] and merged["shards"] == ["1/2", "2/2"]
    assert (tmp_path / "merged" / "runs" / "llama__w4" / "report.html").is_file()
    # One shard alone is incomplete; the same shard twice overlaps.
    assert main(["batch-merge", str(tmp_path / "s1"), "--out", str(tmp_path / "m1"), "--quiet"]) == 1
    assert summary(tmp_path / "m1")["missing_runs"] == [1]
    with pytest.raises(TensorpressError, match="is also in"):
        from tensorpress.batch.merge import merge_batches

        merge_batches([tmp_path / "s1", tmp_path / "s1"], tmp_path / "m2")


# --- the HTML ------------------------------------------------------------------------------------------


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[str] = []
        self.tables: dict[str, int] = {}  # table class → body rows
        self._table: str | None = None
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.imgs.append(a.get("src") or "")
        elif tag == "table":
            self._table = a.get("class") or ""
            self.tables[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def assert_png_data_uri(src: str) -> None:
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_html_is_self_contained(batch):
    folder = batch["out"] / "runs" / "llama__w4"
    report = json.loads((folder / "report.json").read_text())
    page = Page((folder / "report.html").read_text())
    assert page.sections[:4] == ["summary", "layer-error", "bytes", "continuations"] and "recipe" in page.sections
    assert len(page.imgs) == 2
    for src in page.imgs:
        assert_png_data_uri(src)
    assert page.tables["metrics"] == 7 and page.tables["continuations"] == 3 and page.tables["components"] == 5
    comps = report["bytes_by_component"]
    assert comps["codes"] > comps["scales"] > 0 and comps["masks"] == comps["factors"] == 0
    assert comps["unquantized"] > 0
    text = (folder / "report.html").read_text()
    assert report["continuations"][0]["prompt"] in text


def test_summary_html(batch):
    page = Page((batch["out"] / "summary.html").read_text())
    assert page.sections[:3] == ["summary", "quality-size", "gates"] and "errors" in page.sections
    assert page.tables["summary"] == 3 and page.tables["gates"] == 4
    assert len(page.imgs) == 1
    assert_png_data_uri(page.imgs[0])


# --- pieces ----------------------------------------------------------------------------------------------


def test_tensor_component_table():
    from tensorpress.formats.sizes import tensor_component

    assert tensor_component("model.layers.0.mlp.up_proj.weight_packed") == "codes"
    assert tensor_component("model.layers.0.mlp.up_proj.weight_scale") == "scales"
    assert tensor_component("model.layers.0.mlp.up_proj.weight_zero_point") == "scales"
    assert tensor_component("model.layers.0.mlp.up_proj.weight_mask") == "masks"
    assert tensor_component("model.layers.0.mlp.up_proj.svd_u") == "factors"
    assert tensor_component("model.layers.0.mlp.up_proj.svd_u.weight") == "factors"
    assert tensor_component("model.layers.0.mlp.up_proj.svd_v.weight_packed") == "codes"
    assert tensor_component("model.layers.0.mlp.up_proj.eora_b") == "factors"
    assert tensor_component("model.embed_tokens.weight") == "unquantized"
    assert tensor_component("model.layers.0.input_layernorm.weight") == "unquantized"


def test_pareto_front_and_layer_error_fallback():
    from tensorpress.evaluation.charts import layer_errors, pareto_front

    pts = [(4.25, 23.0), (8.5, 14.1), (4.5, 18.0), (4.5, 19.0), (3.0, 40.0), (8.5, 14.1)]
    assert pareto_front(pts) == [4, 0, 2, 1]
    errors, what = layer_errors({"layer_output_error": {"1": 0.2, "0": 0.1}})
    assert errors == {0: 0.1, 1: 0.2} and what == "relative output error"
    rep = {
        "layer_output_error": {},
        "relative_weight_error": {
            "model.layers.0.q": 0.1,
            "model.layers.0.k": 0.3,
            "model.layers.10.q": 0.5,
            "lm_head": 9,
        },
    }
    errors, what = layer_errors(rep)
    assert errors == pytest.approx({0: 0.2, 10: 0.5}) and what == "mean relative weight error"


def test_plain_progress_is_a_line_per_event(capsys):
    import io
    import re

    from tensorpress.infra.progress import PlainProgress

    buf = io.StringIO()
    p = PlainProgress(buf)
    assert list(p.track(range(20), "layers", total=20)) == list(range(20))
    lines = [ln.split("] ", 1)[1] for ln in buf.getvalue().splitlines()]
    assert lines[0] == "layers: start (0/20)" and lines[-1].startswith("layers: done 20/20")
    steps = [re.fullmatch(r"layers (\d+)/20, [\d.]+s elapsed, ETA [\d.]+s", ln) for ln in lines[1:-1]]
    assert all(steps) and [int(m.group(1)) for m in steps] == list(range(2, 21, 2))  # fast items: every tenth
    slow = io.StringIO()
    p = PlainProgress(slow, min_interval=0.0)  # items slower than the interval: a line each
    assert list(p.track(range(3), "layers", total=3)) == [0, 1, 2]
    assert [ln.split("] ", 1)[1].split(",")[0] for ln in slow.getvalue().splitlines()[1:-1]] == [
        "layers 1/3",
        "layers 2/3",
        "layers 3/3",
    ]


@pytest.mark.e2e
def test_batch_on_the_sample_model(sample, tmp_path):
    """Real weights: the base model knows the capital of France, RTN w4 keeps speaking, the pages render."""
    m = tmp_path / "matrix.yaml"
    m.write_text(
        f"models: [{sample.model}]\nrecipes: [rtn-w4g64]\neval: {{text: kjv:eval, windows: 4, seqlen: 256}}\n"
        "gates: [{metric: ppl_increase_pct, max: 200}, {metric: bits_per_weight, max: 4.3}]\n"
    )
    assert main(["batch", str(m), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "out" / "runs" / f"{sample.model.name}__rtn-w4g64" / "report.json").read_text())
    assert rep["bits_per_weight"] == pytest.approx(4.25) and rep["ppl_base"] < rep["ppl"] < 3 * rep["ppl_base"]
    france = rep["continuations"][0]
    assert "Paris" in france["base"] and len(france["compressed"].split()) >= 3
    comps = rep["bytes_by_component"]
    assert comps["scales"] * 16 == pytest.approx(comps["codes"], rel=0.01)  # one bf16 scale per 64 4-bit codes
    page = Page((tmp_path / "out" / "summary.html").read_text())
    assert page.tables["summary"] == 1 and len(page.imgs) == 1
