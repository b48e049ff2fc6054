"""Few-shot adaptation after meta-learning (Reptile, first-order MAML) vs multi-task pretraining.

Task family: each task is a random substitution cipher π over 8 symbols,

    x1 .. x6 [=] π(x1) .. π(x6)          (loss / accuracy on the 6 answer tokens)

so tasks contradict each other: no single set of weights does well on all of them, and what
transfers is *how* to solve one (route each answer position to its input, then map it).
Initialisations of one tiny Llama-style DecoderLM that get the same budget of gradient steps
on 5-example batches drawn from training ciphers:

    multi-task   plain training, each step on 5 examples of a random training cipher
    Reptile      meta-steps of 4 tasks x `inner` Adam steps on 5 examples (θ ← θ − β(θ − φ̄))
    FOMAML       the same inner loop, outer step from a 16-example query gradient at φ
    (and a random initialisation, no pretraining)

Then, for each of 30 held-out ciphers, a copy of each init is fine-tuned on k = 5 examples
(the same steps and lr for every init) and scored on 300 fresh examples of that cipher.

    OMP_NUM_THREADS=1 python3 bench/bench_meta_learning.py [--quick]

Last line: "reptile/multitask few-shot accuracy <ratio>".
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.models.presets import preset  # noqa: E402
from lmkit.train.meta_learning import MetaConfig, MetaLearner, adapt  # noqa: E402

S, LEN = 8, 6
EQ, VOCAB = 2 * S, 2 * S + 1


def cipher_task(perm: torch.Tensor):
    """A task: n examples x [=] π(x) (answers use ids S .. 2S-1), labels only on the answers."""
    def sample(n: int, g: torch.Generator):
        x = torch.randint(0, S, (n, LEN), generator=g)
        ids = torch.cat([x, torch.full((n, 1), EQ), S + perm[x]], 1)
        labels = torch.full_like(ids, -100)
        labels[:, LEN + 1:] = ids[:, LEN + 1:]
        return ids, labels
    return sample


def random_ciphers(n: int, g: torch.Generator):
    return [cipher_task(torch.randperm(S, generator=g)) for _ in range(n)]


def new_model(seed: int) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(preset("llama-tiny", vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=4,
                            d_ff=96, max_seq_len=16))


def multitask(model: DecoderLM, steps: int, lr: float, k: int, seed: int) -> DecoderLM:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        ids, labels = random_ciphers(1, g)[0](k, g)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DecoderLM, task, g: torch.Generator, n: int = 300) -> float:
    ids, _ = task(n, g)
    pred = model(ids).logits[:, LEN:-1].argmax(-1)
    return float((pred == ids[:, LEN + 1:]).float().mean())


def few_shot(init: DecoderLM, tasks, k: int, steps: int, lr: float, seed: int) -> tuple[float, float]:
    """Mean (and stdev over tasks) accuracy after fine-tuning a copy of `init` on k examples of each task."""
    accs = []
    for i, task in enumerate(tasks):
        g = torch.Generator().manual_seed(seed + i)
        m = copy.deepcopy(init)
        ids, labels = task(k, g)
        adapt(m, ids, labels, steps, lr, "adam")
        accs.append(accuracy(m, task, g))
    return statistics.mean(accs), statistics.stdev(accs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--meta-steps", type=int, default=None)
    ap.add_argument("--inner", type=int, default=10, help="inner steps per task")
    ap.add_argument("--test-steps", type=int, default=20, help="fine-tuning steps on the k examples of a held-out task")
    ap.add_argument("--inner-lr", type=float, default=1e-2)
    ap.add_argument("--outer-lr", type=float, default=1.0)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    meta_steps = args.meta_steps or (100 if args.quick else 400)
    tasks_per_step, k = 4, args.k
    budget = meta_steps * tasks_per_step * args.inner  # inner gradient steps on k-example batches
    g = torch.Generator().manual_seed(123)
    held_out = random_ciphers(30, g)
    t0 = time.time()

    inits = {"random init": new_model(0)}
    inits["multi-task"] = multitask(new_model(0), budget, args.inner_lr, k, seed=1)
    for algo in ("reptile", "fomaml"):
        model = new_model(0)
        cfg = MetaConfig(algorithm=algo, inner_steps=args.inner, inner_lr=args.inner_lr, support_size=k,
                         query_size=16, outer_lr=args.outer_lr if algo == "reptile" else 1e-3,
                         tasks_per_step=tasks_per_step, seed=2)
        outer = None if algo == "reptile" else torch.optim.Adam(model.parameters(), lr=1e-3)
        MetaLearner(model, cfg, outer).train(lambda n, gen: random_ciphers(n, gen), meta_steps)
        inits[algo] = model.eval()
    print(f"budget: {budget} gradient steps on {k}-example batches per init ({time.time() - t0:.0f} s)")

    steps, lr = args.test_steps, args.inner_lr
    print(f"\n| init | accuracy on held-out ciphers after {steps} steps on k={k} examples | stdev over 30 tasks |")
    print("|---|---|---|")
    results = {}
    for name, init in inits.items():
        mean, sd = few_shot(init, held_out, k, steps, lr, seed=1000)
        results[name] = mean
        print(f"| {name} | {mean:.3f} | {sd:.3f} |")
    print(f"\n(chance 1/{S} = {1 / S:.3f}; total {time.time() - t0:.0f} s)")
    print(f"reptile/multitask few-shot accuracy {results['reptile'] / results['multi-task']:.2f}")


if __name__ == "__main__":
    main()
