"""`StopTracker`: when a sequence is finished (EOS, stop string, token budget), and `TextStream` over it."""

import pytest

from lmkit.errors import ConfigError
from lmkit.infer import GenerationConfig
from lmkit.infer.stop import StopTracker, model_eos_ids, token_bytes_fn
from lmkit.infer.streaming import TextStream

PIECES = {0: b"<eos>", 1: b"Hel", 2: b"lo", 3: b"\n\nUs", 4: b"er:", 5: b" x", 6: "é".encode()[:1],
          7: "é".encode()[1:]}


class ByteTok:
    """A tiny byte-level tokenizer: token_bytes, decode."""

    def token_bytes(self, i):
        return PIECES[i]

    def decode(self, ids):
        return b"".join(PIECES[i] for i in ids).decode("utf-8", "replace")


def test_eos_ends_the_sequence():
    tr = StopTracker(eos_ids=[0], max_tokens=10)
    assert not tr.push(1) and not tr.done
    assert tr.push(0)
    assert (tr.finish_reason, tr.stop_reason, tr.count) == ("stop", 0, 2)
    assert tr.push(5) and tr.count == 2  # tokens after the end are ignored


def test_stop_string_across_tokens():
    tr = StopTracker(stop=["\n\nUser:"], token_bytes=token_bytes_fn(ByteTok()))
    assert [tr.push(t) for t in (1, 2, 3)] == [False, False, False]
    assert tr.shown_bytes() == len(b"Hello")  # "\n\nUs" may start the stop string: held back
    assert tr.push(4)
    assert (tr.finish_reason, tr.stop_reason, tr.count) == ("stop", "\n\nUser:", 4)
    assert tr.shown_bytes() == len(b"Hello")


def test_budget_ends_with_length():
    tr = StopTracker(eos_ids=[0], max_tokens=3)
    assert [tr.push(t) for t in (1, 2, 5)] == [False, False, True]
    assert (tr.finish_reason, tr.stop_reason, tr.count) == ("length", None, 3)


def test_eos_wins_over_the_budget_on_the_last_token():
    tr = StopTracker(eos_ids=[0], max_tokens=2)
    tr.push(1)
    assert tr.push(0) and tr.finish_reason == "stop" and tr.stop_reason == 0


def test_unbounded_tracker_never_ends_on_its_own():
    tr = StopTracker()
    assert not any(tr.push(t) for t in range(100)) and tr.count == 100


def test_stop_strings_need_token_bytes():
    with pytest.raises(ConfigError, match="tokenizer"):
        StopTracker(stop=["x"])


def test_for_config_reads_eos_stop_and_budget():
    cfg = GenerationConfig(max_new_tokens=5, eos_token_id=[0, 9], stop=["lo"])
    tr = StopTracker.for_config(cfg, ByteTok())
    assert tr.eos == {0, 9} and tr.max_tokens == 5
    tr.push(1)
    assert tr.push(2) and tr.stop_reason == "lo"
    with pytest.raises(ConfigError):
        StopTracker.for_config(cfg)  # stop strings without a tokenizer


def test_eos_adds_no_bytes_to_the_stop_matcher():
    tr = StopTracker.for_config(GenerationConfig(eos_token_id=0, stop=["zz"]), ByteTok())
    tr.push(1)
    tr.push(0)
    assert bytes(tr.matcher.buffer) == b"Hel"


def test_text_stream_over_a_full_tracker():
    """The engine's use: one tracker knows EOS, stop strings and the budget; the stream shows its text."""
    tok = ByteTok()
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=0, stop=["\n\nUser:"])
    tr = StopTracker.for_config(cfg, tok)
    stream = TextStream(tok, skip_ids=[0], tracker=tr)
    out = [stream.push(t) for t in (1, 6, 7, 3)]
    assert out == ["Hel", "", "é", ""]  # a split character and a possible stop string are held back
    assert stream.push(0) == "" and stream.stopped and tr.stop_reason == 0
    assert stream.finish() == "\n\nUs"  # EOS, not the stop string, ended it: the held-back text is output
    assert stream.matched is None


def test_text_stream_budget_without_stop_strings():
    tok = ByteTok()
    tr = StopTracker(eos_ids=[0], max_tokens=2)
    stream = TextStream(tok, skip_ids=[0], tracker=tr)
    assert stream.push(1) + stream.push(2) == "Hello"
    assert stream.stopped and tr.finish_reason == "length"
    assert stream.push(5) == ""  # finished: nothing more


def test_text_stream_alone_stops_only_at_a_stop_string():
    stream = TextStream(ByteTok(), ["er:"], skip_ids=[0])
    text = "".join(stream.push(t) for t in (1, 0, 2, 3))
    assert not stream.stopped
    assert text + stream.push(4) == "Hello\n\nUs" and stream.stopped and stream.matched == "er:"


class _Cfg:
    def __init__(self, eos=None, extra=None):
        self.eos_token_id, self.extra = eos, extra or {}


class _Model:
    def __init__(self, cfg):
        self.config = cfg


def test_model_eos_ids():
    assert model_eos_ids(_Model(_Cfg(2))) == [2]
    assert model_eos_ids(_Model(_Cfg([2, 3]))) == [2, 3]
    assert model_eos_ids(_Model(_Cfg(2, {"eos_token_id": [5, 6]}))) == [5, 6]  # generation_config's list wins
    assert model_eos_ids(_Model(_Cfg(None))) == []
    assert model_eos_ids(object()) == []
