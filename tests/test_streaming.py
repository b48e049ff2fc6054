"""Streaming: text deltas never split a UTF-8 character, and they concatenate to the decoded text.

Oracles: Python's own one-shot UTF-8 decoding of all the bytes (``bytes.decode``), and the
non-streamed `generate` output. A byte-level BPE trained on Chinese text whose tokens cut
characters in pieces makes the byte boundaries real.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.infer import IncrementalDetokenizer, StopStringMatcher, generate, stream_generate, stream_text
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe import BPETokenizer

TEXT = "你好，世界！Hello 😀 emoji 🎉 中文测试 naïve café 👍🏽 ok"


@pytest.fixture(scope="module")
def bpe(corpus_dir) -> BPETokenizer:
    zh = (corpus_dir / "zh.txt").read_text(encoding="utf-8")[:20000]
    mixed = (corpus_dir / "mixed.txt").read_text(encoding="utf-8")[:20000]
    return BPETokenizer.train([zh + "\n" + mixed + " 😀😀 🎉🎉 👍🏽👍🏽"], 600, special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module")
def model(bpe) -> DecoderLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=bpe.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=128,
                      initializer_range=0.2)
    return DecoderLM(cfg).eval()


class BytesTokenizer(Tokenizer):
    """A tokenizer over an arbitrary list of byte strings (for property tests)."""

    special_tokens: dict[str, int] = {}

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.pieces[i] for i in ids)

    def decode(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")

    def encode(self, text, allowed_special="none"):  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def id_to_token(self, idx):  # pragma: no cover - unused
        return repr(self.pieces[idx])

    def token_to_id(self, token):  # pragma: no cover - unused
        return None

    def save(self, path):  # pragma: no cover - unused
        raise NotImplementedError


class TextOnly(BytesTokenizer):
    """Same tokens, but only `decode` (no byte access): the offsets-based text path."""

    def __getattribute__(self, name):
        if name == "decode_bytes":
            raise AttributeError(name)
        return super().__getattribute__(name)


def stream(tok, ids) -> list[str]:
    d = IncrementalDetokenizer(tok)
    out = [d.push(i) for i in ids]
    out.append(d.flush())
    return out


# ---- the detokenizer ---------------------------------------------------------------------
def test_bpe_tokens_really_split_characters(bpe):
    ids = bpe.encode(TEXT)
    partial = 0
    for i in ids:
        try:
            bpe.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial >= 5  # otherwise the tests below would prove nothing


@pytest.mark.parametrize("text", [TEXT, "😀", "中", "a", "🎉🎉🎉 end", "e\u0301 combining"])
def test_deltas_concatenate_to_the_text_and_never_split_a_character(bpe, text):
    ids = bpe.encode(text)
    deltas = stream(bpe, ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    text_path = stream(TextOnly([bpe.token_bytes(i) for i in range(bpe.vocab_size)]), ids)
    assert "".join(text_path) == text and all("\ufffd" not in d for d in text_path)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=60), cuts=st.lists(st.integers(0, 60), max_size=30))
def test_byte_path_equals_one_shot_decoding_of_any_bytes(data, cuts):
    """Even invalid UTF-8 streams to exactly what bytes.decode(errors='replace') gives."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    tok = BytesTokenizer(pieces)
    assert "".join(stream(tok, range(len(pieces)))) == data.decode("utf-8", "replace")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30), cuts=st.lists(st.integers(0, 120), max_size=30))
def test_both_paths_on_valid_text_split_anywhere(text, cuts):
    data = text.encode()
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    for tok in (BytesTokenizer(pieces), TextOnly(pieces)):
        deltas = stream(tok, range(len(pieces)))
        assert "".join(deltas) == text
        if "\ufffd" not in text:
            assert all("\ufffd" not in d for d in deltas)


# ---- stop-string matcher -------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abcXY你", max_size=40), stops=st.lists(st.text(alphabet="abcXY你", min_size=1,
                                                                              max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 40), max_size=20))
def test_stop_matcher_stops_at_the_first_stop_seen(text, stops, cuts):
    points = sorted({c for c in cuts if 0 < c < len(text)})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    m = StopStringMatcher(stops)
    emitted, matched = "", None
    for c in chunks:
        out, matched = m.feed(c)
        emitted += out
        if matched:
            break
    if matched is None:
        emitted += m.flush()
    if not any(s in text for s in stops):
        assert emitted == text and matched is None
        return
    # streaming semantics: generation stops at the first stop string that has been *seen*
    # (a longer stop starting earlier but completing later cannot be waited for), so the
    # invariants are: the output is a prefix of the text, the matched stop follows it
    # directly, no stop string lies wholly inside the output, and the stop that was
    # matched ends no later than any stop could have been completed in the stream.
    assert matched is not None and matched in stops
    assert text.startswith(emitted) and text[len(emitted):].startswith(matched)
    assert not any(s in emitted for s in stops)
    end = len(emitted) + len(matched)
    first_end = min(text.find(s) + len(s) for s in stops if s in text)
    assert end <= max(first_end, min(p for p in [*points, len(text)] if p >= first_end))


# ---- streaming generation ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_generate_equals_generate(model, bpe, seed):
    """Random weights emit arbitrary byte tokens (broken characters included): still identical."""
    kw = dict(max_new_tokens=40, do_sample=True, temperature=1.5, seed=seed, eos_token_id=[])
    prompts = ["你好", "Hello 😀"]
    ref = generate(model, prompts, tokenizer=bpe, **kw)
    deltas = list(stream_generate(model, bpe, prompts, **kw))
    for r in range(2):
        mine = [d for d in deltas if d.index == r]
        assert "".join(d.text for d in mine) == ref.texts[r] == bpe.decode(ref.token_ids[r])
        assert [t for d in mine for t in d.token_ids] == ref.token_ids[r]
        assert mine[-1].finish_reason == "length" and all(d.finish_reason is None for d in mine[:-1])
        assert all("\ufffd" not in d.text for d in mine if "\ufffd" not in ref.texts[r])
    assert "".join(stream_text(model, bpe, "你好", **kw)) == generate(model, "你好", tokenizer=bpe, **kw).text


def test_stream_with_eos_and_stop_strings(model, bpe):
    free = generate(model, ["中文"], tokenizer=bpe, max_new_tokens=30, do_sample=True, seed=5, eos_token_id=[])
    text = free.text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    kw = dict(max_new_tokens=30, do_sample=True, seed=5, eos_token_id=[], stop=[stop])
    ref = generate(model, ["中文"], tokenizer=bpe, **kw)
    deltas = list(stream_generate(model, bpe, ["中文"], **kw))
    assert "".join(d.text for d in deltas) == ref.text == text[: text.find(stop)]
    assert deltas[-1].finish_reason == "stop"
    # EOS: the id that ended the row is not rendered, and the row reports "stop"
    toks = free.token_ids[0]
    j = next(j for j in range(3, 30) if toks[j] not in toks[:j])
    eos = toks[j]
    ended = generate(model, ["中文"], tokenizer=bpe, max_new_tokens=30, do_sample=True, seed=5, eos_token_id=eos)
    deltas = list(stream_generate(model, bpe, ["中文"], max_new_tokens=30, do_sample=True, seed=5, eos_token_id=eos))
    assert ended.token_ids[0] == toks[: j + 1] and ended.finish_reasons == ["stop"]
    assert "".join(d.text for d in deltas) == ended.text == bpe.decode(toks[:j])
    assert deltas[-1].finish_reason == "stop"
