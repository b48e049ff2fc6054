"""Load benchmark: `lmkit serve` vs llama.cpp's OpenAI server (`llama_cpp.server`) on the same weights.

A randomly initialised Llama with a byte-level BPE tokenizer (trained on bench/corpus/en.txt)
is saved with lmkit and exported to GGUF with lmkit (`lmkit.hub.gguf.export_gguf_dir`). Each
server runs in its own subprocess with 2 threads, one server at a time (never both at once:
they would share the 2 cores), alternately, for --rounds rounds; the figures are medians over
the rounds. llama.cpp loads with extra buffer types off (`use_extra_bufts=False`, through a
small launcher that patches `llama_model_default_params` before starting `llama_cpp.server`,
as tests/test_gguf_llamacpp.py does: its AMX repack path crashed on this CPU, issue 16).

The client is the official `openai` AsyncOpenAI: at concurrency C, C workers send streamed
completion requests (greedy, --max-tokens each, prompts: corpus sentences, each request its
own, so no prompt cache sees a repeat) until --requests are done. Per server and concurrency: requests/s, output tok/s (sum of generated tokens /
wall time), p50/p99 time to first token (first streamed chunk carrying a token), and the server
process's CPU time per generated token (all its threads: a figure the load of a shared machine
moves far less than wall-clock throughput).

Both servers run with OMP_WAIT_POLICY=PASSIVE (--omp-wait): both link libgomp, and on a shared
2-core machine threads that spin at barriers stall each other (llama.cpp's first run here, with
spinning waits, took up to 52 s for one 32-token request at concurrency 1).

Precisions compared at equal footing:
    fp32   lmkit --dtype fp32            vs  GGUF F32, llama.cpp KV cache f32
    bf16   lmkit --dtype bf16            vs  GGUF F16, llama.cpp KV cache f16 (the nearest 16-bit pair)

Generated tokens: lmkit reports them in the usage chunk (stream_options.include_usage);
llama-cpp-python's server has no usage in streams, so its chunks are counted (one per token,
not the empty last one). llama-cpp-python's server serves one request at a time (a lock around its one `Llama`: no batching); it runs with
--interrupt_requests False, else each new request would cut the streaming one short. Each
server first answers 3 warm-up requests (llama.cpp's first requests took tens of seconds).

Last line: `ours/peer` = lmkit output tok/s / llama.cpp output tok/s at concurrency 16 (fp32).

    python3 bench/bench_serve_load.py [--size small|185m] [--rounds 2] [--requests 1:4,4:12,16:32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIZES = {  # d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab
    "small": (512, 8, 8, 2, 1408, 8192),
    "185m": (1024, 16, 16, 4, 2816, 32000),
}

LAUNCHER = """\
import sys
import llama_cpp.llama_cpp as low
_default = low.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False  # llama.cpp's AMX repack path crashed on this CPU (issue 16)
    return p
low.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def english_corpus() -> Path:
    from lmkit.corpus import write_corpora

    return write_corpora(ROOT / "bench" / "corpus") / "en.txt"


def build_model_dir(path: Path, size: str) -> None:
    import torch

    from lmkit.hub import save_pretrained
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.tokenizers.bpe import BPETokenizer

    d, layers, heads, kv, ff, vocab = SIZES[size]
    text = english_corpus().read_text(encoding="utf-8")[:3_000_000]
    tok = BPETokenizer.train([text], vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size, d_model=d, n_layers=layers,
                      n_heads=heads, n_kv_heads=kv, d_ff=ff, max_seq_len=2048, norm="rmsnorm", activation="silu",
                      gated_ffn=True, position="rope", tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-5,
                      eos_token_id=tok.token_to_id("<|endoftext|>"))
    model = DecoderLM(cfg).eval()
    save_pretrained(model, path)
    tok.save_hf_json(path / "tokenizer.json")


