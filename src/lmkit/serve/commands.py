"""`lmkit serve MODEL_DIR` (OpenAI-compatible server + web chat), `lmkit chat MODEL_DIR` (terminal)
and `lmkit generate MODEL_DIR` (continue a prompt).

MODEL_DIR is a whole checkpoint, an adapter folder (its base recorded, or given as
MODEL_DIR --adapter DIR) or a llama.cpp .gguf file (tokenizer from the file; --keep-quantized
keeps its 4-bit weights quantized): all three load through `peft.load_any.load_model_for_inference`.

Heavy imports (torch, fastapi, uvicorn) happen inside the commands: every `lmkit`
invocation imports this module.
"""

from __future__ import annotations

import os
import sys

import click

from lmkit.cli_grammar import dtype_option, watermark_options
from lmkit.serve.safety_options import safety_options


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


def _keep_quantized_option(f):
    return click.option("--keep-quantized", is_flag=True,
                        help="A .gguf MODEL_DIR: keep its Q4_0 / Q4_K weights 4-bit on the fused int4 kernel "
                             "(exact weights, bf16 compute, several times faster decoding) instead of "
                             "dequantizing them; other GGUF types load as floats.")(f)


def _tp_option(f):
    return click.option("--tp", type=click.IntRange(1), default=1, show_default=True,
                        help="Tensor parallelism: shard the model over N processes (this command starts them, or "
                             "uses the ones torchrun started); each computes its share of the heads and of the "
                             "vocabulary, rank 0 prints / listens. See docs/serving.md.")(f)


def _kv_cache_dtype_option(f):
    return click.option("--kv-cache-dtype", type=click.Choice(["auto", "int8"]), default="auto", show_default=True,
                        help="int8: keep the KV cache as int8 with a scale per head and token (about a quarter "
                             "of an fp32 cache, half of a bf16 one) for long contexts; slightly less exact "
                             "and a little slower per step.")(f)


def _load_model(model_dir: str, adapter: str | None, dtype: str = "auto", keep_quantized: bool = False):
    """(model, tokenizer) from a checkpoint, an adapter folder, a checkpoint + --adapter, or a .gguf file."""
    from lmkit.peft.load_any import is_gguf_file, load_model_for_inference

    if keep_quantized and not is_gguf_file(model_dir):
        raise click.UsageError("--keep-quantized applies to a .gguf MODEL_DIR (a checkpoint from `lmkit quantize` "
                               "loads quantized by itself)")
    return load_model_for_inference(model_dir, adapter=adapter, dtype=dtype, quantized=keep_quantized)


def _load_vision_model(model_dir: str, adapter, keep_quantized: bool, loras, draft_model, device):
    """(VisionLanguageModel, tokenizer) when MODEL_DIR is a LLaVA folder (`lmkit vlm train`), else (None, None).
    Served in float32 as saved; adapters, --lora, draft models and GGUF options do not apply to it."""
    from lmkit.vision.vlm_hub import is_llava_dir, load_vlm_dir

    if not is_llava_dir(model_dir):
        return None, None
    if adapter or keep_quantized or loras or draft_model:
        raise click.UsageError("a vision-language (LLaVA) MODEL_DIR is served as it is: --adapter, --lora, "
                               "--draft-model and --keep-quantized do not apply to it")
    vlm, tok = load_vlm_dir(model_dir)
    return (vlm.to(device) if device else vlm), tok


