"""Hugging Face ``tokenizer.json`` import and export.

``load_hf_json(path)`` / ``tokenizer_from_hf_dict(data)`` pick a reader by
``data["model"]["type"]``; ``save_hf_json(tok, path)`` picks a writer by the tokenizer's
class. One function per model type (``_bpe_from_hf`` / ``_bpe_to_hf``); other model types
(WordPiece, Unigram) add theirs to ``_READERS`` / ``_writer_for``.

Byte-level BPE forms understood:

* GPT-2 / RoBERTa: ``pre_tokenizer = ByteLevel(add_prefix_space, use_regex)``;
* Llama-3 / Qwen2: ``Sequence[Split(Regex, "Isolated"), ByteLevel(use_regex=False)]``
  (optionally a ``Digits`` step, an NFC-style normalizer, ``ignore_merges``);
* ``decoder = ByteLevel``; ``added_tokens`` with their flags; merges as ``"a b"`` strings
  (old files) or ``["a", "b"]`` pairs (tokenizers >= 0.20).

The post-processor (e.g. a BOS template) is not applied: lmkit's ``encode`` never adds
tokens that are not in the text; chat/BOS templates are added by the caller.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import regex

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe import NORMALIZERS, AddedToken, BPETokenizer
from lmkit.tokenizers.json_files import read_json
from lmkit.tokenizers.bytes_level import bytes_to_token_str, token_str_to_bytes
from lmkit.tokenizers.pretokenize import GPT2_PATTERN, PreTokenizer


# ---- entry points ---------------------------------------------------------------------------
def load_hf_json(path: str | os.PathLike) -> Tokenizer:
    """Read a ``tokenizer.json`` into the lmkit tokenizer class for its model type."""
    return tokenizer_from_hf_dict(read_json(path), source=str(path))


def tokenizer_from_hf_dict(data: dict, source: str = "<tokenizer.json>") -> Tokenizer:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{source}: corrupt tokenizer.json (no \"model\" object)")
    kind = data["model"].get("type") or ("BPE" if "merges" in data["model"] else None)
    reader = _READERS.get(kind)
    if reader is None:
        raise TokenizerError(
            f"{source}: tokenizer.json model type {kind!r} is not supported "
            f"(supported: {', '.join(sorted(_READERS))})"
        )
    try:
        return reader(data, source)
    except TokenizerError as exc:
        if str(exc).startswith(source):
            raise
        raise TokenizerError(f"{source}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TokenizerError(f"{source}: corrupt tokenizer.json ({type(exc).__name__}: {exc})") from exc


def save_hf_json(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write `tok` as a ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` loads."""
    atomic_write_text(path, json.dumps(tokenizer_to_hf_dict(tok), ensure_ascii=False, indent=2) + "\n")


def tokenizer_to_hf_dict(tok: Tokenizer) -> dict:
    return _writer_for(tok)(tok)


def _writer_for(tok: Tokenizer) -> Callable[[Tokenizer], dict]:
    if isinstance(tok, BPETokenizer):
        return _bpe_to_hf
    raise TokenizerError(f"no tokenizer.json writer for {type(tok).__name__}")


# ---- shared pieces ----------------------------------------------------------------------------
def added_tokens_from_hf(data: dict) -> list[AddedToken]:
    out = []
    for t in data.get("added_tokens") or []:
        out.append(
            AddedToken(
                content=str(t["content"]),
                id=int(t["id"]),
                special=bool(t.get("special", False)),
                lstrip=bool(t.get("lstrip", False)),
                rstrip=bool(t.get("rstrip", False)),
                single_word=bool(t.get("single_word", False)),
                normalized=bool(t.get("normalized", False)),
            )
        )
    return out


