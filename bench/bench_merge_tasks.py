"""Model merging on two tasks: how much of each fine-tune's gain a merged model keeps.

A tiny Llama-style DecoderLM (lmkit, 1 thread, a few minutes) is pretrained on synthetic
sequence tasks over digits, each with its own marker token (copy, add one, reverse, sort):

    [task] x1 .. x6 [=] y1 .. y6        loss and accuracy on the y tokens only

The two tasks fine-tuned later (reverse then add one; sort descending) are rare in that
mixture (`--rare 50`: 1/202 of the examples each), so the base does them only partly — like a
pretrained LM that a fine-tune sharpens. (With --rare 0 the base never saw them and the
fine-tunes must build new circuits: every merge then keeps < 40 % of each gain at this size.)
Two copies of the base are fine-tuned, one per task, in two ways: full fine-tunes (Adam,
`--ft-lr`, `--ft-steps`) and LoRA fine-tunes (r 8 on every linear layer, `--lora-lr`,
`--lora-steps`; folded into the weights, so their task vectors are the adapters' ΔW = s·B·A,
what `lmkit merge-models --lora-combine delta` merges). Every merge method then combines the
two fine-tunes (one base, two task vectors), and for each task we report the fraction of the
fine-tune's gain over the base that the merged model keeps:

    kept(task) = (acc_merged − acc_base) / (acc_finetuned − acc_base)     (answer-token accuracy)

λ (the scale of the merged task vector) is picked per method from 0.3, 0.4, …, 3.0 on a
validation set (the largest worst-task kept fraction), as the task-arithmetic / TIES / DARE
papers tune it on held-out data; the tables report a separate test set. linear = weight
average (0.5, 0.5), slerp = t 0.5 between the two fine-tunes, soup = uniform soup; DARE runs
with three seeds of its drop masks; "ensemble (logits)" decodes both fine-tunes together
(infer/ensemble.py, logits averaged), which keeps two models instead of merging them.

The fine-tunes' strength matters: long or high-lr fine-tunes move further from the base and
interfere more when added (`--ft-lr 1e-4` keeps < 90 %); see docs/merging.md.

    OMP_NUM_THREADS=1 python3 bench/bench_merge_tasks.py [--quick] [--kinds full lora]

Last lines, per kind: "<kind>: worst kept fraction: task_arithmetic <x>, ties <y>, best <z> (<method>)".
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
from lmkit.infer.ensemble import EnsembleLM  # noqa: E402
from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.models.presets import preset  # noqa: E402
from lmkit.peft.lora import LoraConfig, inject_lora, unload_lora  # noqa: E402

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
LAMBDAS = tuple(round(0.3 + 0.1 * i, 1) for i in range(28))  # 0.3 .. 3.0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
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


def finetune(base: DecoderLM, task: str, kind: str, lr: float, steps: int, seed: int) -> DecoderLM:
    """A full fine-tune, or a LoRA fine-tune folded into the weights (θ_base + s·B·A)."""
    model = copy.deepcopy(base)
    if kind == "full":
        return train(model, [task], steps, lr, seed)
    torch.manual_seed(seed)  # LoRA's A init: the same whatever ran before
    inject_lora(model, LoraConfig(r=8, alpha=16, target_modules=LORA_TARGETS))
    train(model, [task], steps, lr, seed)
    return unload_lora(model, merge=True).eval()


METHODS = [
    ("linear (0.5, 0.5)", dict(method="linear", weights=(0.5, 0.5)), False),
    ("slerp (t 0.5)", dict(method="slerp", t=0.5), False),
    ("soup (uniform)", dict(method="soup"), False),
    ("task_arithmetic", dict(method="task_arithmetic"), True),
    ("ties (density 0.2)", dict(method="ties", density=0.2), True),
    ("ties (density 0.5)", dict(method="ties", density=0.5), True),
] + [(f"{m} (density 0.5, seed {seed})", dict(method=m, density=0.5, seed=seed), True)
     for m in ("dare_linear", "dare_ties") for seed in (0, 1, 2)]  # DARE's random masks: three seeds


def interference(states: list[dict], base_state: dict) -> str:
    """How the two task vectors overlap (what TIES' trimming and sign election act on)."""
    keys = [k for k in base_state if base_state[k].is_floating_point()]
    ta = torch.cat([(states[0][k] - base_state[k]).flatten() for k in keys])
    tb = torch.cat([(states[1][k] - base_state[k]).flatten() for k in keys])
    both = (ta != 0) & (tb != 0)
    conflict = both & (ta.sign() != tb.sign())
    top = ta.abs() >= ta.abs().quantile(0.8)
    won_by_b = (conflict & (tb.abs() > ta.abs())).float().sum() / conflict.float().sum().clamp(min=1)
    return (f"task vectors: {float(both.float().mean()):.0%} of entries changed by both fine-tunes, "
            f"{float(conflict.float().sum() / both.float().sum().clamp(min=1)):.0%} of those with opposite signs "
            f"({float(won_by_b):.0%} of the conflicts won by τ_b, the larger; ‖τ_a‖ {float(ta.norm()):.3f}, "
            f"‖τ_b‖ {float(tb.norm()):.3f}); "
            f"cosine(τ_a, τ_b) {float(torch.nn.functional.cosine_similarity(ta, tb, 0)):.3f}; "
            f"top-20 % entries of τ_a hold {float((ta[top] ** 2).sum() / (ta ** 2).sum()):.0%} of its squared norm")


def kept_fraction(acc: float, base: float, tuned: float) -> float:
    """(acc − base) / (tuned − base): the share of the fine-tune's gain kept."""
    gain = tuned - base
    return (acc - base) / (gain if abs(gain) > 1e-9 else 1e-9)


def compare(kind: str, base: DecoderLM, tuned: dict[str, DecoderLM]) -> tuple[str, dict[str, float]]:
    """Every method on the two fine-tunes; prints the table, returns (kind, worst kept per method)."""
    acc_base = {t: accuracy(base, t, 100) for t in NEW}
    val_base = {t: accuracy(base, t, 200, 500) for t in NEW}
    acc_ft = {t: accuracy(tuned[t], t, 100) for t in NEW}
    val_ft = {t: accuracy(tuned[t], t, 200, 500) for t in NEW}
    old = {t: accuracy(base, t, 100) for t in PRETRAIN}
    print(f"\n## {kind} fine-tunes\ntask       base   fine-tuned   (answer-token accuracy, test set)")
    for t in NEW:
        kept_old = sum(accuracy(tuned[t], o, 100) for o in PRETRAIN) / len(PRETRAIN)
        print(f"{t:9s}  {acc_base[t]:.3f}  {acc_ft[t]:.3f}   (its accuracy on the pretraining tasks: {kept_old:.3f})")
    states = [tuned[t].state_dict() for t in NEW]
    base_state = base.state_dict()
    print(interference(states, base_state))
    rows = []
    for name, kw, uses_base in METHODS:
        best = None
        for lam in (LAMBDAS if uses_base else (1.0,)):
            merged = with_state(base, merge_state_dicts(states, MergeConfig(**kw, lam=lam),
                                                        base_state if uses_base else None))
            val = min(kept_fraction(accuracy(merged, t, 200, 500), val_base[t], val_ft[t]) for t in NEW)
            if best is None or val > best[0]:
                best = (val, lam if uses_base else None, merged)
        rows.append((name, best[1], best[2]))
    rows.append(("ensemble (logits, 2 models)", None, EnsembleLM([tuned[t] for t in NEW], combine="logits").eval()))
    a, b = NEW
    print(f"\n| method | λ | {a} acc | {b} acc | {a} gain kept | {b} gain kept | pretraining tasks acc (base "
          f"{sum(old.values()) / len(old):.3f}) |")
    print("|---|---|---|---|---|---|---|")
    worst = {}
    for name, lam, model in rows:
        acc = {t: accuracy(model, t, 100) for t in NEW}
        kept = {t: kept_fraction(acc[t], acc_base[t], acc_ft[t]) for t in NEW}
        old_acc = sum(accuracy(model, t, 100) for t in old) / len(old)
        worst[name] = min(kept.values())
        lam_text = "–" if lam is None else f"{lam:g}"
        print(f"| {name} | {lam_text} | {acc[a]:.3f} | {acc[b]:.3f} | {kept[a]:.0%} | {kept[b]:.0%} | {old_acc:.3f} |")
    print(f"\n(base: {a} {acc_base[a]:.3f}, {b} {acc_base[b]:.3f}; fine-tunes: {a} {acc_ft[a]:.3f}, {b} {acc_ft[b]:.3f})")
    return kind, worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", choices=("full", "lora"), default=["full", "lora"])
    ap.add_argument("--ft-lr", type=float, default=5e-5, help="full fine-tunes' Adam lr")
    ap.add_argument("--ft-steps", type=int, default=None, help="full fine-tunes' steps (200; --quick 100)")
    ap.add_argument("--lora-lr", type=float, default=3e-4, help="LoRA fine-tunes' Adam lr")
    ap.add_argument("--lora-steps", type=int, default=None, help="LoRA fine-tunes' steps (200; --quick 100)")
    ap.add_argument("--rare", type=int, default=50,
                    help="pretrain on the two new tasks too, each 1/(4N+2) of the mixture (0: never seen)")
    ap.add_argument("--pre-steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pre_steps, ft_steps = (500, 100) if args.quick else (1000, 200)
    pre_steps = args.pre_steps or pre_steps
    settings = {"full": (args.ft_lr, args.ft_steps or ft_steps), "lora": (args.lora_lr, args.lora_steps or ft_steps)}
    t0 = time.time()
    torch.manual_seed(args.seed)
    base = DecoderLM(preset("llama-tiny", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                            d_ff=128, max_seq_len=32))
    mixture = PRETRAIN * args.rare + list(NEW) if args.rare else PRETRAIN
    base = train(base, mixture, pre_steps, 3e-3, seed=1)
    print(f"pretrained the base ({pre_steps} steps) in {time.time() - t0:.0f} s")
    results = []
    for kind in args.kinds:
        lr, steps = settings[kind]
        t1 = time.time()
        tuned = {t: finetune(base, t, kind, lr, steps, seed=2 + i) for i, t in enumerate(NEW)}
        print(f"\n{kind}: two fine-tunes (Adam lr {lr:g}, {steps} steps) in {time.time() - t1:.0f} s")
        results.append(compare(kind, base, tuned))
    print(f"\n(total {time.time() - t0:.0f} s)")
    for kind, worst in results:
        name = max(worst, key=worst.get)
        ties_best = max(worst["ties (density 0.2)"], worst["ties (density 0.5)"])
        print(f"{kind}: worst kept fraction: task_arithmetic {worst['task_arithmetic']:.2f}, ties {ties_best:.2f}, "
              f"best {worst[name]:.2f} ({name})")


if __name__ == "__main__":
    main()
