"""The batch matrix: a strict YAML schema, its runs, their resume keys and shards.

```yaml
models: [PATH_OR_ID, ...]
recipes: [rtn-w4g64, PATH.yaml, ...]     # shipped names or files (relative to the matrix file)
eval: {text: kjv:eval, windows: 48, seqlen: 512}   # text: one spec or a list of them
gates:                                   # optional
  - {metric: ppl_increase_pct, max: 30}
```
Every error names the matrix file and the key at fault; recipes are loaded and checked here, before
any work starts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tensorpress.calibration.windows import EVAL_SEQLEN, EVAL_WINDOWS
from tensorpress.compressors.base import ConfigError, parse_config
from tensorpress.errors import TensorpressError
from tensorpress.infra.inputs import load_yaml_file
from tensorpress.pipeline.recipe import Recipe, load_recipe
from tensorpress.version import __version__

TOP_KEYS = ("models", "recipes", "eval", "gates")
GATE_KEYS = ("metric", "max", "min")
# report.json metrics a gate may test ("seconds" is the run's total wall time).
GATE_METRICS = (
    "ppl",
    "ppl_base",
    "ppl_increase_pct",
    "kl",
    "top1_agreement",
    "bits_per_weight",
    "bits_per_param_overall",
    "size_bytes",
    "seconds",
)


@dataclass
class EvalSpec:
    text: str | list = "kjv:eval"  # one text spec, or a list (a summary row per text; gates check each)
    windows: int = EVAL_WINDOWS
    seqlen: int = EVAL_SEQLEN

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)

    def validate(self) -> None:
        if not self.texts or not all(isinstance(t, str) and t.strip() for t in self.texts):
            raise ConfigError("text", f"must be a text spec or a non-empty list of them, got {self.text!r}")
        if len(set(self.texts)) != len(self.texts):
            raise ConfigError("text", "lists a text twice")
        if self.windows < 1:
            raise ConfigError("windows", f"must be ≥ 1, got {self.windows}")
        if self.seqlen < 2:
            raise ConfigError("seqlen", f"must be ≥ 2, got {self.seqlen}")


@dataclass(frozen=True)
class Gate:
    metric: str
    max: float | None = None
    min: float | None = None

    @property
    def name(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{self.metric} >= {self.min:g}")
        if self.max is not None:
            parts.append(f"{self.metric} <= {self.max:g}")
        return " and ".join(parts)

    def check(self, value: float | None) -> tuple[bool, str]:
        """(passed, message) for a run's value of the metric; a missing value fails."""
        if value is None:
            return False, f"{self.metric} is not available for this run"
        if self.max is not None and value > self.max:
            return False, f"{self.metric} = {value:.6g} > max {self.max:g}"
        if self.min is not None and value < self.min:
            return False, f"{self.metric} = {value:.6g} < min {self.min:g}"
        return True, f"{self.metric} = {value:.6g}"


@dataclass
class RecipeEntry:
    spec: str  # as written in the matrix
    label: str  # for tables and folder names
    recipe: Recipe
    content_hash: str  # of the resolved recipe (defaults filled in), not of its file name


@dataclass
class RunSpec:
    index: int  # position in the matrix, model-major: the order of tables and shards
    model: str
    model_label: str
    recipe: RecipeEntry
    key: str  # resume key: model, recipe content, eval settings, tensorpress version
    id: str  # folder name under DIR/runs, unique in the matrix


@dataclass
class Matrix:
    source: str
    models: list[str]
    recipes: list[RecipeEntry]
    eval: EvalSpec
    gates: list[Gate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "models": list(self.models),
            "recipes": [{"spec": r.spec, "label": r.label, "hash": r.content_hash} for r in self.recipes],
            "eval": asdict(self.eval),
            "gates": [{k: v for k, v in asdict(g).items() if v is not None} for g in self.gates],
        }

    @property
    def hash(self) -> str:
        """Identifies the matrix across shards (merge refuses shards of different matrices)."""
        return _sha(self.to_dict())[:16]

    def runs(self) -> list[RunSpec]:
        out: list[RunSpec] = []
        seen: set[str] = set()
        for model in self.models:
            model_label = _model_label(model)
            for entry in self.recipes:
                rid = f"{_slug(model_label)}__{_slug(entry.label)}"
                if rid in seen:  # two models (or recipes) with the same name in different folders
                    rid = f"{rid}-{len(out)}"
                seen.add(rid)
                key = _sha(
                    {
                        "model": _model_identity(model),
                        "recipe": entry.content_hash,
                        "eval": asdict(self.eval),
                        "version": __version__,
                    }
                )
                out.append(RunSpec(len(out), model, model_label, entry, key, rid))
        return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'K/N' → (K, N) with 1 ≤ K ≤ N."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise TensorpressError(f"--shard {spec}: expected K/N with 1 ≤ K ≤ N, e.g. 1/2")
    return int(m.group(1)), int(m.group(2))


