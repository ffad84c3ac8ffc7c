"""Regular expressions from user files, matched with a time bound.

Recipe `targets`/`ignore` and quantization_config targets may carry `re:` patterns. Python's `re`
backtracks without limit, so `(a|a)*b`-style patterns can hang a run for minutes on one module name.
The `regex` package (already a dependency of transformers' tokenizers) takes a timeout per call;
a pattern that exceeds it is an error naming the pattern.
"""

from __future__ import annotations

import regex

from tensorpress.errors import TensorpressError

TIMEOUT_S = 0.5  # module names are < 200 characters: a sane pattern takes microseconds


def compile_pattern(pattern: str, where: str) -> regex.Pattern:
    """Compile with `re`-compatible semantics (VERSION0); a syntax error names the pattern."""
    try:
        return regex.compile(pattern, regex.VERSION0)
    except (regex.error, OverflowError, RecursionError) as e:
        raise TensorpressError(f"{where}: bad regex {pattern!r} ({e})") from e


def _search(pattern: str, text: str, where: str, whole: bool) -> bool:
    """One bounded match; too slow a match is an error naming the pattern."""
    compiled = compile_pattern(pattern, where)
    try:
        found = (compiled.fullmatch if whole else compiled.match)(text, timeout=TIMEOUT_S)
    except TimeoutError as e:
        raise TensorpressError(
            f"{where}: regex {pattern!r} takes too long on '{text}' (catastrophic backtracking); simplify it"
        ) from e
    return found is not None


def fullmatch(pattern: str, text: str, where: str) -> bool:
    """Whether `pattern` matches all of `text`."""
    return _search(pattern, text, where, whole=True)


def prefix_match(pattern: str, text: str, where: str) -> bool:
    """Whether `pattern` matches at the start of `text` (compressed-tensors' `re:` target semantics)."""
    return _search(pattern, text, where, whole=False)
