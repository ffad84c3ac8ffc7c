"""A regular install works: the wheel alone carries every subpackage and the recipes.

Builds the wheel from a copy of the source tree (`pip wheel --no-deps --no-build-isolation`), installs it
with `--no-deps` into a fresh venv whose only link to the dependencies is a .pth line naming .venv's
site-packages — so the editable install of this checkout (a .pth *inside* that folder, which site does not
process from there) is not active — then, from a folder outside the repo, runs every command's `--help`
and one real `batch` on a tiny model with the installed console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("compress", "eval", "inspect", "decompress", "list", "sample", "batch", "batch-merge")
pytestmark = pytest.mark.wheel


def sh(*argv, cwd=None, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{argv}: {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


def test_wheel_installs_and_runs_outside_the_repo(tmp_path, tiny_models, text_file):
    t0 = time.perf_counter()
    src = tmp_path / "src"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file() or (ROOT / rel).is_symlink():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    build = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src)
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tensorpress-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    pkgs = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "tensorpress").rglob("__init__.py")}
    for pkg in pkgs:
        assert f"{pkg}/__init__.py" in names, pkg
    shipped = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert shipped and all(f"tensorpress/recipes/{n}" in names for n in shipped)

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    site = Path(
        sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        wheel,
    )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TENSORPRESS_CACHE"] = str(tmp_path / "cache")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = sh(venv / "bin" / "python", "-c", "import tensorpress; print(tensorpress.__file__)", cwd=work, env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    exe = venv / "bin" / "tensorpress"
    for cmd in COMMANDS:
        assert "Usage" in sh(exe, cmd, "--help", cwd=work, env=env).stdout
    assert "rtn-w4g64" in sh(exe, "list", cwd=work, env=env).stdout

    (work / "matrix.yaml").write_text(
        f"models: [{tiny_models['llama']}]\nrecipes: [rtn-w4g64]\n"
        f"eval: {{text: {text_file}, windows: 2, seqlen: 16}}\ngates: [{{metric: bits_per_weight, max: 6}}]\n"
    )
    sh(exe, "batch", "matrix.yaml", "--out", "b", "--quiet", cwd=work, env=env)
    assert (work / "b" / "summary.json").is_file() and (
        work / "b" / "runs" / "llama__rtn-w4g64" / "report.json"
    ).is_file()
    print(f"wheel build + install + {len(COMMANDS)} --help + batch: {time.perf_counter() - t0:.1f}s")
