"""`--tp N` for `lmkit generate` and `lmkit serve`: N processes, each holding 1/N of the model.

As with vLLM's `--tensor-parallel-size`, the user gives one flag and the command starts its own
workers: `lmkit generate MODEL --tp 2 ...` runs two copies of itself as ranks 0 and 1 (what
`torchrun --standalone --nproc-per-node 2` would do: a rendezvous on a free loopback port) and
waits for them. Started under torchrun already (`torchrun --nproc-per-node 2 -m lmkit ... --tp 2`,
e.g. with your own rendezvous flags for several machines) it uses the processes it finds.

Every rank loads the whole checkpoint, then keeps its shard: column-parallel q/k/v/gate/up,
row-parallel o/down, a vocabulary-parallel embedding and LM head whose logits are gathered, so
every rank sees the full logits and picks the same token (train/tensor_parallel.py, on PyTorch's
DTensor). Only rank 0 prints or listens. The backend is gloo on CPU and NCCL on CUDA; the
small control messages of `lmkit serve` always go over a gloo group.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError


@dataclass
class Ranks:
    """This process's place among the tensor-parallel ranks."""

    rank: int
    world: int
    mesh: Any  # the 1-D DeviceMesh the model is sharded over
    control: Any  # a gloo process group for Python objects (requests, seeds)
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def check_before_launch(model_dir: str, tp: int) -> None:
    """Refuse a checkpoint whose shapes do not split over `tp` ranks before starting any (its config
    only; the ranks check the loaded model again). Folders without a config.json are left to them."""
    import dataclasses
    from pathlib import Path

    from lmkit.hub.pretrained import arch_module, read_hf_config
    from lmkit.train.tensor_parallel import check_tensor_parallel

    if not (Path(model_dir) / "config.json").is_file():
        return
    try:
        hf = read_hf_config(model_dir)
        cfg = arch_module(hf.get("model_type")).config_from_hf(hf)
    except Exception:  # loading will say what is wrong with it
        return
    if hasattr(cfg, "tie_embeddings"):
        check_tensor_parallel(dataclasses.replace(cfg, tie_embeddings=False), tp)  # --tp unties them


def launch_workers(tp: int) -> None:
    """Run `tp` copies of this command as the ranks (what `torchrun --standalone` does) and exit with theirs.

    Each copy gets RANK / LOCAL_RANK / WORLD_SIZE and a rendezvous on a free loopback port
    (MASTER_ADDR / MASTER_PORT), and OMP_NUM_THREADS = cores / tp unless it is set. SIGTERM is passed
    on and Ctrl-C reaches the ranks from the terminal (`lmkit serve`: rank 0 drains its requests,
    then stops the others); when one rank fails the others are ended. The arguments are this process's own (sys.argv), so the command
    must come from the command line (`lmkit ...` or `python -m lmkit ...`) and name --tp."""
    import signal
    import socket
    import subprocess
    import time

    args = sys.argv[1:]
    if not any(a == "--tp" or a.startswith("--tp=") for a in args):
        raise ConfigError("--tp starts its own workers from the command line; in a program, run the command "
                          f"under `torchrun --nproc-per-node {tp} -m lmkit ...` instead")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(tp),
               LOCAL_WORLD_SIZE=str(tp))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // tp)))
    sys.stdout.flush()
    sys.stderr.flush()
    procs = [subprocess.Popen([sys.executable, "-m", "lmkit", *args],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(tp)]
    asked: list[int] = []

    def forward(signum, frame) -> None:
        asked.append(signum)
        if signum == signal.SIGINT:  # Ctrl-C reaches every process of the terminal's group already; a
            return  # second one would make rank 0's server quit at once instead of draining
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    failed_at = None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = time.monotonic()  # one rank failed: give the others a moment, then end them
        if failed_at is not None and time.monotonic() - failed_at > 5:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.1)
    codes = [p.returncode for p in procs]
    bad = [c for c in codes if c != 0 and not (asked and c < 0)]
    sys.exit(bad[0] if bad and bad[0] > 0 else (1 if bad else 0))


def init_ranks(tp: int, device: str | None = None) -> Ranks:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA) and build the 1-D mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = int(os.environ["WORLD_SIZE"])
    if world != tp:
        raise ConfigError(f"--tp {tp} but torchrun started {world} processes: give --nproc-per-node {tp}")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ConfigError(f"--tp runs on cpu (gloo) or cuda (NCCL), not {dev.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    mesh = init_device_mesh(dev.type, (tp,))
    control = dist.new_group(backend="gloo") if dev.type == "cuda" else dist.group.WORLD
    return Ranks(dist.get_rank(), world, mesh, control, dev)


def shard_for_inference(model: nn.Module, ranks: Ranks) -> nn.Module:
    """Keep this rank's shard of `model` (a plain DecoderLM with the full weights), logits gathered.

    Tied embeddings are untied first (inference never updates them, so this is exact); layers
    that are not plain Linear/Embedding (quantized, adapter-wrapped) are refused by name."""
    from lmkit.train.tensor_parallel import apply_tensor_parallel, check_tensor_parallel

    if type(model).__name__ != "DecoderLM":
        raise ConfigError(f"--tp serves plain decoder checkpoints (DecoderLM), got {type(model).__name__}")
    planned = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if (leaf in planned and type(module) is not nn.Linear) or (leaf == "embed_tokens"
                                                                    and type(module) is not nn.Embedding):
            raise ConfigError(f"--tp shards plain Linear/Embedding layers; {name} is a {type(module).__name__} "
                              "(a quantized or adapter-wrapped model): serve a merged float checkpoint instead")
    cfg = model.config
    if cfg.tie_embeddings:
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        cfg.tie_embeddings = False
    check_tensor_parallel(cfg, ranks.world)
    model = model.to(ranks.device).eval()
    return apply_tensor_parallel(model, ranks.mesh, gather_logits=True)


def shared_seed(seed: int | None, ranks: Ranks) -> int:
    """`seed`, or one drawn on rank 0 and sent to all: sampling must draw the same tokens on every rank."""
    import secrets

    import torch.distributed as dist

    if seed is not None:
        return seed
    box = [secrets.randbits(63) if ranks.leader else None]
    dist.broadcast_object_list(box, src=0, group=ranks.control)
    return int(box[0])


def leader_text(prompt: str, ranks: Ranks) -> str:
    """The prompt as rank 0 has it ('-': rank 0 reads stdin), on every rank."""
    import torch.distributed as dist

    box = [(sys.stdin.read() if prompt == "-" else prompt) if ranks.leader else None]
    dist.broadcast_object_list(box, src=0, group=ranks.control)
    return box[0]


def close_ranks() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
