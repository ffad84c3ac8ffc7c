"""Reading the small structured files a user hands us (recipes, matrices, config.json, indexes).

Every such file is hostile until proven otherwise: it may be a FIFO or a device that blocks or never
ends, a multi-GB blob, UTF-16 or binary, JSON or YAML nested thousands deep (the parsers recurse),
a YAML alias bomb that expands to gigabytes, or a mapping whose duplicate keys silently override each
other. Each of these becomes one `TensorpressError` naming the file (and the key or line), raised
before the content is trusted.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from tensorpress.errors import TensorpressError

MAX_DEPTH = 64  # real recipes, matrices and configs nest 4-5 levels; parsers recurse per level
YAML_MAX_BYTES = 1 << 20  # a recipe or matrix is a few hundred bytes
JSON_MAX_BYTES = 64 << 20  # an index of a very large checkpoint is a few MB


def check_regular(path: Path, what: str) -> None:
    """Refuse FIFOs, sockets and devices by their type: opening one could block forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise TensorpressError(f"{what} '{path}': cannot read ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (FIFO, socket or device)"
        raise TensorpressError(f"{what} '{path}': is {kind}")


def read_bytes(path: Path, what: str, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them (checked by size before reading)."""
    check_regular(path, what)
    try:
        # O_NONBLOCK: if the file were swapped for a FIFO after the check, open must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise TensorpressError(f"{what} '{path}': cannot read ({e.strerror})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TensorpressError(f"{what} '{path}': is not a regular file")
        if st.st_size > limit:
            raise TensorpressError(f"{what} '{path}': {st.st_size} bytes, more than the {limit} this file may hold")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)  # read(n) reserves n bytes up front: ask for what is there
    except OSError as e:
        raise TensorpressError(f"{what} '{path}': cannot read ({e.strerror})") from e
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TensorpressError(f"{what} '{path}': more than the {limit} bytes this file may hold")
    return data


def decode_text(data: bytes, where: str) -> str:
    """Strict UTF-8 (a BOM is tolerated); UTF-16 and binary files are named as such."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TensorpressError(f"{where}: is UTF-16; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data:
        raise TensorpressError(f"{where}: is binary (contains NUL bytes), not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TensorpressError(f"{where}: is not valid UTF-8 (byte {e.start})") from e


def read_text_file(path: Path, what: str, limit: int) -> str:
    return decode_text(read_bytes(path, what, limit), f"{what} '{path}'")


def json_depth_ok(text: str, limit: int = MAX_DEPTH) -> bool:
    """Bracket depth outside strings ≤ limit, found without recursion (json.loads recurses per level)."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, where: str) -> Any:
    """json.loads with the nesting bounded first and every failure one line naming `where`."""
    if text.count("[") + text.count("{") > MAX_DEPTH and not json_depth_ok(text):
        raise TensorpressError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TensorpressError(f"{where}: invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except RecursionError as e:  # pragma: no cover - the depth check comes first
        raise TensorpressError(f"{where}: JSON nested too deep") from e


def load_json_file(path: Path, what: str, limit: int = JSON_MAX_BYTES) -> Any:
    where = f"{what} '{path}'"
    return parse_json(decode_text(read_bytes(path, what, limit), where), where)


class StrictYAMLError(yaml.YAMLError):
    """A YAML construct we refuse: duplicate key, alias, nesting too deep."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message = message
        self.line = line


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without the three ways a small YAML file can lie or explode.

    - aliases (`*a`): a billion-laughs document expands a few hundred bytes to gigabytes;
    - duplicate keys: the later silently replaced the earlier;
    - depth: composing recurses per level, so thousands of `[` end in RecursionError.
    """

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYAMLError(
                f"YAML aliases (*{event.anchor}) are not allowed: they can expand without bound",
                event.start_mark.line + 1,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise StrictYAMLError(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise StrictYAMLError("YAML merge keys (<<) are not allowed", key_node.start_mark.line + 1)
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:  # an unhashable key; SafeLoader reports it
                    break
                if dup:
                    raise StrictYAMLError(f"duplicate key '{key}'", key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """Parse with `StrictLoader`; every failure is one line naming `where` and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except StrictYAMLError as e:
        line = f" line {e.line}:" if e.line else ""
        raise TensorpressError(f"{where}:{line} {e.message}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise TensorpressError(f"{where}:{line} invalid YAML ({problem})") from e
    except RecursionError as e:  # pragma: no cover - the depth bound comes first
        raise TensorpressError(f"{where}: nested too deep") from e


def load_yaml_file(path: Path, what: str, limit: int = YAML_MAX_BYTES) -> Any:
    where = f"{what} '{path}'"
    return parse_yaml(decode_text(read_bytes(path, what, limit), where), where)
