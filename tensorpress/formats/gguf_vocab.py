"""The tokenizer as GGUF metadata (`tokenizer.ggml.*`), from an HF tokenizer folder or another GGUF.

Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM) must be written as `gpt2` with the right
`tokenizer.ggml.pre`: written as SentencePiece (`llama`) they make llama.cpp abort in its tokenizer.
The pre-tokenizer name is chosen from what the tokenizer does (its split regex, its special tokens),
then from its name; an explicit `pre` wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf

from tensorpress.errors import TensorpressError

# Pre-tokenizer split regexes of known byte-level BPE families, as written in their tokenizer.json files.
# Matching them lets us pick llama.cpp's `tokenizer.ggml.pre` from what the tokenizer does, not its name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# gguf value types of the tokenizer keys we know, so copied or generated values keep llama.cpp's types.
TOKENIZER_KEYS = _T = gguf.Keys.Tokenizer
_VT = gguf.GGUFValueType


# --------------------------------------------------------------------------------------------------------------
# tokenizer -> KV pairs
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _token_content(entry: Any) -> str | None:
    """``bos_token`` etc. are either a string or an AddedToken dict in tokenizer_config / special_tokens_map."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _load_chat_template(tokenizer_dir: Path, tokenizer_config: Mapping[str, Any]) -> Any:
    """Chat template from tokenizer_config.json, else chat_template.jinja, else chat_template.json (newer HF)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, (str, list)):
        return template
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(tokenizer_dir / "chat_template.json").get("chat_template")
    return template if isinstance(template, (str, list)) else None


def _components(node: Any) -> list[dict[str, Any]]:
    """Flatten a tokenizer.json pre_tokenizer/decoder tree (``Sequence`` nodes) into its leaf components."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        key = "pretokenizers" if "pretokenizers" in node else "decoders"
        return [leaf for child in node.get(key, []) for leaf in _components(child)]
    return [node]


def _is_byte_level_bpe(tok_json: Mapping[str, Any]) -> bool:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return False
    parts = _components(tok_json.get("pre_tokenizer")) + _components(tok_json.get("decoder"))
    return any(p.get("type") == "ByteLevel" for p in parts)


def _is_spm_style_bpe(tok_json: Mapping[str, Any]) -> bool:
    """Llama 2 / Mistral style tokenizer.json: BPE over '▁'-spaced text with <0xXX> byte fallback."""
    model = tok_json.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _split_regexes(tok_json: Mapping[str, Any]) -> list[str]:
    out = []
    for p in _components(tok_json.get("pre_tokenizer")):
        if p.get("type") == "Split":
            pattern = p.get("pattern") or {}
            out.append(pattern.get("Regex") or pattern.get("String") or "")
    return out


def _choose_pre(
    tok_json: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    n_vocab: int,
    name_hint: str | None,
) -> str:
    """Pick llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE tokenizer.

    llama.cpp selects its pre-tokenizer regex by this string (and aborts on unknown strings), so a wrong
    value silently changes tokenization. llama.cpp's own converter recognises vocabularies by fingerprint; we
    use what we can see instead: model names and family-specific special tokens, then the tokenizer's split
    regex, then the shape of its pre-tokenizer, then model_type/vocab size, then a safe fallback.
    """
    names = " ".join(
        str(x)
        for x in (
            name_hint,
            hf_config.get("_name_or_path"),
            hf_config.get("_model_name_or_path"),
            hf_config.get("name_or_path"),
            tokenizer_config.get("name_or_path"),
        )
        if x
    ).lower()
    regexes = _split_regexes(tok_json)
    parts = _components(tok_json.get("pre_tokenizer"))
    types = [p.get("type") for p in parts]

    added = {a.get("content") for a in tok_json.get("added_tokens") or []}
    if "smollm" in names or {"<empty_output>", "<jupyter_script>", "<repo_name>"} <= added:
        # SmolLM/SmolLM2 ship StarCoder-style special tokens; llama.cpp registers their vocab as "smollm"
        return "smollm"
    if hf_config.get("model_type") == "qwen2" or _QWEN2_SPLIT in regexes:
        return "qwen2"
    llama3_like = hf_config.get("model_type") == "llama" and n_vocab >= 128000 and "<|begin_of_text|>" in added
    if _LLAMA3_SPLIT in regexes or llama3_like:
        return "llama-bpe"
    # SmolLM/SmolLM2 (and StarCoder-family) tokenizers: single digits split off, then the GPT-2 regex.
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    # Plain GPT-2 byte-level pre-tokenizer: llama.cpp's "gpt-2" type is exactly the GPT-2 regex, while its
    # "default" type uses a Llama-3-like regex (different on digits and newlines).
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    return "default"