def added_tokens_to_hf(tokens: list[AddedToken]) -> list[dict]:
    return [
        {"id": t.id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
         "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special}
        for t in sorted(tokens, key=lambda t: t.id)
    ]


def normalizer_from_hf(obj: dict | None) -> str | None:
    """``None`` or one Unicode normal form (NFC/NFD/NFKC/NFKD); anything else is refused."""
    if obj is None:
        return None
    if obj.get("type") == "Sequence":
        forms = [normalizer_from_hf(n) for n in obj.get("normalizers", [])]
        forms = [f for f in forms if f is not None]
        if len(forms) > 1:
            raise TokenizerError(f"normalizer sequence {forms} is not supported (at most one normal form)")
        return forms[0] if forms else None
    if obj.get("type") in NORMALIZERS:
        return obj["type"]
    raise TokenizerError(f"normalizer {obj.get('type')!r} is not supported for byte-level BPE")


def normalizer_to_hf(form: str | None) -> dict | None:
    return None if form is None else {"type": form}


# ---- byte-level BPE -----------------------------------------------------------------------------
def _bpe_pre_tokenizer_from_hf(obj: dict | None) -> PreTokenizer:
    if obj is None:
        raise TokenizerError("no pre_tokenizer: this BPE is not byte-level (ByteLevel pre-tokenizer missing)")
    parts = obj.get("pretokenizers", []) if obj.get("type") == "Sequence" else [obj]
    if not parts or parts[-1].get("type") != "ByteLevel":
        raise TokenizerError(
            "only byte-level BPE is supported: the pre-tokenizer must end with ByteLevel "
            f"(got {[p.get('type') for p in parts]})"
        )
    steps: list[dict] = []
    for part in parts:
        kind = part.get("type")
        if kind == "ByteLevel":
            if part is not parts[-1]:
                raise TokenizerError("ByteLevel must be the last pre-tokenizer step")
            if part.get("add_prefix_space", True):
                steps.append({"type": "prefix_space"})
            if part.get("use_regex", True):
                steps.append({"type": "split", "pattern": GPT2_PATTERN})
        elif kind == "Split":
            if part.get("behavior", "Isolated") != "Isolated" or part.get("invert", False):
                raise TokenizerError(
                    f"Split pre-tokenizer with behavior={part.get('behavior')!r} invert={part.get('invert')!r} "
                    "is not supported (only Isolated, invert=false)"
                )
            pat = part["pattern"]
            source = pat["Regex"] if "Regex" in pat else regex.escape(pat["String"])
            steps.append({"type": "split", "pattern": source})
        elif kind == "Digits":
            steps.append({"type": "split", "pattern": r"\p{N}" if part.get("individual_digits") else r"\p{N}+"})
        else:
            raise TokenizerError(f"pre-tokenizer {kind!r} is not supported for byte-level BPE")
    return PreTokenizer(steps)


def _bpe_pre_tokenizer_to_hf(pre: PreTokenizer) -> dict:
    steps = pre.to_list()
    use_regex = add_prefix_space = False
    if steps and steps[-1] == {"type": "split", "pattern": GPT2_PATTERN}:
        use_regex = True
        steps.pop()
    if steps and steps[-1]["type"] == "prefix_space":
        add_prefix_space = True
        steps.pop()
    if any(s["type"] != "split" for s in steps):
        raise TokenizerError(
            "this pre-tokenizer cannot be written as tokenizer.json: a prefix space is only "
            "expressible right before the GPT-2 split or at the end"
        )
    byte_level = {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
                  "use_regex": use_regex}
    if not steps:
        return byte_level
    splits = [{"type": "Split", "pattern": {"Regex": s["pattern"]}, "behavior": "Isolated", "invert": False}
              for s in steps]
    return {"type": "Sequence", "pretokenizers": splits + [byte_level]}


def _bpe_from_hf(data: dict, source: str) -> BPETokenizer:
    model = data["model"]
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            raise TokenizerError(f"BPE {field}={model[field]!r} is not supported (byte-level BPE has none)")
    if model.get("byte_fallback"):
        raise TokenizerError("BPE with byte_fallback is SentencePiece-style, not byte-level BPE")
    decoder = data.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
        raise TokenizerError(f"decoder {decoder.get('type')!r} is not supported (expected ByteLevel)")
    added = added_tokens_from_hf(data)
    added_ids = {t.content: t.id for t in added}
    tokens: dict[int, bytes] = {}
    str_to_id: dict[str, int] = {}
    for text, idx in model["vocab"].items():
        idx = int(idx)
        try:
            tokens[idx] = token_str_to_bytes(text)
        except KeyError:
            if added_ids.get(text) == idx:
                continue  # an added token that lives in the model vocab too: handled as added
            raise TokenizerError(f"vocab entry {text!r} is not a byte-level token (characters outside the byte alphabet)") from None
        str_to_id[text] = idx
    merges = []
    for k, m in enumerate(model.get("merges") or []):
        a, b = m.split(" ") if isinstance(m, str) else m
        if a not in str_to_id or b not in str_to_id:
            raise TokenizerError(f"merge #{k} {a!r} {b!r} uses a token that is not in the vocab")
        merges.append((str_to_id[a], str_to_id[b]))
    return BPETokenizer(
        tokens,
        merges,
        pre_tokenizer=_bpe_pre_tokenizer_from_hf(data.get("pre_tokenizer")),
        normalizer=normalizer_from_hf(data.get("normalizer")),
        added_tokens=added,
        ignore_merges=bool(model.get("ignore_merges", False)),
    )


def _bpe_to_hf(tok: BPETokenizer) -> dict:
    vocab = {bytes_to_token_str(tok.token_bytes(i)): i for i in sorted(tok._tokens)}
    merges = [[bytes_to_token_str(a), bytes_to_token_str(b)] for a, b in tok.merges]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens_to_hf(tok.added_tokens),
        "normalizer": normalizer_to_hf(tok.normalizer),
        "pre_tokenizer": _bpe_pre_tokenizer_to_hf(tok.pre_tokenizer),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tok.ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }


#: model type -> reader(data, source)
def _unigram_from_hf(data: dict, source: str) -> Tokenizer:
    from lmkit.tokenizers.unigram import UnigramTokenizer

    return UnigramTokenizer.from_hf_dict(data, source)


def _wordpiece_from_hf(data: dict, source: str) -> Tokenizer:
    from lmkit.tokenizers.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer.from_hf_dict(data, source)


_READERS: dict[str, Callable[[dict, str], Tokenizer]] = {
    "BPE": _bpe_from_hf, "Unigram": _unigram_from_hf, "WordPiece": _wordpiece_from_hf,
}
