"""The package's layout stays what README.md's Layout section says.

An AST walk over tensorpress/ builds the file-level import graph (imports inside functions count: a lazy
import that closes a cycle is still a cycle) and checks:

- no cycle between files;
- no private name (`_x`) imported from another file;
- imports point down the stages: cli → batch → pipeline → compressors / evaluation → calibration → model
  → formats → infra (a package may import its own files and anything below it, never above or beside);
- at most five modules loose at the top of tensorpress/;
- no compressor file over 300 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "tensorpress"

# Rank of each top-level part: a file may import files of its own part or of a lower rank only.
RANKS: dict[str, int] = {
    "errors": 0,
    "version": 0,
    "infra": 1,
    "formats": 2,
    "model": 3,
    "calibration": 4,
    "compressors": 5,
    "evaluation": 5,
    "pipeline": 6,
    "batch": 7,
    "cli": 8,
    "__init__": 9,  # the public API (tensorpress.compress/load/evaluate), imported lazily
}
MAX_LOOSE = 5
MAX_COMPRESSOR_LINES = 300


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def is_package(mods: dict[str, Path], name: str) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def resolve(mods: dict[str, Path], node: ast.AST, here: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every tensorpress module an import statement reaches."""
    out: list[tuple[str, str | None]] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "tensorpress":
                name = alias.name
                while name not in mods and "." in name:
                    name = name.rpartition(".")[0]
                out.append((name, None))
        return out
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative import
        pkg = here if is_package(mods, here) else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    if base.split(".")[0] != "tensorpress":
        return out
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in mods:  # `from tensorpress.pkg import module`
            out.append((sub, None))
        else:
            out.append((base if base in mods else base.rpartition(".")[0], alias.name))
    return out


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """File-level graph module → modules it imports, and every private name imported across files."""
    mods = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in resolve(mods, node, mod):
                if target == mod:
                    continue
                graph[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{mod} (line {node.lineno}) imports {name} from {target}")
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def part(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle_between_files():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_private_name_imported_across_files():
    _, private = import_graph()
    assert not private, "private imports across files:\n" + "\n".join(private)


def test_imports_point_down_the_stages():
    graph, _ = import_graph()
    unknown = sorted({part(m) for m in graph} - set(RANKS))
    assert not unknown, f"parts of tensorpress/ without a rank in test_layout.RANKS: {unknown}"
    upward = [
        f"{m} ({part(m)}) imports {t} ({part(t)})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if part(t) != part(m) and RANKS[part(t)] >= RANKS[part(m)]
    ]
    assert not upward, "imports that do not point down the stages:\n" + "\n".join(upward)


def test_few_loose_modules():
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert len(loose) <= MAX_LOOSE, f"{len(loose)} modules loose at the top of tensorpress/: {loose}"


def test_compressor_files_are_small():
    big = {
        p.name: n
        for p in sorted((PKG / "compressors").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_COMPRESSOR_LINES
    }
    assert not big, f"compressor files over {MAX_COMPRESSOR_LINES} lines: {big}"


if __name__ == "__main__":  # print the graph: python tests/test_layout.py
    g, priv = import_graph()
    for m, ts in sorted(g.items()):
        print(m, "→", ", ".join(sorted(ts)))
    print("cycle:", find_cycle(g))
    print("private:", *priv, sep="\n  ")