def _special_ids(
    tokenizer_dir: Path,
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    token_to_id: Mapping[str, int],
) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json, then special_tokens_map.json, then config.json ids."""
    special_map = _read_json(tokenizer_dir / "special_tokens_map.json")
    out: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        for source in (tokenizer_config, special_map):
            content = _token_content(source.get(f"{kind}_token"))
            if content is not None and content in token_to_id:
                out[kind] = token_to_id[content]
                break
        else:
            cfg_id = hf_config.get(f"{kind}_token_id")
            if isinstance(cfg_id, list) and cfg_id:
                cfg_id = cfg_id[0]
            if isinstance(cfg_id, int) and cfg_id >= 0:
                out[kind] = cfg_id
    return out


def _add_special_flags(
    tokenizer_dir: Path, tokenizer_config: Mapping[str, Any], ids: Mapping[str, int]
) -> dict[str, bool]:
    """Whether the tokenizer adds BOS/EOS by itself.

    An explicit ``add_bos_token``/``add_eos_token`` in tokenizer_config.json wins; otherwise we ask the
    tokenizer.json post-processor what it actually does. Both flags are always written, because llama.cpp's
    defaults when a flag is missing differ per tokenizer type.
    """
    flags: dict[str, bool] = {}
    probe: list[int] | None = None
    plain: list[int] | None = None
    if (tokenizer_dir / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
            probe = tok.encode("a", add_special_tokens=True).ids
            plain = tok.encode("a", add_special_tokens=False).ids
        except Exception:  # an unreadable tokenizer.json: fall back to the flags in tokenizer_config.json
            probe = plain = None
    for kind, pos in (("bos", 0), ("eos", -1)):
        explicit = tokenizer_config.get(f"add_{kind}_token")
        if isinstance(explicit, bool):
            flags[kind] = explicit
        elif probe is not None and plain is not None and len(probe) > len(plain) and kind in ids:
            flags[kind] = probe[pos] == ids[kind]
        else:
            flags[kind] = False
    return flags


def _common_tokenizer_kv(
    tokenizer_dir: Path,
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    token_to_id: Mapping[str, int],
) -> dict[str, Any]:
    kv: dict[str, Any] = {}
    ids = _special_ids(tokenizer_dir, hf_config, tokenizer_config, token_to_id)
    key_for = {"bos": _T.BOS_ID, "eos": _T.EOS_ID, "unk": _T.UNK_ID, "pad": _T.PAD_ID}
    for kind, tid in ids.items():
        kv[key_for[kind]] = tid
    flags = _add_special_flags(tokenizer_dir, tokenizer_config, ids)
    kv[_T.ADD_BOS] = flags["bos"]
    kv[_T.ADD_EOS] = flags["eos"]
    template = _load_chat_template(tokenizer_dir, tokenizer_config)
    if template is not None:
        kv[_T.CHAT_TEMPLATE] = template
    return kv


def _vocab_kv(
    tokenizer_dir: Path,
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    model: str,
    pre: str,
    tokens: list[str],
    types: list[int],
    **lists: list[Any],
) -> dict[str, Any]:
    """The tokenizer KV every builder writes: model, pre-tokenizer, tokens and types (plus ``scores`` /
    ``merges`` when given), then special ids, add-bos/eos flags and the chat template."""
    kv: dict[str, Any] = {_T.MODEL: model, _T.PRE: pre, _T.LIST: tokens, _T.TOKEN_TYPE: types}
    keys = {"scores": _T.SCORES, "merges": _T.MERGES}
    kv.update({keys[k]: v for k, v in lists.items()})
    token_to_id = {t: i for i, t in enumerate(tokens)}
    kv.update(_common_tokenizer_kv(tokenizer_dir, hf_config, tokenizer_config, token_to_id))
    return kv


def _merges_as_strings(merges: list[Any]) -> list[str]:
    """tokenizer.json merges are ``"a b"`` strings or (since transformers 4.45) ``["a", "b"]`` pairs.

    GGUF stores ``"a b"``. A literal space inside a pair element is written as its byte-level spelling
    (U+0120), which is what it is in a byte-level vocabulary.
    """
    out: list[str] = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            out.append(" ".join(part.replace(" ", "\u0120") for part in m))
        else:
            raise TensorpressError(f"unrecognised merge entry in tokenizer.json: {m!r}")
    return out


def _vocab_by_id(tok_json: Mapping[str, Any], n_vocab: int) -> tuple[list[str], dict[int, dict[str, Any]], int]:
    """Token strings indexed by id (gaps filled later), the added-token entries by id, and the needed length."""
    vocab: dict[str, int] = dict((tok_json.get("model") or {}).get("vocab") or {})
    added = {int(a["id"]): a for a in tok_json.get("added_tokens") or []}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max([n_vocab, *(i + 1 for i in by_id)])
    # ids nobody uses (non-contiguous added tokens, or a model vocab larger than the tokenizer) become
    # placeholders, as llama.cpp's converter does; their type is set to UNUSED by the callers
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    return tokens, added, size


def _bpe_tokenizer_kv(
    tokenizer_dir: Path,
    tok_json: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    n_vocab: int,
    pre: str | None,
    name_hint: str | None,
) -> dict[str, Any]:
    tokens, added, size = _vocab_by_id(tok_json, n_vocab)
    vocab_ids = set(((tok_json.get("model") or {}).get("vocab") or {}).values())
    types: list[int] = []
    for i in range(size):
        if i in added:
            # special added tokens (<|im_start|>, <|endoftext|>) are control; other added tokens are matched
            # verbatim in text by llama.cpp, which is what "user defined" means there.
            types.append(int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED))
        elif i in vocab_ids:
            types.append(int(gguf.TokenType.NORMAL))
        else:
            types.append(int(gguf.TokenType.UNUSED))
    merges = _merges_as_strings(list((tok_json.get("model") or {}).get("merges") or []))
    pre = pre or _choose_pre(tok_json, hf_config, tokenizer_config, size, name_hint)
    return _vocab_kv(tokenizer_dir, hf_config, tokenizer_config, "gpt2", pre, tokens, types, merges=merges)


def _spm_json_tokenizer_kv(
    tokenizer_dir: Path,
    tok_json: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    n_vocab: int,
) -> dict[str, Any]:
    """SentencePiece-style BPE from tokenizer.json (no ``tokenizer.model`` / no sentencepiece package needed).

    llama.cpp's "llama" tokenizer merges the adjacent pair whose result has the highest score, so a token's
    score is minus the rank of the first merge that creates it; that reproduces the BPE merge order.
    """
    tokens, added, _ = _vocab_by_id(tok_json, n_vocab)
    model = tok_json.get("model") or {}
    merges = _merges_as_strings(list(model.get("merges") or []))
    rank_of: dict[str, int] = {}
    for rank, m in enumerate(merges):
        a, _, b = m.partition(" ")
        rank_of.setdefault(a + b, rank)
    unk = model.get("unk_token")
    vocab_ids = set((model.get("vocab") or {}).values())
    scores: list[float] = []
    types: list[int] = []
    for i, t in enumerate(tokens):
        if t == unk:  # llama.cpp's SPM tokenizer needs its unknown piece typed as such, even if "added"
            kind, score = gguf.TokenType.UNKNOWN, 0.0
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            score = 0.0
        elif i not in vocab_ids:
            kind, score = gguf.TokenType.UNUSED, 0.0
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            kind, score = gguf.TokenType.BYTE, 0.0
        else:
            kind = gguf.TokenType.NORMAL
            score = -float(rank_of[t]) if t in rank_of else 0.0
        types.append(int(kind))
        scores.append(score)
    # llama.cpp's SPM tokenizer ignores merges; transformers' GGUF loader uses them when present.
    kv = _vocab_kv(
        tokenizer_dir, hf_config, tokenizer_config, "llama", "default", tokens, types, scores=scores, merges=merges
    )
    # llama.cpp's SPM tokenizer prepends "▁" unless told otherwise; mirror a Metaspace that never prepends
    metaspace = [p for p in _components(tok_json.get("pre_tokenizer")) if p.get("type") == "Metaspace"]
    if metaspace:
        kv[_T.ADD_PREFIX] = metaspace[0].get("prepend_scheme", "always") != "never"
    return kv


def _sentencepiece_model_kv(
    tokenizer_dir: Path,
    hf_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    n_vocab: int,
) -> dict[str, Any]:
    """tokenizer.model via gguf-py's SentencePieceVocab (needs the ``sentencepiece`` package)."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError as exc:
        raise TensorpressError(
            f"{tokenizer_dir / 'tokenizer.model'} is a SentencePiece model; exporting it needs the "
            "'sentencepiece' package (pip install sentencepiece), or a tokenizer.json next to it"
        ) from exc
    vocab = gguf.SentencePieceVocab(tokenizer_dir)
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text.decode("utf-8"))
        scores.append(float(score))
        types.append(int(toktype))
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    return _vocab_kv(tokenizer_dir, hf_config, tokenizer_config, "llama", "default", tokens, types, scores=scores)


