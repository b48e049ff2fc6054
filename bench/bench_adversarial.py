#!/usr/bin/env python3
"""Adversarial training and domain-adversarial training on a small lmkit text classifier (issue 21).

Task: which standard-library package a text comes from, email or asyncio (2 classes), the
same sources `lmkit.corpus` reads. Texts are lower-cased word sequences (identifiers split at
"_"), 24 words at most, over a word vocabulary built here (words seen ≥ 2 times).
Classifier: an lmkit EncoderLM (d_model 32, 1 layer, 2 heads, learned positions, post-norm)
with mean pooling and a linear head (peft/probing.py's SequenceClassifier), trained by
lmkit's Trainer (AdamW, lr 2e-3, batch 32, fp32, 1 thread), the same for every arm.

Part 1, robustness. Source: sentences (≥ 8 words) of the packages' docstrings; 70/30 split.
Arms (400 steps each, every arm on the same seeds: seed s sets the initial weights and the
batch order): plain training; FGM (ε 0.3); PGD (ε 0.3, α 0.15, 3 steps); FreeLB (ε 0.3,
α 0.1, 3 steps); substitution-aware training (train/substitution_adversary.py: PGD in the
convex hull of each word's substitution set, α 2, 5 steps). Measured on the test split:
clean accuracy; accuracy under embedding PGD (10 steps) with an absolute radius ε 0.2 and
with a relative one (0.3 × the example's embedding norm); accuracy under greedy word
substitution (≤ 3 words). The substitution sets: each word's 8 nearest words in a PPMI + SVD
co-occurrence space fitted on every docstring of the standard library (unlabelled text, no
model involved), so the attack is the same for every arm and seed and sees none of the
training randomness; substitution-aware training trains against those same sets (the threat
model is known to the defender, as in ASCC / certified-robustness work). A second
substitution attack draws from each word's next 8 neighbours (ranks 9-16), a set disjoint
from the one trained on: does the robustness carry over to substitutes never trained on?

Part 2, DANN. Source domain (labelled): docstring sentences (85 % for training, 15 % held out
to show the in-domain accuracy; --holdout 0 trains on all of them); target domain (unlabelled in training, labelled for the
test): code lines of the same packages (identifiers and comments, ≥ 6 words), classes
balanced in both. Source-only training vs DANN (gradient reversal with the paper's λ ramp to
λ_max 0.5, a domain classifier of 2 hidden layers of 256 on the pooled features the label head
uses), 600 steps, over 5 seeds; and a classifier trained on labelled target rows (the upper
bound). Part 2 builds its vocabulary from the source texts only.

    OMP_NUM_THREADS=1 python3 bench/bench_adversarial.py [--quick] [--part 1|2|all] [--seeds N]

Last line: accuracy under word substitution, substitution-aware / plain training (means).
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import statistics
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import torch

from lmkit.eval.adversarial_attack import pgd_attack, word_substitution_attack
from lmkit.models.config import ModelConfig
from lmkit.models.encoder import EncoderLM
from lmkit.peft.probing import SequenceClassifier
from lmkit.train.config import TrainConfig
from lmkit.train.domain_adversarial import DomainAdversarial
from lmkit.train.trainer import Trainer

PACKAGES = ("email", "asyncio")
MAX_LEN = 24
_WORD = re.compile(r"[a-z]+")
PAD, UNK = 0, 1
EPS = 0.3  # training perturbation radius (L2, per example)
ATTACK_EPS, ATTACK_REL, SUB_WORDS, SUB_K = 0.2, 0.3, 3, 8  # PGD radius; relative radius (x ‖e‖₂); words; substitutes
DANN_LAMBDA, DANN_HIDDEN, DANN_LAYERS = 0.5, 256, 2  # λ_max of the gradient reversal; domain classifier


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("_", " "))


def stdlib_docstring_sentences(skip: tuple[str, ...] = ("test", "tests", "idle_test", "site-packages")) -> list[list[str]]:
    """Every docstring sentence (≥ 3 words) of the whole standard library, as word lists: the
    unlabelled text the substitution sets are fitted on."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if any(p in skip for p in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sent in re.split(r"(?<=[.!?])\s+", " ".join((ast.get_docstring(node) or "").split())):
                    w = words(sent)
                    if len(w) >= 3:
                        out.append(w)
    return out


