"""CLI: `lmkit reward-train`, `lmkit dpo`, `lmkit ppo`, `lmkit grpo` (heavy imports inside the commands).

MODEL_DIR is a Hugging Face checkpoint directory with its tokenizer (tokenizer.json), read
by `lmkit.hub.load_pretrained`; results are written with `save_pretrained` (full models,
merged LoRA) or as a PEFT-layout LoRA adapter (`--lora` without `--merge`). The tokenizer
files are copied next to the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from lmkit.cli_grammar import RenamedOptionsCommand

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.txt", "merges.txt", "vocab.json", "chat_template.jinja")


# ---- shared helpers ----------------------------------------------------------------------------
def _load(model_dir: str):
    from lmkit.hub import load_pretrained
    from lmkit.tokenizers import load_tokenizer

    try:
        model = load_pretrained(model_dir)
        tok = load_tokenizer(model_dir)
    except OSError as exc:  # an unreadable file; an LmkitError is reported by the root group
        raise click.ClickException(f"cannot load {model_dir}: {exc}") from exc
    if type(model).__name__ != "DecoderLM":
        raise click.ClickException(f"{model_dir} is a {type(model).__name__}; alignment needs a decoder-only model")
    return model, tok


def _ids(model, pad_id):
    cfg = model.config
    eos = cfg.eos_token_id
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else (eos or 0))
    return eos, pad


def _rollout_eos(model) -> list[int] | None:
    """Every id that ends a rollout: the checkpoint's eos list (e.g. <|endoftext|> and ChatML's
    <|im_end|>), not only config.eos_token_id, so chat completions stop at the end of turn."""
    from lmkit.infer.stop import model_eos_ids

    return model_eos_ids(model) or None


def _template(name: str | None, tok, model_dir: str):
    """The chat template `name` (None: plain-text rows; "auto": the checkpoint's own, see
    hub.checkpoint_template), checked against the tokenizer: the one template policy fails with
    the `lmkit tokenizer add-tokens MODEL_DIR` fix."""
    if name is None:
        return None
    from lmkit.hub.checkpoint_template import checkpoint_template
    from lmkit.tokenizers.chat_template import require_template_tokens

    try:
        template = checkpoint_template(model_dir, tok, name)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    require_template_tokens(template, tok, model=model_dir)
    return template


def _maybe_lora(model, lora: bool, r: int, alpha: float, targets: str):
    if not lora:
        return model
    from lmkit.peft.lora import LoraConfig, inject_lora

    return inject_lora(model, LoraConfig(r=r, alpha=alpha, target_modules=tuple(t for t in targets.split(",") if t)))


def _copy_tokenizer(src: str, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)


def _save_policy(model, model_dir: str, out: str, lora: bool, merge: bool, tok) -> str:
    """The adapter or the whole policy; a whole one records its end of turn (eos list, pad and
    chat template from `tok`)."""
    from lmkit.hub import save_pretrained

    _copy_tokenizer(model_dir, Path(out))
    if lora and not merge:
        from lmkit.peft.peft_format import save_lora

        save_lora(model, out, base_model_name_or_path=str(Path(model_dir).resolve()))
        return "LoRA adapter"
    if lora:
        from lmkit.peft.lora import unload_lora

        model = unload_lora(model, merge=True)
    save_pretrained(model, out, tokenizer=tok if hasattr(tok, "save_hf_json") else None)
    return "model"


def _plot(records, keys, out: str, title: str) -> None:
    try:
        from lmkit.train.metrics_log import plot_curves

        plot_curves(records, keys, Path(out) / "curves.png", title)
    except ImportError:  # matplotlib missing: say so in one line; the metrics.jsonl is still there
        click.echo("note: curves.png not written (it needs matplotlib: pip install 'lmkit[plot]'); "
                   f"the numbers are in {Path(out) / 'run' / 'metrics.jsonl'}", err=True)


def _pairs(path: str, tok, max_len: int, bos: int | None, eos: int | None, template):
    from lmkit.data.preference import load_preference_jsonl, tokenize_pairs

    return tokenize_pairs(load_preference_jsonl(path), tok, max_len, bos_id=bos, eos_id=eos, template=template,
                          source=path)


def _split(pairs, eval_path, eval_fraction, seed):
    if eval_path is not None or eval_fraction <= 0:
        return pairs, None
    import random

    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, int(len(pairs) * eval_fraction))
    if n_eval >= len(pairs):
        return pairs, None
    return [pairs[i] for i in idx[n_eval:]], [pairs[i] for i in idx[:n_eval]]


def _train_config(out: str, steps: int, lr: float, seed: int, eval_every: int, progress: bool = True):
    from lmkit.train import TrainConfig

    return TrainConfig(lr=lr, max_steps=steps, warmup_steps=min(10, steps // 10), eval_every=eval_every,
                       out_dir=str(Path(out) / "run"), seed=seed, progress=progress)


def _prompts(path: str, tok, bos: int | None, template, max_len: int):
    """JSONL rows {"prompt": text | messages, other fields -> reward kwargs} or plain text lines."""
    from lmkit.data.preference import encode_text

    p = Path(path)
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if p.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise click.ClickException(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or "prompt" not in row:
                    raise click.ClickException(f"{path}:{n}: each row needs a 'prompt' field")
            else:
                row = {"prompt": line.rstrip("\n")}
            prompt = row["prompt"]
            if isinstance(prompt, list):
                if template is None:
                    raise click.ClickException(f"{path}:{n}: chat prompts need --chat-template")
                ids, _ = template.render_with_mask(prompt, tok, add_generation_prompt=True)
            elif isinstance(prompt, str):
                ids = ([bos] if bos is not None else []) + encode_text(tok, prompt)
            else:
                raise click.ClickException(f"{path}:{n}: 'prompt' must be a string or a list of messages")
            if not ids:
                raise click.ClickException(f"{path}:{n}: the prompt encodes to no tokens")
            if len(ids) >= max_len:
                raise click.ClickException(
                    f"{path}:{n}: prompt of {len(ids)} tokens does not fit the context of {max_len} with a response")
            rows.append((ids, {k: v for k, v in row.items() if k != "prompt"}))
    if not rows:
        raise click.ClickException(f"{path}: no prompts found")
    keys = set(rows[0][1])
    kwargs = {k: [r[1].get(k) for r in rows] for k in keys}
    return [r[0] for r in rows], kwargs


def _reward(reward_model: str | None, reward_fn: str | None):
    if (reward_model is None) == (reward_fn is None):
        raise click.ClickException("give exactly one of --reward-model DIR or --reward-fn module:function")
    if reward_model is not None:
        from lmkit.align.reward_model import load_reward_model

        try:
            return None, load_reward_model(reward_model)
        except OSError as exc:  # an unreadable file; an LmkitError is reported by the root group
            raise click.ClickException(str(exc)) from exc
    from lmkit.align.rewards import load_reward_fn

    return load_reward_fn(reward_fn), None


def _common(f):
    """Options every alignment command takes."""
    opts = [
        click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="output directory"),
        click.option("--lr", type=float, default=None, help="learning rate"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--chat-template", default=None,
                     help="render chat-format rows with: auto (the checkpoint's own template), one of its named "
                          "templates, chatml or llama3"),
        click.option("--lora/--no-lora", default=False, help="train a LoRA adapter; the reference is the base model"),
        click.option("--lora-r", type=int, default=8, show_default=True),
        click.option("--lora-alpha", type=float, default=16.0, show_default=True),
        click.option("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                     show_default=True, help="comma-separated module names"),
        click.option("--merge/--no-merge", default=False, help="with --lora: save the merged model, not the adapter"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# ---- commands ---------------------------------------------------------------------------------
@click.command("reward-train", cls=RenamedOptionsCommand, renamed={"--max-steps": "--steps"})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True, help="held out when --eval-data is not given")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="optimizer steps")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--margin", type=float, default=0.0, show_default=True, help="Bradley-Terry margin m: -log sigma(r_c - r_r - m)")
@_common
def reward_train(model_dir, data, eval_data, eval_fraction, steps, batch_size, margin, out, lr, seed, chat_template,
                 lora, lora_r, lora_alpha, lora_targets, merge):
    """Train a reward model on preference pairs (JSONL: prompt, chosen, rejected) from MODEL_DIR."""
    from lmkit.align.reward_model import RewardModel, save_reward_model, train_reward_model

    model, tok = _load(model_dir)
    eos, pad = _ids(model, None)
    tmpl = _template(chat_template, tok, model_dir)
    pairs = _pairs(data, tok, model.config.max_seq_len, model.config.bos_token_id, eos, tmpl)
    evals = _pairs(eval_data, tok, model.config.max_seq_len, model.config.bos_token_id, eos, tmpl) if eval_data else None
    pairs, held = _split(pairs, eval_data, eval_fraction, seed)
    evals = evals or held
    backbone = _maybe_lora(model, lora, lora_r, lora_alpha, lora_targets)
    rm = RewardModel(backbone)
    cfg = _train_config(out, steps, lr or (1e-4 if not lora else 1e-3), seed, max(1, steps // 10) if evals else 0)
    records, final = train_reward_model(rm, pairs, cfg, eval_pairs=evals, batch_size=batch_size, pad_id=pad,
                                        margin=margin)
    save_reward_model(rm, out)
    _copy_tokenizer(model_dir, Path(out))
    _plot(records, ["loss", "accuracy", "eval_accuracy", "reward_margin"], out, "reward model")
    click.echo(json.dumps({"out": out, "train_pairs": len(pairs), **{k: round(v, 4) for k, v in final.items()}}))


@click.command("dpo", cls=RenamedOptionsCommand, renamed={"--max-steps": "--steps"})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--ref-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="reference model (default: MODEL_DIR itself, or the LoRA base)")
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="optimizer steps")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--beta", type=float, default=0.1, show_default=True)
@click.option("--loss", "loss_type", type=click.Choice(["sigmoid", "ipo"]), default="sigmoid", show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True, help="cDPO: assumed label-flip rate")
@_common
def dpo(model_dir, data, ref_model, eval_data, eval_fraction, steps, batch_size, beta, loss_type, label_smoothing,
        out, lr, seed, chat_template, lora, lora_r, lora_alpha, lora_targets, merge):
    """Direct preference optimisation of MODEL_DIR on preference pairs (JSONL: prompt, chosen, rejected)."""
    from lmkit.align.dpo import train_dpo

    model, tok = _load(model_dir)
    eos, pad = _ids(model, None)
    tmpl = _template(chat_template, tok, model_dir)
    pairs = _pairs(data, tok, model.config.max_seq_len, model.config.bos_token_id, eos, tmpl)
    evals = _pairs(eval_data, tok, model.config.max_seq_len, model.config.bos_token_id, eos, tmpl) if eval_data else None
    pairs, held = _split(pairs, eval_data, eval_fraction, seed)
    evals = evals or held
    ref = _load(ref_model)[0] if ref_model else None
    policy = _maybe_lora(model, lora, lora_r, lora_alpha, lora_targets)
    cfg = _train_config(out, steps, lr or (5e-6 if not lora else 5e-4), seed, max(1, steps // 10) if evals else 0)
    records, final = train_dpo(policy, pairs, cfg, ref_model=ref, eval_pairs=evals, batch_size=batch_size,
                               pad_id=pad, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    what = _save_policy(policy, model_dir, out, lora, merge, tok)
    _plot(records, ["loss", "reward_margin", "accuracy", "eval_accuracy", "eval_reward_margin"], out, f"DPO ({loss_type})")
    click.echo(json.dumps({"out": out, "saved": what, "train_pairs": len(pairs),
                           **{k: round(v, 4) for k, v in final.items()}}))


def _rl_options(f):
    opts = [
        click.option("--reward-model", type=click.Path(exists=True, file_okay=False), default=None,
                     help="a reward model saved by lmkit reward-train"),
        click.option("--reward-fn", default=None, help="module:function, e.g. lmkit.align.rewards:exact_answer"),
        click.option("--max-new-tokens", type=int, default=32, show_default=True),
        click.option("--temperature", type=float, default=1.0, show_default=True),
        click.option("--batch-size", type=int, default=8, show_default=True, help="prompts per step"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("ppo", cls=RenamedOptionsCommand, renamed={"--iterations": "--steps"})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("prompts", type=click.Path(exists=True, dir_okay=False))
@_rl_options
@click.option("--steps", type=click.IntRange(1), default=100, show_default=True,
              help="PPO iterations: each generates a batch of rollouts, then updates on it")
@click.option("--mini-batch-size", type=int, default=None, help="default: half the batch")
@click.option("--ppo-epochs", type=int, default=4, show_default=True)
@click.option("--init-kl-coef", type=float, default=0.2, show_default=True)
@click.option("--target-kl", type=float, default=6.0, show_default=True)
@click.option("--fixed-kl/--adaptive-kl", default=False, help="keep the KL coefficient fixed")
@_common
def ppo(model_dir, prompts, reward_model, reward_fn, max_new_tokens, temperature, batch_size, steps,
        mini_batch_size, ppo_epochs, init_kl_coef, target_kl, fixed_kl, out, lr, seed, chat_template, lora, lora_r,
        lora_alpha, lora_targets, merge):
    """PPO-RLHF of MODEL_DIR on PROMPTS (.jsonl with "prompt" or text lines) with a reward model or function."""
    from lmkit.align.ppo import PPOConfig, train_ppo

    model, tok = _load(model_dir)
    _, pad = _ids(model, None)
    fn, rm = _reward(reward_model, reward_fn)
    ids, kwargs = _prompts(prompts, tok, model.config.bos_token_id, _template(chat_template, tok, model_dir), model.config.max_seq_len)
    policy = _maybe_lora(model, lora, lora_r, lora_alpha, lora_targets)
    cfg = PPOConfig(iterations=steps, batch_size=batch_size,
                    mini_batch_size=mini_batch_size or max(1, batch_size // 2), ppo_epochs=ppo_epochs,
                    max_new_tokens=max_new_tokens, temperature=temperature, init_kl_coef=init_kl_coef,
                    target_kl=target_kl, adaptive_kl=not fixed_kl, lr=lr or (1e-5 if not lora else 1e-4),
                    seed=seed, out_dir=str(Path(out) / "run"), progress=True)
    records = train_ppo(policy, ids, cfg, reward_fn=fn, reward_model=rm, tokenizer=tok, eos_token_id=_rollout_eos(model),
                        pad_id=pad, reward_kwargs=kwargs)
    what = _save_policy(policy, model_dir, out, lora, merge, tok)
    _plot(records, ["score", "kl", "kl_coef", "entropy"], out, "PPO")
    last = records[-1]
    click.echo(json.dumps({"out": out, "saved": what, "score_first": round(records[0]["score"], 4),
                           "score_last": round(last["score"], 4), "kl_last": round(last["kl"], 4)}))


@click.command("grpo")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("prompts", type=click.Path(exists=True, dir_okay=False))
@_rl_options
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--group-size", type=int, default=8, show_default=True)
@click.option("--beta", type=float, default=0.04, show_default=True, help="KL coefficient (0: no reference)")
@click.option("--num-iterations", type=int, default=1, show_default=True, help="updates per generated batch")
@_common
def grpo(model_dir, prompts, reward_model, reward_fn, max_new_tokens, temperature, batch_size, steps, group_size, beta,
         num_iterations, out, lr, seed, chat_template, lora, lora_r, lora_alpha, lora_targets, merge):
    """GRPO of MODEL_DIR on PROMPTS with a verifiable reward function (or a reward model)."""
    from lmkit.align.grpo import GRPOConfig, train_grpo

    model, tok = _load(model_dir)
    _, pad = _ids(model, None)
    fn, rm = _reward(reward_model, reward_fn)
    ids, kwargs = _prompts(prompts, tok, model.config.bos_token_id, _template(chat_template, tok, model_dir), model.config.max_seq_len)
    policy = _maybe_lora(model, lora, lora_r, lora_alpha, lora_targets)
    cfg = GRPOConfig(steps=steps, batch_size=batch_size, group_size=group_size, max_new_tokens=max_new_tokens,
                     temperature=temperature, beta=beta, num_iterations=num_iterations,
                     lr=lr or (1e-5 if not lora else 1e-4), seed=seed, out_dir=str(Path(out) / "run"), progress=True)
    records = train_grpo(policy, ids, cfg, reward_fn=fn, reward_model=rm, tokenizer=tok, eos_token_id=_rollout_eos(model),
                         pad_id=pad, reward_kwargs=kwargs)
    what = _save_policy(policy, model_dir, out, lora, merge, tok)
    _plot(records, ["reward", "kl", "completion_len", "frac_zero_std"], out, "GRPO")
    click.echo(json.dumps({"out": out, "saved": what, "reward_first": round(records[0]["reward"], 4),
                           "reward_last": round(records[-1]["reward"], 4)}))


COMMANDS: list[click.Command] = [reward_train, dpo, ppo, grpo]
