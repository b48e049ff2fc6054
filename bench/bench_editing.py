"""Model editing on a model trained here to know 800 synthetic facts (lmkit.edit; no peer library).

A Llama-style DecoderLM (d_model 64, 4 layers, d_ff 1024) learns a world of 400 invented lands with a
capital and a language each (lmkit.edit.facts). Causal tracing picks the layer to edit (and MEMIT's
layers: those where the subject's hidden state keeps >= 0.9 of the peak effect); then 1, 10 and 100 facts (distinct
subjects) are rewritten to a false object by ROME (sequential rank-one updates, each keeping the
keys of the edits before it), MEMIT (one batch spread over the traced layers), FT-L
(L∞-constrained fine-tuning of one down_proj) and a GRACE codebook, and each is scored with
CounterFact's measures on the edited records: efficacy, paraphrase, neighbourhood (locality) and
fluency (n-gram entropy of generations). C = E[k kᵀ] comes from the world's statements plus 1000
paragraphs of 6 random statements (~76k tokens). Size 1 is the mean of 20 separate single edits
(`--single-edits`), a larger size one batch (`--draws` averages several independent batches).
GRACE also reports `unchanged`: the fraction of neighbourhood prompts (of subjects not edited)
whose next-token logits are bit-identical to the unedited model's.

    OMP_NUM_THREADS=1 python3 bench/bench_editing.py            # trains the model once (~4 min), then ~5 min
    OMP_NUM_THREADS=1 python3 bench/bench_editing.py --sizes 1,10 --methods rome,grace   # quicker

The trained model is cached in the git-ignored bench/.cache/editing_model (a Hugging Face checkpoint).
Last line: "min over sizes: ROME eff/para/neigh a/b/c  MEMIT a/b/c  GRACE eff/locality a/b".
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmkit.edit.causal_tracing import layer_to_edit, layers_to_spread, trace_fact  # noqa: E402
from lmkit.edit.edit_settings import BENCH_SETTINGS as S  # noqa: E402
from lmkit.edit.edit_settings import EditSettings  # noqa: E402
from lmkit.edit.facts import counterfact_records, distinct_subject_records, make_world  # noqa: E402
from lmkit.edit.facts_model import FactsModelConfig, train_facts_model  # noqa: E402
from lmkit.edit.ft_l import FineTuneConfig, apply_ft_l  # noqa: E402
from lmkit.edit.grace import GraceEditor  # noqa: E402
from lmkit.edit.key_statistics import key_second_moment  # noqa: E402
from lmkit.edit.layer_hooks import block, record_inputs  # noqa: E402
from lmkit.edit.memit import apply_memit  # noqa: E402
from lmkit.edit.metrics import edit_scores  # noqa: E402
from lmkit.edit.prompt_tokens import pad_right  # noqa: E402
from lmkit.edit.rome import apply_rome_sequence  # noqa: E402
from lmkit.edit.target_vector import EditRequest  # noqa: E402
from lmkit.hub import load_pretrained, save_pretrained  # noqa: E402
from lmkit.tokenizers import load_tokenizer  # noqa: E402


def facts_model(world, cache: Path):
    cfg = FactsModelConfig()
    if (cache / "config.json").is_file():  # a cache of another FactsModelConfig (an older world) is retrained
        model = load_pretrained(cache)
        c = model.config
        if (c.d_model, c.n_layers, c.d_ff) == (cfg.d_model, cfg.n_layers, cfg.d_ff):
            return model, load_tokenizer(cache)
        print(f"cached model {cache} is not FactsModelConfig()'s shape: retraining", flush=True)
    t = time.time()
    model, tok = train_facts_model(world, cfg, progress=True)
    print(f"trained the facts model in {time.time() - t:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, cache, tokenizer=tok)
    return model, tok


@torch.no_grad()
def last_token_keys(model, tok, layer: int, prompts: list[str]) -> torch.Tensor:
    ids = [tok.encode(p) for p in prompts]
    with record_inputs(block(model, layer)) as seen:
        model(pad_right(ids))
    return seen[0][torch.arange(len(ids)), torch.tensor([len(i) - 1 for i in ids])]


def grace_epsilon(model, tok, layer: int, records: list[dict]) -> float:
    """Half the smallest distance between a rewrite prompt's key and its neighbours' keys."""
    rw = [r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]) for r in records]
    keys = last_token_keys(model, tok, layer, rw)
    dists = []
    for key, r in zip(keys, records):
        nk = last_token_keys(model, tok, layer, r["neighborhood_prompts"])
        dists.append((nk - key).norm(dim=-1).min())
    return 0.5 * float(torch.stack(dists).min())


@torch.no_grad()
def unchanged_rate(model, edited_model, tok, records) -> float:
    edited = [r["requested_rewrite"]["subject"] for r in records]  # as edit_scores: edited neighbours left out
    prompts = [p for r in records for p in r["neighborhood_prompts"] if not any(s in p for s in edited)]
    ids = pad_right([tok.encode(p) for p in prompts])
    last = torch.tensor([len(tok.encode(p)) - 1 for p in prompts])
    a = model(ids).logits[torch.arange(len(prompts)), last]
    b = edited_model(ids).logits[torch.arange(len(prompts)), last]
    return float((a == b).all(-1).float().mean())


def run(method: str, base, tok, records, ctx) -> dict:
    model = copy.deepcopy(base)
    reqs = [EditRequest.from_record(r) for r in records]
    extra = {}
    if method == "rome":  # sequential: each update also keeps the keys of the edits before it
        settings = ctx["settings"]
        apply_rome_sequence(model, tok, reqs, ctx["C"][ctx["layer"]], ctx["prefixes"],
                            settings.rome_config(ctx["layer"]), settings.keep_weight, settings.keep_max_cosine)
    elif method == "memit":
        apply_memit(model, tok, reqs, ctx["C"], ctx["prefixes"],
                    ctx["settings"].memit_config(ctx["memit_layers"], len(reqs)))
    elif method == "ft":
        apply_ft_l(model, tok, reqs, FineTuneConfig(layer=ctx["layer"]))
    elif method == "grace":
        editor = GraceEditor(model, ctx["grace_layer"], ctx["epsilon"]).attach()
        for r in reqs:
            editor.add(tok, r)
        extra["unchanged"] = unchanged_rate(base, model, tok, records)
    scores = edit_scores(model, tok, records, with_fluency=True).as_dict()
    return {**scores, **extra}


def mean_rows(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--methods", default="rome,memit,ft,grace")
    ap.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "editing_model"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-edits", type=int, default=20, help="size 1 is the mean of this many separate edits")
    ap.add_argument("--draws", type=int, default=1,
                    help="each size above 1 is the mean of this many independent batches of that size")
    ap.add_argument("--generic-paragraphs", type=int, default=S.generic_paragraphs,
                    help="texts of 6 random statements for C")
    ap.add_argument("--clamp", type=float, default=S.clamp, help="MEMIT: |delta| <= clamp * |h| for its targets z")
    ap.add_argument("--rome-clamp", type=float, default=S.rome_clamp, help="ROME: |delta| <= clamp * |h| for v*")
    ap.add_argument("--weight-decay", type=float, default=S.weight_decay, help="weight of |delta|^2 / |h|^2")
    ap.add_argument("--stop-nll", type=float, default=S.stop_nll,
                    help="MEMIT: stop optimising z once the target's NLL is below")
    ap.add_argument("--rome-stop-nll", type=float, default=S.rome_stop_nll, help="ROME: the same for v*")
    ap.add_argument("--bare-weight", type=float, default=S.bare_weight,
                    help="the bare prompt's share of the target's NLL (default: an equal share with each prefix)")
    ap.add_argument("--cov-weight-per-edit", type=float, default=S.cov_weight_per_edit,
                    help="MEMIT's lambda on C, per edit: K Kᵀ grows with the batch, so lambda does too")
    ap.add_argument("--memit-keys", choices=("split", "mean"), default=S.memit_keys,
                    help="MEMIT: the bare prompt's key and the prefixed prompts' mean key apart, or the paper's "
                         "one mean key per fact")
    ap.add_argument("--memit-reach-nll", type=float, default=S.memit_reach_nll,
                    help="MEMIT: a fact whose target at the top layer leaves its NLL above this is written at the "
                         "lowest layer alone, if its target there reaches the answer better (inf: never)")
    ap.add_argument("--keep-weight", type=float, default=S.keep_weight,
                    help="sequential ROME: weight of earlier edits' keys")
    ap.add_argument("--keep-max-cosine", type=float, default=S.keep_max_cosine,
                    help="sequential ROME: an earlier key this close to the new one (C^-1-cosine) is not kept")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    world = make_world()
    records = counterfact_records(world, seed=args.seed)
    model, tok = facts_model(world, Path(args.cache))
    print(f"world: {len(world.subjects)} subjects, {len(records)} facts; model: {model.num_parameters()} parameters")

    t = time.time()
    traces = [trace_fact(model, tok, r["requested_rewrite"]["prompt"], r["requested_rewrite"]["subject"],
                         r["requested_rewrite"]["target_true"]["str"]) for r in records[:20]]
    effect = torch.stack([tr.mlp_at_subject() for tr in traces]).mean(0)
    layer = layer_to_edit(traces)
    print(f"causal tracing ({time.time() - t:.0f} s): MLP indirect effect at the subject's last token by layer "
          f"{[round(float(e), 3) for e in effect]} -> edit layer {layer}")
    n_layers = len(model.layers)
    generic = world.statements() + world.paragraphs(args.generic_paragraphs, seed=args.seed)
    ctx = {"layer": layer, "memit_layers": layers_to_spread(traces, S.spread_fraction),
           "C": key_second_moment(model, tok, generic, list(range(n_layers))),
           "prefixes": random.Random(args.seed).sample(world.statements(), 5), "grace_layer": 1,
           "settings": EditSettings(clamp=args.clamp, rome_clamp=args.rome_clamp, weight_decay=args.weight_decay,
                                    stop_nll=args.stop_nll, rome_stop_nll=args.rome_stop_nll,
                                    bare_weight=args.bare_weight,
                                    cov_weight_per_edit=args.cov_weight_per_edit, memit_keys=args.memit_keys,
                                    memit_reach_nll=args.memit_reach_nll,
                                    keep_weight=args.keep_weight,
                                    keep_max_cosine=args.keep_max_cosine, generic_paragraphs=args.generic_paragraphs)}
    ctx["epsilon"] = grace_epsilon(model, tok, ctx["grace_layer"], records)
    print(f"C from {sum(len(tok.encode(t)) for t in generic)} tokens; clamp of delta: MEMIT {args.clamp}, ROME "
          f"{args.rome_clamp} x |h|; weight decay "
          f"{args.weight_decay}; stop at NLL: MEMIT {args.stop_nll}, ROME {args.rome_stop_nll}; ROME keeps earlier keys "
          f"with weight {args.keep_weight} below C^-1-cosine {args.keep_max_cosine}; "
          f"MEMIT lambda {args.cov_weight_per_edit} x edits, keys: {args.memit_keys}, reach NLL {args.memit_reach_nll}")
    print(f"MEMIT layers {ctx['memit_layers']}; GRACE at block {ctx['grace_layer']} with epsilon {ctx['epsilon']:.3f}")

    results: dict[tuple[str, int], dict] = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    pre = edit_scores(model, tok, distinct_subject_records(records, max(sizes), seed=args.seed), with_fluency=True)
    print(f"unedited ({max(sizes)} records): {pre.as_dict()}")
    print("| method | edits | efficacy | paraphrase | neighbourhood | fluency | unchanged | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for method in methods:
            t = time.time()
            if n == 1:
                singles = distinct_subject_records(records, args.single_edits, seed=args.seed + 1)
                rows = [run(method, model, tok, [r], ctx) for r in singles]
                row = mean_rows(rows)
            else:  # draw 0 is the batch of a single draw
                batches = [distinct_subject_records(records, n, seed=args.seed + n + 7919 * j)
                           for j in range(args.draws)]
                row = mean_rows([run(method, model, tok, b, ctx) for b in batches])
            results[(method, n)] = row
            unchanged = f"{row['unchanged']:.3f}" if "unchanged" in row else ""
            print(f"| {method} | {n} | {row['efficacy']:.3f} | {row['paraphrase']:.3f} | {row['neighbourhood']:.3f} "
                  f"| {row['fluency']:.2f} | {unchanged} | {time.time() - t:.0f} |", flush=True)

    def worst(method, keys):
        rows = [results[(method, n)] for n in sizes if (method, n) in results]
        return "/".join(f"{min(r[k] for r in rows):.2f}" for k in keys) if rows else "-"

    print(f"min over sizes: ROME eff/para/neigh {worst('rome', ('efficacy', 'paraphrase', 'neighbourhood'))}  "
          f"MEMIT {worst('memit', ('efficacy', 'paraphrase', 'neighbourhood'))}  "
          f"GRACE eff/unchanged {worst('grace', ('efficacy', 'unchanged'))}")


if __name__ == "__main__":
    main()