def _special_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens: never printed by `generate` and `chat`."""
    specials = getattr(tokenizer, "special_tokens", None) or {}
    return sorted({int(i) for i in specials.values()}) if isinstance(specials, dict) else []


def _chat_template(name: str | None, tokenizer, model_dir: str, adapter: str | None = None):
    """The one template policy: the checkpoint's own template unless `name` picks another
    (hub.checkpoint_template); a tokenizer without a built-in template's tokens is an error
    that names the fix (`lmkit tokenizer add-tokens MODEL_DIR ...`), never plain-text ChatML."""
    from lmkit.hub.checkpoint_template import checkpoint_template
    from lmkit.peft.load_any import tokenizer_dir_of
    from lmkit.tokenizers.chat_template import require_template_tokens

    template = checkpoint_template(tokenizer_dir_of(model_dir, adapter), tokenizer, name)
    require_template_tokens(template, tokenizer, model=model_dir)
    return template


_TEMPLATE_HELP = ("Chat template: the checkpoint's own (tokenizer_config.json / chat_template.jinja; default), "
                  "one of its named templates, or a built-in one: chatml, llama3.")


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True))
@_adapter_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", "api_keys", multiple=True,
              help="Accepted Bearer key (repeatable); default: $LMKIT_API_KEY; none = no authentication.")
@click.option("--model-name", default=None, help="Name clients use as `model` (default: the directory name).")
@click.option("--template", default=None, help=_TEMPLATE_HELP)
@click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Requests decoded together (continuous batching).")
@click.option("--max-waiting", type=click.IntRange(1), default=1024, show_default=True,
              help="Queued requests beyond which new ones get 503.")
@click.option("--kv-cache", "kv_cache", type=click.Choice(["paged", "contiguous"]), default="paged", show_default=True,
              help="KV-cache layout: paged blocks (prefix caching, admission by free blocks) or one strip per row.")
@click.option("--kv-cache-mb", type=click.FloatRange(0, min_open=True), default=None,
              help="KV memory budget in MiB (default: max-batch-size full contexts, at most 1024 MiB).")
@click.option("--kv-blocks", type=click.IntRange(1), default=None, help="KV memory budget in blocks (instead of MiB).")
@click.option("--block-size", type=click.IntRange(1), default=16, show_default=True, help="Tokens per KV block.")
@click.option("--prefix-caching/--no-prefix-caching", default=True, show_default=True,
              help="Share the KV blocks of common prompt prefixes across requests.")
@click.option("--prefill-chunk", type=click.IntRange(1), default=512, show_default=True,
              help="Prompt tokens prefilled per step between decode steps (a long prompt does not stall the others).")
@click.option("--max-body-bytes", type=click.IntRange(1), default=1 << 20, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--default-max-tokens", type=click.IntRange(1), default=None,
              help="Chat reply length when a request gives no max_tokens (default: the checkpoint's "
                   "generation_config.json max_new_tokens, else 256).")
@click.option("--speculative", type=click.Choice(["none", "ngram", "draft"]), default=None,
              help="Speculative decoding: ngram = prompt lookup (drafts from the request's own tokens), "
                   "draft = a small draft model (--draft-model); drafts are verified by the model in one "
                   "forward, greedy output is unchanged. Default: draft with --draft-model, else none.")
@click.option("--draft-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Checkpoint directory of a draft model with the same vocabulary (--speculative draft).")
@click.option("--num-speculative-tokens", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Drafts proposed per step with --speculative.")
@dtype_option()
@_keep_quantized_option
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch intra-op threads.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--lora", "loras", multiple=True, callback=_lora_specs, metavar="NAME=PATH",
              help="A LoRA adapter folder served per request as model NAME (or MODEL:NAME, or the field lora); "
                   "repeatable. Requests for different adapters share one batch.")
@click.option("--enable-lora", is_flag=True,
              help="Allow loading LoRA adapters at runtime (POST /v1/adapters) even with no --lora.")
@_tp_option
@watermark_options()
@safety_options
def serve_cmd(model_dir, adapter, host, port, api_keys, model_name, template, max_batch_size, max_waiting, kv_cache,
              kv_cache_mb, kv_blocks, block_size, prefix_caching, prefill_chunk, max_body_bytes,
              default_max_tokens, speculative, draft_model, num_speculative_tokens, dtype, keep_quantized, device,
              threads, log_level, loras, enable_lora, tp=1, watermark=None, moderation=None, rate_limits=None) -> None:
    """Serve MODEL_DIR (a Hugging Face checkpoint with tokenizer.json) over an OpenAI-compatible API.

    Open http://HOST:PORT/ for the web chat; point any OpenAI client at http://HOST:PORT/v1.
    Ctrl-C / SIGTERM stops taking requests and finishes the running ones first.
    """
    from pathlib import Path

    from lmkit.errors import LmkitError, require

    engine_args = dict(max_batch_size=max_batch_size, max_waiting=max_waiting, kv_cache=kv_cache,
                       kv_cache_mb=kv_cache_mb, kv_blocks=kv_blocks, block_size=block_size,
                       prefix_caching=prefix_caching, prefill_chunk=prefill_chunk)
    ranks = None
    if tp > 1:
        if loras or enable_lora or draft_model or speculative not in (None, "none"):
            raise click.UsageError("--tp serves one model: no --lora, --enable-lora, --draft-model or --speculative")
        ranks = _tensor_parallel_ranks(tp, model_dir, device, threads)
        if not ranks.leader:  # no server here: the same engine steps on this rank's shard
            return _follow_leader(model_dir, adapter, dtype, keep_quantized, ranks, engine_args)
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
        from lmkit.vision.clip_folder import is_clip_folder

        keys = list(api_keys) or ([os.environ["LMKIT_API_KEY"]] if os.environ.get("LMKIT_API_KEY") else [])
        name = model_name or Path(model_dir).resolve().name
        app = summary = None
        if is_clip_folder(model_dir):  # a CLIP model: text and image embeddings, no generation
            if adapter or loras or draft_model or ranks is not None:
                sock.close()
                raise click.UsageError("a CLIP model serves embeddings only: no --adapter, --lora, --draft-model "
                                       "or --tp")
            app, summary = _clip_app(model_dir, name, keys, max_body_bytes, device, rate_limits)
    except LmkitError as exc:
        sock.close()
        raise click.ClickException(str(exc)) from exc
    if app is None:
        app, summary = _generation_app(sock, model_dir, adapter, name, keys, template, engine_args, max_body_bytes,
                                       default_max_tokens, speculative, draft_model, num_speculative_tokens, dtype,
                                       keep_quantized, device, loras, enable_lora, watermark, moderation,
                                       rate_limits, ranks)
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    auth = f"{len(keys)} API key(s)" if keys else "no API key (anyone who can reach the port may use it)"
    where = "API: /v1" if summary.startswith("CLIP") else "web chat: /, API: /v1"
    click.echo(f"serving {name!r} ({summary}) on http://{host}:{port}  [{where}, {auth}]", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=60))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if ranks is not None:
            from lmkit.serve.tensor_parallel import close_ranks

            close_ranks()
    if not server.started:
        raise click.ClickException(f"the server on http://{host}:{port} did not start (see the log above)")


def _clip_app(model_dir, name, keys, max_body_bytes, device, rate_limits):
    """An embeddings-only app for a CLIP folder (`lmkit clip train`'s output): texts and images."""
    from lmkit.serve.app import create_app
    from lmkit.serve.clip_embeddings import CLIPEmbedder
    from lmkit.vision.clip_folder import load_clip_folder

    model, tok = load_clip_folder(model_dir)
    if device:
        model = model.to(device)
    app = create_app(None, model_name=name, api_keys=keys, max_body_bytes=max_body_bytes,
                     embedder=CLIPEmbedder(model, tok), rate_limits=rate_limits)
    return app, f"CLIP, /v1/embeddings of texts and images only, {model.config.projection_dim} dimensions"


def _tensor_parallel_ranks(tp: int, model_dir: str, device: str | None, threads: int | None):
    """`--tp N`: start N workers running this command and exit with them; in a worker (or under torchrun),
    join the others."""
    from lmkit.errors import LmkitError
    from lmkit.serve.tensor_parallel import check_before_launch, init_ranks, launch_workers, under_torchrun

    try:
        if not under_torchrun():
            check_before_launch(model_dir, tp)
            launch_workers(tp)  # exits with the workers
        if threads:
            import torch

            torch.set_num_threads(threads)
        return init_ranks(tp, device)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc


def _follow_leader(model_dir, adapter, dtype, keep_quantized, ranks, engine_args) -> None:
    """`lmkit serve --tp N` on ranks > 0: run rank 0's engine steps on this rank's shard until it stops.
    Ctrl-C and SIGTERM are left to rank 0, which drains its requests and then tells this rank to stop."""
    import signal

    from lmkit.errors import LmkitError
    from lmkit.serve.tensor_parallel import close_ranks, shard_for_inference
    from lmkit.serve.tensor_parallel_engine import TensorParallelEngine

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model, tok = _load_model(model_dir, adapter, dtype=dtype, keep_quantized=keep_quantized)
        TensorParallelEngine(shard_for_inference(model, ranks), tok, ranks=ranks, **engine_args).follow()
    except LmkitError as exc:  # rank 0 fails alike and says why
        raise SystemExit(1) from exc
    finally:
        close_ranks()


def _generation_app(sock, model_dir, adapter, name, keys, template, engine_args, max_body_bytes,
                    default_max_tokens, speculative, draft_model, num_speculative_tokens, dtype, keep_quantized,
                    device, loras, enable_lora, watermark, moderation, rate_limits, ranks=None):
    """(app, summary) for a language model: the batching engine behind every route
    (under --tp: rank 0's `TensorParallelEngine`, keeping the other ranks in step)."""
    from lmkit.errors import LmkitError

    try:
        from lmkit.infer.checkpoint_defaults import max_new_tokens_default
        from lmkit.serve.app import create_app
        from lmkit.serve.engine import Engine

        vision_model, tok = _load_vision_model(model_dir, adapter, keep_quantized, loras, draft_model, device)
        if vision_model is not None and ranks is not None:
            raise click.UsageError("--tp serves decoder checkpoints; a vision-language (LLaVA) folder runs in "
                                   "one process")
        if vision_model is not None:  # a LLaVA folder: the engine runs its decoder, images go through it
            model = vision_model.language
        else:
            model, tok = _load_model(model_dir, adapter, dtype=dtype, keep_quantized=keep_quantized)
        tpl = _chat_template(template, tok, model_dir, adapter)
        if default_max_tokens is None:
            default_max_tokens = max_new_tokens_default(model, 0, 256)
        if ranks is not None:
            from lmkit.serve.tensor_parallel import shard_for_inference

            model = shard_for_inference(model, ranks)
        elif device and vision_model is None:
            model = model.to(device)
        registry = None
        if loras or enable_lora:  # multi-LoRA: adapters chosen per request (serve/lora_adapters.py)
            from lmkit.serve.lora_adapters import AdapterRegistry

            registry = AdapterRegistry(model, base_name=name)
            for lora_name, lora_path in loras:
                registry.load(lora_name, lora_path)
        from lmkit.infer.vocab_padding import renderable_size
        from lmkit.serve.speculation import make_speculator

        speculative = speculative or ("draft" if draft_model else "none")
        draft = _load_model(draft_model, None, dtype=dtype)[0] if draft_model and speculative == "draft" else None
        if draft is not None and device:
            draft = draft.to(device)
        speculator = make_speculator(speculative, num_speculative_tokens, draft, model.config.vocab_size,
                                     renderable_size(tok))
        if ranks is not None:
            from lmkit.serve.tensor_parallel_engine import TensorParallelEngine

            engine = TensorParallelEngine(model, tok, ranks=ranks, **engine_args)
        else:
            engine = Engine(model, tok, lora=registry, speculator=speculator, **engine_args)
        app = create_app(engine, model_name=name, template=tpl, api_keys=keys, max_body_bytes=max_body_bytes,
                         default_max_tokens=default_max_tokens, watermark=watermark, moderation=moderation,
                         rate_limits=rate_limits, vision_model=vision_model)
    except LmkitError as exc:
        sock.close()
        raise click.ClickException(str(exc)) from exc
    tp = f", tensor-parallel over {ranks.world} ranks" if ranks is not None else ""
    return app, f"{type(model).__name__}, context {model.config.max_seq_len}{tp}"


@click.command("chat")
@click.argument("model_dir", type=click.Path(exists=True))
@_adapter_option
@click.option("--template", default=None, help=_TEMPLATE_HELP)
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", type=click.IntRange(1), default=None,
              help="Reply length (default: generation_config.json's max_new_tokens, else 256).")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None,
              help="0: greedy (default: generation_config.json's, else 0.7).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Nucleus mass (default: generation_config.json's, else 0.95).")
