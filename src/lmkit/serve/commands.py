"""`lmkit serve MODEL_DIR` (OpenAI-compatible server + web chat) and `lmkit chat MODEL_DIR` (terminal).

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


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
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
def serve_cmd(model_dir, host, port, api_keys, model_name, template, max_batch_size, max_waiting, max_body_bytes,
              default_max_tokens, dtype, device, threads, log_level) -> None:
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

        from lmkit.hub import load_pretrained
        from lmkit.tokenizers.loading import load_tokenizer

        model = load_pretrained(model_dir, dtype=_dtype(dtype))
        if device:
            model = model.to(device)
        tok = load_tokenizer(model_dir)
        keys = list(api_keys) or ([os.environ["LMKIT_API_KEY"]] if os.environ.get("LMKIT_API_KEY") else [])
        name = model_name or Path(model_dir).resolve().name
        engine = Engine(model, tok, max_batch_size=max_batch_size, max_waiting=max_waiting)
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
@click.option("--template", default="chatml", show_default=True, help="Chat template: chatml or llama3.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--seed", type=int, default=None)
def chat_cmd(model_dir, template, system, max_tokens, temperature, top_p, seed) -> None:
    """Chat with MODEL_DIR in the terminal (streaming). Commands: /reset, /exit."""
    from lmkit.errors import LmkitError

    try:
        from lmkit.hub import load_pretrained
        from lmkit.infer import GenerationConfig, iter_steps
        from lmkit.infer.streaming import TextStream
        from lmkit.serve.chat_model import prepare_chat, resolve_template
        from lmkit.tokenizers.loading import load_tokenizer

        model = load_pretrained(model_dir)
        tok = load_tokenizer(model_dir)
        tpl = resolve_template(template)
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
            stream = TextStream(tok, prep.stop, skip_ids=prep.eos_ids)
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


COMMANDS = [serve_cmd, chat_cmd]
