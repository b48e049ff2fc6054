"""The OpenAI-compatible HTTP API (FastAPI), on top of the batching `Engine`.

    GET  /v1/models               the served model
    POST /v1/completions          text completion (stream, n, stop, logprobs, echo, penalties, seed)
    POST /v1/chat/completions     chat (stream, n, stop, logprobs/top_logprobs, tools/tool_choice)
    POST /v1/embeddings           sentence embeddings (float or base64)
    GET  /health                  liveness + queue state
    GET  /metrics                 Prometheus text: requests, tokens, latency histogram, queue
    GET  /                        the web chat page

Any OpenAI client works against it (`OpenAI(base_url="http://host:port/v1", api_key=...)`).
Streaming is Server-Sent Events in OpenAI's chunk format, ending with ``data: [DONE]``.
Every 4xx/5xx body has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
FastAPI's own validation errors included (as 400, like OpenAI). /v1 routes need
``Authorization: Bearer KEY`` when keys are configured. Requests over the body limit get 413;
a prompt that cannot fit the context with its max_tokens gets 400 saying by how much.

Sampling: temperature 0 is greedy; otherwise temperature / top_p sampling (OpenAI's
default temperature is 1). `seed` makes sampling reproducible; with n > 1 choice i uses
seed + i so the choices differ.
"""

import asyncio
import base64
import hmac
import html
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError, LmkitError, TokenizerError, require
from lmkit.infer.config import GenerationConfig
from lmkit.serve.chat_model import finish_chat, prepare_chat, resolve_template
from lmkit.serve.engine import Engine, EngineOverloaded, EngineStopped, TokenEvent
from lmkit.serve.metrics import Metrics
from lmkit.serve.tool_calls import CALL_OPEN, partial_open_len