def cooccurrence_neighbours(texts: list[list[str]], vocab: "Vocab", k: int = 8, window: int = 3, dims: int = 64,
                            min_count: int = 5) -> dict[int, list[int]]:
    """{id: ids of its k nearest words}: cosine in a PPMI + SVD co-occurrence space (±window words)
    fitted on `texts`. A stand-in for the counter-fitted word vectors that TextFooler-style
    attacks draw synonyms from: it knows nothing of the labels or of any trained model, so the
    attack is the same for every model and sees none of their training randomness. Words seen
    fewer than min_count times get no substitutes."""
    counts = Counter(w for t in texts for w in t)
    rows = [i for i, w in enumerate(vocab.words) if counts[w] >= min_count]
    row_of = {vocab.words[i]: r for r, i in enumerate(rows)}
    context = {w: c for c, (w, _) in enumerate(counts.most_common(5000))}
    # every sentence's words as (row, context) ids, −1 where none; `window` blanks between sentences
    flat_r, flat_c = [], []
    for t in texts:
        flat_r += [row_of.get(w, -1) for w in t] + [-1] * window
        flat_c += [context.get(w, -1) for w in t] + [-1] * window
    r_ids, c_ids = torch.tensor(flat_r), torch.tensor(flat_c)
    m = torch.zeros(len(rows) * len(context), dtype=torch.float64)
    for d in range(1, window + 1):  # the pairs d words apart, both ways
        for a, b in ((r_ids[:-d], c_ids[d:]), (r_ids[d:], c_ids[:-d])):
            keep = (a >= 0) & (b >= 0)
            m.index_add_(0, a[keep] * len(context) + b[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    m = m.view(len(rows), len(context))
    total = m.sum()
    pmi = torch.log(m * total / (m.sum(1, keepdim=True) * m.sum(0, keepdim=True)).clamp(min=1e-12)).clamp(min=0.0)
    pmi[m == 0] = 0.0
    pmi = pmi.float()
    s2, u = torch.linalg.eigh(pmi @ pmi.T)  # the SVD's U and S² from the (rows x rows) Gram matrix: fast
    u, s = u[:, -dims:], s2[-dims:].clamp(min=0.0).sqrt()
    vec = torch.nn.functional.normalize(u * s.sqrt(), dim=-1)
    sim = vec @ vec.T
    sim.fill_diagonal_(-2.0)
    top = sim.topk(k, dim=-1).indices
    return {rows[r]: [rows[j] for j in top[r].tolist()] for r in range(len(rows))}


def package_texts(pkg: str) -> tuple[list[list[str]], list[list[str]]]:
    """(docstring sentences, code lines) of one standard-library package, as word lists."""
    root = Path(sysconfig.get_paths()["stdlib"]) / pkg
    docs, code, seen = [], [], set()
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        doc_lines = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                body = getattr(node, "body", [])
                if doc and body and isinstance(body[0], ast.Expr):
                    doc_lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
                for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    w = words(sent)
                    if len(w) >= 8 and sent not in seen:
                        seen.add(sent)
                        docs.append(w[:MAX_LEN])
        for i, line in enumerate(source.splitlines(), 1):
            w = words(line)
            if i not in doc_lines and len(w) >= 6 and line.strip() not in seen:
                seen.add(line.strip())
                code.append(w[:MAX_LEN])
    return docs, code


class Vocab:
    def __init__(self, texts: list[list[str]], min_count: int = 2) -> None:
        counts = Counter(w for t in texts for w in t)
        self.words = ["[pad]", "[unk]"] + sorted(w for w, c in counts.items() if c >= min_count)
        self.index = {w: i for i, w in enumerate(self.words)}

    def encode(self, texts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), MAX_LEN), PAD)
        for i, t in enumerate(texts):
            row = [self.index.get(w, UNK) for w in t]
            ids[i, :len(row)] = torch.tensor(row)
        return ids, (ids != PAD).long()


def classifier(vocab_size: int, seed: int) -> SequenceClassifier:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="encoder", vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                      max_seq_len=MAX_LEN, norm="layernorm", norm_position="post", position="learned",
                      gated_ffn=False, activation="gelu", type_vocab_size=0, pad_token_id=PAD)
    return SequenceClassifier(EncoderLM(cfg, heads=()), num_labels=2, pooling="mean")


