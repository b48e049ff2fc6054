"""Model merging on two tasks: how much of each fine-tune's gain a merged model keeps.

A tiny Llama-style DecoderLM (lmkit, 1 thread, a few minutes) is pretrained on synthetic
sequence tasks over digits, each with its own marker token (copy, add one, reverse, sort):

    [task] x1 .. x6 [=] y1 .. y6        loss and accuracy on the y tokens only

The two tasks fine-tuned later (reverse then add one; sort descending) are rare in that
mixture (`--rare 50`: 1/202 of the examples each), so the base does them only partly — like a
pretrained LM that a fine-tune sharpens. (With --rare 0 the base never saw them and the
fine-tunes must build new circuits: every merge then keeps < 40 % of each gain at this size.)
Two copies of the base are fine-tuned (Adam, lr 1e-4), one per task. Every merge method then combines the two fine-tunes (one base, two task
vectors), and for each task we report the fraction of the fine-tune's gain over the base that
the merged model keeps:

    kept(task) = (acc_merged − acc_base) / (acc_finetuned − acc_base)     (answer-token accuracy)

λ (the scale of the merged task vector) is picked per method from {0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0} on a
validation set (the largest worst-task kept fraction), as the task-arithmetic / TIES / DARE papers do; the table reports held-out
test accuracy. linear = weight average (0.5, 0.5), slerp = t 0.5 between the two fine-tunes;
DARE runs with three seeds of its drop masks.

    OMP_NUM_THREADS=1 python3 bench/bench_merge_tasks.py [--quick]

Last line: "worst kept fraction of the best method <x> (<method>)".
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmkit.edit.merge_state import MergeConfig, merge_state_dicts  # noqa: E402
from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.models.presets import preset  # noqa: E402

N_DIGITS, LEN = 10, 6
MARK = {"copy": 10, "add1": 11, "reverse": 12, "sort": 13, "reverse_add1": 14, "sort_desc": 15}
EQ, VOCAB = 16, 18
TASKS = {
    "copy": lambda x: x,
    "add1": lambda x: [(v + 1) % N_DIGITS for v in x],
    "reverse": lambda x: x[::-1],
    "sort": lambda x: sorted(x),
    "reverse_add1": lambda x: [(v + 1) % N_DIGITS for v in x[::-1]],
    "sort_desc": lambda x: sorted(x, reverse=True),
}
PRETRAIN = ["copy", "add1", "reverse", "sort"]
LAMBDAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0)
NEW = ("reverse_add1", "sort_desc")


def batch(tasks: list[str], n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences [task] x [=] y of randomly chosen `tasks`; labels are -100 except on y."""
    xs = torch.randint(0, N_DIGITS, (n, LEN), generator=g).tolist()
    which = torch.randint(0, len(tasks), (n,), generator=g).tolist()
    rows = [[MARK[tasks[w]], *x, EQ, *TASKS[tasks[w]](x)] for x, w in zip(xs, which)]
    ids = torch.tensor(rows)
    labels = torch.full_like(ids, -100)
    labels[:, LEN + 1:] = ids[:, LEN + 1:]  # predict y1..y6 (the position of "=" predicts y1)
    # next_token_loss shifts labels: label at t is predicted from t-1, so the y positions are targets
    return ids, labels


def train(model: DecoderLM, tasks: list[str], steps: int, lr: float, seed: int, bs: int = 64) -> DecoderLM:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        ids, labels = batch(tasks, bs, g)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DecoderLM, task: str, seed: int, n: int = 1000) -> float:
    ids, _ = batch([task], n, torch.Generator().manual_seed(seed))
    pred = model(ids).logits[:, LEN:-1].argmax(-1)  # positions "=" .. y5 predict y1 .. y6
    return float((pred == ids[:, LEN + 1:]).float().mean())