def select_shard(runs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Shard K of N takes runs K-1, K-1+N, ... of the matrix order: deterministic, disjoint, covering."""
    if shard is None:
        return runs
    k, n = shard
    return [r for r in runs if r.index % n == k - 1]


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    return parse_matrix(load_yaml_file(path, "matrix"), str(path), path.parent)


def parse_matrix(raw: Any, source: str, folder: Path) -> Matrix:
    """Validate a matrix mapping; relative recipe paths are looked up in `folder` first."""
    where = f"matrix '{source}'"

    def fail(key: str, msg: str) -> TensorpressError:
        return TensorpressError(f"{where}: {key}: {msg}")

    if not isinstance(raw, dict):
        raise TensorpressError(f"{where}: must be a mapping with models and recipes")
    for key in raw:
        if key not in TOP_KEYS:
            raise fail(str(key), f"unknown key (known: {', '.join(TOP_KEYS)})")
    models = _string_list(raw.get("models"), "models", fail)
    recipe_specs = _string_list(raw.get("recipes"), "recipes", fail)
    if len(set(models)) != len(models):
        raise fail("models", "lists a model twice")
    ev = raw.get("eval")
    if ev is not None and not isinstance(ev, dict):
        raise fail("eval", "must be a mapping like {text: kjv:eval, windows: 48, seqlen: 512}")
    try:
        eval_spec = parse_config(EvalSpec, ev)
    except ConfigError as e:
        raise fail(f"eval.{e.key}", str(e)) from e
    recipes = [_recipe_entry(i, s, folder, fail) for i, s in enumerate(recipe_specs)]
    hashes: dict[str, int] = {}
    for i, r in enumerate(recipes):
        if r.content_hash in hashes:
            raise fail(f"recipes[{i}]", f"same recipe content as recipes[{hashes[r.content_hash]}]")
        hashes[r.content_hash] = i
    gates_raw = raw.get("gates") or []
    if not isinstance(gates_raw, list):
        raise fail("gates", "must be a list like [{metric: ppl_increase_pct, max: 30}]")
    gates = [_gate(i, g, fail) for i, g in enumerate(gates_raw)]
    return Matrix(source, models, recipes, eval_spec, gates)


def _string_list(value: Any, key: str, fail) -> list[str]:
    if not isinstance(value, list) or not value:
        raise fail(key, "must be a non-empty list")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise fail(f"{key}[{i}]", f"must be a non-empty string, got {v!r}")
    return list(value)


def _recipe_entry(i: int, spec: str, folder: Path, fail) -> RecipeEntry:
    local = folder / spec
    target: str | Path = local if not Path(spec).is_absolute() and local.is_file() else spec
    try:
        recipe = load_recipe(target)
    except TensorpressError as e:
        raise fail(f"recipes[{i}]", str(e)) from e
    label = recipe.name or (Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec)
    return RecipeEntry(spec, label, recipe, _sha(recipe.to_dict()))


def _gate(i: int, raw: Any, fail) -> Gate:
    if not isinstance(raw, dict):
        raise fail(f"gates[{i}]", "must be a mapping like {metric: ppl_increase_pct, max: 30}")
    for key in raw:
        if key not in GATE_KEYS:
            raise fail(f"gates[{i}].{key}", f"unknown key (known: {', '.join(GATE_KEYS)})")
    metric = raw.get("metric")
    if metric not in GATE_METRICS:
        raise fail(f"gates[{i}].metric", f"unknown metric {metric!r} (known: {', '.join(GATE_METRICS)})")
    bounds = {}
    for key in ("max", "min"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise fail(f"gates[{i}].{key}", f"must be a number, got {v!r}")
        bounds[key] = None if v is None else float(v)
    if bounds["max"] is None and bounds["min"] is None:
        raise fail(f"gates[{i}]", "needs max or min")
    return Gate(metric, **bounds)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _model_identity(model: str) -> str:
    """A local checkpoint by absolute path; a hub id as written."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _model_label(model: str) -> str:
    p = Path(model).expanduser()
    return p.name if p.exists() else model.replace("/", "--")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"
