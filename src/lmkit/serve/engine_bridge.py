"""The event loop's side of the `Engine`: submit a request's choices, receive their events.

The engine calls back from its own thread; `EventPipe` hands the events to an asyncio queue,
waking the loop once per burst rather than once per token. `start_choices` feeds a stream;
`collect_choices` waits for whole results. Engine refusals become OpenAI errors (503, 400).
"""

import asyncio
import threading

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.serve.api_errors import APIError
from lmkit.serve.engine import EngineOverloaded, EngineStopped, TokenEvent
from lmkit.serve.failure_log import CAUSE_GENERATION, CAUSE_OVERLOADED, CAUSE_SHUTTING_DOWN

Job = tuple  # (prompt ids, GenerationConfig) of one choice, + optionally its constraint (structured output)


class EventPipe:
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


def submit(engine, prompt_ids: list[int], cfg: GenerationConfig, callback, constraint=None,
           adapter: str | None = None):
    """`engine.submit` (with the request's structured-output constraint and LoRA adapter, if any),
    with its refusals as OpenAI errors. A server started with a watermark (create_app) applies it."""
    watermark = getattr(engine, "watermark", None)
    if watermark is not None and cfg.watermark is None:
        cfg = cfg.replace(watermark=watermark)
    try:
        if constraint is not None or adapter is not None:
            return engine.submit(prompt_ids, cfg, callback, constraint, adapter=adapter)
        return engine.submit(prompt_ids, cfg, callback)
    except EngineOverloaded as exc:
        raise APIError(503, str(exc), "server_error", code="overloaded", cause=CAUSE_OVERLOADED) from None
    except EngineStopped as exc:
        raise APIError(503, str(exc), "server_error", code="overloaded", cause=CAUSE_SHUTTING_DOWN) from None
    except ConfigError as exc:
        raise APIError(400, str(exc)) from None


def start_choices(engine, jobs: list[Job], per_token: bool = True, adapter: str | None = None):
    """Submit every choice; returns (queue of (index, [TokenEvent, ...]), handles).

    per_token: deliver events as they come (streaming); else each choice's events arrive
    once, together, when it finishes (no wake-up of the event loop per token).
    """
    pipe = EventPipe(asyncio.get_running_loop())
    handles = []
    try:
        for idx, (ids, cfg, *constraint) in enumerate(jobs):
            if per_token:
                def cb(ev: TokenEvent, idx=idx) -> None:
                    pipe.put((idx, [ev]))
            else:
                buf: list[TokenEvent] = []

                def cb(ev: TokenEvent, idx=idx, buf=buf) -> None:
                    buf.append(ev)
                    if ev.finish_reason is not None or ev.error is not None:
                        pipe.put((idx, buf))
            handles.append(submit(engine, ids, cfg, cb, *(constraint or (None,)), adapter=adapter))
    except Exception:
        cancel_all(handles)
        raise
    return pipe.queue, handles


def cancel_all(handles) -> None:
    """Cancel requests: a no-op for finished ones; frees the batch slot if the client went away."""
    for h in handles:
        h.cancel()


def generation_failed(event: TokenEvent) -> APIError:
    """The 500 for a choice the engine failed; raised `from` the engine's exception, so the
    failure log shows the real traceback."""
    err = APIError(500, event.error, "server_error", cause=CAUSE_GENERATION)
    err.__cause__ = event.exception
    return err


async def collect_choices(engine, jobs: list[Job], adapter: str | None = None) -> list[dict]:
    """Run choices to the end: per choice {text, tokens, logprobs, top, finish_reason}."""
    queue, handles = start_choices(engine, jobs, per_token=False, adapter=adapter)
    results = [{"text": [], "tokens": [], "logprobs": [], "top": [], "finish_reason": None} for _ in jobs]
    left = len(jobs)
    try:
        while left:
            idx, evs = await queue.get()
            r = results[idx]
            for ev in evs:
                if ev.error:
                    raise generation_failed(ev)
                r["text"].append(ev.text)
                if ev.token is not None:
                    r["tokens"].append(ev.token)
                    r["logprobs"].append(ev.logprob)
                    r["top"].append(ev.top_logprobs)
                if ev.finish_reason is not None:
                    r["finish_reason"] = ev.finish_reason
                    left -= 1
    finally:
        cancel_all(handles)
    for r in results:
        r["text"] = "".join(r["text"])
    return results
