"""Corpus -> token shards, and packed causal-LM batches (lmkit.data.shards, lmkit.data.packing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.data.packing import PackedDataset, PackedLoader, ResumableSampler
from lmkit.data.shards import (
    CorpusError,
    ShardConfig,
    TokenShards,
    _text_blocks,
    is_validation,
    prepare_shards,
    read_index,
    token_dtype,
)
from lmkit.tokenizers.base import Tokenizer


class ByteTokenizer(Tokenizer):
    """Test tokenizer: id = UTF-8 byte; specials after the bytes (or at the top of a big vocab)."""

    def __init__(self, vocab_size: int = 300, eos_at_top: bool = False) -> None:
        self._vocab_size = vocab_size
        eos = vocab_size - 1 if eos_at_top else 256
        self.special_tokens = {"<|endoftext|>": eos, "<pad>": 257}

    def encode(self, text, allowed_special="none"):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self):
        return self._vocab_size

    def id_to_token(self, idx):
        return chr(idx) if idx < 256 else f"<{idx}>"

    def token_to_id(self, token):
        return self.special_tokens.get(token)

    def save(self, path):
        Path(path).write_text(json.dumps({"vocab_size": self._vocab_size, "eos_top": self.special_tokens["<|endoftext|>"] != 256}))

    @classmethod
    def load(cls, path):
        d = json.loads(Path(path).read_text())
        return cls(d["vocab_size"], d["eos_top"])


EOS = 256


def _docs_of(shards: TokenShards, tok: Tokenizer) -> list[str]:
    docs = []
    for d in shards.documents():
        assert d[-1] == shards.eos_id
        docs.append(tok.decode(d[:-1].tolist()))
    return docs


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus_dir) -> Path:
    """~600 lines of the benchmark corpora (English, Chinese, code) in two files and a folder."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    en = (corpus_dir / "en.txt").read_text(encoding="utf-8").splitlines()[:250]
    zh = (corpus_dir / "zh.txt").read_text(encoding="utf-8").splitlines()[:250]
    code = (corpus_dir / "code.txt").read_text(encoding="utf-8").splitlines()[:150]
    (root / "a_en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    (root / "sub" / "b_zh.txt").write_text("\r\n".join(zh), encoding="utf-8")  # CRLF, no final newline
    (root / "sub" / "c_code.txt").write_text("\n".join(code) + "\n", encoding="utf-8")
    (root / "sub" / ".hidden").write_text("never read\n", encoding="utf-8")
    return root


def _expected_lines(root: Path) -> list[str]:
    out = []
    for f in [root / "a_en.txt", root / "sub" / "b_zh.txt", root / "sub" / "c_code.txt"]:
        text = f.read_bytes().decode("utf-8").replace("\r\n", "\n")
        out += [line for line in text.split("\n") if line.strip()]
    return out


def test_round_trip_lines_with_split(small_corpus, tmp_path):
    tok = ByteTokenizer()
    cfg = ShardConfig(split_by="line", val_fraction=0.2, seed=3)
    index = prepare_shards([small_corpus], tok, tmp_path / "out", cfg, progress=False)
    expected = _expected_lines(small_corpus)
    train, val = TokenShards(tmp_path / "out", "train"), TokenShards(tmp_path / "out", "val")
    assert train.dtype == np.uint16 and index["dtype"] == "uint16"
    assert _docs_of(train, tok) == [d for d in expected if not is_validation(d, 0.2, 3)]
    assert _docs_of(val, tok) == [d for d in expected if is_validation(d, 0.2, 3)]
    assert 0.1 < val.num_documents / len(expected) < 0.3
    assert index["splits"]["train"]["documents"] == train.num_documents
    assert len(train) == sum(len(d.encode()) + 1 for d in expected if not is_validation(d, 0.2, 3))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left


def test_round_trip_paragraph_and_file_modes(tmp_path):
    text = "first para\nline two\n\n\n second para  \n\n  \nthird\n"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    tok = ByteTokenizer()
    prepare_shards(tmp_path / "c.txt", tok, tmp_path / "p", ShardConfig(split_by="paragraph"), progress=False)
    assert _docs_of(TokenShards(tmp_path / "p"), tok) == ["first para\nline two", " second para  ", "third"]
    prepare_shards(tmp_path / "c.txt", tok, tmp_path / "f", ShardConfig(split_by="file"), progress=False)
    assert _docs_of(TokenShards(tmp_path / "f"), tok) == [text]


def test_dtype_by_vocab_size(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    (tmp_path / "c.txt").write_text("héllo\nworld\n", encoding="utf-8")
    tok = ByteTokenizer(vocab_size=70_000, eos_at_top=True)
    index = prepare_shards(tmp_path / "c.txt", tok, tmp_path / "o", progress=False)
    s = TokenShards(tmp_path / "o")
    assert index["dtype"] == "uint32" and s.dtype == np.uint32 and s.eos_id == 69_999
    assert s[:].tolist() == list("héllo".encode()) + [69_999] + list(b"world") + [69_999]
    assert (tmp_path / "o" / "train_00000.bin").stat().st_size == len(s) * 4


def test_split_is_deterministic_and_order_independent(small_corpus, tmp_path):
    tok = ByteTokenizer()
    cfg = ShardConfig(val_fraction=0.3, seed=7)
    prepare_shards(small_corpus, tok, tmp_path / "a", cfg, progress=False)
    prepare_shards(small_corpus, tok, tmp_path / "b", cfg, progress=False)
    for name in ("train_00000.bin", "val_00000.bin", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the same documents in another order land on the same side
    lines = _expected_lines(small_corpus)
    (tmp_path / "rev.txt").write_text("\n".join(reversed(lines)), encoding="utf-8")
    prepare_shards(tmp_path / "rev.txt", tok, tmp_path / "r", cfg, progress=False)
    val_a = set(_docs_of(TokenShards(tmp_path / "a", "val"), tok))
    assert set(_docs_of(TokenShards(tmp_path / "r", "val"), tok)) == val_a
    # another seed draws another split
    prepare_shards(small_corpus, tok, tmp_path / "c", ShardConfig(val_fraction=0.3, seed=8), progress=False)
    assert set(_docs_of(TokenShards(tmp_path / "c", "val"), tok)) != val_a


def test_workers_give_the_same_shards(small_corpus, tmp_path):
    tok = ByteTokenizer()
    one = ShardConfig(val_fraction=0.1, shard_tokens=5000, chunk_bytes=2000, workers=1)
    two = ShardConfig(val_fraction=0.1, shard_tokens=5000, chunk_bytes=2000, workers=2)
    i1 = prepare_shards(small_corpus, tok, tmp_path / "one", one, progress=False)
    i2 = prepare_shards(small_corpus, tok, tmp_path / "two", two, progress=False)
    assert i1 == i2
    assert len(i1["splits"]["train"]["shards"]) > 3
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    # the stream reads straight across shard files
    s = TokenShards(tmp_path / "one")
    whole = np.concatenate([np.fromfile(tmp_path / "one" / sh["file"], dtype=np.uint16) for sh in i1["splits"]["train"]["shards"]])
    assert np.array_equal(s[:], whole)
    assert np.array_equal(s[4990:5020], whole[4990:5020]) and s[-1] == EOS
    assert _docs_of(s, tok) == [d for d in _expected_lines(small_corpus) if not is_validation(d, 0.1, 0)]


def test_tokenizer_by_path_in_workers(small_corpus, tmp_path, monkeypatch):
    import lmkit.tokenizers

    monkeypatch.setattr(lmkit.tokenizers, "load_tokenizer", ByteTokenizer.load, raising=False)
    ByteTokenizer().save(tmp_path / "tok.json")
    index = prepare_shards(
        small_corpus, tmp_path / "tok.json", tmp_path / "o", ShardConfig(workers=2, chunk_bytes=4000), progress=False
    )
    assert index["tokenizer_fingerprint"].startswith("sha256:")
    assert _docs_of(TokenShards(tmp_path / "o"), ByteTokenizer()) == _expected_lines(small_corpus)


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary output left behind"


def test_bad_inputs_give_clear_errors_and_no_output(tmp_path):
    tok = ByteTokenizer()
    out = tmp_path / "out"
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    for bad in ("empty.txt", "blank.txt"):
        with pytest.raises(CorpusError, match="no documents"):
            prepare_shards(tmp_path / bad, tok, out, progress=False)
        _no_output(tmp_path, out)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CorpusError, match="no corpus files"):
        prepare_shards(tmp_path / "emptydir", tok, out, progress=False)
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_shards(tmp_path / "missing.txt", tok, out, progress=False)

    good = "ok line\n" * 2000  # 16000 bytes of valid text, then a GBK-encoded word
    (tmp_path / "gbk.txt").write_bytes(good.encode() + "中文\n".encode("gbk"))
    with pytest.raises(CorpusError, match=r"gbk\.txt.*byte offset 16000"):
        prepare_shards([tmp_path / "gbk.txt"], tok, out, ShardConfig(chunk_bytes=100, workers=2), progress=False)
    _no_output(tmp_path, out)

    (tmp_path / "ok.txt").write_text("fine\n", encoding="utf-8")
    prepare_shards(tmp_path / "ok.txt", tok, out, progress=False)
    with pytest.raises(CorpusError, match="already exists"):
        prepare_shards(tmp_path / "ok.txt", tok, out, progress=False)
    (tmp_path / "ok.txt").write_text("changed\n", encoding="utf-8")
    prepare_shards(tmp_path / "ok.txt", tok, out, overwrite=True, progress=False)
    assert _docs_of(TokenShards(out), tok) == ["changed"]
    with pytest.raises(CorpusError, match="empty"):
        TokenShards(out, "val")
    (out / "train_00000.bin").write_bytes(b"\x00")
    with pytest.raises(CorpusError, match="damaged"):
        TokenShards(out)
    with pytest.raises(CorpusError, match="not a shard directory"):
        read_index(tmp_path)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_utf8_offsets_across_blocks(tmp_path, block):
    data = "aé中😀b".encode() + b"\xc3(" + b"rest"
    (tmp_path / "x.txt").write_bytes(data)
    with pytest.raises(CorpusError, match=f"byte offset {len('aé中😀b'.encode())}"):
        list(_text_blocks(tmp_path / "x.txt", block_bytes=block))
    (tmp_path / "trunc.txt").write_bytes("ab中".encode()[:-1])  # cut inside the last character
    with pytest.raises(CorpusError, match="byte offset 2"):
        list(_text_blocks(tmp_path / "trunc.txt", block_bytes=block))
    (tmp_path / "ok.txt").write_bytes(b"\xef\xbb\xbf" + "aé中😀b".encode())
    assert "".join(_text_blocks(tmp_path / "ok.txt", block_bytes=block)) == "aé中😀b"


def test_cli_prepare(small_corpus, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import lmkit.tokenizers
    from lmkit.cli import cli

    monkeypatch.setattr(lmkit.tokenizers, "load_tokenizer", ByteTokenizer.load, raising=False)
    ByteTokenizer().save(tmp_path / "tok.json")
    out = tmp_path / "shards"
    args = ["data", "prepare", str(small_corpus), "-t", str(tmp_path / "tok.json"), "-o", str(out), "--val-fraction", "0.1", "--workers", "2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "val" in res.output
    assert TokenShards(out, "val").num_documents + TokenShards(out).num_documents == len(_expected_lines(small_corpus))
    res = CliRunner().invoke(cli, args)  # exists: a clear error, not a traceback
    assert res.exit_code != 0 and "already exists" in res.output
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    res = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "bad.txt"), "-t", str(tmp_path / "tok.json"), "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "byte offset 0" in res.output and not (tmp_path / "x").exists()


# ---- packing --------------------------------------------------------------------------------
def test_packed_windows_cover_every_target_once():
    stream = np.arange(1000)
    ds = PackedDataset(stream, seq_len=16)
    assert len(ds) == (1000 - 16) // 15 + 1
    targets = np.concatenate([ds[i]["labels"][1:].numpy() for i in range(len(ds))])
    assert np.array_equal(targets, stream[1 : 1 + len(targets)])
    assert all(torch.equal(ds[i]["input_ids"], ds[i]["labels"]) for i in range(3))
    sh = PackedDataset(stream, seq_len=16, labels_shifted=True)
    assert len(sh) == (1000 - 17) // 16 + 1
    ex = sh[2]
    assert ex["input_ids"].tolist() == list(range(32, 48)) and ex["labels"].tolist() == list(range(33, 49))
    with pytest.raises(ValueError, match="fewer than one window"):
        PackedDataset(np.arange(10), seq_len=16)


def test_packing_keeps_document_separators(tmp_path):
    tok = ByteTokenizer()
    (tmp_path / "c.txt").write_text("\n".join(f"document number {i}" for i in range(50)), encoding="utf-8")
    prepare_shards(tmp_path / "c.txt", tok, tmp_path / "o", ShardConfig(shard_tokens=97), progress=False)
    shards = TokenShards(tmp_path / "o")
    ds = PackedDataset(shards, seq_len=33)
    batch = next(iter(PackedLoader(ds, 4, shuffle=False)))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (4, 33)
    assert batch["input_ids"].dtype == torch.long
    joined = torch.cat([batch["input_ids"][0], batch["input_ids"][1][1:]]).tolist()
    assert tok.decode(joined).startswith("document number 0document number 1")
    assert joined.count(EOS) >= 2


def _rows(batches) -> list[list[int]]:
    return [row for b in batches for row in b["input_ids"].tolist()]


@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_position_save_restore(drop_last):
    ds = PackedDataset(np.arange(2000), seq_len=8)  # 285 windows
    loader = PackedLoader(ds, batch_size=16, seed=5, drop_last=drop_last)
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))  # must survive a JSON checkpoint
    rest = list(it) + list(iter(loader)) + list(iter(loader))[:3]  # across two epoch ends
    fresh = PackedLoader(ds, batch_size=16, seed=5, drop_last=drop_last)
    fresh.load_state_dict(state)
    again = list(iter(fresh)) + list(iter(fresh)) + list(iter(fresh))[:3]
    assert len(rest) == len(again) and _rows(rest) == _rows(again)
    assert fresh.epoch == loader.epoch
    with pytest.raises(ValueError, match="batch_size"):
        PackedLoader(ds, batch_size=8, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        PackedLoader(PackedDataset(np.arange(3000), 8), batch_size=16, seed=5).load_state_dict(state)


def test_loader_epochs_shuffle_deterministically():
    ds = PackedDataset(np.arange(900), seq_len=10)  # 99 windows
    loader = PackedLoader(ds, batch_size=9, seed=1)
    e0, e1 = _rows(iter(loader)), _rows(iter(loader))
    assert len(loader) == 11 and len(e0) == 99
    assert sorted(map(tuple, e0)) == sorted(map(tuple, e1)) and e0 != e1
    assert _rows(iter(PackedLoader(ds, batch_size=9, seed=1))) == e0
    assert _rows(iter(PackedLoader(ds, batch_size=9, seed=2))) != e0
    assert _rows(iter(PackedLoader(ds, batch_size=9, shuffle=False))) == [ds[i]["input_ids"].tolist() for i in range(99)]


@pytest.mark.parametrize("n,world", [(99, 3), (100, 3), (7, 4)])
def test_rank_sharding_partitions_the_data(n, world):
    for drop_last in (True, False):
        if drop_last and n < world:
            continue
        per_rank = [ResumableSampler(n, seed=4, rank=r, world_size=world, drop_last=drop_last).epoch_indices(2) for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1
        flat = np.concatenate(per_rank)
        if drop_last:
            assert len(flat) == len(set(flat.tolist())) == n - n % world  # disjoint, nothing repeated
        else:
            assert set(flat.tolist()) == set(range(n)) and len(flat) == -(-n // world) * world
    ds = PackedDataset(np.arange(1000), seq_len=10)  # 111 windows
    rows = [_rows(iter(PackedLoader(ds, 4, seed=3, rank=r, world_size=3))) for r in range(3)]
    seen = [tuple(x) for r in rows for x in r]
    assert len(seen) == len(set(seen)) == 3 * 36  # 37 per rank -> 9 full batches of 4


def test_sampler_resume_and_set_epoch():
    s = ResumableSampler(50, seed=9, rank=1, world_size=2)
    it = iter(s)
    first = [next(it) for _ in range(10)]
    state = s.state_dict()
    rest = list(it)
    t = ResumableSampler(50, seed=9, rank=1, world_size=2)
    t.load_state_dict(state)
    assert list(t) == rest and first + rest == s.epoch_indices(0).tolist()
    assert s.epoch == 1 and s.index == 0
    t.set_epoch(4)
    assert list(t) == s.epoch_indices(4).tolist()
