"""What every compressor shares: strict config parsing and the per-layer work it receives.

A compressor is a small class around plain math functions. It gets a `LayerWork` — one decoder
layer with its target Linear modules, calibration inputs when it asked for them, and the records of
what earlier steps did — and changes that layer in place: the module computes with the compressed
(dequantized) weight so the next layer sees the real error, and a record says how to pack it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from tensorpress.calibration.layer_work import LayerWork


class ConfigError(ValueError):
    """A config value is wrong; `key` names it (the recipe loader adds the step)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def parse_config(cls: type, raw: dict | None) -> Any:
    """Build config dataclass `cls` from a recipe mapping; unknown keys and wrong types are errors."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(key, f"unknown key '{key}' (known: {', '.join(fields)})")
    for key, value in raw.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(key, f"must be {_type_name(hints[key])}, got {value!r}")
    cfg = cls(**raw)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def config_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each field, for `tensorpress list`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append((f.name, _type_name(hints[f.name]), default))
    return out


class Compressor:
    """Base of all compressors: a name, a config dataclass, and `apply` on one layer."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_calibration: ClassVar[bool] = False
    quantizes: ClassVar[bool] = False  # produces integer codes for its targets
    lossless: ClassVar[bool] = False  # a whole-output stage on the written shards (selects no modules)
    summary: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    def prepare(self, recipe: Any, step: Any) -> None:
        """Called once before the layer loop with the whole recipe (e.g. to find the quantizer that follows)."""

    def apply(self, work: LayerWork, targets: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
