"""Generators of damaged and hostile inputs for tests/test_bad_inputs.py.

Every case is built by code from a few good inputs made once per session (a tiny Llama checkpoint, a
2-shard copy of it, symmetric and asymmetric packed outputs, an entropy-coded output, a text): copy,
damage one thing, name the command that must refuse it and the word(s) its one-line error must contain.
Classes: recipes, matrices, config, safetensors, index, packed, entropy, cli, outpath.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("recipes", "matrices", "config", "safetensors", "index", "packed", "entropy", "cli", "outpath")
GOOD_RECIPE = "steps:\n  - rtn: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n"
GPTQ_RECIPE = (
    "calibration: {samples: 4, seqlen: 32}\nsteps:\n  - gptq: {bits: 4, group_size: 32}\n    ignore: [lm_head]\n"
)
K_PROJ = "model.layers.0.self_attn.k_proj.weight"
V_PROJ = "model.layers.0.self_attn.v_proj.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
PACKED = "model.layers.0.self_attn.q_proj"
SLOW_REGEX = "(.*){1,32000}[bc]"  # the `regex` engine gives up on this within its timeout


@dataclass
class Bench:
    """The good inputs every case starts from (read-only: cases copy what they damage)."""

    model: Path  # tiny Llama, bf16, one shard, with tokenizer
    sharded: Path  # the same in two shards with an index
    sym: Path  # rtn w4 g32 symmetric output of `model`
    asym: Path  # rtn w4 g32 asymmetric output
    coded: Path  # rtn w4 g32 + entropy output
    other_vocab: Path  # a tiny Llama with another vocabulary size
    text: Path
    recipe: Path


@dataclass
class Setup:
    argv: list[str]
    inputs: list[Path]  # must be byte-identical after the run
    needles: list[str]  # the error line must contain each
    usage: bool = False  # a Click usage error: Click's usage line(s) may precede the `Error:` line


@dataclass
class Case:
    cls: str
    name: str
    build: Callable[[Bench, Path], Setup]
    xfail: str | None = None
    tags: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.name}"


# ---------------------------------------------------------------- small helpers


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict | bytes, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def edit_header(path: Path, fn: Callable[[dict], dict | bytes | None]) -> None:
    header, data = read_safetensors(path)
    new = fn(header)
    write_safetensors(path, header if new is None else new, data)


def edit_tensors(path: Path, fn: Callable[[dict], None]) -> None:
    """Rewrite a shard with changed tensors (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    fn(tensors)
    save_file(tensors, str(path), metadata=meta)


def edit_json(path: Path, fn: Callable[[dict], object]) -> None:
    """Change a JSON file in place: `fn` mutates the loaded object (its return value is ignored)."""
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def deep_json(n: int) -> str:
    return "[" * n + "]" * n


def billion_laughs(levels: int = 9, fanout: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * fanout)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def garbage(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


ENCODINGS: dict[str, Callable[[str], bytes]] = {
    "utf16-bom": lambda s: s.encode("utf-16"),
    "utf16le-nobom": lambda s: s.encode("utf-16-le"),
    "utf16be-bom": lambda s: b"\xfe\xff" + s.encode("utf-16-be"),
    "utf32": lambda s: s.encode("utf-32"),
    "latin1": lambda s: ("# café\n" + s).encode("latin-1"),
    "binary": lambda s: garbage(512),
    "nul-inside": lambda s: s.encode()[:10] + b"\x00" + s.encode()[10:],
    "gzip": lambda s: __import__("gzip").compress(s.encode(), mtime=0),
    "surrogate": lambda s: b"# \xed\xa0\x80\n" + s.encode(),
}


def text_file_cases(cls: str, good: str, run: Callable[[Bench, Path, Path], Setup], what: str) -> list[Case]:
    """Hostile *files* for a YAML/JSON input: encodings, nesting, size, aliases, special files."""
    cases: list[Case] = []

    def with_bytes(name: str, data: Callable[[], bytes | str], needles: tuple[str, ...] = ()) -> None:
        def build(b: Bench, tmp: Path, data=data, needles=needles) -> Setup:
            f = write(tmp / f"in.{what}", data())
            s = run(b, tmp, f)
            s.needles += [f.name, *needles]
            return s

        cases.append(Case(cls, name, build))

    for enc, fn in ENCODINGS.items():
        with_bytes(f"encoding-{enc}", lambda fn=fn: fn(good))
    with_bytes("deep-flow-list-5000", lambda: "x: " + deep_json(5000), ("deep",))
    with_bytes("deep-flow-map-3000", lambda: "{a: " * 3000 + "1" + "}" * 3000, ("deep",))
    with_bytes("deep-block-100", lambda: "".join("  " * i + f"k{i}:\n" for i in range(100)), ("deep",))
    with_bytes("deep-flow-list-65", lambda: "steps: " + deep_json(65), ("deep",))
    with_bytes("too-large-2MiB", lambda: good + "#" * (2 << 20) + "\n", ("bytes",))
    with_bytes("empty", lambda: b"")
    with_bytes("only-comment", lambda: "# nothing\n")
    with_bytes("top-level-list", lambda: "- a\n- b\n")
    with_bytes("top-level-scalar", lambda: "42\n")
    with_bytes("invalid-yaml-tab", lambda: "steps:\n\t- rtn: {}\n", ("line",))
    with_bytes("invalid-yaml-unclosed", lambda: "steps: [\n", ("line",))
    with_bytes("alias-simple", lambda: "x: &s 1\ny: *s\n" + good, ("alias",))
    with_bytes("alias-billion-laughs-9", lambda: billion_laughs(9, 9), ("alias",))
    with_bytes("alias-billion-laughs-20x4", lambda: billion_laughs(20, 4), ("alias",))
    with_bytes("alias-merge-key", lambda: "base: &b {x: 1}\nother:\n  <<: *b\n", ("alias",))
    with_bytes("merge-key-no-alias", lambda: "steps:\n  - rtn: {<<: {bits: 4}}\n", ("merge",))
    with_bytes("python-tag", lambda: "steps: !!python/object/apply:os.system ['true']\n")

    def special(name: str, make: Callable[[Path], Path], needles: tuple[str, ...] = ()) -> None:
        def build(b: Bench, tmp: Path, make=make, needles=needles) -> Setup:
            f = make(tmp)
            s = run(b, tmp, f)
            s.needles += list(needles)
            return s

        cases.append(Case(cls, name, build, tags={"special"}))

    special("fifo", lambda tmp: fifo(tmp / f"in.{what}"), ("in.", "regular file"))
    special("directory", lambda tmp: (tmp / f"dir.{what}").mkdir() or tmp / f"dir.{what}", ("dir.",))
    special("dev-zero", lambda tmp: Path("/dev/zero"), ("/dev/zero",))
    special("dev-null", lambda tmp: Path("/dev/null"), ("/dev/null",))
    special("symlink-to-fifo", lambda tmp: _link(tmp / f"link.{what}", fifo(tmp / "pipe")), ("link.",))
    special("missing", lambda tmp: tmp / f"nope.{what}", ("nope.",))
    special("sparse-65MiB", lambda tmp: _sparse(tmp / f"big.{what}", 65 << 20), ("big.",))
    return cases


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# ---------------------------------------------------------------- recipes


def compress_argv(b: Bench, tmp: Path, recipe: Path, model: Path | None = None, *extra: str) -> Setup:
    model = model or b.model
    return Setup(
        ["compress", str(model), "--recipe", str(recipe), "--out", str(tmp / "out"), *extra], [model, recipe], []
    )


RECIPE_VALUES: list[tuple[str, str, tuple[str, ...]]] = [
    # (case name, recipe text, needles)
    ("dup-top-steps", "steps: []\n" + GOOD_RECIPE, ("duplicate key 'steps'",)),
    ("dup-calibration", "calibration: {samples: 4}\ncalibration: {samples: 8}\n" + GOOD_RECIPE, ("'calibration'",)),
    ("dup-key-in-flow-step", "steps:\n  - rtn: {bits: 4, bits: 8}\n", ("duplicate key 'bits'",)),
    ("dup-key-in-block-step", "steps:\n  - rtn:\n      bits: 4\n      bits: 3\n", ("duplicate key 'bits'", "line 4")),
    ("dup-calibration-samples", "calibration:\n  samples: 4\n  samples: 8\n" + GOOD_RECIPE, ("'samples'",)),
    ("dup-description", "description: a\ndescription: b\n" + GOOD_RECIPE, ("'description'",)),
    ("dup-name", "name: a\nname: b\n" + GOOD_RECIPE, ("'name'",)),
    ("dup-ignore", "steps:\n  - rtn: {bits: 4}\n    ignore: [lm_head]\n    ignore: [q_proj]\n", ("'ignore'",)),
    ("description-mapping", "description: {a: 1}\n" + GOOD_RECIPE, ("description",)),
    ("description-list", "description: [a, b]\n" + GOOD_RECIPE, ("description",)),
    ("description-int", "description: 5\n" + GOOD_RECIPE, ("description",)),
    ("description-bool", "description: true\n" + GOOD_RECIPE, ("description",)),
    ("name-mapping", "name: {a: 1}\n" + GOOD_RECIPE, ("name",)),
    ("name-list", "name: [a]\n" + GOOD_RECIPE, ("name",)),
    ("unknown-top-key", "stepz: []\n" + GOOD_RECIPE, ("stepz",)),
    ("steps-missing", "name: x\n", ("steps",)),
    ("steps-empty", "steps: []\n", ("steps",)),
    ("steps-mapping", "steps: {rtn: {}}\n", ("steps",)),
    ("steps-string", "steps: rtn\n", ("steps",)),
    ("step-string", "steps: [rtn]\n", ("steps[0]",)),
    ("step-list", "steps: [[rtn]]\n", ("steps[0]",)),
    ("step-two-compressors", "steps:\n  - {rtn: {}, gptq: {}}\n", ("steps[0]",)),
    ("step-no-compressor", "steps:\n  - {ignore: [lm_head]}\n", ("steps[0]",)),
    ("unknown-compressor", "steps:\n  - foo: {}\n", ("foo",)),
    ("step-body-list", "steps:\n  - rtn: [4]\n", ("steps[0].rtn",)),
    ("unknown-option", "steps:\n  - rtn: {bitz: 4}\n", ("bitz",)),
    ("targets-int", "steps:\n  - rtn: {}\n    targets: 5\n", ("targets",)),
    ("targets-list-of-int", "steps:\n  - rtn: {}\n    targets: [1]\n", ("targets",)),
    ("ignore-mapping", "steps:\n  - rtn: {}\n    ignore: {a: b}\n", ("ignore",)),
    ("ignore-null-item", "steps:\n  - rtn: {}\n    ignore: [null]\n", ("ignore",)),
    ("regex-unbalanced", "steps:\n  - rtn: {}\n    targets: ['re:(']\n", ("bad regex '('", "targets")),
    ("regex-bad-class", "steps:\n  - rtn: {}\n    targets: ['re:[a-']\n", ("targets",)),
    ("regex-nothing-to-repeat", "steps:\n  - rtn: {}\n    ignore: ['re:*']\n", ("ignore",)),
    ("regex-catastrophic-targets", f"steps:\n  - rtn: {{}}\n    targets: ['re:{SLOW_REGEX}']\n", ("regex",)),
    ("regex-catastrophic-ignore", f"steps:\n  - rtn: {{}}\n    ignore: ['re:{SLOW_REGEX}']\n", ("regex",)),
    ("regex-catastrophic-x", "steps:\n  - rtn: {}\n    targets: ['re:(.*){1,30000}X']\n", ("regex",)),
    ("targets-select-nothing", "steps:\n  - rtn: {}\n    targets: [nothing_here]\n", ("select no Linear",)),
    ("calibrated-on-lm-head", "steps:\n  - gptq: {}\n    targets: [lm_head]\n", ("lm_head",)),
    ("two-quantizers-one-module", "steps:\n  - rtn: {}\n  - rtn: {}\n", ("steps[1]",)),
    ("entropy-not-last", "steps:\n  - entropy: {}\n  - rtn: {}\n", ("entropy",)),
    ("awq-alone", "steps:\n  - awq: {}\n    ignore: [lm_head]\n", ("awq",)),
    ("calibration-list", "calibration: [1]\n" + GOOD_RECIPE, ("calibration",)),
    ("calibration-scalar", "calibration: 5\n" + GOOD_RECIPE, ("calibration",)),
    ("calibration-unknown-key", "calibration: {sample: 4}\n" + GOOD_RECIPE, ("sample",)),
    ("calibration-samples-0", "calibration: {samples: 0}\n" + GOOD_RECIPE, ("samples",)),
    ("calibration-samples-neg", "calibration: {samples: -1}\n" + GOOD_RECIPE, ("samples",)),
    ("calibration-samples-str", "calibration: {samples: many}\n" + GOOD_RECIPE, ("samples",)),
    ("calibration-seqlen-1", "calibration: {seqlen: 1}\n" + GOOD_RECIPE, ("seqlen",)),
    ("calibration-seqlen-0", "calibration: {seqlen: 0}\n" + GOOD_RECIPE, ("seqlen",)),
    ("calibration-seed-neg", "calibration: {seed: -1}\n" + GOOD_RECIPE, ("seed",)),
    ("calibration-seed-2e64", f"calibration: {{seed: {2**64}}}\n" + GOOD_RECIPE, ("seed",)),
    ("calibration-seed-2e70", f"calibration: {{seed: {2**70}}}\n" + GOOD_RECIPE, ("seed",)),
    ("calibration-seed-float", "calibration: {seed: 1.5}\n" + GOOD_RECIPE, ("seed",)),
    ("calibration-batch-size-0", "calibration: {batch_size: 0}\n" + GOOD_RECIPE, ("batch_size",)),
    ("calibration-text-int", "calibration: {text: 5}\n" + GOOD_RECIPE, ("text",)),
    ("gptq-samples-1e8", GPTQ_RECIPE.replace("samples: 4", "samples: 100000000"), ("calibration.samples",)),
    ("gptq-seqlen-longer-than-positions", GPTQ_RECIPE.replace("seqlen: 32", "seqlen: 4096"), ("seqlen", "4096")),
    ("gptq-seqlen-1e7", GPTQ_RECIPE.replace("seqlen: 32", "seqlen: 10000000"), ("seqlen",)),
]
for _b in (0, 1, 9, 16, 33, -4):
    RECIPE_VALUES.append((f"bits-{_b}", f"steps:\n  - rtn: {{bits: {_b}}}\n", ("bits",)))
for _label, _v in (("str", "'4'"), ("float", "4.5"), ("bool", "true"), ("null", "null"), ("list", "[4]")):
    RECIPE_VALUES.append((f"bits-{_label}", f"steps:\n  - rtn: {{bits: {_v}}}\n", ("bits",)))
for _label, _v in (("0", "0"), ("neg2", "-2"), ("str", "'32'"), ("float", "1.5"), ("2e40", str(2**40))):
    RECIPE_VALUES.append((f"group-size-{_label}", f"steps:\n  - rtn: {{group_size: {_v}}}\n", ("group_size",)))
for _label, _v in (("str", "'yes'"), ("int", "1")):
    RECIPE_VALUES.append((f"symmetric-{_label}", f"steps:\n  - rtn: {{symmetric: {_v}}}\n", ("symmetric",)))


def recipe_cases() -> list[Case]:
    cases = []
    for name, text, needles in RECIPE_VALUES:

        def build(b: Bench, tmp: Path, text=text, needles=needles) -> Setup:
            r = write(tmp / "bad.yaml", text)
            s = compress_argv(b, tmp, r)
            s.needles = ["bad.yaml", *needles]
            return s

        cases.append(Case("recipes", name, build))

    def calib_text(name: str, make: Callable[[Path], Path], needles: tuple[str, ...]) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            t = make(tmp)
            r = write(tmp / "r.yaml", GPTQ_RECIPE.replace("samples: 4", f"samples: 4, text: '{t}'"))
            s = compress_argv(b, tmp, r)
            s.needles = list(needles)
            if t.exists() and t.is_file():
                s.inputs.append(t)
            return s

        cases.append(Case("recipes", f"calibration-text-{name}", build))

    calib_text("fifo", lambda tmp: fifo(tmp / "calib.txt"), ("calib.txt",))
    calib_text("dev-zero", lambda tmp: Path("/dev/zero"), ("/dev/zero",))
    calib_text("directory", lambda tmp: (tmp / "calibdir").mkdir() or tmp / "calibdir", ("calibdir",))
    calib_text("missing", lambda tmp: tmp / "nope.txt", ("nope.txt",))
    calib_text("utf16", lambda tmp: write(tmp / "u16.txt", ("In the beginning " * 200).encode("utf-16")), ("u16.txt",))
    calib_text("binary", lambda tmp: write(tmp / "bin.txt", garbage(4096)), ("bin.txt",))
    calib_text("too-short", lambda tmp: write(tmp / "short.txt", "In the beginning"), ("short.txt",))
    cases += text_file_cases("recipes", GOOD_RECIPE, lambda b, tmp, f: compress_argv(b, tmp, f), "yaml")
    return cases


# ---------------------------------------------------------------- matrices


def matrix_text(b: Bench, **over: str) -> str:
    parts = {
        "models": f"[{b.model}]",
        "recipes": f"[{b.recipe}]",
        "eval": f"{{text: {b.text}, windows: 1, seqlen: 16}}",
    }
    parts.update(over)
    return "".join(f"{k}: {v}\n" for k, v in parts.items() if v is not None)


def batch_argv(b: Bench, tmp: Path, matrix: Path) -> Setup:
    return Setup(["batch", str(matrix), "--out", str(tmp / "batch")], [matrix, b.model, b.recipe, b.text], [])


MATRIX_VALUES: list[tuple[str, Callable[[Bench], str], tuple[str, ...]]] = [
    ("dup-models", lambda b: matrix_text(b) + f"models: [{b.model}]\n", ("duplicate key 'models'",)),
    ("dup-eval", lambda b: matrix_text(b) + "eval: {windows: 2}\n", ("'eval'",)),
    ("dup-eval-windows", lambda b: matrix_text(b, eval="{windows: 1, windows: 2}"), ("'windows'",)),
    ("dup-gate-metric", lambda b: matrix_text(b, gates="[{metric: kl, metric: ppl, max: 1}]"), ("'metric'",)),
    ("unknown-top-key", lambda b: matrix_text(b, modelz="[x]"), ("modelz",)),
    ("models-missing", lambda b: matrix_text(b, models=None), ("models",)),
    ("models-empty", lambda b: matrix_text(b, models="[]"), ("models",)),
    ("models-string", lambda b: matrix_text(b, models="abc"), ("models",)),
    ("models-int-item", lambda b: matrix_text(b, models="[5]"), ("models[0]",)),
    ("models-empty-item", lambda b: matrix_text(b, models="['']"), ("models[0]",)),
    ("models-twice", lambda b: matrix_text(b, models=f"[{b.model}, {b.model}]"), ("models",)),
    ("recipes-missing", lambda b: matrix_text(b, recipes=None), ("recipes",)),
    ("recipes-unknown-name", lambda b: matrix_text(b, recipes="[no-such-recipe]"), ("recipes[0]",)),
    ("recipes-same-content", lambda b: matrix_text(b, recipes=f"[{b.recipe}, {b.recipe}]"), ("recipes[1]",)),
    ("eval-list", lambda b: matrix_text(b, eval="[1]"), ("eval",)),
    ("eval-windows-0", lambda b: matrix_text(b, eval="{windows: 0}"), ("eval.windows",)),
    ("eval-seqlen-1", lambda b: matrix_text(b, eval="{seqlen: 1}"), ("eval.seqlen",)),
    ("eval-text-int", lambda b: matrix_text(b, eval="{text: 5}"), ("eval.text",)),
    ("eval-unknown-key", lambda b: matrix_text(b, eval="{windowz: 1}"), ("windowz",)),
    ("gates-mapping", lambda b: matrix_text(b, gates="{metric: kl}"), ("gates",)),
    ("gate-string", lambda b: matrix_text(b, gates="[kl]"), ("gates[0]",)),
    ("gate-unknown-metric", lambda b: matrix_text(b, gates="[{metric: speed, max: 1}]"), ("gates[0].metric",)),
    ("gate-no-bound", lambda b: matrix_text(b, gates="[{metric: kl}]"), ("gates[0]",)),
    ("gate-max-string", lambda b: matrix_text(b, gates="[{metric: kl, max: low}]"), ("gates[0].max",)),
    ("gate-unknown-key", lambda b: matrix_text(b, gates="[{metric: kl, max: 1, avg: 2}]"), ("gates[0].avg",)),
]


def matrix_cases() -> list[Case]:
    cases = []
    for name, text, needles in MATRIX_VALUES:

        def build(b: Bench, tmp: Path, text=text, needles=needles) -> Setup:
            m = write(tmp / "matrix.yaml", text(b))
            s = batch_argv(b, tmp, m)
            s.needles = ["matrix.yaml", *needles]
            return s

        cases.append(Case("matrices", name, build))

    def bad_recipe(name: str, text: str, needles: tuple[str, ...]) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            r = write(tmp / "inner.yaml", text)
            m = write(tmp / "matrix.yaml", matrix_text(b, recipes="[inner.yaml]"))
            s = batch_argv(b, tmp, m)
            s.inputs.append(r)
            s.needles = ["matrix.yaml", "inner.yaml", *needles]
            return s

        cases.append(Case("matrices", f"recipe-{name}", build))

    bad_recipe("dup-key", "steps: []\n" + GOOD_RECIPE, ("steps",))
    bad_recipe("alias-bomb", billion_laughs(), ("alias",))

    def build_u16(b: Bench, tmp: Path) -> Setup:
        r = write(tmp / "inner.yaml", GOOD_RECIPE.encode("utf-16"))
        m = write(tmp / "matrix.yaml", matrix_text(b, recipes="[inner.yaml]"))
        s = batch_argv(b, tmp, m)
        s.inputs.append(r)
        s.needles = ["inner.yaml", "UTF-16"]
        return s

    cases.append(Case("matrices", "recipe-utf16", build_u16))
    bad_recipe("description-mapping", "description: {a: 1}\n" + GOOD_RECIPE, ("description",))
    bad_recipe("bad-regex", "steps:\n  - rtn: {}\n    targets: ['re:(']\n", ("regex",))
    bad_recipe("bits-9", "steps:\n  - rtn: {bits: 9}\n", ("bits",))

    cases += text_file_cases(
        "matrices", "models: [a]\nrecipes: [rtn-w4g64]\n", lambda b, tmp, f: batch_argv(b, tmp, f), "yaml"
    )
    return cases


# ---------------------------------------------------------------- config.json

CONFIG_VALUES: list[tuple[str, object]] = []
for _k, _vals in {
    "hidden_size": [[96], "96", 96.0, True, 0, -96, None, 2**40, 64, 128],
    "num_attention_heads": [0, 5, 7, [4], "4", -4],
    "num_key_value_heads": [3, 0, "2"],
    "num_hidden_layers": [0, -1, 10**7, 3, "2", 2.0],
    "vocab_size": [-320, 0, 2**40, 330, 300, "320", None],
    "intermediate_size": [0, 2**40, 161, "160"],
    "max_position_embeddings": [0, -1, "x"],
    "head_dim": ["x", 0, 2**40],
    "model_type": [["llama"], "no_such_arch", 5, None],
    "quantization_config": [[1], "x"],
    "tensorpress": [[1], "x"],
}.items():
    for _v in _vals:
        CONFIG_VALUES.append((_k, _v))


def _label(v: object) -> str:
    if isinstance(v, bool):
        return f"bool-{v}".lower()
    if v is None:
        return "null"
    if isinstance(v, str):
        return f"str-{v}"
    if isinstance(v, list):
        return "list"
    if isinstance(v, float):
        return f"float-{v:g}"
    if isinstance(v, int) and abs(v) >= 2**20:
        return f"2e{v.bit_length() - 1}" if v & (v - 1) == 0 else f"{v:.0e}".replace("+", "")
    return str(v)


def config_cases() -> list[Case]:
    cases = []
    for key, value in CONFIG_VALUES:

        def build(b: Bench, tmp: Path, key=key, value=value) -> Setup:
            m = copy_model(b.model, tmp / "model")
            edit_json(m / "config.json", lambda c: c.__setitem__(key, value))
            r = write(tmp / "r.yaml", GOOD_RECIPE)
            s = compress_argv(b, tmp, r, m)
            # hidden/vocab/intermediate mismatches are found on the tensors (named) rather than the key
            s.needles = [key] if not (isinstance(value, int) and value in (64, 128, 330, 300, 161, 3)) else []
            if key in ("hidden_size", "intermediate_size") and value in (64, 128, 161):
                s.needles = ["tensor", "shape"]
            if key == "vocab_size" and value in (330, 300):
                s.needles = ["embed_tokens", "shape"]
            if key == "num_hidden_layers" and value == 3:
                s.needles = ["num_hidden_layers"]
            return s

        cases.append(Case("config", f"{key}-{_label(value)}", build))

    def removed(key: str) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.model, tmp / "model")
            edit_json(m / "config.json", lambda c: c.pop(key))
            s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
            s.needles = [key]
            return s

        cases.append(Case("config", f"{key}-removed", build))

    removed("model_type")

    def whole(name: str, data: Callable[[], bytes], needles: tuple[str, ...] = ("config.json",)) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.model, tmp / "model")
            (m / "config.json").unlink()
            d = data()
            if isinstance(d, Path) or d is None:
                pass
            else:
                write(m / "config.json", d)
            s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
            s.needles = list(needles)
            return s

        cases.append(Case("config", f"file-{name}", build))

    good = lambda: json.dumps({"model_type": "llama", "hidden_size": 96})  # noqa: E731
    whole("list", lambda: b"[1, 2]")
    whole("string", lambda: b'"llama"')
    whole("number", lambda: b"5")
    whole("null", lambda: b"null")
    whole("empty", lambda: b"")
    whole("invalid-json", lambda: b"{model_type: llama}")
    whole("trailing-comma", lambda: b'{"model_type": "llama",}')
    whole("deep-5000", lambda: ('{"a": ' + deep_json(5000) + "}").encode(), ("config.json", "deep"))
    whole("deep-100000", lambda: deep_json(100000).encode(), ("config.json", "deep"))
    for enc, fn in ENCODINGS.items():
        whole(f"encoding-{enc}", lambda fn=fn: fn(good()))
    whole("missing", lambda: None)

    def special(name: str, make: Callable[[Path], None]) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.model, tmp / "model")
            (m / "config.json").unlink()
            make(m / "config.json")
            s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
            s.needles = ["config.json"]
            return s

        cases.append(Case("config", f"file-{name}", build, tags={"special"}))

    special("fifo", fifo)
    special("directory", lambda p: p.mkdir())
    special("dev-zero-symlink", lambda p: p.symlink_to("/dev/zero"))
    special("sparse-65MiB", lambda p: _sparse(p, 65 << 20))
    return cases


