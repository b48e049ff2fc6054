"""`lmkit inspect attention|lens|saliency CHECKPOINT --prompt TEXT --out FILE.png|FILE.json`.

The output kind follows the file name: `.png` draws a figure (needs the `plot` extra),
anything else writes a JSON report (atomically). A one-line summary is printed either way.
"""

from __future__ import annotations

import json

import click

from lmkit.cli_grammar import dtype_option


def _load(model_dir: str, tokenizer: str | None, dtype: str):
    from lmkit.errors import LmkitError
    from lmkit.hub.adapter_folder import require_full_checkpoint
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    try:
        require_full_checkpoint(model_dir, "lmkit inspect")
        model = load_pretrained(model_dir, dtype=dtype)
        tok = load_tokenizer(tokenizer or model_dir)
    except (LmkitError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load the model/tokenizer: {exc}") from None
    return model.float().eval() if dtype == "fp32" else model.eval(), tok


def _encode(model, tok, prompt: str):
    import torch

    ids = tok.encode(prompt)
    if not ids:
        raise click.ClickException("the prompt encodes to no tokens")
    limit = model.config.max_seq_len
    if len(ids) > limit:
        raise click.ClickException(f"the prompt is {len(ids)} tokens, longer than the model's context of {limit}")
    return torch.tensor([ids]), [tok.decode([i]) or tok.id_to_token(i) or str(i) for i in ids]  # text, not Ġ marks


def _finish(out: str | None, report: dict, draw) -> None:
    from lmkit.atomic import atomic_write_text

    if out and out.lower().endswith(".png"):
        draw(out)
    elif out:
        atomic_write_text(out, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
    click.echo(json.dumps({**summary, "out": out}, ensure_ascii=False))


def _common(f):
    f = click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))(f)
    f = click.option("--prompt", required=True, help="The text to inspect.")(f)
    f = click.option("--tokenizer", type=click.Path(exists=True), default=None,
                     help="Default: the checkpoint's.")(f)
    f = click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
                     help="FILE.png for a figure, FILE.json for the numbers.")(f)
    return dtype_option(default="fp32")(f)


@click.group("inspect")
def inspect_group() -> None:
    """Look inside a model: attention maps and rollout, logit lens, token saliency."""


@inspect_group.command("attention")
@_common
@click.option("--layer", type=int, default=None, help="Only this layer (default: all).")
@click.option("--head", type=int, default=None, help="Only this head (default: all).")
@click.option("--rollout/--no-rollout", default=True, show_default=True, help="Add attention rollout.")
def inspect_attention(checkpoint, prompt, tokenizer, out, dtype, layer, head, rollout) -> None:
    """Attention probabilities per layer and head (rows: queries, columns: keys)."""
    from lmkit.inspect.attention_maps import attention_maps
    from lmkit.inspect.rollout import attention_rollout

    model, tok = _load(checkpoint, tokenizer, dtype)
    ids, tokens = _encode(model, tok, prompt)
    maps = attention_maps(model, ids)
    n_layers, n_heads = len(maps), maps[0].shape[1]
    for name, value, top in (("--layer", layer, n_layers), ("--head", head, n_heads)):
        if value is not None and not 0 <= value < top:
            raise click.ClickException(f"{name} {value} is out of range: the model has {top}")
    roll = attention_rollout(maps)[0] if rollout else None
    report = {"task": "attention", "layers": n_layers, "heads": n_heads, "tokens": tokens,
              "attentions": [[maps[i][0, h].tolist() for h in range(n_heads) if head in (None, h)]
                             for i in range(n_layers) if layer in (None, i)]}
    if roll is not None:
        report["rollout"] = roll.tolist()

    def draw(path):
        from lmkit.inspect.heatmap import plot_attention

        plot_attention(maps, tokens, path, layer=layer, head=head, rollout=roll)

    _finish(out, report, draw)


@inspect_group.command("lens")
@_common
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
def inspect_lens(checkpoint, prompt, tokenizer, out, dtype, top_k) -> None:
    """Logit lens: each layer's top next tokens read through the final norm and the LM head."""
    import torch

    from lmkit.inspect.logit_lens import logit_lens

    model, tok = _load(checkpoint, tokenizer, dtype)
    ids, tokens = _encode(model, tok, prompt)
    lens = logit_lens(model, ids, top_k=top_k)
    name = lambda i: tok.id_to_token(i) or str(i)  # noqa: E731
    report = {"task": "logit_lens", "layers": len(lens), "tokens": tokens,
              "final_top1": name(int(lens[-1].top_ids[-1, 0])),
              "first_layer_with_final_top1": next(r.layer for r in lens
                                                  if int(r.top_ids[-1, 0]) == int(lens[-1].top_ids[-1, 0])),
              "per_layer": [r.to_dict(name) for r in lens]}

    def draw(path):
        from lmkit.inspect.heatmap import plot_logit_lens

        rows = [[name(int(i)) for i in r.top_ids[:, 0]] for r in lens]
        plot_logit_lens(rows, torch.stack([r.top_probs[:, 0] for r in lens]), tokens, path)

    _finish(out, report, draw)


@inspect_group.command("saliency")
@_common
@click.option("--method", type=click.Choice(["ig", "grad-x-input"]), default="ig", show_default=True)
@click.option("--steps", type=click.IntRange(1), default=32, show_default=True, help="Integrated-gradients steps.")
@click.option("--baseline", type=click.Choice(["pad", "zeros"]), default="pad", show_default=True)
@click.option("--target", "target_token", default=None,
              help="Explain the logit of this next token (default: the model's top prediction).")
def inspect_saliency(checkpoint, prompt, tokenizer, out, dtype, method, steps, baseline, target_token) -> None:
    """Per-token attribution of the next-token logit at the last position."""
    from lmkit.inspect.saliency import gradient_x_input, integrated_gradients, token_logit_fn

    model, tok = _load(checkpoint, tokenizer, dtype)
    ids, tokens = _encode(model, tok, prompt)
    if getattr(model, "lm_head", None) is None:
        raise click.ClickException("saliency explains a next-token logit; this checkpoint has no LM head")
    token_id = None
    if target_token is not None:
        token_id = tok.token_to_id(target_token)
        if token_id is None:
            enc = tok.encode(target_token)
            if len(enc) != 1:
                raise click.ClickException(f"--target {target_token!r} is not one token ({len(enc)} tokens)")
            token_id = enc[0]
    target = token_logit_fn(-1, token_id)
    report = {"task": "saliency", "method": method, "tokens": tokens}
    if method == "ig":
        res = integrated_gradients(model, ids, target, baseline=baseline, steps=steps)
        scores = res.attributions
        report.update(steps=steps, baseline=baseline, f_input=res.f_input, f_baseline=res.f_baseline,
                      completeness_gap=res.delta)
    else:
        scores = gradient_x_input(model, ids, target)
    chosen = target.chosen[0]
    report.update(target=tok.id_to_token(chosen) or str(chosen), target_id=chosen, scores=scores.tolist())

    def draw(path):
        from lmkit.inspect.heatmap import plot_token_scores

        plot_token_scores(tokens, scores, path, title=f"{method} for next token {report['target']!r}")

    _finish(out, report, draw)


COMMANDS = [inspect_group]