class Batches:
    """Endless-epoch iterable of shuffled batches (a fixed seed: every arm sees the same order)."""

    def __init__(self, tensors: dict[str, torch.Tensor], size: int, seed: int) -> None:
        self.tensors, self.size, self.rng = tensors, size, random.Random(seed)

    def __iter__(self):
        n = len(next(iter(self.tensors.values())))
        order = list(range(n))
        self.rng.shuffle(order)
        for s in range(0, n - self.size + 1, self.size):
            idx = torch.tensor(order[s:s + self.size])
            yield {k: v[idx] for k, v in self.tensors.items()}


def train(model, data, steps: int, out: str, seed: int = 0, substitutions=None, **adv) -> float:
    cfg = TrainConfig(max_steps=steps, lr=2e-3, warmup_steps=20, shift_labels=False, precision="fp32", compile=False,
                      progress=False, out_dir=out, seed=seed, **adv)
    t0 = time.process_time()  # CPU seconds of this one-thread process: robust to a busy machine
    Trainer(model, cfg, data, substitutions=substitutions).train()
    return time.process_time() - t0


@torch.no_grad()
def accuracy(model, ids, mask, labels) -> float:
    model.eval()
    return float((model(ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean())


def split(items: list, frac: float, seed: int) -> tuple[list, list]:
    items = items[:]
    random.Random(seed).shuffle(items)
    k = int(len(items) * frac)
    return items[:k], items[k:]


def mean_sd(xs: list[float]) -> str:
    if any(x != x for x in xs):  # nan: nothing was measured
        return "n/a"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps, examples and seeds (a smoke run)")
    ap.add_argument("--out", default="/tmp/lmkit-bench-adversarial")
    ap.add_argument("--part", choices=["1", "2", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=0, help="seeds per arm (default: part 1 four, part 2 five)")
    ap.add_argument("--holdout", type=float, default=0.15,
                    help="part 2: share of the source rows held out for the in-domain test (0: train on all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = {pkg: package_texts(pkg) for pkg in PACKAGES}
    print(", ".join(f"{p}: {len(d)} docstring sentences, {len(c)} code lines" for p, (d, c) in data.items()))
    n = min(len(data[p][0]) for p in PACKAGES)  # balanced classes
    if args.part in ("1", "all"):
        robustness(args, data, n, 60 if args.quick else 400, 1 if args.quick else (args.seeds or 4))
    if args.part in ("2", "all"):
        domain_adaptation(args, data, n, 80 if args.quick else 600, 1 if args.quick else (args.seeds or 5))


ARMS = {"plain": {}, "fgm": dict(adversarial="fgm", adv_epsilon=EPS),
        "pgd": dict(adversarial="pgd", adv_epsilon=EPS, adv_alpha=EPS / 2, adv_steps=3),
        "freelb": dict(adversarial="freelb", adv_epsilon=EPS, adv_alpha=EPS / 3, adv_steps=3),
        "substitution": dict(adversarial="substitution", adv_alpha=2.0, adv_steps=5)}


def robustness(args, data, n, steps, seeds) -> None:
    """Part 1: plain vs adversarial training, clean and attacked accuracy, over seeds."""
    vocab = Vocab([t for d, c in data.values() for t in d + c])
    t0 = time.perf_counter()
    ranked = cooccurrence_neighbours(stdlib_docstring_sentences(), vocab, k=2 * SUB_K)
    substitutes = {i: v[:SUB_K] for i, v in ranked.items()}  # the threat model: trained against, attacked with
    unseen = {i: v[SUB_K:] for i, v in ranked.items()}  # the next SUB_K words: a disjoint set no arm trains on
    print(f"part 1: vocabulary {len(vocab.words)} words, {len(substitutes)} with {SUB_K} substitutes "
          f"({time.perf_counter() - t0:.0f} s); e.g. " + "; ".join(
              f"{w} → {', '.join(vocab.words[j] for j in substitutes[vocab.index[w]][:4])}"
              for w in ("message", "loop", "returns") if vocab.index.get(w) in substitutes))
    train_rows, test_rows = [], []
    for label, pkg in enumerate(PACKAGES):
        tr, te = split(random.Random(label).sample(data[pkg][0], n), 0.7, seed=label)
        train_rows += [(t, label) for t in tr]
        test_rows += [(t, label) for t in te]
    if args.quick:
        test_rows = random.Random(0).sample(test_rows, 100)
    ids, mask = vocab.encode([t for t, _ in train_rows])
    labels = torch.tensor([y for _, y in train_rows])
    tids, tmask = vocab.encode([t for t, _ in test_rows])
    tlabels = torch.tensor([y for _, y in test_rows])
    print(f"  {len(train_rows)} training and {len(test_rows)} test sentences, {seeds} seed(s) per arm")
    results = {name: {k: [] for k in ("clean", "pgd", "rel", "sub", "unseen", "secs")} for name in ARMS}
    for seed in range(seeds):
        for name, adv in ARMS.items():
            model = classifier(len(vocab.words), seed)
            secs = train(model, Batches({"input_ids": ids, "attention_mask": mask, "labels": labels}, 32, seed), steps,
                         f"{args.out}/{name}", seed=seed,
                         substitutions=substitutes if adv.get("adversarial") == "substitution" else None, **adv)
            pgd = pgd_attack(model, tids, tlabels, tmask, epsilon=ATTACK_EPS, steps=10)
            rel = pgd_attack(model, tids, tlabels, tmask, epsilon=ATTACK_REL, steps=10, relative=True)
            sub = word_substitution_attack(model, tids, tlabels, substitutes, tmask, max_changes=SUB_WORDS,
                                           protected=[PAD, UNK])
            other = word_substitution_attack(model, tids, tlabels, unseen, tmask, max_changes=SUB_WORDS,
                                             protected=[PAD, UNK])
            r = dict(clean=pgd.clean_accuracy, pgd=pgd.attacked_accuracy, rel=rel.attacked_accuracy,
                     sub=sub.attacked_accuracy, unseen=other.attacked_accuracy, secs=secs)
            for k, v in r.items():
                results[name][k].append(v)
            print(f"  seed {seed} {name:12s} clean {r['clean']:.3f}  PGD {r['pgd']:.3f}  PGD-relative {r['rel']:.3f}  "
                  f"word substitution {r['sub']:.3f}  (unseen sets {r['unseen']:.3f})  (train {secs:.1f} CPU s)", flush=True)
    print(f"  mean ± sd over {seeds} seed(s):")
    base = results["plain"]
    for name, r in results.items():
        line = (f"  {name:12s} clean {mean_sd(r['clean'])}  PGD {mean_sd(r['pgd'])}  PGD-relative {mean_sd(r['rel'])}  "
                f"word substitution {mean_sd(r['sub'])} (unseen sets {mean_sd(r['unseen'])})  "
                f"train {statistics.mean(r['secs']):.1f} CPU s")
        if name != "plain":
            diff = {k: [a - b for a, b in zip(r[k], base[k])] for k in ("clean", "pgd", "rel", "sub", "unseen")}
            line += (f"\n  {'':12s} vs plain (paired by seed): clean {mean_sd(diff['clean'])}, PGD {mean_sd(diff['pgd'])}, "
                     f"PGD-relative {mean_sd(diff['rel'])}, substitution {mean_sd(diff['sub'])} "
                     f"(unseen sets {mean_sd(diff['unseen'])}); "
                     f"time x{statistics.mean(r['secs']) / statistics.mean(base['secs']):.1f}")
        print(line)
    print(f"{statistics.mean(results['substitution']['sub']) / max(statistics.mean(base['sub']), 1e-9):.3f}")


def domain_adaptation(args, data, n, dann_steps, seeds) -> None:
    """Part 2: source-only vs DANN, accuracy on the target domain, over seeds."""
    src_rows, tgt_rows = [], []
    m = min(len(data[p][1]) for p in PACKAGES)
    for label, pkg in enumerate(PACKAGES):
        src_rows += [(t, label) for t in random.Random(label).sample(data[pkg][0], n)]
        tgt_rows += [(t, label) for t in random.Random(label).sample(data[pkg][1], m)]
    src_train, src_test = split(src_rows, 1.0 - args.holdout, seed=5) if args.holdout > 0 else (src_rows, src_rows[:0])
    tgt_train, tgt_test = split(tgt_rows, 0.5, seed=7)
    # the vocabulary of the labelled source only (target-only words are [unk]): a word seen only
    # in the target would be trained by nothing but the reversed domain gradient, which drives
    # it without bound (measured: DANN then predicts one class on the target)
    vocab = Vocab([t for t, _ in src_train])
    if args.quick:
        tgt_test = tgt_test[:200]
    sids, smask = vocab.encode([t for t, _ in src_train])
    slabels = torch.tensor([y for _, y in src_train])
    hids, hmask = vocab.encode([t for t, _ in src_test])
    hlabels = torch.tensor([y for _, y in src_test], dtype=torch.long)
    gids, gmask = vocab.encode([t for t, _ in tgt_train])
    glabels = torch.tensor([y for _, y in tgt_train])
    eids, emask = vocab.encode([t for t, _ in tgt_test])
    elabels = torch.tensor([y for _, y in tgt_test])
    k = min(len(sids), len(gids))  # equal source and target rows in every batch
    mixed = {"input_ids": torch.cat([sids[:k], gids[:k]]), "attention_mask": torch.cat([smask[:k], gmask[:k]]),
             "labels": torch.cat([slabels[:k], torch.full((k,), -100)]),
             "domain_labels": torch.cat([torch.zeros(k, dtype=torch.long), torch.ones(k, dtype=torch.long)])}
    unk = lambda i, mk: float((i == UNK).sum() / mk.sum())  # noqa: E731
    print(f"part 2: {k} source + {k} unlabelled target rows for training; test: {len(src_test)} source rows (in-domain), "
          f"{len(tgt_test)} target rows; share of class 1: source {float(slabels.float().mean()):.3f}, target "
          f"{float(elabels.float().mean()):.3f}; [unk] share: source {unk(hids, hmask):.3f}, target {unk(eids, emask):.3f}")
    res = {k_: [] for k_ in ("src_in", "src", "dann_in", "dann", "oracle", "domain_acc")}
    for seed in range(seeds):
        plain = classifier(len(vocab.words), seed)
        src_only = {"input_ids": sids[:k], "attention_mask": smask[:k], "labels": slabels[:k]}
        train(plain, Batches(src_only, 32, seed), dann_steps, f"{args.out}/src{seed}", seed=seed)
        dann = DomainAdversarial(classifier(len(vocab.words), seed), d_features=32, lam_max=DANN_LAMBDA,
                                 hidden=DANN_HIDDEN, layers=DANN_LAYERS)
        train(dann, Batches(mixed, 64, seed), dann_steps, f"{args.out}/dann{seed}", seed=seed)
        oracle = classifier(len(vocab.words), seed)  # the gap there is to close: trained on labelled target rows
        train(oracle, Batches({"input_ids": gids, "attention_mask": gmask, "labels": glabels}, 32, seed), dann_steps,
              f"{args.out}/oracle{seed}", seed=seed)
        with torch.no_grad():  # how well the domain classifier still tells the domains apart (training rows)
            dann.eval()
            dom = dann.domain_head(dann(mixed["input_ids"], attention_mask=mixed["attention_mask"]).hidden_states)
            res["domain_acc"].append(float((dom.argmax(-1) == mixed["domain_labels"]).float().mean()))
        for key, model, (i, mk, y) in (("src_in", plain, (hids, hmask, hlabels)), ("src", plain, (eids, emask, elabels)),
                                       ("dann_in", dann.model, (hids, hmask, hlabels)),
                                       ("dann", dann.model, (eids, emask, elabels)),
                                       ("oracle", oracle, (eids, emask, elabels))):
            res[key].append(accuracy(model, i, mk, y) if len(y) else float("nan"))
        print(f"  seed {seed}: source-only in-domain {res['src_in'][-1]:.3f}, target {res['src'][-1]:.3f}; DANN in-domain "
              f"{res['dann_in'][-1]:.3f}, target {res['dann'][-1]:.3f}; target-trained {res['oracle'][-1]:.3f}; "
              f"domain classifier accuracy {res['domain_acc'][-1]:.3f}", flush=True)
    gains = [b - a for a, b in zip(res["src"], res["dann"])]
    print(f"  mean ± sd over {seeds} seed(s): source-only in-domain {mean_sd(res['src_in'])}, target {mean_sd(res['src'])}; "
          f"DANN target {mean_sd(res['dann'])} (in-domain {mean_sd(res['dann_in'])}); target-trained {mean_sd(res['oracle'])}")
    print(f"  DANN gain on the target domain (paired by seed): {mean_sd(gains)}, {sum(g > 0 for g in gains)} of {seeds} "
          f"seeds better")


if __name__ == "__main__":
    sys.exit(main())