@click.option("--top-k", type=click.IntRange(0), default=None,
              help="Keep the k best (default: generation_config.json's).")
@click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=None,
              help="HF repetition penalty (default: generation_config.json's, else 1: off).")
@click.option("--seed", type=int, default=None)
@_kv_cache_dtype_option
@dtype_option()
@_keep_quantized_option
def chat_cmd(model_dir, adapter, template, system, max_tokens, temperature, top_p, top_k, repetition_penalty,
             seed, kv_cache_dtype, dtype, keep_quantized) -> None:
    """Chat with MODEL_DIR in the terminal (streaming). Commands: /reset, /exit.

    Decoding follows the checkpoint's generation_config.json (eos ids, do_sample, temperature,
    top_p, top_k, repetition_penalty, max_new_tokens) unless a flag says otherwise."""
    from lmkit.errors import LmkitError

    try:
        from lmkit.infer import GenerationConfig, iter_steps
        from lmkit.infer.checkpoint_defaults import max_new_tokens_default, sampling_settings
        from lmkit.infer.streaming import TextStream
        from lmkit.serve.chat_model import prepare_chat

        model, tok = _load_model(model_dir, adapter, dtype=dtype, keep_quantized=keep_quantized)
        tpl = _chat_template(template, tok, model_dir, adapter)
        sampling = sampling_settings(model, temperature=temperature, top_p=top_p, top_k=top_k,
                                     repetition_penalty=repetition_penalty,
                                     fallback={"temperature": 0.7, "top_p": 0.95})
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
            wanted = max_tokens or max_new_tokens_default(model, len(prep.prompt_ids), 256)
            cfg = GenerationConfig(max_new_tokens=min(wanted, room), seed=seed, stop=prep.stop,
                                   eos_token_id=prep.eos_ids or None, kv_cache_dtype=kv_cache_dtype, **sampling)
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
@click.argument("model_dir", type=click.Path(exists=True))
@_adapter_option
@click.option("-p", "--prompt", required=True, help="Text to continue ('-' reads it from stdin).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="Tokens to add (default: generation_config.json's max_new_tokens / max_length, else 64).")
@click.option("--temperature", type=click.FloatRange(0), default=None,
              help="0: greedy decoding; > 0: sample at this temperature (default: generation_config.json's "
                   "do_sample / temperature, else greedy).")
@click.option("--top-k", type=click.IntRange(0), default=None,
              help="Sampling: keep the k best (0: off; default: generation_config.json's).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Sampling: nucleus probability mass (default: generation_config.json's, else 1).")
@click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=None,
              help="HF repetition penalty (default: generation_config.json's, else 1: off).")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); it is not printed.")
