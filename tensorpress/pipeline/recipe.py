"""Recipes: a YAML pipeline of compressor steps, validated strictly before any work starts.

```yaml
calibration: {text: kjv:calib, samples: 128, seqlen: 512, seed: 0}
steps:
  - rtn: {bits: 4, group_size: 64, symmetric: true}
    ignore: [lm_head]
```
Every error names the recipe, the step index and the key at fault.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tensorpress.compressors import REGISTRY, Compressor
from tensorpress.compressors.base import ConfigError, parse_config
from tensorpress.errors import TensorpressError
from tensorpress.pipeline.budget import BudgetConfig

TOP_KEYS = ("name", "description", "calibration", "budget", "steps")
STEP_KEYS = ("targets", "ignore")


@dataclass
class CalibrationConfig:
    text: str = "kjv:calib"
    samples: int = 128
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8  # windows per forward pass during calibration

    def validate(self) -> None:
        for key in ("samples", "seqlen", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be ≥ 1, got {getattr(self, key)}")


@dataclass
class Step:
    index: int
    name: str
    config: Any
    targets: list[str] = field(default_factory=list)  # empty: every Linear
    ignore: list[str] = field(default_factory=list)

    def compressor(self) -> Compressor:
        return REGISTRY[self.name](self.config)

    @property
    def cls(self) -> type[Compressor]:
        return REGISTRY[self.name]

    @property
    def needs_calibration(self) -> bool:
        """A config may know better than its class (plain svd and magnitude pruning need no data)."""
        return bool(getattr(self.config, "needs_calibration", self.cls.needs_calibration))

    def selects(self, module_name: str) -> bool:
        if self.targets and not any(match(p, module_name) for p in self.targets):
            return False
        return not any(match(p, module_name) for p in self.ignore)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {self.name: asdict(self.config)}
        if self.targets:
            d["targets"] = list(self.targets)
        if self.ignore:
            d["ignore"] = list(self.ignore)
        return d


@dataclass
class Recipe:
    source: str
    calibration: CalibrationConfig
    steps: list[Step]
    name: str = ""
    description: str = ""
    budget: BudgetConfig | None = None  # automatic mixed precision (pipeline/auto.py), when given

    @property
    def needs_calibration(self) -> bool:
        return any(s.needs_calibration for s in self.steps)

    def to_dict(self) -> dict:
        """The resolved recipe (every default filled in), as stored in outputs and reports."""
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        d["calibration"] = asdict(self.calibration)
        if self.budget is not None:
            d["budget"] = asdict(self.budget)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def match(pattern: str, module_name: str) -> bool:
    """`re:REGEX` must match the whole name; a glob matches the name or any dotted suffix of it,
    so `lm_head`, `q_proj` and `self_attn.*` work without spelling out `model.layers.N.`."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], module_name) is not None
    parts = module_name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def builtin_recipes() -> dict[str, Path]:
    """Recipes shipped inside the package (the repository's recipes/ folder)."""
    try:
        folder = resources.files("tensorpress.recipes")
        return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}
    except (ModuleNotFoundError, FileNotFoundError):  # running from a source tree without install
        folder = Path(__file__).resolve().parents[2] / "recipes"
        return {p.stem: p for p in folder.glob("*.yaml")}


def find_recipe(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = builtin_recipes()
    key = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if key in shipped:
        return shipped[key]
    raise TensorpressError(
        f"recipe '{spec}': no such file, and no shipped recipe of that name (shipped: {', '.join(sorted(shipped))})"
    )


def load_recipe(spec: str | Path | dict) -> Recipe:
    """Load, validate and resolve a recipe from a path, a shipped name, or a mapping."""
    if isinstance(spec, dict):
        return parse_recipe(spec, "<dict>")
    path = find_recipe(spec)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise TensorpressError(f"recipe '{path}':{line} invalid YAML") from e
    except OSError as e:
        raise TensorpressError(f"recipe '{path}': cannot read ({e.strerror})") from e
    return parse_recipe(raw, str(path))


def parse_recipe(raw: Any, source: str) -> Recipe:
    def fail(where: str, msg: str) -> TensorpressError:
        return TensorpressError(f"recipe '{source}': {where}: {msg}")

    if not isinstance(raw, dict):
        raise TensorpressError(f"recipe '{source}': must be a mapping with 'steps'")
    for key in raw:
        if key not in TOP_KEYS:
            raise fail(key, f"unknown key (known: {', '.join(TOP_KEYS)})")
    try:
        calibration = parse_config(CalibrationConfig, raw.get("calibration"))
    except ConfigError as e:
        raise fail(f"calibration.{e.key}", str(e)) from e
    except TypeError as e:
        raise fail("calibration", "must be a mapping") from e
    budget = None
    if raw.get("budget") is not None:
        try:
            budget = parse_config(BudgetConfig, raw["budget"])
        except ConfigError as e:
            raise fail(f"budget.{e.key}", str(e)) from e
        except TypeError as e:
            raise fail("budget", "must be a mapping") from e
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("steps", "must be a non-empty list")
    steps = [_parse_step(i, s, fail) for i, s in enumerate(raw_steps)]
    recipe = Recipe(source, calibration, steps, str(raw.get("name", "")), str(raw.get("description", "")), budget)
    check_composition(recipe)
    return recipe


def _parse_step(i: int, raw: Any, fail) -> Step:
    if not isinstance(raw, dict):
        raise fail(f"steps[{i}]", "must be a mapping like {rtn: {bits: 4}}")
    names = [k for k in raw if k not in STEP_KEYS]
    if len(names) != 1:
        found = ", ".join(map(str, names)) or "none"
        raise fail(f"steps[{i}]", f"needs exactly one compressor key (found: {found})")
    name = names[0]
    if name not in REGISTRY:
        raise fail(f"steps[{i}]", f"unknown compressor '{name}' (known: {', '.join(sorted(REGISTRY))})")
    body = raw[name]
    if body is not None and not isinstance(body, dict):
        raise fail(f"steps[{i}].{name}", "must be a mapping of options")
    try:
        config = parse_config(REGISTRY[name].Config, body)
    except ConfigError as e:
        raise fail(f"steps[{i}].{name}.{e.key}", str(e)) from e
    lists = {}
    for key in STEP_KEYS:
        value = raw.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"steps[{i}].{key}", "must be a list of module-name patterns")
        for pattern in value:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise fail(f"steps[{i}].{key}", f"bad regex {pattern!r} ({e})") from e
        lists[key] = list(value)
    return Step(i, name, config, lists["targets"], lists["ignore"])


def check_composition(recipe: Recipe) -> None:
    """Combinations that cannot work, found from the recipe alone (module-level checks come later)."""
    for step in recipe.steps:
        hook = getattr(step.cls, "check_recipe", None)
        if hook is not None:
            msg = hook(recipe, step)
            if msg:
                raise TensorpressError(f"recipe '{recipe.source}': steps[{step.index}].{step.name}: {msg}")
