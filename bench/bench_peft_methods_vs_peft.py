"""Training-step time of prompt tuning, P-tuning (MLP) and prefix tuning: lmkit vs Hugging Face PEFT.

The same tiny random Llama (transformers writes it, lmkit.hub loads it), the same batch,
the same number of virtual tokens, AdamW on the method's parameters only; one step =
forward + backward + optimizer step. Interleaved rounds, median, 1 thread. Also checks that
both train the same number of parameters. Last line: geometric mean of lmkit/PEFT step times.

    OMP_NUM_THREADS=1 flock /tmp/lmkit-bench.lock python3 bench/bench_peft_methods_vs_peft.py
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.peft.method_common import count_trainable  # noqa: E402
from lmkit.peft.p_tuning import PTuningConfig, apply_ptuning  # noqa: E402
from lmkit.peft.prefix_tuning import PrefixTuningConfig, apply_prefix  # noqa: E402
from lmkit.peft.prompt_tuning import PromptTuningConfig, apply_prompt  # noqa: E402

N, B, T = 16, 8, 128


def step_fn(model, ids, hf: bool):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        out = model(input_ids=ids, labels=ids) if hf else model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                                   tie_word_embeddings=False)
    d = tempfile.mkdtemp()
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    ids = torch.randint(0, 1024, (B, T))
    cases = {
        "prompt tuning": (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N),
                          lambda m: apply_prompt(m, PromptTuningConfig(n_virtual_tokens=N))),
        "p-tuning (MLP)": (peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, encoder_hidden_size=256,
                                                    encoder_reparameterization_type="MLP"),
                           lambda m: apply_ptuning(m, PTuningConfig(n_virtual_tokens=N, encoder="mlp", hidden_size=256))),
        "prefix tuning (MLP)": (peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=True,
                                                        encoder_hidden_size=256),
                                lambda m: apply_prefix(m, PrefixTuningConfig(n_virtual_tokens=N, hidden_size=256))),
    }
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"Llama d=256, 4 layers, batch {B} x {T}, {N} virtual tokens, 1 thread")
    print("| method | trainable (lmkit = PEFT) | lmkit step (ms) | PEFT step (ms) | lmkit/PEFT |")
    print("|---|---:|---:|---:|---:|")
    ratios = []
    for name, (pcfg, apply) in cases.items():
        hf = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32), pcfg).train()
        ours = apply(load_pretrained(d).float()).train()
        n_hf = sum(p.numel() for p in hf.parameters() if p.requires_grad)
        assert count_trainable(ours) == n_hf, (name, count_trainable(ours), n_hf)
        fns = {"ours": step_fn(ours, ids, False), "peft": step_fn(hf, ids, True)}
        samples = {k: [] for k in fns}
        for r in range(9):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if r:
                    samples[k].append(time.perf_counter() - t0)
        a, b = statistics.median(samples["ours"]), statistics.median(samples["peft"])
        ratios.append(a / b)
        print(f"| {name} | {n_hf:,} | {1e3 * a:.1f} | {1e3 * b:.1f} | {a / b:.3f} |")
    print(f"training step time, geometric mean (ours/peer): {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")


if __name__ == "__main__":
    main()