@click.option("--stream/--no-stream", default=False, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, tokens, finish_reason} as JSON.")
@click.option("--compile", "compile_step", is_flag=True,
              help="torch.compile the decode step (CPU: ~10 s once, then about 1.3x faster per token).")
@_kv_cache_dtype_option
@dtype_option()
@_keep_quantized_option
@_tp_option
@watermark_options()
def generate_cmd(model_dir, adapter, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
                 stream, as_json, compile_step, kv_cache_dtype, dtype, keep_quantized, tp=1, watermark=None) -> None:
    """Continue PROMPT with the Hugging Face checkpoint in MODEL_DIR (and the tokenizer beside it),
    or with an adapter folder (its recorded base model, or MODEL_DIR --adapter DIR).
    With --tp N the model is sharded over N processes; the output is the same."""
    if tp == 1:
        return _generate(model_dir, adapter, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                         seed, stop, stream, as_json, compile_step, kv_cache_dtype, dtype, keep_quantized, watermark)
    if compile_step:
        raise click.UsageError("--compile is not supported with --tp (the sharded model runs model.forward)")
    from lmkit.serve.tensor_parallel import close_ranks

    ranks = _tensor_parallel_ranks(tp, model_dir, None, None)
    try:
        _generate(model_dir, adapter, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                  stop, stream, as_json, compile_step, kv_cache_dtype, dtype, keep_quantized, watermark, ranks)
    finally:
        close_ranks()


