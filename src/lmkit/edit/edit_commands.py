"""`lmkit edit` and `lmkit edit-facts`: rewrite facts in a Hugging Face-format checkpoint.

    lmkit edit MODEL_DIR --method rome --prompt "The capital of {} is" --subject Zarnia --target Quell -o OUT
    lmkit edit MODEL_DIR --method memit --facts facts.jsonl --n-edits 10 -o OUT     (edits + CounterFact scores)
    lmkit edit-facts OUT_DIR [--subjects 400] [--train]     (a synthetic facts world, and a model that knows it)

ROME, MEMIT and FT-L change the weights and save a checkpoint (`transformers` loads it); GRACE keeps
the weights and writes its codebook (grace.safetensors + grace.json) beside a copy of the model.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import click

from lmkit.edit.edit_settings import BENCH_SETTINGS as BENCH
from lmkit.edit.facts import paragraphs_of

METHODS = ("rome", "memit", "ft", "grace")


def _generic_text(stats_text: str | None, records: list[dict]) -> list[str]:
    """Text for the key statistics: the --stats-text file's lines, else the facts file's statements."""
    if stats_text:
        return [l for l in Path(stats_text).read_text(encoding="utf-8").splitlines() if l.strip()]
    out = []
    for r in records:
        rw = r["requested_rewrite"]
        true = rw.get("target_true")
        true = true.get("str") if isinstance(true, dict) else true
        for p in [rw["prompt"].format(rw["subject"])] + r.get("paraphrase_prompts", []) + r.get("essence_prompts", []):
            out.append(p + (f" {true}." if true and p.endswith(tuple(r.get("paraphrase_prompts", [])) + (rw["prompt"].format(rw["subject"]),)) else ""))
    return out


def _second_moments(model, tok, texts: list[str], layers: list[int]):
    import torch

    from lmkit.edit.key_statistics import key_second_moment

    if not texts:
        click.echo("no --stats-text or --facts: the key covariance is the identity (a minimum-norm update)", err=True)
        d = model.layers[layers[0]].mlp.down_proj.in_features
        return {l: torch.eye(d, dtype=torch.float64) for l in layers}
    return key_second_moment(model, tok, texts, layers)


def _save(model, tok, src: Path, out: Path) -> None:
    from lmkit.hub import save_pretrained

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).is_file() and src.resolve() != out.resolve():
            shutil.copyfile(src / name, out / name)
    save_pretrained(model, out, tokenizer=tok if hasattr(tok, "save_hf_json") else None)


@click.command("edit")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="rome", show_default=True)
@click.option("--prompt", default=None, help='the fact\'s prompt with {} for the subject, e.g. "The capital of {} is"')
@click.option("--subject", default=None)
@click.option("--target", default=None, help="the new object")
@click.option("--facts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CounterFact-shaped JSON lines: edit them and report efficacy, paraphrase, neighbourhood")
@click.option("--n-edits", type=click.IntRange(1), default=None, help="how many facts of --facts (distinct subjects)")
@click.option("--layer", type=click.IntRange(0), default=None, help="layer to edit (default: causal tracing picks it)")
@click.option("--layers", default=None,
              help="MEMIT's layers, comma-separated (default: from the traced layer up to the last whose hidden state "
                   "at the subject carries the fact; with --layer: it and the next two)")
@click.option("--stats-text", type=click.Path(exists=True, dir_okay=False), default=None,
              help="generic text, one passage a line, for the key covariance (default: the facts' statements)")
@click.option("--generic-paragraphs", type=click.IntRange(0), default=BENCH.generic_paragraphs, show_default=True,
              help="with --facts and no --stats-text: also this many texts of 6 random statements "
                   "for the key covariance")
@click.option("--clamp", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"ROME/MEMIT: |delta| <= clamp x |h| for the target vector (default: ROME {BENCH.rome_clamp}, "
                   f"MEMIT {BENCH.clamp})")
@click.option("--stop-nll", type=click.FloatRange(min=0), default=None,
              help=f"ROME/MEMIT: stop optimising the target once its NLL is below "
                   f"(default: ROME {BENCH.rome_stop_nll}, MEMIT {BENCH.stop_nll})")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=BENCH.weight_decay, show_default=True,
              help="ROME/MEMIT: weight of |delta|^2 / |h|^2 in the target's optimisation")
@click.option("--cov-weight-per-edit", type=click.FloatRange(min=0, min_open=True), default=BENCH.cov_weight_per_edit,
              show_default=True, help="MEMIT: lambda on C per edit (lambda = this x the number of edits)")
@click.option("--memit-keys", type=click.Choice(["split", "mean"]), default=BENCH.memit_keys, show_default=True,
              help="MEMIT: fit the bare prompt's key and the prefixed prompts' mean key apart, or the paper's "
                   "one mean key per fact")
@click.option("--memit-reach-nll", type=click.FloatRange(min=0), default=BENCH.memit_reach_nll, show_default=True,
              help="MEMIT: a fact whose target at the top layer leaves its NLL per token above this is written at "
                   "the lowest layer alone, if its target there reaches the answer better (inf: never)")
@click.option("--keep-weight", type=click.FloatRange(min=0), default=BENCH.keep_weight, show_default=True,
              help="ROME: weight of the earlier edits' keys in a sequence of edits (0: plain ROME)")
@click.option("--keep-max-cosine", type=click.FloatRange(min=-1, max=1), default=BENCH.keep_max_cosine,
              show_default=True, help="ROME: an earlier edit's key whose C^-1-cosine with the new key reaches this "
                                      "is not kept (1: keep every one)")
@click.option("--epsilon", type=float, default=None, help="GRACE's deferral radius (default: 0.1 x the key norm)")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None, help="where to save the edited model")
@click.option("--seed", type=int, default=0, show_default=True)
def edit_command(model_dir, method, prompt, subject, target, facts, n_edits, layer, layers, stats_text,
                 generic_paragraphs, clamp, stop_nll, weight_decay, cov_weight_per_edit, memit_keys, memit_reach_nll,
                 keep_weight, keep_max_cosine, epsilon, out, seed):
    """Rewrite facts in MODEL_DIR (ROME, MEMIT, FT-L or a GRACE codebook) and show the effect.

    ROME and MEMIT use the settings bench/bench_editing.py measured (lmkit.edit.edit_settings)."""
    import torch

    from lmkit.edit.causal_tracing import layer_to_edit, layers_to_spread, trace_fact
    from lmkit.edit.facts import distinct_subject_records, read_records
    from lmkit.edit.target_vector import EditRequest
    from lmkit.errors import ConfigError
    from lmkit.hub import load_pretrained
    from lmkit.infer.generate import generate_text
    from lmkit.tokenizers.loading import load_tokenizer

    torch.manual_seed(seed)
    if facts:
        all_records = read_records(facts)
        records = distinct_subject_records(all_records, n_edits or 1, seed=seed) if n_edits else all_records
        requests = [EditRequest.from_record(r) for r in records]
    else:
        if not (prompt and subject and target):
            raise ConfigError("give --prompt, --subject and --target (one fact), or --facts FILE")
        all_records, records = [], []
        requests = [EditRequest(prompt, subject, target)]
    src = Path(model_dir)
    model = load_pretrained(src).float()
    tok = load_tokenizer(src)
    traced = []
    if layer is None:
        traced = [trace_fact(model, tok, r.prompt, r.subject, r.target_true) for r in requests[:10] if r.target_true]
        if not traced:  # no known answer to trace: the model's own greedy answer
            r = requests[0]
            answer = generate_text(model, tok, r.prompt.format(r.subject), max_new_tokens=3).split()
            traced = [trace_fact(model, tok, r.prompt, r.subject, answer[0])] if answer else []
        layer = layer_to_edit(traced) if traced else 0
        click.echo(f"causal tracing: editing layer {layer}")
    texts = _generic_text(stats_text, all_records)
    prefixes = random.Random(seed).sample(texts, min(5, len(texts)))
    if not stats_text:  # statements read after other statements, as the prefixed prompts are
        texts = texts + paragraphs_of([t for t in texts if t.endswith(".")], generic_paragraphs, seed=seed)
    settings = replace(BENCH, clamp=clamp or BENCH.clamp, rome_clamp=clamp or BENCH.rome_clamp,
                       stop_nll=BENCH.stop_nll if stop_nll is None else stop_nll,
                       rome_stop_nll=BENCH.rome_stop_nll if stop_nll is None else stop_nll,
                       weight_decay=weight_decay, cov_weight_per_edit=cov_weight_per_edit, memit_keys=memit_keys,
                       memit_reach_nll=memit_reach_nll,
                       keep_weight=keep_weight, keep_max_cosine=keep_max_cosine)
    before = None
    if records:
        from lmkit.edit.metrics import edit_scores

        before = edit_scores(model, tok, records)
    editor = None
    if method == "rome":
        from lmkit.edit.rome import apply_rome_sequence

        cov = _second_moments(model, tok, texts, [layer])[layer]
        apply_rome_sequence(model, tok, requests, cov, prefixes, settings.rome_config(layer), settings.keep_weight,
                            settings.keep_max_cosine)
    elif method == "memit":
        from lmkit.edit.memit import apply_memit

        if layers:
            chosen = [int(x) for x in layers.split(",")]
        else:  # as the benchmark: the layers whose hidden state at the subject still carries the fact
            chosen = layers_to_spread(traced, BENCH.spread_fraction) if traced else list(range(layer, min(layer + 3, len(model.layers))))
            click.echo(f"MEMIT layers {chosen}")
        apply_memit(model, tok, requests, _second_moments(model, tok, texts, chosen), prefixes,
                    settings.memit_config(chosen, len(requests)))
    elif method == "ft":
        from lmkit.edit.ft_l import FineTuneConfig, apply_ft_l

        apply_ft_l(model, tok, requests, FineTuneConfig(layer=layer))
    else:
        from lmkit.edit.grace import GraceEditor

        if epsilon is None:
            epsilon = 0.1 * float(model.embed_tokens.weight.detach().norm(dim=-1).mean())
        editor = GraceEditor(model, layer, epsilon).attach()
        for r in requests:
            editor.add(tok, r)
    for r in requests[:5]:
        text = r.prompt.format(r.subject)
        click.echo(f"{text} ->{generate_text(model, tok, text, max_new_tokens=8)}")
    if records:
        from lmkit.edit.metrics import edit_scores

        after = edit_scores(model, tok, records)
        click.echo(json.dumps({"method": method, "layer": layer, "edits": len(records), "before": before.as_dict(),
                               "after": after.as_dict()}))
    if out:
        out = Path(out)
        if editor is not None:
            from safetensors.torch import save_file

            editor.detach()
            _save(model, tok, src, out)
            save_file(editor.state_dict(), str(out / "grace.safetensors"))
            (out / "grace.json").write_text(json.dumps({"layer": layer, "epsilon": epsilon}) + "\n", encoding="utf-8")
        else:
            _save(model, tok, src, out)
        click.echo(f"saved to {out}")


@click.command("edit-facts")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--subjects", type=click.IntRange(2), default=400, show_default=True, help="invented lands (2 facts each)")
@click.option("--name-words", type=click.IntRange(1, 2), default=1, show_default=True,
              help="words in a land's name (2: each word shared by a few lands; docs/editing.md)")
@click.option("--train/--no-train", default=False, help="also train a small model that knows the facts (minutes)")
@click.option("--steps", type=click.IntRange(1), default=None, help="training steps (default: FactsModelConfig's)")
@click.option("--seed", type=int, default=0, show_default=True)
def edit_facts_command(out_dir, subjects, name_words, train, steps, seed):
    """Write a synthetic facts world as CounterFact records (facts.jsonl), optionally with a model that knows it."""
    from lmkit.edit.facts import counterfact_records, make_world, write_records

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(subjects, seed=seed, name_words=name_words)
    write_records(counterfact_records(world, seed=seed), out / "facts.jsonl")
    click.echo(f"{len(world.facts)} facts -> {out / 'facts.jsonl'}")
    if train:
        from lmkit.edit.facts_model import FactsModelConfig, train_facts_model
        from lmkit.hub import save_pretrained

        model, tok = train_facts_model(world, FactsModelConfig(seed=seed, **({"steps": steps} if steps else {})), progress=True)
        save_pretrained(model, out / "model", tokenizer=tok)
        click.echo(f"model -> {out / 'model'}")


COMMANDS = [edit_command, edit_facts_command]