def prompts_from_corpus(n: int) -> list[str]:
    text = english_corpus().read_text(encoding="utf-8")
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text[:300_000]) if 80 <= len(s.strip()) <= 200]
    return sents[:n]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One server subprocess (its own process group, so stopping it stops all of it)."""

    def __init__(self, cmd: list[str], env: dict, log: Path) -> None:
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server did not start in {timeout} s; see {self.log.name}")

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used (user + system, all its threads; Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def lmkit_cmd(model_dir: Path, dtype: str, port: int, max_batch: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "lmkit", "serve", str(model_dir), "--port", str(port), "--threads", str(threads),
            "--dtype", dtype, "--max-batch-size", str(max_batch), "--model-name", "bench", "--log-level", "warning"]


def llama_cmd(launcher: Path, gguf: Path, port: int, kv_type: int, threads: int) -> list[str]:
    return [sys.executable, str(launcher), "--model", str(gguf), "--model_alias", "bench", "--port", str(port),
            "--host", "127.0.0.1", "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
            "--type_k", str(kv_type), "--type_v", str(kv_type),
            "--interrupt_requests", "False"]  # its default lets a new request cut the running stream short


async def drive(url: str, prompts: list[str], concurrency: int, n_requests: int, max_tokens: int) -> dict:
    """n_requests streamed completions, `concurrency` in flight -> requests/s, tok/s, TTFTs."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    ttfts: list[float] = []
    tokens = 0
    queue = list(range(n_requests))

    async def worker() -> None:
        nonlocal tokens
        while queue:
            i = queue.pop(0)
            t0 = time.perf_counter()
            first = None
            chunks = 0
            usage = None
            stream = await client.completions.create(model="bench", prompt=prompts[i],
                                                     max_tokens=max_tokens, temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
            async for ch in stream:
                if ch.usage is not None:
                    usage = ch.usage.completion_tokens
                for c in ch.choices:  # a token's chunk; llama.cpp ends with an empty one carrying finish_reason
                    if c.finish_reason is None or c.text:
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t0
            ttfts.append(first if first is not None else time.perf_counter() - t0)
            tokens += usage if usage is not None else chunks

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    ttfts.sort()
    return {"rps": n_requests / wall, "tps": tokens / wall, "tokens": tokens,
            "p50": statistics.median(ttfts), "p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", default="1:4,4:12,16:32", help="concurrency:requests pairs")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=2, help="threads of each server")
    ap.add_argument("--omp-wait", default="PASSIVE", choices=["PASSIVE", "ACTIVE"], help="OMP_WAIT_POLICY of both")
    ap.add_argument("--workdir", default=None, help="keep the model and GGUF files here (reused when present)")
    args = ap.parse_args()
    plan = [tuple(int(x) for x in p.split(":")) for p in args.requests.split(",")]
    precisions = args.precisions.split(",")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lmkit-load-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"model-{args.size}"
    if not (model_dir / "tokenizer.json").exists():
        print(f"building the {args.size} model ...", flush=True)
        build_model_dir(model_dir, args.size)
    from lmkit.hub.gguf import export_gguf_dir

    ggufs = {"fp32": (work / f"{args.size}-f32.gguf", "f32", 0), "bf16": (work / f"{args.size}-f16.gguf", "f16", 1)}
    for p in precisions:
        path, ftype, _ = ggufs[p]
        if not path.exists():
            export_gguf_dir(model_dir, path, ftype=ftype)
    launcher = work / "llama_server_launcher.py"
    launcher.write_text(LAUNCHER)
    # passive OpenMP waits: on a shared 2-core machine spinning threads stall each other (both servers use libgomp)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY=args.omp_wait,
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prompts = prompts_from_corpus(sum(n for _, n in plan) + 3)
    if len(prompts) < sum(n for _, n in plan) + 3:
        raise SystemExit(f"the corpus gives only {len(prompts)} prompts; ask for fewer requests")
    max_batch = max(c for c, _ in plan)
    print(f"model {args.size} {SIZES[args.size]}; {args.max_tokens} tokens per request; plan {plan}; "
          f"{args.threads} threads per server, OMP_WAIT_POLICY={args.omp_wait}; "
          f"load average at start: {loadavg()}", flush=True)

    results: dict[tuple[str, str, int], list[dict]] = {}
    loads = []
    for rnd in range(args.rounds):
        for p in precisions:
            for name in ("lmkit", "llama.cpp"):
                port = free_port()
                cmd = lmkit_cmd(model_dir, p, port, max_batch, args.threads) if name == "lmkit" else \
                    llama_cmd(launcher, ggufs[p][0], port, ggufs[p][2], args.threads)
                srv = Server(cmd, env, work / f"{name}-{p}.log")
                try:
                    srv.wait_ready()
                    # warm-up (llama.cpp's first requests are slow); every request below has a prompt of
                    # its own, so neither server's prompt cache (lmkit's prefix cache, llama.cpp's
                    # reuse of the previous prompt) sees a repeat
                    asyncio.run(drive(srv.url, prompts[-3:], 1, 3, 16))
                    start = 0
                    for conc, n in plan:
                        loads.append(float(loadavg().split()[0]))
                        cpu0 = srv.cpu_seconds()
                        r = asyncio.run(drive(srv.url, prompts[start:start + n], conc, n, args.max_tokens))
                        cpu1 = srv.cpu_seconds()
                        r["cpu_ms"] = (cpu1 - cpu0) / r["tokens"] * 1000 if cpu0 is not None and cpu1 is not None else float("nan")
                        start += n
                        results.setdefault((p, name, conc), []).append(r)
                        print(f"round {rnd} {p:5s} {name:9s} c={conc:2d}: {r['rps']:.2f} req/s "
                              f"{r['tps']:7.1f} tok/s TTFT p50 {r['p50'] * 1000:7.0f} ms p99 {r['p99'] * 1000:7.0f} ms "
                              f"server CPU {r['cpu_ms']:.2f} ms/token "
                              f"({r['tokens']} tokens; load {loadavg()})", flush=True)
                finally:
                    srv.stop()

    def med(p: str, name: str, conc: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(p, name, conc)])

    print(f"\nmedians over {args.rounds} rounds (load average during the runs: "
          f"min {min(loads):.1f}, max {max(loads):.1f}, 2 cores)")
    print(f"{'precision':9s} {'server':9s} {'conc':>4s} {'req/s':>7s} {'tok/s':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
          f"{'CPU ms/tok':>10s}")
    for p in precisions:
        for conc, _ in plan:
            for name in ("lmkit", "llama.cpp"):
                print(f"{p:9s} {name:9s} {conc:4d} {med(p, name, conc, 'rps'):7.2f} {med(p, name, conc, 'tps'):8.1f} "
                      f"{med(p, name, conc, 'p50') * 1000:7.0f}ms {med(p, name, conc, 'p99') * 1000:7.0f}ms "
                      f"{med(p, name, conc, 'cpu_ms'):10.2f}")
    for p in precisions:
        for conc, _ in plan:
            print(f"{p} c={conc}: lmkit/llama.cpp output tok/s = "
                  f"{med(p, 'lmkit', conc, 'tps') / med(p, 'llama.cpp', conc, 'tps'):.2f}")
    ref = precisions[0]
    top = max(c for c, _ in plan)
    print(f"ours/peer = {med(ref, 'lmkit', top, 'tps') / med(ref, 'llama.cpp', top, 'tps'):.2f}")


if __name__ == "__main__":
    main()
