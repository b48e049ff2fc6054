"""`lmkit serve MODEL_DIR` (OpenAI-compatible server + web chat), `lmkit chat MODEL_DIR` (terminal)
and `lmkit generate MODEL_DIR` (continue a prompt).

MODEL_DIR is a whole checkpoint or an adapter folder (its base recorded, or given as
MODEL_DIR --adapter DIR): all three load through `peft.load_any.load_model_for_inference`.

Heavy imports (torch, fastapi, uvicorn) happen inside the commands: every `lmkit`
invocation imports this module.
"""

from __future__ import annotations

import os
import sys

import click

_DTYPES = ("auto", "fp32", "bf16", "fp16")


def _dtype(name: str):
    import torch

    return {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _adapter_option(f):
    return click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
                        help="an adapter folder (LoRA, prefix, prompt tuning ...) to run on MODEL_DIR; "
                             "an adapter folder given as MODEL_DIR finds its recorded base by itself")(f)


def _lora_specs(ctx, param, values) -> list[tuple[str, str]]:
    """--lora NAME=PATH (repeatable) as (name, path) pairs."""
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: give NAME=PATH (the adapter's name in requests = its folder)")
        out.append((name, path))
    return out


def _load_model(model_dir: str, adapter: str | None, dtype=None):
    """(model, tokenizer) from a checkpoint, an adapter folder, or a checkpoint + --adapter."""
    from lmkit.peft.load_any import load_model_for_inference

    return load_model_for_inference(model_dir, adapter=adapter, dtype=dtype)


def _special_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens: never printed by `generate` and `chat`."""
    specials = getattr(tokenizer, "special_tokens", None) or {}
    return sorted({int(i) for i in specials.values()}) if isinstance(specials, dict) else []


def _chat_template(name: str, tokenizer, model_dir: str):
    """The one template policy: a tokenizer without the template's tokens is an error that
    names the fix (`lmkit tokenizer add-tokens MODEL_DIR ...`), never plain-text ChatML."""
    from lmkit.serve.chat_model import resolve_template
    from lmkit.tokenizers.chat_template import require_template_tokens

    template = resolve_template(name)
    require_template_tokens(template, tokenizer, model=model_dir)
    return template


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@_adapter_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", "api_keys", multiple=True,
              help="Accepted Bearer key (repeatable); default: $LMKIT_API_KEY; none = no authentication.")
@click.option("--model-name", default=None, help="Name clients use as `model` (default: the directory name).")
@click.option("--template", default="chatml", show_default=True, help="Chat template: chatml or llama3.")
@click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Requests decoded together (continuous batching).")
@click.option("--max-waiting", type=click.IntRange(1), default=1024, show_default=True,
              help="Queued requests beyond which new ones get 503.")
@click.option("--max-body-bytes", type=click.IntRange(1), default=1 << 20, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--default-max-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Chat reply length when a request gives no max_tokens.")
@click.option("--dtype", type=click.Choice(_DTYPES), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch intra-op threads.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--lora", "loras", multiple=True, callback=_lora_specs, metavar="NAME=PATH",
              help="A LoRA adapter folder served per request as model NAME (or MODEL:NAME, or the field lora); "
                   "repeatable. Requests for different adapters share one batch.")
@click.option("--enable-lora", is_flag=True,
              help="Allow loading LoRA adapters at runtime (POST /v1/adapters) even with no --lora.")
def serve_cmd(model_dir, adapter, host, port, api_keys, model_name, template, max_batch_size, max_waiting, max_body_bytes,
              default_max_tokens, dtype, device, threads, log_level, loras, enable_lora) -> None:
    """Serve MODEL_DIR (a Hugging Face checkpoint with tokenizer.json) over an OpenAI-compatible API.

    Open http://HOST:PORT/ for the web chat; point any OpenAI client at http://HOST:PORT/v1.
    Ctrl-C / SIGTERM stops taking requests and finishes the running ones first.
    """
    from pathlib import Path

    from lmkit.errors import LmkitError, require

    try:
        uvicorn = require("uvicorn", "serve")
        require("fastapi", "serve")
        from lmkit.serve.listen import bind_listen_socket

        sock = bind_listen_socket(host, port)  # a busy port is reported now, before the model loads
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from lmkit.serve.app import create_app
        from lmkit.serve.engine import Engine

        model, tok = _load_model(model_dir, adapter, dtype=_dtype(dtype))
        _chat_template(template, tok, model_dir)
        if device:
            model = model.to(device)
        keys = list(api_keys) or ([os.environ["LMKIT_API_KEY"]] if os.environ.get("LMKIT_API_KEY") else [])
        name = model_name or Path(model_dir).resolve().name
        registry = None
        if loras or enable_lora:  # multi-LoRA: adapters chosen per request (serve/lora_adapters.py)
            from lmkit.serve.lora_adapters import AdapterRegistry

            registry = AdapterRegistry(model, base_name=name)
            for lora_name, lora_path in loras:
                registry.load(lora_name, lora_path)
        engine = Engine(model, tok, max_batch_size=max_batch_size, max_waiting=max_waiting, lora=registry)
        app = create_app(engine, model_name=name, template=template, api_keys=keys, max_body_bytes=max_body_bytes,
                         default_max_tokens=default_max_tokens)
    except LmkitError as exc:
        sock.close()
        raise click.ClickException(str(exc)) from exc
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    auth = f"{len(keys)} API key(s)" if keys else "no API key (anyone who can reach the port may use it)"
    click.echo(f"serving {name!r} ({type(model).__name__}, context {model.config.max_seq_len}) "
               f"on http://{host}:{port}  [web chat: /, API: /v1, {auth}]", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=60))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if not server.started:
        raise click.ClickException(f"the server on http://{host}:{port} did not start (see the log above)")


@click.command("chat")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@_adapter_option
@click.option("--template", default="chatml", show_default=True, help="Chat template: chatml or llama3.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--seed", type=int, default=None)
def chat_cmd(model_dir, adapter, template, system, max_tokens, temperature, top_p, seed) -> None:
    """Chat with MODEL_DIR in the terminal (streaming). Commands: /reset, /exit."""
    from lmkit.errors import LmkitError

    try:
        from lmkit.infer import GenerationConfig, iter_steps
        from lmkit.infer.streaming import TextStream
        from lmkit.serve.chat_model import prepare_chat

        model, tok = _load_model(model_dir, adapter)
        tpl = _chat_template(template, tok, model_dir)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    click.echo(f"chatting with {model_dir} ({tpl.name} template). /reset starts over, /exit quits.", err=True)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(start)
            click.echo("(conversation cleared)", err=True)
            continue
        history.append({"role": "user", "content": text})
        try:
            prep = prepare_chat(model, tok, tpl, history)
            room = model.config.max_seq_len - len(prep.prompt_ids)
            if room < 1:
                history.pop()
                click.echo("(the conversation fills the model's context: /reset to start over)", err=True)
                continue
            cfg = GenerationConfig(max_new_tokens=min(max_tokens, room), do_sample=temperature > 0,
                                   temperature=temperature or 1.0, top_p=top_p, seed=seed, stop=prep.stop,
                                   eos_token_id=prep.eos_ids or None)
            stream = TextStream(tok, prep.stop, skip_ids=[*prep.eos_ids, *_special_ids(tok)])
            click.echo("assistant> " if interactive else "", nl=False)
            parts = []
            try:
                for step in iter_steps(model, [prep.prompt_ids], cfg, tokenizer=tok):
                    if step.done_before[0]:
                        break
                    delta = stream.push(step.tokens[0])
                    if delta:
                        parts.append(delta)
                        click.echo(delta, nl=False)
                    if stream.stopped or step.finished[0]:
                        break
            except KeyboardInterrupt:
                click.echo(" [interrupted]", nl=False)
            tail = stream.finish()
            parts.append(tail)
            click.echo(tail)
            history.append({"role": "assistant", "content": "".join(parts)})
        except LmkitError as exc:
            history.pop()
            click.echo(f"error: {exc}", err=True)


@click.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@_adapter_option
@click.option("-p", "--prompt", required=True, help="Text to continue ('-' reads it from stdin).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0: greedy decoding; > 0: sample at this temperature.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sampling: keep the k best (0: off).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sampling: nucleus probability mass.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); it is not printed.")
@click.option("--stream/--no-stream", default=False, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, tokens, finish_reason} as JSON.")
@click.option("--compile", "compile_step", is_flag=True,
              help="torch.compile the decode step (CPU: ~10 s once, then about 1.3x faster per token).")
def generate_cmd(model_dir, adapter, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, stream, as_json,
                 compile_step) -> None:
    """Continue PROMPT with the Hugging Face checkpoint in MODEL_DIR (and the tokenizer beside it),
    or with an adapter folder (its recorded base model, or MODEL_DIR --adapter DIR)."""
    import json

    from lmkit.infer import GenerationConfig, generate, iter_steps
    from lmkit.infer.generate import encode_prompt
    from lmkit.infer.inputs import resolve_config
    from lmkit.infer.streaming import TextStream, decode_output

    text = sys.stdin.read() if prompt == "-" else prompt
    model, tok = _load_model(model_dir, adapter)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                           temperature=temperature or 1.0, top_k=top_k or None, top_p=top_p, seed=seed,
                           stop=list(stop) or None, compile=compile_step)
    cfg = resolve_config(model, cfg)
    skip = [*cfg.eos_token_ids, *_special_ids(tok)]  # special tokens are never printed
    if stream:
        click.echo(text, nl=False)
        out_stream = TextStream(tok, cfg.stop, skip_ids=skip)
        for step in iter_steps(model, [encode_prompt(tok, text)], cfg, tokenizer=tok):
            if step.done_before[0]:
                break
            click.echo(out_stream.push(step.tokens[0]), nl=False)
            if out_stream.stopped or step.finished[0]:
                break
        click.echo(out_stream.finish())
        return
    out = generate(model, [encode_prompt(tok, text)], cfg, tokenizer=tok)
    reply = decode_output(tok, out.sequences[0], cfg.stop, skip)
    if as_json:
        click.echo(json.dumps({"text": reply, "tokens": out.sequences[0],
                               "finish_reason": out.finish_reasons[0]}, ensure_ascii=False))
    else:
        click.echo(text + reply)


COMMANDS = [serve_cmd, chat_cmd, generate_cmd]
