"""Streaming and stop strings: deltas never split a character and join to the full text.

Byte-level BPE tokens are byte strings, so CJK characters (3 bytes) and emoji (4 bytes) are
often split over tokens. Oracle: ``bytes.decode("utf-8", "replace")`` of all the bytes
(= the tokenizer's decode) — the concatenated deltas must equal it for any token split,
and no delta may contain a replacement character that the full text does not.
A scripted model (emits a fixed token sequence) makes the text-level tests exact.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.infer import generate, generate_text, stream_text
from lmkit.infer.stop import StopStringMatcher, truncate_at_stop
from lmkit.infer.streaming import IncrementalDetokenizer, TextStream, stream_tokens_to_text
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import AddedToken, BPETokenizer

TEXT = "你好，世界! 😀👍🏽 héllo — ünïcode ✓ 日本語テキスト 🇫🇷"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def byte_tokenizer() -> BPETokenizer:
    """256 byte tokens, merges that cut UTF-8 characters in the middle, and an EOS special."""
    toks = {i: bytes([i]) for i in range(256)}
    merges = []

    def add(a: int, b: int) -> int:
        toks[len(toks)] = toks[a] + toks[b]
        merges.append((a, b))
        return len(toks) - 1

    add(0xE4, 0xBD)  # first two bytes of 你 (and others)
    add(0xF0, 0x9F)  # first two bytes of most emoji
    add(0x98, 0x80)  # last two bytes of 😀
    add(ord(" "), 0xF0)  # a space glued to the start of an emoji
    add(ord("l"), ord("l"))
    return BPETokenizer(toks, merges, added_tokens=[AddedToken("<|eos|>", len(toks), special=True)])


TOK = byte_tokenizer()
EOS = TOK.vocab_size - 1


class _Counter:
    def __init__(self) -> None:
        self.seq_len = 0

    def truncate(self, n: int) -> None:
        self.seq_len = min(self.seq_len, n)


class ScriptedLM(torch.nn.Module):
    """Emits `script` after the prompt (then EOS), whatever the input: exact text-level tests."""

    def __init__(self, script: list[int], vocab: int = TOK.vocab_size) -> None:
        super().__init__()
        self.script = list(script) + [EOS]
        self.config = ModelConfig(vocab_size=vocab, d_model=8, n_layers=1, n_heads=1, d_ff=8, max_seq_len=1024,
                                  eos_token_id=EOS)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.prompt_len = 0

    def make_cache(self, batch_size: int, max_len: int | None = None) -> _Counter:
        return _Counter()

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, num_logits_to_keep=0):
        b, t = input_ids.shape
        past = kv_cache.seq_len
        if past == 0:
            self.prompt_len = t
        kv_cache.seq_len += t
        logits = torch.full((b, t, self.config.vocab_size), -20.0)
        for j in range(t):
            k = past + j + 1 - self.prompt_len  # index in the script of the token predicted here
            if 0 <= k < len(self.script):
                logits[:, j, self.script[k]] = 20.0
        if num_logits_to_keep:
            logits = logits[:, -num_logits_to_keep:]
        return type("Out", (), {"logits": logits})()


def split_tokens(text: str, seed: int) -> list[int]:
    """Tokens of `text` with some tokens broken into single bytes (more split characters)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in TOK.encode(text):
        data = TOK.token_bytes(t)
        if len(data) > 1 and torch.rand(1, generator=g).item() < 0.5:
            out.extend(data)  # byte ids are the bytes themselves
        else:
            out.append(t)
    return out


def test_tokens_really_split_characters():
    ids = split_tokens(TEXT, 0)
    pieces = [TOK.token_bytes(i) for i in ids]
    assert any(_not_utf8(p) for p in pieces)
    assert TOK.decode(ids) == TEXT


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


@pytest.mark.parametrize("seed", range(5))
def test_stream_text_equals_generate_text(seed):
    script = split_tokens(TEXT, seed)
    model = ScriptedLM(script)
    deltas = list(stream_text(model, TOK, "hi", max_new_tokens=200))
    assert "".join(deltas) == TEXT == generate_text(model, TOK, "hi", max_new_tokens=200)
    assert all(d and "\ufffd" not in d for d in deltas)
    assert len(deltas) > 10  # really incremental


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, TOK.vocab_size - 2), max_size=40))
def test_incremental_detokenizer_equals_decode_for_any_tokens(ids):
    """Any token sequence, invalid UTF-8 included: deltas join to decode(ids) ('replace' semantics)."""
    det = IncrementalDetokenizer(TOK)
    text = "".join(det.push(i) for i in ids) + det.flush()
    assert text == TOK.decode(ids)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=30), seed=st.integers(0, 1000))
