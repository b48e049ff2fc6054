"""The OpenAI-compatible HTTP API (FastAPI), on top of the batching `Engine`.

    GET  /v1/models               the served model                              routes_models.py
    POST /v1/completions          text completion                               routes_completions.py
    POST /v1/chat/completions     chat (stream, tools, logprobs)                routes_chat.py
    POST /v1/embeddings           sentence embeddings (float or base64)         routes_embeddings.py
    POST /v1/moderations          moderation of texts (rules + classifier)      routes_moderations.py
    GET  /health, /metrics        liveness + queue; Prometheus text             routes_health.py
    GET/POST /v1/adapters, DELETE /v1/adapters/{name}   LoRA adapters at runtime routes_adapters.py
    GET  /                        the web chat page                             routes_web.py
    POST /v1/inspect/attention    attention maps for the page's panel           routes_inspect.py

Any OpenAI client works against it (`OpenAI(base_url="http://host:port/v1", api_key=...)`).
Streaming is Server-Sent Events in OpenAI's chunk format, ending with ``data: [DONE]``.
Every 4xx/5xx body has OpenAI's shape (api_errors.py). /v1 routes need
``Authorization: Bearer KEY`` when keys are configured, and bodies over the limit get 413
(guard.py). Every response carries ``x-request-id``; every 5xx is logged with it and its
traceback and counted by cause in /metrics (request_tracking.py, failure_log.py).
Request and response shaping is in openai_format.py; the chat stream in chat_stream.py.
"""

import asyncio
from contextlib import asynccontextmanager
from typing import Any

from lmkit.errors import ConfigError, LmkitError, require
from lmkit.serve.api_errors import APIError, error_body  # noqa: F401  (public names of this module)
from lmkit.serve.chat_model import resolve_template
from lmkit.serve.engine import Engine


def create_app(engine: Engine | None, *, model_name: str = "lmkit", template: Any = "chatml",
               api_keys: list[str] | str | None = None, max_body_bytes: int = 1 << 20,
               default_max_tokens: int = 256, embedder=None, max_n: int = 16,
               shutdown_timeout: float | None = 60.0, watermark=None, moderation=None, rate_limits=None,
               vision_model=None):
    """The FastAPI application serving `engine`'s model under the name `model_name`.

    engine None: an embeddings-only server (e.g. a CLIP model, which generates nothing): it
    needs `embedder` and serves /v1/embeddings, /v1/models, /health and /metrics only.

    api_keys: accepted Bearer keys (None or empty: no authentication).
    embedder: a `ModelEmbedder` for /v1/embeddings (default: the engine's model, pooled).
    default_max_tokens: chat replies without max_tokens stop here (or at the context end).
    shutdown_timeout: seconds queued work may take to drain when the server stops.
    watermark: a `WatermarkConfig` (or dict) applied to every generated choice (None: off).
    moderation: a `ModerationConfig` (or dict): prompts and replies are moderated (None: off;
    moderation_gate.py). rate_limits: a `RateLimitConfig`: per-key token buckets (rate_limit.py).
    vision_model: a `VisionLanguageModel` whose decoder is the engine's model: chat messages with
    image_url parts go through it (image_chat.py); None: images are refused with a 400.
    """
    fastapi = require("fastapi", "serve")
    from lmkit.serve import (routes_adapters, routes_chat, routes_completions, routes_embeddings, routes_health,
                             routes_inspect, routes_models, routes_moderations, routes_web)
    from lmkit.serve.api_errors import add_error_handlers
    from lmkit.serve.guard import Guard
    from lmkit.serve.request_tracking import RequestTracker
    from lmkit.serve.server_state import ServerState

    if engine is None and embedder is None:
        raise ConfigError("an embeddings-only server (engine=None) needs an embedder")
    if watermark is not None and engine is not None:
        from lmkit.infer.watermark import WatermarkConfig

        engine.watermark = WatermarkConfig.coerce(watermark)  # read by engine_bridge.submit
    state = ServerState(engine, model_name, resolve_template(template), default_max_tokens=default_max_tokens,
                        max_n=max_n, embedder=embedder, vision_model=vision_model)
    if moderation is not None:
        from lmkit.serve.moderation_gate import ModerationGate

        state.moderation = ModerationGate(moderation, state.metrics.safety)

    @asynccontextmanager
    async def lifespan(app):
        if engine is None:  # embeddings only: nothing runs in the background
            yield
            return
        engine.start()
        yield
        # uvicorn has already waited for in-flight responses; let queued work drain, then stop
        await asyncio.get_running_loop().run_in_executor(None, engine.stop, shutdown_timeout)

    app = fastapi.FastAPI(title="lmkit", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server, app.state.engine, app.state.metrics = state, engine, state.metrics
    add_error_handlers(app)
    if rate_limits is not None and rate_limits.active:
        from lmkit.serve.rate_limit import RateLimiter, RateLimitMiddleware

        app.state.rate_limiter = RateLimiter(rate_limits, state.metrics.safety)
        app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter)  # inside the Guard
    app.add_middleware(Guard, api_keys=api_keys, max_body_bytes=max_body_bytes)
    app.add_middleware(RequestTracker, metrics=state.metrics)  # added last: the outermost
    mounted = (routes_web, routes_health, routes_models, routes_completions, routes_chat, routes_embeddings,
               routes_adapters, routes_moderations, routes_inspect)
    if engine is None:
        mounted = (routes_health, routes_models, routes_embeddings)
    for routes in mounted:
        app.include_router(routes.router)
    return app


def load_engine(model_dir, *, max_batch_size: int = 8, dtype=None, device: str | None = None):
    """(Engine, tokenizer) for a Hugging Face checkpoint directory with tokenizer.json."""
    from lmkit.hub import load_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    model = load_pretrained(model_dir, dtype=dtype)
    if device:
        model = model.to(device)
    try:
        tok = load_tokenizer(model_dir)
    except LmkitError as exc:
        raise ConfigError(f"{model_dir}: cannot load the tokenizer ({exc}); the server needs tokenizer.json "
                          "beside config.json") from exc
    return Engine(model, tok, max_batch_size=max_batch_size), tok
