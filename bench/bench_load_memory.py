"""Memory: peak RSS while loading a 185M-parameter fp32 Llama checkpoint — lmkit vs transformers.

A random Llama (hidden 1024, 16 layers, GQA 16/4 heads, ffn 2816, vocab 3200 untied: the
shape of issue 16) is written once into a temporary directory by transformers. Each
measurement then runs in a fresh Python process, which reports its RSS after the imports
(VmRSS) and its peak RSS at the end (VmHWM = ru_maxrss):

  import lmkit          the bare package (it imports no torch)
  import lmkit.hub      what loading needs (torch, the model code): the baseline
  lmkit fp32            load_pretrained(dir)            (the checkpoint's dtype)
  lmkit bf16            load_pretrained(dir, dtype="bf16")
  transformers fp32     AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)

For each load it prints peak - baseline over the checkpoint's weight bytes (the issue's
target: <= 1.15 for fp32, and bf16 no more than that), and the peak once every weight has
been read (one `sum()` per parameter, as a first forward pass would). transformers 5 does
not copy a checkpoint whose dtype matches: its parameters stay views of the memory-mapped
file, whose pages join the RSS only when read (and a file overwritten in place changes the
loaded model). lmkit copies, so its load peak already holds the weights. Last line:
ours/peer = lmkit fp32 load peak / transformers fp32 load peak.

    OMP_NUM_THREADS=2 flock /tmp/lmkit-bench.lock python3 bench/bench_load_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 1024, 16, 16, 4, 2816, 3200

REPORT = """
import json, resource
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
after_import = status("VmRSS")
"""
CHILDREN = {
    "import lmkit": "import lmkit",
    "import lmkit.hub": "import lmkit.hub",
    "lmkit fp32": "import lmkit.hub\n{report}\nm = lmkit.hub.load_pretrained(DIR)",
    "lmkit bf16": "import lmkit.hub\n{report}\nm = lmkit.hub.load_pretrained(DIR, dtype='bf16')",
    "transformers fp32": "import torch, transformers\n{report}\n"
                         "m = transformers.AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32)",
}


def write_checkpoint(directory: Path) -> int:
    """Save the random Llama with transformers; returns its weight bytes."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS, intermediate_size=FFN, vocab_size=VOCAB,
                                   max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).float()
    model.save_pretrained(directory, safe_serialization=True)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure(name: str, directory: Path) -> dict:
    body = CHILDREN[name].replace("{report}", REPORT)
    if "{report}" not in CHILDREN[name]:
        body += "\n" + REPORT
    code = f"DIR = {str(directory)!r}\n{body}\n" + \
        "print(json.dumps({'after_import': after_import, 'peak': status('VmHWM')}))"
    if name.startswith(("lmkit ", "transformers")):
        code += "\nimport torch\nwith torch.no_grad():\n    [p.sum() for p in m.parameters()]\n" + \
            "print(json.dumps({'touched': status('VmHWM')}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict = {}
    for line in out.stdout.strip().splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main() -> None:
    mib = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "llama-185m"
        weights = write_checkpoint(directory)
        n_params = weights // 4
        print(f"checkpoint: {n_params / 1e6:.1f}M parameters, {weights / mib:.0f} MiB of fp32 weights")
        results = {name: measure(name, directory) for name in CHILDREN}
    base = results["import lmkit.hub"]["after_import"]
    bare = results["import lmkit"]["after_import"]  # no torch yet: loading cannot stay near it
    for name, r in results.items():
        line = f"{name:<18} after imports {r['after_import'] / mib:7.0f} MiB   peak {r['peak'] / mib:7.0f} MiB"
        if name.startswith(("lmkit ", "transformers")):
            own = r["peak"] - r["after_import"]
            line += f"   (peak - its imports) / weights {own / weights:.2f}"
            if name.startswith("lmkit "):
                line += f"   (peak - import lmkit.hub) / weights {(r['peak'] - base) / weights:.2f}"
                line += f"   (peak - import lmkit) / weights {(r['peak'] - bare) / weights:.2f}"
            line += f"   weights read: peak {r['touched'] / mib:.0f} MiB"
        print(line)
    ours, peer = results["lmkit fp32"], results["transformers fp32"]
    print(f"once every weight is read: lmkit fp32 / transformers fp32 {ours['touched'] / peer['touched']:.2f}")
    print(f"ours/peer {ours['peak'] / peer['peak']:.2f}")


if __name__ == "__main__":
    main()