def with_state(template: DecoderLM, state: dict) -> DecoderLM:
    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--rare", type=int, default=50,
                    help="pretrain on the two new tasks too, each 1/(4N+2) of the mixture (0: never seen)")
    ap.add_argument("--pre-steps", type=int, default=None)
    ap.add_argument("--ft-steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pre_steps, ft_steps = (500, 100) if args.quick else (1000, 200)
    pre_steps, ft_steps = args.pre_steps or pre_steps, args.ft_steps or ft_steps
    t0 = time.time()
    torch.manual_seed(args.seed)
    base = DecoderLM(preset("llama-tiny", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                            d_ff=128, max_seq_len=32))
    mixture = PRETRAIN * args.rare + list(NEW) if args.rare else PRETRAIN
    base = train(base, mixture, pre_steps, 3e-3, seed=1)
    tuned = {t: train(copy.deepcopy(base), [t], ft_steps, args.ft_lr, seed=2 + i) for i, t in enumerate(NEW)}
    print(f"trained base ({pre_steps} steps) and two fine-tunes ({ft_steps} steps) in {time.time() - t0:.0f} s")
    new_tasks = NEW
    acc_base = {t: accuracy(base, t, 100) for t in new_tasks}
    acc_ft = {t: accuracy(tuned[t], t, 100) for t in new_tasks}
    print("task       base   fine-tuned   (answer-token accuracy, test set)")
    for t in new_tasks:
        kept_old = sum(accuracy(tuned[t], o, 100) for o in PRETRAIN) / len(PRETRAIN)
        print(f"{t:9s}  {acc_base[t]:.3f}  {acc_ft[t]:.3f}   (its accuracy on the pretraining tasks: {kept_old:.3f})")
    old = {t: accuracy(base, t, 100) for t in PRETRAIN}

    states = [tuned[t].state_dict() for t in new_tasks]
    base_state = base.state_dict()
    # interference between the two task vectors (what TIES' trimming and sign election act on)
    ta = torch.cat([(states[0][k] - base_state[k]).flatten() for k in base_state if base_state[k].is_floating_point()])
    tb = torch.cat([(states[1][k] - base_state[k]).flatten() for k in base_state if base_state[k].is_floating_point()])
    both = (ta != 0) & (tb != 0)
    conflict = both & (ta.sign() != tb.sign())
    top = ta.abs() >= ta.abs().quantile(0.8)
    print(f"task vectors: {float(both.float().mean()):.0%} of entries changed by both fine-tunes, "
          f"{float(conflict.float().sum() / both.float().sum()):.0%} of those with opposite signs; "
          f"cosine(τ_a, τ_b) {float(torch.nn.functional.cosine_similarity(ta, tb, 0)):.3f}; "
          f"top-20 % entries of τ_a hold {float((ta[top] ** 2).sum() / (ta ** 2).sum()):.0%} of its squared norm")
    methods = [
        ("linear", dict(method="linear", weights=(0.5, 0.5)), False),
        ("slerp", dict(method="slerp", t=0.5), False),
        ("soup", dict(method="soup"), False),
        ("task_arithmetic", dict(method="task_arithmetic"), True),
        ("ties (density 0.2)", dict(method="ties", density=0.2), True),
        ("ties (density 0.5)", dict(method="ties", density=0.5), True),
        ("ties (density 0.9)", dict(method="ties", density=0.9), True),
    ] + [(f"{m} (density 0.5, seed {seed})", dict(method=m, density=0.5, seed=seed), True)
         for m in ("dare_linear", "dare_ties") for seed in (0, 1, 2)]  # DARE's random masks: three seeds
    rows = []
    for name, kw, uses_base in methods:
        best = None
        for lam in (LAMBDAS if uses_base else (1.0,)):
            merged = with_state(base, merge_state_dicts(states, MergeConfig(**kw, lam=lam),
                                                        base_state if uses_base else None))
            val = min((accuracy(merged, t, 200, 500) - acc_base[t]) / (acc_ft[t] - acc_base[t]) for t in new_tasks)
            if best is None or val > best[0]:
                best = (val, lam, merged)
        _, lam, merged = best
        acc = {t: accuracy(merged, t, 100) for t in new_tasks}
        kept = {t: (acc[t] - acc_base[t]) / (acc_ft[t] - acc_base[t]) for t in new_tasks}
        old_acc = sum(accuracy(merged, t, 100) for t in old) / len(old)
        rows.append((name, lam, acc, kept, old_acc))

    print()
    a, b = new_tasks
    print(f"| method | λ | {a} acc | {b} acc | {a} gain kept | {b} gain kept | pretraining tasks acc (base "
          f"{sum(old.values()) / len(old):.3f}) |")
    print("|---|---|---|---|---|---|---|")
    for name, lam, acc, kept, old_acc in rows:
        print(f"| {name} | {lam:g} | {acc[a]:.3f} | {acc[b]:.3f} | {kept[a]:.0%} | {kept[b]:.0%} | {old_acc:.3f} |")
    print(f"\n(base: {a} {acc_base[a]:.3f}, {b} {acc_base[b]:.3f}; fine-tunes: "
          f"{a} {acc_ft[a]:.3f}, {b} {acc_ft[b]:.3f}; total {time.time() - t0:.0f} s)")
    name, _, _, kept, _ = max(rows, key=lambda r: min(r[3].values()))
    print(f"worst kept fraction of the best method {min(kept.values()):.2f} ({name})")


if __name__ == "__main__":
    main()