def tokenizer_kv_from_dir(
    tokenizer_dir: Path,
    hf_config: Mapping[str, Any],
    *,
    pre: str | None = None,
    name_hint: str | None = None,
) -> dict[str, Any]:
    """Build the ``tokenizer.*`` GGUF metadata for the HF tokenizer in ``tokenizer_dir``.

    Byte-level BPE always becomes ``tokenizer.ggml.model = "gpt2"``: llama.cpp aborts if such a vocabulary
    is labelled "llama". ``pre`` overrides the automatic ``tokenizer.ggml.pre`` choice.
    """
    tokenizer_dir = Path(tokenizer_dir)
    tok_json = _read_json(tokenizer_dir / "tokenizer.json")
    tokenizer_config = _read_json(tokenizer_dir / "tokenizer_config.json")
    n_vocab = int(hf_config.get("vocab_size") or 0)
    if tok_json and _is_byte_level_bpe(tok_json):
        return _bpe_tokenizer_kv(tokenizer_dir, tok_json, hf_config, tokenizer_config, n_vocab, pre, name_hint)
    if (tokenizer_dir / "tokenizer.model").is_file() and not (tok_json and _is_spm_style_bpe(tok_json)):
        return _sentencepiece_model_kv(tokenizer_dir, hf_config, tokenizer_config, n_vocab)
    if tok_json and _is_spm_style_bpe(tok_json):
        return _spm_json_tokenizer_kv(tokenizer_dir, tok_json, hf_config, tokenizer_config, n_vocab)
    if tok_json:
        kind = (tok_json.get("model") or {}).get("type")
        raise TensorpressError(f"unsupported tokenizer in {tokenizer_dir}: model type {kind!r} is not (byte-level) BPE")
    raise TensorpressError(f"no tokenizer.json or tokenizer.model found in {tokenizer_dir}")


def pad_tokenizer_kv(kv: dict[str, Any], n_vocab: int) -> dict[str, Any]:
    """Make the token list exactly ``n_vocab`` long: llama.cpp requires it to match token_embd's rows."""
    tokens = list(kv[_T.LIST])
    if len(tokens) > n_vocab:
        raise TensorpressError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {n_vocab}")
    if len(tokens) == n_vocab:
        return kv
    kv = dict(kv)
    missing = range(len(tokens), n_vocab)
    kv[_T.LIST] = tokens + [f"[PAD{i}]" for i in missing]
    if _T.TOKEN_TYPE in kv:
        kv[_T.TOKEN_TYPE] = list(kv[_T.TOKEN_TYPE]) + [int(gguf.TokenType.UNUSED)] * len(missing)
    if _T.SCORES in kv:
        kv[_T.SCORES] = list(kv[_T.SCORES]) + [-1000.0] * len(missing)
    return kv