# ---------------------------------------------------------------- safetensors headers and tensors


def _shard(m: Path) -> Path:
    return m / "model.safetensors"


def header_case(name: str, fn: Callable[[dict], dict | bytes | None], needles: tuple[str, ...]) -> list[Case]:
    """One header damage, refused by compress and by inspect."""
    out = []
    for cmd in ("compress", "inspect"):

        def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
            m = copy_model(b.model, tmp / "model")
            edit_header(_shard(m), fn)
            if cmd == "inspect":
                s = Setup(["inspect", str(m)], [m], [])
            else:
                s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
            s.needles = ["model.safetensors", *needles]
            return s

        out.append(Case("safetensors", f"{name}-{cmd}", build))
    return out


def _set(name: str, key: str, value: object) -> Callable[[dict], None]:
    def fn(h: dict) -> None:
        h[name][key] = value

    return fn


def _del(name: str, key: str) -> Callable[[dict], None]:
    def fn(h: dict) -> None:
        del h[name][key]

    return fn


def _overlap(h: dict) -> None:
    h[V_PROJ]["data_offsets"] = list(h[K_PROJ]["data_offsets"])


def _overlap_partial(h: dict) -> None:
    b, e = h[K_PROJ]["data_offsets"]
    n = e - b
    # v_proj keeps its size but starts half-way into k_proj
    h[V_PROJ]["data_offsets"] = [b + n // 2, b + n // 2 + n]


def _negative_same_bytes(h: dict) -> None:
    rows, cols = h[K_PROJ]["shape"]
    h[K_PROJ]["shape"] = [-rows, -cols]


def _meta_list(h: dict) -> None:
    h["__metadata__"] = [1, 2]


def _meta_values(h: dict) -> None:
    h["__metadata__"] = {"format": 5}


def safetensors_cases() -> list[Case]:
    cases: list[Case] = []
    cases += header_case("dtype-unknown-F8", _set(K_PROJ, "dtype", "F8"), (K_PROJ,))
    cases += header_case("dtype-int", _set(K_PROJ, "dtype", 5), (K_PROJ,))
    cases += header_case("dtype-list", _set(K_PROJ, "dtype", ["BF16"]), (K_PROJ,))
    cases += header_case("shape-negative-same-bytes", _negative_same_bytes, (K_PROJ,))
    cases += header_case("shape-negative", _set(K_PROJ, "shape", [-1, 96]), (K_PROJ,))
    cases += header_case("shape-huge", _set(K_PROJ, "shape", [2**40, 2**40]), (K_PROJ,))
    cases += header_case("shape-2e62-times-0", _set(K_PROJ, "shape", [2**62, 2**62, 0, 5]), (K_PROJ,))
    cases += header_case("shape-strings", _set(K_PROJ, "shape", ["48", "96"]), (K_PROJ,))
    cases += header_case("shape-floats", _set(K_PROJ, "shape", [48.0, 96.0]), (K_PROJ,))
    cases += header_case("shape-bools", _set(K_PROJ, "shape", [True, 96]), (K_PROJ,))
    cases += header_case("shape-scalar-int", _set(K_PROJ, "shape", 96), (K_PROJ,))
    cases += header_case("offsets-beyond-end", _set(K_PROJ, "data_offsets", [0, 2**62]), (K_PROJ,))
    cases += header_case(
        "offsets-reversed", lambda h: h[K_PROJ].__setitem__("data_offsets", h[K_PROJ]["data_offsets"][::-1]), (K_PROJ,)
    )
    cases += header_case("offsets-negative", _set(K_PROJ, "data_offsets", [-9216, 0]), (K_PROJ,))
    cases += header_case("offsets-three", _set(K_PROJ, "data_offsets", [0, 1, 2]), (K_PROJ,))
    cases += header_case("offsets-strings", _set(K_PROJ, "data_offsets", ["0", "9216"]), (K_PROJ,))
    cases += header_case("overlap-same-bytes", _overlap, (V_PROJ,))
    cases += header_case("overlap-partial", _overlap_partial, ("v_proj",))
    cases += header_case("entry-missing-dtype", _del(K_PROJ, "dtype"), (K_PROJ,))
    cases += header_case("entry-missing-shape", _del(K_PROJ, "shape"), (K_PROJ,))
    cases += header_case("entry-missing-offsets", _del(K_PROJ, "data_offsets"), (K_PROJ,))
    cases += header_case("entry-list", lambda h: h.__setitem__(K_PROJ, [1]), (K_PROJ,))
    cases += header_case("entry-string", lambda h: h.__setitem__(K_PROJ, "x"), (K_PROJ,))
    cases += header_case("metadata-list", _meta_list, ("metadata",))
    cases += header_case("metadata-non-string", _meta_values, ("metadata",))
    cases += header_case("header-list", lambda h: b"[1, 2, 3]", ())
    cases += header_case("header-not-json", lambda h: b"{not json" + b" " * 7, ())
    cases += header_case("header-utf16", lambda h: json.dumps(h).encode("utf-16"), ())
    cases += header_case("header-binary", lambda h: garbage(4000), ())
    cases += header_case("header-deep", lambda h: deep_json(50000).encode(), ("deep",))

    def raw_case(name: str, fn: Callable[[bytes], bytes], needles: tuple[str, ...] = ()) -> None:
        for cmd in ("compress", "inspect"):

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(b.model, tmp / "model")
                p = _shard(m)
                p.write_bytes(fn(p.read_bytes()))
                if cmd == "inspect":
                    s = Setup(["inspect", str(m)], [m], [])
                else:
                    s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
                s.needles = ["model.safetensors", *needles]
                return s

            cases.append(Case("safetensors", f"{name}-{cmd}", build))

    raw_case("empty-file", lambda d: b"")
    raw_case("4-bytes", lambda d: d[:4])
    raw_case("header-only", lambda d: d[: 8 + struct.unpack("<Q", d[:8])[0]])
    raw_case("truncated-half", lambda d: d[: len(d) // 2])
    raw_case("truncated-1-byte", lambda d: d[:-1])
    raw_case("header-len-2e63", lambda d: struct.pack("<Q", 2**63) + d[8:])
    raw_case("header-len-filesize", lambda d: struct.pack("<Q", len(d)) + d[8:])
    raw_case("header-len-0", lambda d: struct.pack("<Q", 0) + d[8:])

    def tensor_case(name: str, fn: Callable[[dict], None], needles: tuple[str, ...], cmd: str = "compress") -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.model, tmp / "model")
            edit_tensors(_shard(m), fn)
            if cmd == "eval":
                s = Setup(["eval", str(m), "--text", str(b.text), "--windows", "1", "--seqlen", "16"], [m, b.text], [])
            else:
                s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
            s.needles = list(needles)
            return s

        cases.append(Case("safetensors", f"{name}-{cmd}", build))

    import torch

    def retype(name: str, dtype) -> Callable[[dict], None]:
        return lambda t: t.__setitem__(name, t[name].float().clamp(-1, 1).mul(100).to(dtype))

    def reshape(name: str, fn) -> Callable[[dict], None]:
        return lambda t: t.__setitem__(name, fn(t[name]).contiguous())

    for cmd in ("compress", "eval"):
        tensor_case("k-proj-transposed", reshape(K_PROJ, lambda w: w.t()), (K_PROJ, "shape"), cmd)
        tensor_case("norm-short", reshape("model.norm.weight", lambda w: w[:-1]), ("model.norm.weight",), cmd)
        tensor_case(
            "embedding-rows-short",
            reshape("model.embed_tokens.weight", lambda w: w[:300]),
            ("model.embed_tokens.weight",),
            cmd,
        )
        tensor_case("q-proj-64-wide", reshape(Q_PROJ, lambda w: w[:64, :64]), (Q_PROJ,), cmd)
        tensor_case("weight-int16", retype(Q_PROJ, torch.int16), (Q_PROJ, "I16"), cmd)
        tensor_case("weight-uint8", retype(Q_PROJ, torch.uint8), (Q_PROJ, "U8"), cmd)
        tensor_case("norm-bool", retype("model.norm.weight", torch.bool), ("model.norm.weight", "BOOL"), cmd)
        tensor_case("weight-int8", retype(K_PROJ, torch.int8), (K_PROJ,), cmd)
        tensor_case("missing-k-proj", lambda t: t.pop(K_PROJ), ("k_proj",), cmd)
        tensor_case("missing-layer-1", lambda t: [t.pop(k) for k in list(t) if ".layers.1." in k], ("layers.1",), cmd)
        tensor_case("nan-in-weight", reshape(Q_PROJ, lambda w: w.clone().fill_(float("nan"))), (Q_PROJ, "NaN"), cmd)

    def special(name: str, make: Callable[[Path], None]) -> None:
        for cmd in ("compress", "inspect"):

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(b.model, tmp / "model")
                _shard(m).unlink()
                make(_shard(m))
                if cmd == "inspect":
                    s = Setup(["inspect", str(m)], [m], [])
                else:
                    s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
                s.needles = ["model.safetensors"]
                return s

            cases.append(Case("safetensors", f"shard-{name}-{cmd}", build, tags={"special"}))

    special("fifo", fifo)
    special("dev-zero-symlink", lambda p: p.symlink_to("/dev/zero"))
    special("directory", lambda p: p.mkdir())
    return cases


# ---------------------------------------------------------------- indexes and shards


def index_cases() -> list[Case]:
    cases: list[Case] = []
    first = "model-00001-of-00002.safetensors"

    def case(name: str, fn: Callable[[Path], None], needles: tuple[str, ...], cmds=("compress", "inspect")) -> None:
        for cmd in cmds:

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(b.sharded, tmp / "model")
                fn(m)
                if cmd == "inspect":
                    s = Setup(["inspect", str(m)], [m], [])
                else:
                    s = compress_argv(b, tmp, write(tmp / "r.yaml", GOOD_RECIPE), m)
                s.needles = list(needles)
                return s

            cases.append(Case("index", f"{name}-{cmd}", build))

    idx = "model.safetensors.index.json"

    def remap(value: str, outside: bool = False) -> Callable[[Path], None]:
        def fn(m: Path) -> None:
            if outside:  # a real file where the entry points, so "missing" is not what stops it
                shutil.copy(m / first, m.parent / "x.safetensors")
            edit_json(m / idx, lambda d: d["weight_map"].__setitem__(K_PROJ, value))

        return fn

    case("entry-dotdot", remap("../x.safetensors", outside=True), (idx, "../x.safetensors"))
    case("entry-absolute", lambda m: remap(str(m / first))(m), (idx, first))
    case("entry-etc-passwd", remap("/etc/passwd"), (idx, "/etc/passwd"))
    case("entry-dev-zero", remap("/dev/zero"), (idx, "/dev/zero"))
    case("entry-nested-dotdot", remap("sub/../../x.safetensors", outside=True), (idx, "x.safetensors"))
    case("entry-dotdot-self", remap(f"../model/{first}"), (idx, first))
    case("entry-empty", remap(""), (idx,))
    case("entry-dot", remap("."), (idx,))
    case("entry-int", remap(5), (idx, K_PROJ))  # type: ignore[arg-type]
    case("entry-missing-file", remap("model-00009-of-00009.safetensors"), (idx, "model-00009"))
    case(
        "weight-map-list", lambda m: edit_json(m / idx, lambda d: d.__setitem__("weight_map", [1])), (idx, "weight_map")
    )
    case("weight-map-missing", lambda m: edit_json(m / idx, lambda d: d.pop("weight_map")), (idx, "weight_map"))
    case("index-list", lambda m: write(m / idx, b"[1]"), (idx,))
    case("index-not-json", lambda m: write(m / idx, b"{weight_map"), (idx,))
    case("index-utf16", lambda m: write(m / idx, (m / idx).read_text().encode("utf-16")), (idx, "UTF-16"))
    case("index-binary", lambda m: write(m / idx, garbage(300)), (idx,))
    case("index-deep", lambda m: write(m / idx, ('{"weight_map": ' + deep_json(20000) + "}").encode()), (idx, "deep"))
    case("index-fifo", lambda m: ((m / idx).unlink(), fifo(m / idx)), (idx,))
    case("tensor-in-wrong-shard", lambda m: remap("model-00002-of-00002.safetensors")(m), (K_PROJ,))

    def twice(m: Path) -> None:
        # k_proj stored in both shards
        from safetensors import safe_open

        with safe_open(str(m / first), "pt") as f:
            t = f.get_tensor(K_PROJ)
        edit_tensors(m / "model-00002-of-00002.safetensors", lambda d: d.__setitem__(K_PROJ, t))

    case("tensor-in-two-shards", twice, (K_PROJ, "model-0000"))
    return cases


# ---------------------------------------------------------------- packed outputs


def _group(cfg: dict) -> dict:
    return cfg["quantization_config"]["config_groups"]["group_0"]


def packed_cases() -> list[Case]:
    cases: list[Case] = []

    def case(
        name: str,
        src: str,
        fn: Callable[[Path], None],
        needles: tuple[str, ...],
        cmds=("decompress", "inspect", "eval"),
    ) -> None:
        for cmd in cmds:

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(getattr(b, src), tmp / "packed")
                fn(m)
                if cmd == "inspect":
                    s = Setup(["inspect", str(m)], [m], [])
                elif cmd == "eval":
                    s = Setup(
                        ["eval", str(m), "--text", str(b.text), "--windows", "1", "--seqlen", "16"], [m, b.text], []
                    )
                else:
                    s = Setup(["decompress", str(m), "--out", str(tmp / "dense")], [m], [])
                s.needles = list(needles)
                return s

            cases.append(Case("packed", f"{src}-{name}-{cmd}", build))

    def cfg(fn: Callable[[dict], None]) -> Callable[[Path], None]:
        return lambda m: edit_json(m / "config.json", fn)

    def weights(key: str, value: object) -> Callable[[Path], None]:
        return cfg(lambda c: _group(c)["weights"].__setitem__(key, value))

    for bits in (8, 3, 2):
        case(f"num-bits-{bits}", "sym", weights("num_bits", bits), ("weight_packed",))
    for gs in (64, 16, 128):
        case(f"group-size-{gs}", "sym", weights("group_size", gs), ("weight_scale",))
    case(
        "strategy-channel",
        "sym",
        cfg(lambda c: _group(c)["weights"].update(strategy="channel", group_size=None)),
        ("weight_scale",),
    )
    case("symmetric-false", "sym", weights("symmetric", False), ("weight_zero_point",))
    case("symmetric-true", "asym", weights("symmetric", True), ("weight_zero_point",))
    case(
        "group-removed",
        "sym",
        cfg(lambda c: c["quantization_config"]["config_groups"].clear()),
        ("quantization_config",),
    )
    case("qconfig-removed", "sym", cfg(lambda c: c.pop("quantization_config")), ("quantization_config",))
    case("target-removed", "sym", cfg(lambda c: _group(c)["targets"].remove(PACKED)), (PACKED,))
    case("num-bits-str", "sym", weights("num_bits", "4"), ("num_bits",), ("decompress", "inspect"))
    case("num-bits-0", "sym", weights("num_bits", 0), ("num_bits",), ("decompress", "inspect"))
    case("num-bits-33", "sym", weights("num_bits", 33), ("num_bits",), ("decompress", "inspect"))
    case(
        "num-bits-missing",
        "sym",
        cfg(lambda c: _group(c)["weights"].pop("num_bits")),
        ("num_bits",),
        ("decompress", "inspect"),
    )
    case("group-size-str", "sym", weights("group_size", "x"), ("group_size",), ("decompress", "inspect"))
    case("group-size-neg", "sym", weights("group_size", -5), ("group_size",), ("decompress", "inspect"))
    case("group-size-0", "sym", weights("group_size", 0), ("group_size",), ("decompress", "inspect"))
    case(
        "config-groups-list",
        "sym",
        cfg(lambda c: c["quantization_config"].__setitem__("config_groups", [1])),
        ("config_groups",),
        ("decompress", "inspect"),
    )
    case("weights-missing", "sym", cfg(lambda c: _group(c).pop("weights")), ("group_0",), ("decompress", "inspect"))
    case(
        "targets-string",
        "sym",
        cfg(lambda c: _group(c).__setitem__("targets", "Linear")),
        ("targets",),
        ("decompress", "inspect"),
    )
    case(
        "quant-method-gptq",
        "sym",
        cfg(lambda c: c["quantization_config"].__setitem__("quant_method", "gptq")),
        ("quant_method",),
        ("decompress",),
    )
    case("format-dense", "sym", cfg(lambda c: _group(c).__setitem__("format", "dense")), ("format",), ("decompress",))
    case("type-float", "sym", weights("type", "float"), ("group_0",), ("decompress",))
    case(
        "regex-target-catastrophic",
        "sym",
        cfg(lambda c: _group(c).__setitem__("targets", [f"re:{SLOW_REGEX}"])),
        ("regex",),
        ("decompress",),
    )

    def tensors(fn: Callable[[dict], None]) -> Callable[[Path], None]:
        return lambda m: edit_tensors(m / "model.safetensors", fn)

    import torch

    def put(name: str, value) -> Callable[[dict], None]:
        return lambda t: t.__setitem__(name, value(t))

    case("zero-point-removed", "asym", tensors(lambda t: t.pop(f"{PACKED}.weight_zero_point")), ("weight_zero_point",))
    case("scale-removed", "sym", tensors(lambda t: t.pop(f"{PACKED}.weight_scale")), ("weight_scale",))
    case("shape-removed", "sym", tensors(lambda t: t.pop(f"{PACKED}.weight_shape")), ("weight_shape",))
    case(
        "shape-wrong",
        "sym",
        tensors(put(f"{PACKED}.weight_shape", lambda t: torch.tensor([96, 95]))),
        ("weight_shape",),
        ("decompress", "eval"),  # 95 columns pack like 96: only the model's own shape tells them apart
    )
    case(
        "shape-3-dims",
        "sym",
        tensors(put(f"{PACKED}.weight_shape", lambda t: torch.tensor([96, 96, 1]))),
        ("weight_shape",),
    )
    case(
        "shape-float",
        "sym",
        tensors(put(f"{PACKED}.weight_shape", lambda t: torch.tensor([96.0, 96.0]))),
        ("weight_shape",),
    )
    case(
        "shape-huge",
        "sym",
        tensors(put(f"{PACKED}.weight_shape", lambda t: torch.tensor([2**40, 2**40]))),
        ("weight_shape",),
    )
    case(
        "shape-negative",
        "sym",
        tensors(put(f"{PACKED}.weight_shape", lambda t: torch.tensor([-96, -96]))),
        ("weight_shape",),
    )
    case(
        "packed-narrower",
        "sym",
        tensors(put(f"{PACKED}.weight_packed", lambda t: t[f"{PACKED}.weight_packed"][:, :-1].contiguous())),
        ("weight_packed",),
    )
    case(
        "packed-3-dims",
        "sym",
        tensors(put(f"{PACKED}.weight_packed", lambda t: t[f"{PACKED}.weight_packed"][None].contiguous())),
        ("weight_packed",),
    )
    case(
        "packed-int16",
        "sym",
        tensors(put(f"{PACKED}.weight_packed", lambda t: t[f"{PACKED}.weight_packed"].to(torch.int16))),
        ("weight_packed",),
    )
    case(
        "scale-wrong-shape",
        "sym",
        tensors(put(f"{PACKED}.weight_scale", lambda t: t[f"{PACKED}.weight_scale"][:, :2].contiguous())),
        ("weight_scale",),
    )
    case(
        "scale-int",
        "sym",
        tensors(put(f"{PACKED}.weight_scale", lambda t: t[f"{PACKED}.weight_scale"].to(torch.int32))),
        ("weight_scale",),
    )
    case(
        "zero-point-wrong-shape",
        "asym",
        tensors(put(f"{PACKED}.weight_zero_point", lambda t: t[f"{PACKED}.weight_zero_point"][:, :1].contiguous())),
        ("weight_zero_point",),
    )
    return cases


# ---------------------------------------------------------------- entropy frame tables

TABLE_KEY = "tensorpress.entropy"
CODED = "model.embed_tokens.weight"


def entropy_cases() -> list[Case]:
    cases: list[Case] = []

    def case(name: str, fn: Callable[[dict], object], needles: tuple[str, ...], cmds=("decompress", "eval")) -> None:
        for cmd in cmds:

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(b.coded, tmp / "coded")

                def edit(h: dict) -> None:
                    table = json.loads(h["__metadata__"][TABLE_KEY])
                    new = fn(table)
                    h["__metadata__"][TABLE_KEY] = new if isinstance(new, str) else json.dumps(table)

                edit_header(m / "model.safetensors", edit)
                if cmd == "eval":
                    s = Setup(
                        ["eval", str(m), "--text", str(b.text), "--windows", "1", "--seqlen", "16"], [m, b.text], []
                    )
                elif cmd == "inspect":
                    s = Setup(["inspect", str(m)], [m], [])
                else:
                    s = Setup(["decompress", str(m), "--out", str(tmp / "dense")], [m], [])
                s.needles = list(needles)
                return s

            cases.append(Case("entropy", f"{name}-{cmd}", build))

    def entry(key: str, value: object) -> Callable[[dict], None]:
        return lambda t: t[CODED].__setitem__(key, value)

    def frame0(i: int, value: object) -> Callable[[dict], None]:
        return lambda t: t[CODED]["frames"][0].__setitem__(i, value)

    every = ("decompress", "eval", "inspect")
    case("table-not-json", lambda t: "{not json", ("entropy",), every)
    case("table-list", lambda t: "[1]", ("entropy",), every)
    case("entry-list", lambda t: t.__setitem__(CODED, [1]), ("entropy",), every)
    case("dtype-unknown", entry("dtype", "F8"), (CODED,), every)
    case("shape-negative", entry("shape", [-320, 96]), (CODED,), every)
    case("shape-wrong", entry("shape", [321, 96]), (CODED,), every)
    case("shape-huge", entry("shape", [2**40, 2**40]), (CODED,), every)
    case("layout-unknown", entry("layout", "zip"), (CODED,))
    case("frames-not-list", entry("frames", 5), (CODED,))
    case("frame-count-0", frame0(0, 0), (CODED,))
    case("frame-count-huge", frame0(0, 2**40), (CODED,))
    case("frame-digest-wrong", lambda t: t[CODED]["frames"][0].__setitem__(1, t[CODED]["frames"][0][1] ^ 1), (CODED,))
    case("stream-longer", lambda t: t[CODED]["frames"][0].__setitem__(2, t[CODED]["frames"][0][2] + 1), (CODED,))
    case("frame-extra", lambda t: t[CODED]["frames"].append(list(t[CODED]["frames"][0])), (CODED,))
    case("frame-dropped", lambda t: t[CODED]["frames"].clear(), (CODED,))
    case("codes-bits-9", entry("codes_bits", 9), (CODED,))
    case("frame-string", frame0(0, "x"), (CODED,))

    def flip(name: str) -> None:
        for cmd in ("decompress", "eval"):

            def build(b: Bench, tmp: Path, cmd=cmd) -> Setup:
                m = copy_model(b.coded, tmp / "coded")
                p = m / "model.safetensors"
                header, data = read_safetensors(p)
                begin, end = header[CODED]["data_offsets"]
                data = bytearray(data)
                for i in range(begin + 40, min(end, begin + 400), 7):
                    data[i] ^= 0xFF
                write_safetensors(p, header, bytes(data))
                if cmd == "eval":
                    s = Setup(
                        ["eval", str(m), "--text", str(b.text), "--windows", "1", "--seqlen", "16"], [m, b.text], []
                    )
                else:
                    s = Setup(["decompress", str(m), "--out", str(tmp / "dense")], [m], [])
                s.needles = [CODED]
                return s

            cases.append(Case("entropy", f"{name}-{cmd}", build))

    flip("stream-bytes-flipped")
    return cases


# ---------------------------------------------------------------- CLI arguments


def cli_cases(safety_landed: bool) -> list[Case]:
    cases: list[Case] = []

    def case(name: str, build: Callable[[Bench, Path], Setup], xfail: str | None = None) -> None:
        cases.append(Case("cli", name, build, xfail=xfail))

    def comp(*extra: str, needles: tuple[str, ...]) -> Callable[[Bench, Path], Setup]:
        def build(b: Bench, tmp: Path) -> Setup:
            s = compress_argv(b, tmp, b.recipe, None, *extra)
            s.needles = list(needles)
            return s

        return build

    def ev(model_attr: str, *extra: str, needles: tuple[str, ...], text: bool = True) -> Callable[[Bench, Path], Setup]:
        def build(b: Bench, tmp: Path) -> Setup:
            m = getattr(b, model_attr)
            argv = [
                "eval",
                str(m),
                *(["--text", str(b.text)] if text else []),
                "--windows",
                "1",
                "--seqlen",
                "16",
                *extra,
            ]
            return Setup(argv, [m, b.text], list(needles))

        return build

    case("seed-2e64", comp("--seed", str(2**64), needles=("seed",)))
    case("seed-2e70", comp("--seed", str(2**70), needles=("seed",)))
    case("seed-negative", comp("--seed", "-1", needles=("seed",)))

    def long_eval(b: Bench, tmp: Path) -> Setup:
        argv = ["eval", str(b.model), "--text", str(b.text), "--windows", "1", "--seqlen", "300"]
        return Setup(argv, [b.model, b.text], ["--seqlen", "300", "max_position_embeddings"])

    case("eval-seqlen-beyond-positions", long_eval)

    def long_compress_eval(b: Bench, tmp: Path) -> Setup:
        s = compress_argv(b, tmp, b.recipe, None, "--eval", str(b.text), "--windows", "1", "--seqlen", "4096")
        s.inputs.append(b.text)
        s.needles = ["4096", "max_position_embeddings"]
        return s

    case("compress-eval-seqlen-beyond-positions", long_compress_eval)
    case(
        "eval-windows-1e6",
        lambda b, tmp: Setup(
            ["eval", str(b.model), "--text", str(b.text), "--windows", "1000000", "--seqlen", "16"],
            [b.model, b.text],
            ["too short"],
        ),
    )

    def text_arg(name: str, make: Callable[[Path], Path], needles: tuple[str, ...]) -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            t = make(tmp)
            s = Setup(
                ["eval", str(b.model), "--text", str(t), "--windows", "1", "--seqlen", "16"], [b.model], list(needles)
            )
            if t.is_file() and t.parent == tmp:
                s.inputs.append(t)
            return s

        case(f"text-{name}", build)

    text_arg("fifo", lambda tmp: fifo(tmp / "t.txt"), ("t.txt",))
    text_arg("dev-zero", lambda tmp: Path("/dev/zero"), ("/dev/zero",))
    text_arg("dev-urandom", lambda tmp: Path("/dev/urandom"), ("/dev/urandom",))
    text_arg("directory", lambda tmp: (tmp / "textdir").mkdir() or tmp / "textdir", ("textdir",))
    text_arg("missing", lambda tmp: tmp / "nope.txt", ("nope.txt",))
    text_arg("utf16", lambda tmp: write(tmp / "u.txt", ("In the beginning " * 100).encode("utf-16")), ("u.txt",))
    text_arg("binary", lambda tmp: write(tmp / "b.txt", garbage(2048)), ("b.txt",))
    text_arg("unknown-kjv", lambda tmp: Path("kjv:nope"), ("kjv:nope",))

    def model_arg(name: str, make: Callable[[Path], Path], needles: tuple[str, ...], cmd: str = "compress") -> None:
        def build(b: Bench, tmp: Path) -> Setup:
            m = make(tmp)
            if cmd == "compress":
                s = compress_argv(b, tmp, b.recipe, m)
            elif cmd == "decompress":
                s = Setup(["decompress", str(m), "--out", str(tmp / "dense")], [m], [])
            elif cmd == "inspect":
                s = Setup(["inspect", str(m)], [m], [])
            else:
                s = Setup(["eval", str(m), "--text", str(b.text), "--windows", "1", "--seqlen", "16"], [m, b.text], [])
            s.inputs = [p for p in s.inputs if p.exists() and (p.is_dir() or p.is_file())]
            s.needles = list(needles)
            return s

        case(f"model-{name}-{cmd}", build)

    for cmd in ("compress", "eval", "decompress", "inspect"):
        model_arg("fifo", lambda tmp: fifo(tmp / "m.gguf"), ("m.gguf",), cmd)
        model_arg("dev-null", lambda tmp: Path("/dev/null"), ("/dev/null",), cmd)
        model_arg("missing", lambda tmp: tmp / "nowhere", ("nowhere",), cmd)
        model_arg("empty-folder", lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", ("empty",), cmd)
    model_arg("text-file", lambda tmp: write(tmp / "notes.txt", "hello"), ("notes.txt",))
    model_arg("garbage-gguf", lambda tmp: write(tmp / "g.gguf", garbage(1000)), ("g.gguf",))
    model_arg("empty-gguf", lambda tmp: write(tmp / "e.gguf", b""), ("e.gguf",))
    model_arg("bin-only", lambda tmp: _bin_only(tmp), ("bin",))
    model_arg(
        "garbage-safetensors", lambda tmp: write(tmp / "x.safetensors", garbage(100)), ("x.safetensors",), "inspect"
    )

    def recompress(src: str) -> Callable[[Bench, Path], Setup]:
        def build(b: Bench, tmp: Path) -> Setup:
            m = getattr(b, src)
            s = compress_argv(b, tmp, b.recipe, m)
            s.needles = [m.name, "already compressed"]
            return s

        return build

    case("recompress-packed", recompress("sym"))
    case("recompress-asym", recompress("asym"))
    case("recompress-entropy-coded", recompress("coded"))
    case("base-other-vocabulary", ev("model", "--base", "BASE", needles=("--base", "vocab")))
    cases[-1].build = _with_base(cases[-1].build)

    usage = None if safety_landed else "CLI usage errors belong to branch 'safety' (not merged yet)"
    device = None if safety_landed else "--device checks belong to branch 'safety' (not merged yet)"

    def raw(argv_fn: Callable[[Bench, Path], list[str]], needles: tuple[str, ...], is_usage: bool = True):
        def build(b: Bench, tmp: Path) -> Setup:
            return Setup(argv_fn(b, tmp), [b.model, b.recipe, b.text], list(needles), usage=is_usage)

        return build

    def eval_argv(*extra: str) -> Callable[[Bench, Path], list[str]]:
        return lambda b, tmp: ["eval", str(b.model), "--text", str(b.text), *extra]

    case("usage-windows-0", raw(eval_argv("--windows", "0"), ("--windows",)), usage)
    case("usage-seqlen-abc", raw(eval_argv("--seqlen", "abc"), ("--seqlen",)), usage)
    case("usage-format-xml", raw(eval_argv("--format", "xml"), ("--format",)), usage)
    case("usage-unknown-command", raw(lambda b, tmp: ["squash", str(b.model)], ("squash",)), usage)
    case("usage-unknown-option", raw(eval_argv("--colour"), ("--colour",)), usage)
    case(
        "usage-missing-recipe",
        raw(lambda b, tmp: ["compress", str(b.model), "--out", str(tmp / "o")], ("--recipe",)),
        usage,
    )
    for dev in ("bogus", "", "cuda", "cuda:99", "mps"):
        case(
            f"device-{dev or 'empty'}",
            raw(eval_argv("--windows", "1", "--seqlen", "16", "--device", dev), ("--device",), is_usage=False),
            device,
        )
    return cases


def _with_base(build: Callable[[Bench, Path], Setup]) -> Callable[[Bench, Path], Setup]:
    def wrapped(b: Bench, tmp: Path) -> Setup:
        s = build(b, tmp)
        s.argv = [str(b.other_vocab) if a == "BASE" else a for a in s.argv]
        s.inputs.append(b.other_vocab)
        return s

    return wrapped


def _bin_only(tmp: Path) -> Path:
    m = tmp / "binmodel"
    m.mkdir()
    write(m / "config.json", json.dumps({"model_type": "llama"}))
    write(m / "pytorch_model.bin", b"\x00" * 16)
    return m


# ---------------------------------------------------------------- output paths


def outpath_cases(safety_landed: bool) -> list[Case]:
    cases: list[Case] = []
    mine = None
    theirs = None if safety_landed else "output-path safety belongs to branch 'safety' (not merged yet)"

    def case(name: str, build: Callable[[Bench, Path], Setup], xfail: str | None) -> None:
        cases.append(Case("outpath", name, build, xfail=xfail))

    def comp_out(out_fn: Callable[[Path, Path], Path | str], needles: tuple[str, ...], *extra: str):
        """out_fn(model copy, tmp) → --out; the model is a private copy so a wrong --force cannot hurt others."""

        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.model, tmp / "m" / "model")
            r = write(tmp / "recipe.yaml", GOOD_RECIPE)
            out = out_fn(m, tmp)
            return Setup(["compress", str(m), "--recipe", str(r), "--out", str(out), *extra], [m, r], list(needles))

        return build

    case("out-under-regular-file", comp_out(lambda m, tmp: write(tmp / "f.txt", "x") / "sub", ("f.txt",)), mine)
    case("out-is-regular-file", comp_out(lambda m, tmp: write(tmp / "f.txt", "x"), ("f.txt",)), mine)
    case("out-in-proc", comp_out(lambda m, tmp: Path("/proc/tensorpress-out"), ("/proc",)), mine)
    case("out-in-sys", comp_out(lambda m, tmp: Path("/sys/tensorpress-out"), ("/sys",)), mine)
    case("out-empty-string", comp_out(lambda m, tmp: "", ("--out",)), mine)
    case("out-under-dev-null", comp_out(lambda m, tmp: Path("/dev/null/out"), ("/dev/null",)), mine)
    case(
        "out-non-empty-no-force", comp_out(lambda m, tmp: write(tmp / "d" / "keep.txt", "x").parent, ("--force",)), mine
    )
    case("out-equals-model", comp_out(lambda m, tmp: m, ("model",), "--force"), theirs)
    case("out-inside-model", comp_out(lambda m, tmp: m / "sub", ("model",), "--force"), theirs)
    case("out-holds-model", comp_out(lambda m, tmp: m.parent, ("model",), "--force"), theirs)
    case("out-equals-recipe", comp_out(lambda m, tmp: tmp / "recipe.yaml", ("recipe",), "--force"), theirs)
    case(
        "force-onto-foreign-folder",
        comp_out(lambda m, tmp: write(tmp / "mine" / "thesis.tex", "x").parent, ("mine",), "--force"),
        theirs,
    )

    def decomp(out_fn: Callable[[Path], Path], needles: tuple[str, ...]) -> Callable[[Bench, Path], Setup]:
        def build(b: Bench, tmp: Path) -> Setup:
            m = copy_model(b.sym, tmp / "packed")
            return Setup(["decompress", str(m), "--out", str(out_fn(m)), "--force"], [m], list(needles))

        return build

    case("decompress-out-equals-input", decomp(lambda m: m, ("packed",)), theirs)
    case("decompress-out-inside-input", decomp(lambda m: m / "dense", ("packed",)), theirs)
    case("decompress-out-holds-input", decomp(lambda m: m.parent, ("packed",)), theirs)

    def merge(b: Bench, tmp: Path) -> Setup:
        a = write(tmp / "a" / "summary.json", "{}").parent
        c = write(tmp / "c" / "summary.json", "{}").parent
        return Setup(["batch-merge", str(a), str(c), "--out", str(a)], [a, c], ["a"])

    case("batch-merge-out-is-input", merge, theirs)
    return cases


def all_cases(safety_landed: bool) -> list[Case]:
    return (
        recipe_cases()
        + matrix_cases()
        + config_cases()
        + safetensors_cases()
        + index_cases()
        + packed_cases()
        + entropy_cases()
        + cli_cases(safety_landed)
        + outpath_cases(safety_landed)
    )


if __name__ == "__main__":  # python -m tests.damage: cases per class, without running them
    from collections import Counter

    counts = Counter(c.cls for c in all_cases(True))
    for cls in CLASSES:
        print(f"{cls:12s} {counts[cls]:4d}")
    print(f"{'total':12s} {sum(counts.values()):4d}")
