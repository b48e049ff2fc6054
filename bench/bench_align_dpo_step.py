"""Timing: one DPO training step (policy forward + backward + AdamW) — lmkit vs transformers + TRL.

The same Llama-style weights run as lmkit's DecoderLM (lmkit.align.dpo.DPOObjective with
precomputed reference log-probs) and as transformers' LlamaForCausalLM with TRL's
log-prob helper (trl.trainer.utils.selective_log_softmax) and TRL's sigmoid DPO formula.
Checks that both give the same loss, then times `REPEATS` steps of each. Last line: ours/peer.

    OMP_NUM_THREADS=2 flock /tmp/lmkit-bench.lock python3 bench/bench_align_dpo_step.py
"""

from __future__ import annotations

import tempfile
import time

import torch
import torch.nn.functional as F

from lmkit.align.dpo import DPOObjective
from lmkit.data.preference import PairBatches, TokenizedPair
from lmkit.hub import save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

REPEATS, WARMUP = 10, 2
PAIRS, PROMPT, RESP, VOCAB, BETA = 8, 48, 80, 4096, 0.1


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(PAIRS):
        p = torch.randint(4, VOCAB, (PROMPT,), generator=g).tolist()
        lc, lr = int(torch.randint(RESP // 2, RESP, (1,), generator=g)), int(torch.randint(RESP // 2, RESP, (1,), generator=g))
        c = torch.randint(4, VOCAB, (lc,), generator=g).tolist()
        r = torch.randint(4, VOCAB, (lr,), generator=g).tolist()
        pairs.append(TokenizedPair(p, p + c, [0] * len(p) + [1] * lc, p + r, [0] * len(p) + [1] * lr))
    ref = torch.randn(PAIRS, 2, generator=g, dtype=torch.float32) * 5 - 300
    return next(iter(PairBatches(pairs, PAIRS, 0, shuffle=False, extra={"ref_logps": ref})))


def trl_step_loss(hf, batch):
    from trl.trainer.utils import selective_log_softmax

    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logits = hf(input_ids=ids, attention_mask=att).logits[:, :-1]
    per_tok = selective_log_softmax(logits, ids[:, 1:]) * comp[:, 1:]
    logps = per_tok.sum(1)
    b = PAIRS
    ref = batch["ref_logps"]
    delta = (logps[:b] - ref[:, 0]) - (logps[b:] - ref[:, 1])
    return (-F.logsigmoid(BETA * delta)).mean()


def timed(fn, opt):
    times = []
    for i in range(WARMUP + REPEATS):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    import transformers

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256,
                      model_type="llama", tie_embeddings=False, pad_token_id=0, eos_token_id=3)
    ours = DecoderLM(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(ours, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="sdpa")
    hf.train()
    batch = make_batch()
    obj = DPOObjective(ours, None, beta=BETA)
    obj.train()
    l_ours = float(obj(**batch).loss.detach())
    l_peer = float(trl_step_loss(hf, batch).detach())
    print(f"loss lmkit {l_ours:.6f}  transformers+TRL {l_peer:.6f}  (|diff| {abs(l_ours - l_peer):.2e})")
    assert abs(l_ours - l_peer) < 1e-3 * max(1.0, abs(l_peer))
    opt_ours = torch.optim.AdamW([p for p in ours.parameters()], lr=1e-5)
    opt_peer = torch.optim.AdamW([p for p in hf.parameters()], lr=1e-5)
    t_peer = timed(lambda: trl_step_loss(hf, batch), opt_peer)
    t_ours = timed(lambda: obj(**batch).loss, opt_ours)
    tokens = int(batch["attention_mask"].sum())
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} transformers={transformers.__version__}")
    print(f"DPO step, {PAIRS} pairs ({tokens} tokens): lmkit {t_ours * 1e3:.1f} ms, transformers+TRL {t_peer * 1e3:.1f} ms")
    print(f"{t_ours / t_peer:.3f}")


if __name__ == "__main__":
    main()