def test_incremental_detokenizer_never_splits_characters(text, seed):
    ids = split_tokens(text, seed)
    det = IncrementalDetokenizer(TOK)
    deltas = [det.push(i) for i in ids] + [det.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in text


def test_text_fallback_for_tokenizers_without_bytes():
    class TextOnly:
        def decode(self, ids):
            return TOK.decode(ids)

    ids = split_tokens(TEXT, 1)
    det = IncrementalDetokenizer(TextOnly())
    deltas = [det.push(i) for i in ids] + [det.flush()]
    assert "".join(deltas) == TEXT and all("\ufffd" not in d for d in deltas)


# ---- stop strings ----------------------------------------------------------------------
@pytest.mark.parametrize("stop", ["世界", "😀👍", "llo —", "ünï", "🇫🇷", "! 😀"])
@pytest.mark.parametrize("seed", range(3))
def test_stop_strings_across_token_boundaries(stop, seed):
    script = split_tokens(TEXT, seed)
    model = ScriptedLM(script)
    expected = TEXT[: TEXT.index(stop)]
    out = generate(model, [TOK.encode("hi")], max_new_tokens=200, stop=["never there", stop], tokenizer=TOK)
    assert out.texts[0] == expected
    assert out.finish_reasons == ["stop"] and out.stop_reasons == [stop]
    # generation stopped at the token that completed the stop string
    produced = TOK.decode_bytes(out.sequences[0])
    end = len((expected + stop).encode())
    assert len(produced) >= end and len(TOK.decode_bytes(out.sequences[0][:-1])) < end
    deltas = list(stream_text(model, TOK, "hi", max_new_tokens=200, stop=stop))
    assert "".join(deltas) == expected
    assert all(stop not in d for d in deltas)


def test_stop_string_prefix_is_held_back_then_released():
    """Text that might start a stop string is not shown until it is known not to be one."""
    script = TOK.encode("abc ab abd")
    stream = TextStream(TOK, stop=["abd!"])
    shown = []
    for t in script:
        shown.append(stream.push(t))
    assert "".join(shown) == "abc ab "  # "abd" could still become "abd!"
    assert stream.finish() == "abd"
    assert "".join(stream_tokens_to_text(TOK, script, stop=["ab "])) == "abc "


def test_matcher_earliest_and_truncate():
    m = StopStringMatcher(["cd", "bcde"])  # both complete with the same token: the earlier one wins
    for chunk in (b"ab", b"c", b"de"):
        m.push(chunk)
    assert m.match == 1 and m.matched == "bcde"
    m = StopStringMatcher(["cd", "bcdef"])  # "cd" completes first: generation stops there
    for chunk in (b"ab", b"c", b"de", b"f"):
        m.push(chunk)
    assert m.match == 2 and m.matched == "cd"
    assert truncate_at_stop("xxabcdefg", ["ef", "cd"]) == ("xxab", "cd")
    assert truncate_at_stop("abc", ["z"]) == ("abc", None)


def test_eos_text_is_not_streamed():
    model = ScriptedLM(TOK.encode("ok"))
    assert list(stream_text(model, TOK, "x", max_new_tokens=10)) == ["o", "k"]
    assert generate_text(model, TOK, ["x", "y"], max_new_tokens=10) == ["ok", "ok"]


def test_random_model_stream_matches_generate():
    """A random model produces arbitrary (often invalid) UTF-8; streamed and batch text agree."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=128,
                      initializer_range=0.3, eos_token_id=EOS)
    model = DecoderLM(cfg).eval()
    for seed in range(3):
        kw = dict(max_new_tokens=40, do_sample=True, seed=seed)
        text = generate_text(model, TOK, "你好", **kw)
        assert "".join(stream_text(model, TOK, "你好", **kw)) == text
        ids = generate(model, [TOK.encode("你好")], **kw).sequences[0]
        assert text == TOK.decode([i for i in ids if i != EOS])


def _naive_stop(pieces: list[bytes], stops: list[str]) -> bytes:
    """Oracle: after each token, search the whole output for every stop string."""
    buf = b""
    for piece in pieces:
        buf += piece
        found = [(buf.find(s.encode()), s) for s in stops if s.encode() in buf]
        if found:
            return buf[: min(found)[0]]
    return buf


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 你好😀\n")), min_size=1, max_size=25),
       picks=st.lists(st.tuples(st.integers(0, 24), st.integers(1, 4)), min_size=1, max_size=3),
       extra=st.sampled_from(["", "zz", "😀😀", "\n\n"]), seed=st.integers(0, 50))
def test_stop_strings_property(text, picks, extra, seed):
    """Random text, stop strings cut from it (plus maybe absent ones): generate, stream and the oracle agree."""
    stops = [text[i : i + n] for i, n in picks if text[i : i + n]] + ([extra] if extra else [])
    script = split_tokens(text, seed)
    model = ScriptedLM(script)
    expected = _naive_stop([TOK.token_bytes(t) for t in script], stops).decode("utf-8", "replace")
    got = generate_text(model, TOK, "q", max_new_tokens=200, stop=stops)
    assert got == expected
    assert "".join(stream_text(model, TOK, "q", max_new_tokens=200, stop=stops)) == expected
