"""Recipes: a YAML pipeline of compressor steps, validated strictly before any work starts.

```yaml
calibration: {text: mix, samples: 128, seqlen: 512, seed: 0}   # or texts: [{text: mix}, {text: F, weight: 0.3}]
steps:
  - rtn: {bits: 4, group_size: 64, symmetric: true}
    ignore: [lm_head]
```
Every error names the recipe, the step index and the key at fault.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tensorpress.calibration.text import DEFAULT_CALIBRATION
from tensorpress.compressors import REGISTRY, Compressor
from tensorpress.compressors.base import ConfigError, parse_config
from tensorpress.errors import TensorpressError
from tensorpress.formats.ggml_types import TYPES
from tensorpress.infra.inputs import check_regular, load_yaml_file
from tensorpress.infra.patterns import compile_pattern, fullmatch
from tensorpress.pipeline.auto.budget import BudgetConfig
from tensorpress.pipeline.gguf_mix import FLOAT_TYPES, PRESETS

TOP_KEYS = ("name", "description", "calibration", "budget", "gguf", "steps")
QUANT_LAYOUT_KEYS = ("bits", "group_size", "symmetric")  # set by the GGUF type when the output is GGUF
STEP_KEYS = ("targets", "ignore")


@dataclass
class CalibrationConfig:
    text: str | None = None  # one text spec; neither text nor texts: the shipped general mix
    texts: list | None = None  # several, weighted: [{text: mix}, {text: my_domain.txt, weight: 0.3}]
    samples: int = 128
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8  # windows per forward pass during calibration

    def validate(self) -> None:
        for key in ("samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be ≥ 1, got {getattr(self, key)}")
        if self.seqlen < 2:  # one token per window gives no next-token statistics at all
            raise ConfigError("seqlen", f"must be ≥ 2, got {self.seqlen}")
        if not 0 <= self.seed < 2**64:
            raise ConfigError("seed", f"must be in 0 … 2^64-1, got {self.seed}")
        if self.texts is None:
            if self.text is not None and not self.text.strip():
                raise ConfigError("text", "must name a text (a file, mix, kjv:calib, …)")
            self.text = self.text or DEFAULT_CALIBRATION
            return
        if self.text is not None:
            raise ConfigError("texts", "give either text or texts, not both")
        self.texts = [_weighted_text(i, item) for i, item in enumerate(self.texts)]
        if not self.texts:
            raise ConfigError("texts", "must list at least one {text: …}")

    @property
    def sources(self) -> list[tuple[str, float]]:
        """(text spec, weight) pairs, what calibration windows are drawn from."""
        if self.texts is None:
            return [(self.text or DEFAULT_CALIBRATION, 1.0)]
        return [(t["text"], t["weight"]) for t in self.texts]


def _weighted_text(i: int, item: Any) -> dict:
    if not isinstance(item, dict):
        raise ConfigError(f"texts[{i}]", "must be a mapping like {text: my.txt, weight: 0.3}")
    for key in item:
        if key not in ("text", "weight"):
            raise ConfigError(f"texts[{i}].{key}", "unknown key (known: text, weight)")
    text, weight = item.get("text"), item.get("weight", 1.0)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"texts[{i}].text", f"must name a text (a file, mix, kjv:calib, …), got {text!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
        raise ConfigError(f"texts[{i}].weight", f"must be a number > 0, got {weight!r}")
    return {"text": text, "weight": float(weight)}


@dataclass
class GGUFConfig:
    """`gguf:` — write one .gguf file; every quantized module goes on its llama.cpp type's exact grid."""

    type: str = "Q4_K_M"  # a llama-quantize preset (Q4_K_M, Q3_K_M, Q2_K, …) or one block type for all
    embeddings: str = "auto"  # token embedding / output head: auto (the preset's choice), a type, F16, BF16, F32
    pure: bool = False  # one type for every quantized module (llama-quantize --pure), no per-tensor mix

    def validate(self) -> None:
        self.type = self.type.upper()
        if self.type not in PRESETS and self.type not in TYPES:
            known = ", ".join(sorted(set(PRESETS) | set(TYPES)))
            raise ConfigError("type", f"unknown GGUF type or preset {self.type!r} (known: {known})")
        self.embeddings = self.embeddings if self.embeddings == "auto" else self.embeddings.upper()
        if self.embeddings != "auto" and self.embeddings not in TYPES and self.embeddings not in FLOAT_TYPES:
            raise ConfigError("embeddings", f"must be auto, a GGUF block type or F16/BF16/F32, got {self.embeddings!r}")


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
        where = f"steps[{self.index}].targets"
        if self.targets and not any(match(p, module_name, where) for p in self.targets):
            return False
        return not any(match(p, module_name, f"steps[{self.index}].ignore") for p in self.ignore)

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
    budget: BudgetConfig | None = None  # automatic mixed precision (pipeline/auto/), when given
    gguf: GGUFConfig | None = None  # GGUF output (one .gguf file) instead of compressed-tensors safetensors

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
        if self.gguf is not None:
            d["gguf"] = asdict(self.gguf)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def match(pattern: str, module_name: str, where: str = "pattern") -> bool:
    """`re:REGEX` must match the whole name; a glob matches the name or any dotted suffix of it,
    so `lm_head`, `q_proj` and `self_attn.*` work without spelling out `model.layers.N.`.
    Regexes run with a time bound (`infra.patterns`): a backtracking bomb is an error naming it."""
    if pattern.startswith("re:"):
        return fullmatch(pattern[3:], module_name, where)
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
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        check_regular(path, "recipe")  # a FIFO or device would block or never end
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
    return parse_recipe(load_yaml_file(path, "recipe"), str(path))


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
    for key in ("name", "description"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise fail(key, f"must be a string, got {type(raw[key]).__name__}")
    gguf = None
    if "gguf" in raw:
        if not isinstance(raw["gguf"], dict):
            raise fail("gguf", "must be a mapping like {type: Q4_K_M}")
        try:
            gguf = parse_config(GGUFConfig, raw["gguf"])
        except ConfigError as e:
            raise fail(f"gguf.{e.key}", str(e)) from e
        _check_gguf_steps(raw_steps, steps, fail)
    name, description = str(raw.get("name") or ""), str(raw.get("description") or "")
    if gguf is not None and budget is not None and budget.size is not None:
        raise fail("budget.size", "with GGUF output give bits_per_weight (--target-bpw): GGUF types are allocated")
    if gguf is not None and budget is not None and budget.estimator == "repaired":
        raise fail("budget.estimator", "repaired is not for GGUF output (its candidates are GGUF types): use rtn")
    if gguf is None and budget is not None and budget.types:
        raise fail("budget.types", "GGUF types are candidates only with GGUF output (a gguf: section)")
    recipe = Recipe(source, calibration, steps, name, description, budget, gguf)
    check_composition(recipe)
    return recipe


def _check_gguf_steps(raw_steps: list, steps: list[Step], fail) -> None:
    """GGUF output: quantizers take their layout from the GGUF type; nothing llama.cpp cannot hold."""
    for raw, step in zip(raw_steps, steps, strict=True):
        where = f"steps[{step.index}].{step.name}"
        if step.cls.quantizes:
            if step.name not in ("rtn", "gptq"):
                raise fail(where, "GGUF output takes rtn or gptq quantizers")
            for key in QUANT_LAYOUT_KEYS:
                if key in (raw[step.name] or {}):
                    raise fail(f"{where}.{key}", "is set by each module's GGUF type (gguf.type); remove it")
        elif step.name != "awq":
            raise fail(where, "GGUF output holds quantized and plain weights only: use awq, rtn or gptq steps")


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
                    compile_pattern(pattern[3:], f"steps[{i}].{key}")
                except TensorpressError as e:
                    raise fail(f"steps[{i}].{key}", str(e).split(": ", 1)[1]) from e
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
