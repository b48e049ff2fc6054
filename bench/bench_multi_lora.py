"""Multi-LoRA serving: engine throughput with mixed adapters vs one adapter.

A randomly initialised Llama (the llama-small preset: hidden 384, 6 layers, intermediate 1024,
vocab 8192, fp32) gets three LoRA adapters (rank 16, alpha 32, every linear layer of every
block: q, k, v, o, gate, up, down), written as PEFT adapter folders and loaded the way
`lmkit serve --lora` loads them (serve/lora_adapters.py -> peft/multi_lora.py). The engine
(continuous batching, --batch rows) runs the same N requests (random prompts of 32 tokens,
--max-tokens new tokens each, greedy, no EOS, so every request produces all its tokens):

    single   every request uses adapter a0
    mixed    requests use a0, a1, a2 in turn (every decode batch holds all three)

and measures output tokens/s = generated tokens / time, the CPU time of the process by default
(the engine thread's work: other jobs on a shared machine disturb it far less than wall time;
with 1 torch thread the two agree on an idle machine; --wall uses wall time). The modes run --repeats times
alternately; the ratio is the median of the per-pair ratios (each pair runs back to back, so
load from other jobs hits both alike). Printed for context: the base model with no adapter in
the same engine (adapted layers, no rows selecting an adapter), and the layer-level cost of
the two ways to apply per-row adapters (grouped per adapter, as implemented, vs a padded bmm
over adapter weights gathered per row).

Last line: `ours/peer` = mixed tokens/s / single tokens/s (target >= 0.7).

    python3 bench/bench_multi_lora.py [--requests 24] [--batch 8] [--max-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from lmkit.infer import GenerationConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.peft.lora import LoraConfig, inject_lora
from lmkit.peft.multi_lora import adapter_rows
from lmkit.peft.peft_format import save_lora
from lmkit.serve.engine import Engine
from lmkit.serve.lora_adapters import AdapterRegistry

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(root: Path, rank: int) -> tuple[DecoderLM, list[str]]:
    torch.manual_seed(0)
    cfg = preset("llama-small", n_kv_heads=6, max_seq_len=512, eos_token_id=None)
    base = DecoderLM(cfg).eval()
    dirs = []
    for i in range(3):
        m = copy.deepcopy(base)
        inject_lora(m, LoraConfig(r=rank, alpha=2 * rank, target_modules=TARGETS))
        torch.manual_seed(100 + i)
        for p in m.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.02)
        save_lora(m, root / f"a{i}")
        dirs.append(str(root / f"a{i}"))
    return base, dirs


def run(engine: Engine, prompts: list[list[int]], adapters: list[str | None], max_tokens: int,
        cpu_time: bool = True) -> tuple[float, list]:
    """Submit every request at once; (output tokens per second of process CPU time, or of wall
    time, token ids per request)."""
    cfg = GenerationConfig(max_new_tokens=max_tokens)
    done = [threading.Event() for _ in prompts]
    toks: list[list[int]] = [[] for _ in prompts]
    clock = time.process_time if cpu_time else time.perf_counter
    t0 = clock()
    with engine._lock:  # all queued before the first admission: the same batches in both modes
        for k, (p, a) in enumerate(zip(prompts, adapters)):
            def cb(ev, k=k):
                if ev.token is not None:
                    toks[k].append(ev.token)
                if ev.finish_reason or ev.error:
                    done[k].set()
            engine.submit(p, cfg, cb, adapter=a)
    for d in done:
        d.wait()
    dt = clock() - t0
    n = sum(len(t) for t in toks)
    assert n == len(prompts) * max_tokens, "every request must produce all its tokens"
    return n / dt, toks


class _Fill(torch.nn.Module):
    """A stand-in base layer: returns a copy of `value` (so the timing is the adapter update's)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.clone()


def layer_costs(d_in: int, d_out: int, rank: int, batch: int, reps: int = 300) -> dict[str, float]:
    """Microseconds per call of a decode-step adapter update ([batch, 1, d_in], 3 adapters mixed):
    stacked + row mask (as implemented: MultiLoraLinear), grouped (index_select, two matmuls,
    index_add per adapter), padded bmm (weights gathered per row); and one adapter for all rows."""
    from lmkit.peft.multi_lora import MultiLoraLinear

    torch.manual_seed(0)
    x = torch.randn(batch, 1, d_in)
    a_t = [torch.randn(d_in, rank) for _ in range(3)]
    b_t = [torch.randn(rank, d_out) for _ in range(3)]
    ids = torch.tensor([k % 3 for k in range(batch)])
    groups = [(a, (ids == a).nonzero().flatten()) for a in range(3)]
    a_stack, b_stack = torch.stack(a_t), torch.stack(b_t)  # [N, in, r], [N, r, out]
    out = torch.zeros(batch, 1, d_out)

    layer = MultiLoraLinear(torch.nn.Linear(d_in, d_out, bias=False))
    for a in range(3):
        layer.add(a, a_t[a].t(), b_t[a].t(), 1.0)
    layer.base_layer = _Fill(out)  # the update alone, added to `out` like the others

    def stacked():  # inside adapter_rows(ids) (set once per forward of the model, not per layer)
        return layer(x)

    def single():  # inside adapter_rows([0] * batch)
        return layer(x)

    def grouped():
        y = out.clone()
        for a, index in groups:
            y.index_add_(0, index, (x.index_select(0, index) @ a_t[a]) @ b_t[a])
        return y

    def padded():
        return out + torch.bmm(torch.bmm(x, a_stack[ids]), b_stack[ids])

    torch.testing.assert_close(grouped(), padded(), rtol=1e-4, atol=1e-3)
    with adapter_rows(ids.tolist()):
        torch.testing.assert_close(grouped(), stacked(), rtol=1e-4, atol=1e-3)
    rows = {"stacked": ids.tolist(), "single": [0] * batch}
    costs: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(3):  # interleaved: load from other jobs hits each alike
            for fn in (stacked, grouped, padded, single):
                with adapter_rows(rows.get(fn.__name__, ids.tolist())):
                    fn()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    dt = time.perf_counter() - t0
                costs.setdefault(fn.__name__, []).append(dt / reps * 1e6)
    return {k: statistics.median(v) for k, v in costs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true",
                    help="rate per wall-clock second (default: per CPU second of this process, which other "
                         "jobs on a shared machine disturb far less; with 1 thread the two agree on an idle one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base, dirs = build(Path(tmp), args.rank)
        reg = AdapterRegistry(base, "base")
        for i, d in enumerate(dirs):
            reg.load(f"a{i}", d)
        engine = Engine(base, None, max_batch_size=args.batch, lora=reg)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, base.config.vocab_size, (32,), generator=g).tolist() for _ in range(args.requests)]
    modes = {"single": ["a0"] * args.requests, "mixed": [f"a{k % 3}" for k in range(args.requests)],
             "base (no adapter)": [None] * args.requests}
    run(engine, prompts[:2], ["a0", "a1"], 4)  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in modes}
    ratios = []
    outs = {}
    for _ in range(args.repeats):
        for m, adapters in modes.items():
            rate, outs[m] = run(engine, prompts, adapters, args.max_tokens, cpu_time=not args.wall)
            rates[m].append(rate)
        ratios.append(rates["mixed"][-1] / rates["single"][-1])
    engine.stop()
    # mixed rows that use a0 should produce what they produce in the single-adapter run
    same = sum(outs["mixed"][k] == outs["single"][k] for k in range(0, args.requests, 3))
    print(f"model llama-small (384 hidden, 6 layers, fp32), 3 LoRA adapters r={args.rank} on {len(TARGETS)} "
          f"linears/layer, {args.requests} requests x {args.max_tokens} tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s), tokens per {'wall' if args.wall else 'CPU'} second")
    print(f"a0 requests with the same tokens in the mixed and the single run: {same}/{len(range(0, args.requests, 3))}")
    for m in modes:
        print(f"{m:>18}: {statistics.median(rates[m]):8.1f} output tok/s   (runs: "
              + ", ".join(f"{r:.1f}" for r in rates[m]) + ")")
    d = base.config.d_model
    for name, (i, o) in (("q_proj", (d, d)), ("up_proj", (d, base.config.d_ff))):
        c = layer_costs(i, o, args.rank, args.batch)
        print(f"layer {name} {i}x{o}, batch {args.batch}, 3 adapters: stacked+mask (ours) {c['stacked']:.1f} us, "
              f"grouped {c['grouped']:.1f} us, padded bmm {c['padded']:.1f} us; one adapter {c['single']:.1f} us")
    print(f"ours/peer = {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