def _generate(model_dir, adapter, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
              stream, as_json, compile_step, kv_cache_dtype, dtype, keep_quantized, watermark, ranks=None) -> None:
    """`lmkit generate`, on one process or (ranks given) on every tensor-parallel rank, rank 0 printing."""
    import json

    from lmkit.infer import GenerationConfig, generate, iter_steps
    from lmkit.infer.checkpoint_defaults import max_new_tokens_default, sampling_settings
    from lmkit.infer.generate import encode_prompt
    from lmkit.infer.inputs import resolve_config
    from lmkit.infer.streaming import TextStream, decode_output

    echo = click.echo if ranks is None or ranks.leader else (lambda *args, **kwargs: None)
    if ranks is None:
        text = sys.stdin.read() if prompt == "-" else prompt
        model, tok = _load_model(model_dir, adapter, dtype=dtype, keep_quantized=keep_quantized)
    else:
        from lmkit.errors import LmkitError
        from lmkit.serve.tensor_parallel import leader_text, shard_for_inference, shared_seed

        text = leader_text(prompt, ranks)  # stdin reaches rank 0 only
        try:
            model, tok = _load_model(model_dir, adapter, dtype=dtype, keep_quantized=keep_quantized)
            model = shard_for_inference(model, ranks)
        except LmkitError as exc:
            if not ranks.leader:  # every rank fails alike: rank 0 says why
                raise SystemExit(1) from exc
            raise click.ClickException(str(exc)) from exc
        seed = shared_seed(seed, ranks)
    sampling = sampling_settings(model, temperature=temperature, top_p=top_p, top_k=top_k,
                                 repetition_penalty=repetition_penalty, fallback={"temperature": 0.0})
    prompt_ids = encode_prompt(tok, text)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens or max_new_tokens_default(model, len(prompt_ids), 64),
                           seed=seed, stop=list(stop) or None, compile=compile_step, kv_cache_dtype=kv_cache_dtype,
                           watermark=watermark, **sampling)
    cfg = resolve_config(model, cfg)
    skip = [*cfg.eos_token_ids, *_special_ids(tok)]  # special tokens are never printed
    if stream:
        echo(text, nl=False)
        out_stream = TextStream(tok, cfg.stop, skip_ids=skip)
        for step in iter_steps(model, [prompt_ids], cfg, tokenizer=tok):
            if step.done_before[0]:
                break
            echo(out_stream.push(step.tokens[0]), nl=False)
            if out_stream.stopped or step.finished[0]:
                break
        echo(out_stream.finish())
        return
    out = generate(model, [prompt_ids], cfg, tokenizer=tok)
    reply = decode_output(tok, out.sequences[0], cfg.stop, skip)
    if as_json:
        echo(json.dumps({"text": reply, "tokens": out.sequences[0],
                          "finish_reason": out.finish_reasons[0]}, ensure_ascii=False))
    else:
        echo(text + reply)


COMMANDS = [serve_cmd, chat_cmd, generate_cmd]
