"""Elastic restart: under `torchrun --max-restarts 1` rank 1 dies in the middle of step 5 (on the
first attempt only; torchrun numbers attempts in TORCHELASTIC_RESTART_COUNT). torchrun stops the
other worker, starts both again, the Trainer resumes from the step-4 checkpoint, and the run
ends with exactly the weights of a run that was never interrupted.

The test launches this file under torchrun; run as a script it is the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.train import TrainConfig, Trainer, set_seed

STEPS, SAVE_EVERY, CRASH_IN_STEP = 6, 2, 5


def tiny_model() -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    set_seed(0)
    return DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))


class Batches:
    """A resumable stream of 2 x 12 token batches; with LMKIT_TEST_CRASH set, rank 1 of the
    first attempt exits abruptly (no checkpoint, no goodbye) when step CRASH_IN_STEP fetches its batch."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (2 * STEPS, 2, 12), generator=torch.Generator().manual_seed(3))
        self.pos = 0

    def __iter__(self):
        crash = (os.environ.get("LMKIT_TEST_CRASH") == "1" and os.environ.get("RANK") == "1"
                 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0")
        while self.pos < len(self.ids):
            self.pos += 1
            if crash and self.pos > 2 * (CRASH_IN_STEP - 1):
                os._exit(17)  # a lost worker
            yield {"input_ids": self.ids[self.pos - 1], "labels": self.ids[self.pos - 1]}
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def worker(out: str) -> None:
    config = TrainConfig(max_steps=STEPS, save_every=SAVE_EVERY, lr=1e-2, strategy="ddp", precision="fp32",
                         schedule="constant", out_dir=out, progress=False, compile=False)
    trainer = Trainer(tiny_model(), config, Batches(), resume=True)
    if trainer.dist.is_main:
        with open(Path(out) / "attempts.jsonl", "a") as f:
            f.write(json.dumps({"restart": os.environ.get("TORCHELASTIC_RESTART_COUNT"), "from_step": trainer.step}) + "\n")
    trainer.train()
    from lmkit.train.distributed import cleanup

    cleanup()


def _torchrun(out: Path, crash: bool) -> subprocess.CompletedProcess:
    # no TORCH_DISABLE_SHARE_RDZV_TCP_STORE: init_distributed keeps the attempts apart on torchrun's
    # shared store itself (without that a restarted worker failed to connect in 2 of 4 runs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LMKIT_TEST_CRASH": "1" if crash else "0"}
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.2", str(Path(__file__).resolve()), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint_and_ends_with_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    crashed = _torchrun(tmp_path / "crashed", crash=True)
    assert crashed.returncode == 0, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    attempts = [json.loads(line) for line in (tmp_path / "crashed" / "attempts.jsonl").read_text().splitlines()]
    assert attempts == [{"restart": "0", "from_step": 0}, {"restart": "1", "from_step": CRASH_IN_STEP - 1}]
    clean = _torchrun(tmp_path / "clean", crash=False)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    got = load_file(tmp_path / "crashed" / f"checkpoint-{STEPS}" / "model.safetensors")
    want = load_file(tmp_path / "clean" / f"checkpoint-{STEPS}" / "model.safetensors")
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert not torch.equal(want["lm_head.weight"], tiny_model().state_dict()["lm_head.weight"])


if __name__ == "__main__":
    worker(sys.argv[1])