WEB_DIR = Path(__file__).parent / "web"


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class _Pipe:
    """Engine thread -> event loop: items are batched so the loop is woken once per burst, not per item."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._items: list = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, item) -> None:  # any thread
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:  # the event loop's thread
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for item in items:
            self.queue.put_nowait(item)


def create_app(engine: Engine, *, model_name: str = "lmkit", template: Any = "chatml",
               api_keys: list[str] | str | None = None, max_body_bytes: int = 1 << 20,
               default_max_tokens: int = 256, embedder=None, max_n: int = 16,
               shutdown_timeout: float | None = 60.0):
    """The FastAPI application serving `engine`'s model under the name `model_name`.

    api_keys: accepted Bearer keys (None or empty: no authentication).
    embedder: a `ModelEmbedder` for /v1/embeddings (default: the engine's model, pooled).
    default_max_tokens: chat replies without max_tokens stop here (or at the context end).
    """
    fastapi = require("fastapi", "serve")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lmkit.serve import schemas

    keys = [api_keys] if isinstance(api_keys, str) else [k for k in (api_keys or []) if k]
    tpl = resolve_template(template)
    model, tok = engine.model, engine.tokenizer
    ctx = model.config.max_seq_len
    metrics = Metrics()
    created = int(time.time())
    state: dict[str, Any] = {"embedder": embedder}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        # uvicorn has already waited for in-flight responses; let queued work drain, then stop
        await asyncio.get_running_loop().run_in_executor(None, engine.stop, shutdown_timeout)

    app = fastapi.FastAPI(title="lmkit", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics

    # ---- errors --------------------------------------------------------------------------
    def err(status: int, message: str, type_: str | None = None, param=None, code=None) -> JSONResponse:
        return JSONResponse(error_body(message, type_ or _TYPES.get(status, "server_error" if status >= 500
                                                                     else "invalid_request_error"), param, code),
                            status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return err(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            return err(400, f"the request body is not valid JSON ({detail} at position {first['loc'][-1]})",
                       code="invalid_json")
        parts, param = [], None
        for e in errors[:5]:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            where = ".".join(loc) or "body"
            param = param or where
            parts.append(f"{where}: {e.get('msg')}")
        return err(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path} ({msg})"
        return err(exc.status_code, msg)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        return err(500, f"internal server error: {type(exc).__name__}: {exc}", "server_error")

    # ---- middleware: body limit, auth, metrics (pure ASGI, so streaming is untouched) -----
    class Guard:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            path = scope.get("path", "")
            start = time.perf_counter()
            status_box = {"status": 500}

            async def send_wrapped(message):
                if message["type"] == "http.response.start":
                    status_box["status"] = message["status"]
                await send(message)

            async def reply(status, body):
                data = json.dumps(body).encode()
                await send_wrapped({"type": "http.response.start", "status": status,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})

            headers = dict(scope.get("headers") or [])
            try:
                if path.startswith("/v1") and keys:
                    auth = headers.get(b"authorization", b"").decode("latin-1")
                    if not auth:
                        return await reply(401, error_body(
                            "missing API key: send 'Authorization: Bearer <key>' (the key given to lmkit serve "
                            "--api-key or LMKIT_API_KEY)", "authentication_error", None, "invalid_api_key"))
                    scheme, _, given = auth.partition(" ")
                    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip(), k) for k in keys):
                        return await reply(401, error_body("incorrect API key provided", "authentication_error",
                                                           None, "invalid_api_key"))
                length = headers.get(b"content-length")
                if length is not None:
                    try:
                        too_big = int(length) > max_body_bytes
                    except ValueError:
                        return await reply(400, error_body("invalid Content-Length header", "invalid_request_error"))
                    if too_big:
                        return await reply(413, error_body(
                            f"request body of {int(length)} bytes is over the limit of {max_body_bytes} bytes",
                            "invalid_request_error", None, "request_too_large"))
                seen = 0

                async def limited_receive():
                    nonlocal seen
                    message = await receive()
                    if message["type"] == "http.request":
                        seen += len(message.get("body", b""))
                        if seen > max_body_bytes:
                            raise StarletteHTTPException(
                                413, f"request body is over the limit of {max_body_bytes} bytes")
                    return message

                await self.app(scope, limited_receive, send_wrapped)
            finally:
                if path.startswith("/v1"):
                    metrics.observe_request(path, status_box["status"], time.perf_counter() - start)

    app.add_middleware(Guard)

    # ---- helpers -------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name and name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           "invalid_request_error", "model", "model_not_found")

    def gen_config(req, max_tokens: int, seed: int | None, logprobs: bool, top: int, stop, eos) -> GenerationConfig:
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        try:
            return GenerationConfig(
                max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                top_p=top_p, presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                seed=seed, stop=stop or None, logprobs=logprobs, top_logprobs=top, eos_token_id=eos or None)
        except ConfigError as exc:
            raise APIError(400, str(exc)) from None

    def budget(prompt_len: int, requested: int | None, default: int, param: str) -> int:
        room = ctx - prompt_len
        if requested is None:
            if room < 1:
                raise APIError(400, f"the prompt has {prompt_len} tokens, which fills the model's context of "
                                    f"{ctx} tokens; shorten it", param=param, code="context_length_exceeded")
            return min(default, room)
        if prompt_len + requested > ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens, but the request asks for "
                                f"{prompt_len + requested} ({prompt_len} in the prompt + {requested} max_tokens); "
                                f"shorten the prompt or lower max_tokens", param=param, code="context_length_exceeded")
        return requested

    def token_str(i: int) -> tuple[str, list[int]]:
        if hasattr(tok, "token_bytes"):
            b = tok.token_bytes(int(i))
        else:
            b = tok.decode([int(i)]).encode("utf-8")
        return b.decode("utf-8", "replace"), list(b)

    def stop_list(stop) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop must be a non-empty string or a list of up to 4 non-empty strings", param="stop")
        return stops

    def submit(prompt_ids: list[int], cfg: GenerationConfig, callback):
        try:
            return engine.submit(prompt_ids, cfg, callback)
        except (EngineOverloaded, EngineStopped) as exc:
            raise APIError(503, str(exc), "server_error", code="overloaded") from None
        except ConfigError as exc:
            raise APIError(400, str(exc)) from None

    def start_choices(prompts_cfgs: list[tuple[list[int], GenerationConfig]], per_token: bool = True):
        """Submit every choice; returns (queue of (index, [TokenEvent, ...]), handles).

        per_token: deliver events as they come (streaming); else each choice's events arrive
        once, together, when it finishes (no wake-up of the event loop per token).
        """
        pipe = _Pipe(asyncio.get_running_loop())
        handles = []
        try:
            for idx, (ids, cfg) in enumerate(prompts_cfgs):
                if per_token:
                    def cb(ev: TokenEvent, idx=idx) -> None:
                        pipe.put((idx, [ev]))
                else:
                    buf: list[TokenEvent] = []

                    def cb(ev: TokenEvent, idx=idx, buf=buf) -> None:
                        buf.append(ev)
                        if ev.finish_reason is not None or ev.error is not None:
                            pipe.put((idx, buf))
                handles.append(submit(ids, cfg, cb))
        except Exception:
            for h in handles:
                h.cancel()
            raise
        return pipe.queue, handles

    async def collect(prompts_cfgs) -> list[dict]:
        """Run choices to the end: per choice {text, tokens, logprobs, top, finish_reason}."""
        queue, handles = start_choices(prompts_cfgs, per_token=False)
        results = [{"text": [], "tokens": [], "logprobs": [], "top": [], "finish_reason": None}
                   for _ in prompts_cfgs]
        left = len(prompts_cfgs)
        try:
            while left:
                idx, evs = await queue.get()
                r = results[idx]
                for ev in evs:
                    if ev.error:
                        raise APIError(500, ev.error, "server_error")
                    r["text"].append(ev.text)
                    if ev.token is not None:
                        r["tokens"].append(ev.token)
                        r["logprobs"].append(ev.logprob)
                        r["top"].append(ev.top_logprobs)
                    if ev.finish_reason is not None:
                        r["finish_reason"] = ev.finish_reason
                        left -= 1
        finally:
            for h in handles:
                h.cancel()  # no-op for finished requests; frees the batch slot if the client went away
        for r in results:
            r["text"] = "".join(r["text"])
        return results

    def chat_logprobs(tokens, lps, tops) -> dict:
        content = []
        for t, lp, top in zip(tokens, lps, tops):
            s, b = token_str(t)
            entry = {"token": s, "logprob": lp, "bytes": b, "top_logprobs": []}
            for ti, tlp in (top or {}).items():
                ts, tb = token_str(ti)
                entry["top_logprobs"].append({"token": ts, "logprob": tlp, "bytes": tb})
            content.append(entry)
        return {"content": content}

    def completion_logprobs(tokens, lps, tops, offset0: int) -> dict:
        strs = [token_str(t)[0] for t in tokens]
        offsets, pos = [], offset0
        for s in strs:
            offsets.append(pos)
            pos += len(s)
        return {"tokens": strs, "token_logprobs": lps,
                "top_logprobs": [{token_str(i)[0]: v for i, v in (top or {}).items()} for top in tops] if any(tops)
                else None, "text_offset": offsets}

    def sse(obj) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"

    # ---- routes --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        page = WEB_DIR / "index.html"
        if not page.is_file():
            raise APIError(404, f"the web page {page} is not installed (package data missing); the API at /v1 "
                                "works without it", "not_found_error")
        text = page.read_text(encoding="utf-8").replace("{{MODEL_NAME}}", html.escape(model_name))
        return HTMLResponse(text)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "running": engine.running, "waiting": engine.waiting}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route():
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "lmkit",
             "max_model_len": ctx}]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        check_model(name)
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lmkit", "max_model_len": ctx}

    @app.post("/v1/completions")
    async def completions(req: schemas.CompletionRequest, request: Request):
        check_model(req.model)
        if req.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of is not supported (use n)", param="best_of")
        if req.n > max_n:
            raise APIError(400, f"n must be <= {max_n}", param="n")
        prompts = req.prompt_token_lists(tok)
        if not prompts or any(not p for p in prompts):
            raise APIError(400, "prompt must not be empty", param="prompt")
        vocab = model.config.vocab_size
        for p in prompts:
            if any(not 0 <= t < vocab for t in p):
                raise APIError(400, f"prompt has token ids outside the vocabulary [0, {vocab})", param="prompt")
        stops = stop_list(req.stop)
        want_lp = req.logprobs is not None
        top = min(int(req.logprobs or 0), 20)
        jobs, meta = [], []
        for pi, p in enumerate(prompts):
            max_tokens = budget(len(p), req.max_tokens, 16, "max_tokens")
            for i in range(req.n):
                seed = None if req.seed is None else req.seed + i
                jobs.append((p, gen_config(req, max_tokens, seed, want_lp, top, stops, None)))
                meta.append(pi)
        prompt_texts = [tok.decode(p) if req.echo else "" for p in prompts]
        rid, now = "cmpl-" + uuid.uuid4().hex, int(time.time())
        usage_prompt = sum(len(p) for p in prompts)
        if not req.stream:
            results = await collect(jobs)
            choices, used = [], 0
            for idx, r in enumerate(results):
                echo = prompt_texts[meta[idx]]
                used += len(r["tokens"])
                choices.append({"index": idx, "text": echo + r["text"], "finish_reason": r["finish_reason"],
                                "logprobs": completion_logprobs(r["tokens"], r["logprobs"], r["top"], len(echo))
                                if want_lp else None})
            metrics.add_tokens(usage_prompt, used)
            return {"id": rid, "object": "text_completion", "created": now, "model": model_name, "choices": choices,
                    "usage": {"prompt_tokens": usage_prompt, "completion_tokens": used,
                              "total_tokens": usage_prompt + used}, "system_fingerprint": None}

        queue, handles = start_choices(jobs)
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def events():
            left, used = len(jobs), 0
            offsets = [len(prompt_texts[meta[i]]) for i in range(len(jobs))]
            try:
                for idx in range(len(jobs)):
                    if req.echo and prompt_texts[meta[idx]]:
                        yield sse({"id": rid, "object": "text_completion", "created": now, "model": model_name,
                                   "choices": [{"index": idx, "text": prompt_texts[meta[idx]], "logprobs": None,
                                                "finish_reason": None}]})
                while left:
                    idx, (ev,) = await queue.get()
                    if ev.error:
                        yield sse(error_body(ev.error, "server_error"))
                        break
                    used += ev.token is not None
                    lp = None
                    if want_lp and ev.token is not None:
                        lp = completion_logprobs([ev.token], [ev.logprob], [ev.top_logprobs], offsets[idx])
                    offsets[idx] += len(ev.text)
                    if ev.text or lp or ev.finish_reason:
                        yield sse({"id": rid, "object": "text_completion", "created": now, "model": model_name,
                                   "choices": [{"index": idx, "text": ev.text, "logprobs": lp,
                                                "finish_reason": ev.finish_reason}]})
                    if ev.finish_reason:
                        left -= 1
                if include_usage:
                    yield sse({"id": rid, "object": "text_completion", "created": now, "model": model_name,
                               "choices": [], "usage": {"prompt_tokens": usage_prompt, "completion_tokens": used,
                                                        "total_tokens": usage_prompt + used}})
                yield b"data: [DONE]\n\n"
                metrics.add_tokens(usage_prompt, used)
            finally:
                for h in handles:
                    h.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: schemas.ChatCompletionRequest, request: Request):
        check_model(req.model)
        if req.n > max_n:
            raise APIError(400, f"n must be <= {max_n}", param="n")
        if tok is None:
            raise APIError(400, "this server has no tokenizer: chat needs one")
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        try:
            prep = prepare_chat(model, tok, tpl, messages, tools=req.tools, tool_choice=req.tool_choice or "auto",
                                stop=stop_list(req.stop))
        except (ConfigError, TokenizerError) as exc:
            raise APIError(400, str(exc), param="messages") from None
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = budget(len(prep.prompt_ids), requested, default_max_tokens, "messages")
        want_lp = bool(req.logprobs)
        top = int(req.top_logprobs or 0)
        if top and not want_lp:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        jobs = [(prep.prompt_ids, gen_config(req, max_tokens, None if req.seed is None else req.seed + i, want_lp,
                                             top, prep.stop, prep.eos_ids)) for i in range(req.n)]
        rid, now = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        n_prompt = len(prep.prompt_ids)
        base = {"id": rid, "created": now, "model": model_name, "system_fingerprint": None}

        if not req.stream:
            results = await collect(jobs)
            choices, used = [], 0
            for idx, r in enumerate(results):
                used += len(r["tokens"])
                content, calls, finish = finish_chat(prep, r["text"], r["finish_reason"])
                message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None}
                if calls:
                    message["tool_calls"] = calls
                choices.append({"index": idx, "message": message, "finish_reason": finish,
                                "logprobs": chat_logprobs(r["tokens"], r["logprobs"], r["top"]) if want_lp else None})
            metrics.add_tokens(n_prompt, used)
            return {**base, "object": "chat.completion", "choices": choices,
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used}}

        queue, handles = start_choices(jobs)
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        parse_tools = bool(prep.tools)

        def chunk(idx, delta, finish=None, logprobs=None):
            return sse({**base, "object": "chat.completion.chunk",
                        "choices": [{"index": idx, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        async def events():
            n = len(jobs)
            full = [prep.prefix for _ in range(n)]  # everything generated (with the forced prefix)
            sent = [0] * n  # characters of `full` already sent as content
            holding = [False] * n  # a <tool_call> began: the rest is held for parsing
            pend_lp: list[list] = [[] for _ in range(n)]
            left, used = n, 0
            try:
                for idx in range(n):
                    yield chunk(idx, {"role": "assistant", "content": ""})
                while left:
                    idx, (ev,) = await queue.get()
                    if ev.error:
                        yield sse(error_body(ev.error, "server_error"))
                        break
                    if ev.token is not None:
                        used += 1
                        if want_lp:
                            pend_lp[idx].append((ev.token, ev.logprob, ev.top_logprobs))
                    full[idx] += ev.text
                    text = full[idx]
                    if parse_tools and not holding[idx] and CALL_OPEN in text:
                        holding[idx] = True
                    end = sent[idx] if holding[idx] else (len(text) - partial_open_len(text) if parse_tools else len(text))
                    if ev.finish_reason is None:
                        if end > sent[idx]:
                            lp = None
                            if pend_lp[idx]:
                                lp = chat_logprobs(*zip(*pend_lp[idx]))
                                pend_lp[idx] = []
                            yield chunk(idx, {"content": text[sent[idx]:end]}, None, lp)
                            sent[idx] = end
                        continue
                    left -= 1
                    content, calls, finish = finish_chat(prep, text[len(prep.prefix):], ev.finish_reason)
                    lp = chat_logprobs(*zip(*pend_lp[idx])) if pend_lp[idx] else None
                    if calls:
                        already = text[:sent[idx]]
                        rest = content[len(already):] if content.startswith(already) else ""
                        if rest:
                            yield chunk(idx, {"content": rest})
                        delta = {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}
                        yield chunk(idx, delta, None, lp)
                        yield chunk(idx, {}, finish)
                    else:
                        if len(text) > sent[idx] or lp:
                            yield chunk(idx, {"content": text[sent[idx]:]}, None, lp)
                        yield chunk(idx, {}, finish)
                if include_usage:
                    yield sse({**base, "object": "chat.completion.chunk", "choices": [],
                               "usage": {"prompt_tokens": n_prompt, "completion_tokens": used,
                                         "total_tokens": n_prompt + used}})
                yield b"data: [DONE]\n\n"
                metrics.add_tokens(n_prompt, used)
            finally:
                for h in handles:
                    h.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/embeddings")
    async def embeddings(req: schemas.EmbeddingRequest):
        check_model(req.model)
        emb = state["embedder"]
        if emb is None:
            from lmkit.serve.embeddings import ModelEmbedder

            try:
                emb = state["embedder"] = ModelEmbedder(model, tok)
            except ConfigError as exc:
                raise APIError(400, str(exc)) from None
        if req.encoding_format not in ("float", "base64"):
            raise APIError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        try:
            inputs = req.token_lists(emb)
        except (ConfigError, TokenizerError) as exc:
            raise APIError(400, str(exc), param="input") from None
        if not inputs or len(inputs) > 2048:
            raise APIError(400, "input must hold between 1 and 2048 items", param="input")
        from starlette.concurrency import run_in_threadpool

        try:
            vecs = await run_in_threadpool(emb.embed, inputs)
        except ConfigError as exc:
            raise APIError(400, str(exc), param="input") from None
        if req.dimensions is not None:
            if not 1 <= req.dimensions <= vecs.shape[1]:
                raise APIError(400, f"dimensions must be in [1, {vecs.shape[1]}]", param="dimensions")
            import torch.nn.functional as F

            vecs = F.normalize(vecs[:, : req.dimensions], dim=-1)
        data = []
        for i, v in enumerate(vecs):
            if req.encoding_format == "base64":
                payload: Any = base64.b64encode(v.float().numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                payload = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": payload})
        n_tok = sum(len(x) for x in inputs)
        metrics.add_tokens(n_tok, 0)
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

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
