"""The batching engine: one background thread decodes every running request together.

Serving one request at a time leaves most of the hardware idle: a decode step of a small
batch reads the same weights as a step of one row, so B rows cost little more than one
(吞吐量 / throughput grows with the batch while each row's latency barely moves). The engine
does **continuous batching** (iteration-level scheduling, as in Orca and vLLM):

    loop:
        admit   waiting requests (排队, the queue) join while the batch has room: their
                prompts are prefilled together (one forward, left-padded) and each gets its
                first token from the prefill logits
        decode  one step for every running row: feed each row's newest token, get logits
        choose  per row: its own logits processors, greedy or seeded sampling, logprobs
                (lmkit.infer.select_tokens), then EOS / stop strings / max_tokens
                (lmkit.infer's StopTracker, read as text through TextStream)
        retire  finished rows leave the batch at once; their slots go to waiting requests

A new request therefore never waits for the whole batch to finish, only for the current step.

Failure isolation. One request's failure never fails another: whatever goes wrong while
choosing a row's token (a processor, the tokenizer, a stop string) ends that request with an
error event and the others continue; a prefill that fails for several newcomers is retried
one by one, so only the request that cannot run fails. Only a failure of the batched decode
forward itself (out of memory, say) ends every row of that step. The error event carries the
exception, so the server logs its real traceback (engine_bridge.py, event_stream.py).
With a tokenizer, the output rows it cannot render (vocabulary padding) are never chosen.
Structured output: a request may carry a `TokenConstraint` (a compiled JSON schema, regex or
grammar); its row chooses among the ids the constraint allows (`select_tokens(allowed=...)`).

KV cache layout. All running rows share one `KVCache` [B, kv_heads, capacity, head_dim]
whose write position `cur` is common; row i holds its n_i cached tokens right-aligned in
columns [cur - n_i, cur). The columns to the left are hidden by an additive padding bias
and positions count real tokens only, so every row computes exactly what it would alone
(the same trick as left padding in `lmkit.infer.generate`). When rows join or leave the
cache is re-laid out compactly (cur = max n_i, capacity = cur + the most tokens any row
may still add), a copy proportional to the cache, not to the model.

Decode steps go through lmkit.infer's runner (`forward_step`: the fused step when the
architecture allows it, else `model.forward` with the mask and positions); prefill uses
`ModelRunner`. Text comes from `TextStream` (never splits a character, holds back possible
stop strings).
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmkit.errors import ConfigError, LmkitError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.constraint import ConstraintArg, row_constraints
from lmkit.infer.fused_step import padding_bias
from lmkit.infer.inputs import check_fits, left_pad, resolve_config
from lmkit.infer.runner import ModelRunner, fast_decoder, forward_step
from lmkit.infer.sampling import build_logits_processors
from lmkit.infer.select import make_generator, select_tokens
from lmkit.infer.stop import StopTracker
from lmkit.infer.streaming import TextStream
from lmkit.infer.vocab_padding import mask_unrenderable, renderable_size
from lmkit.models.kv_cache import KVCache


class EngineOverloaded(LmkitError):
    """The waiting queue is full: the client should retry later (HTTP 503)."""


class EngineStopped(LmkitError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class TokenEvent:
    """One decoding step of one request, delivered to the request's callback (engine thread).

    text: new text (may be "": held back, or an EOS); token: the id chosen this step;
    logprob / top_logprobs: of that token under the processed distribution, when asked;
    finish_reason: set on the last event ("stop" or "length"), with stop_reason the EOS id or
    stop string; error: set (and nothing else) when the engine failed on this request, with
    exception the exception that failed it (its traceback, for the server log).
    """

    text: str
    token: int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass
class Completion:
    """A finished request (what `Engine.generate` returns)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None
    prompt_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


class RequestHandle:
    """Returned by `Engine.submit`; `cancel()` drops the request at the next step."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.cancelled = False
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    handle: RequestHandle
    prompt: list[int]
    cfg: GenerationConfig
    callback: Callable[[TokenEvent], None]
    procs: object = None
    gen: torch.Generator | None = None
    history: torch.Tensor | None = None  # [1, prompt + max_new] for the processors
    stop: StopTracker | None = None  # EOS ids, stop strings, max_new_tokens
    stream: TextStream | None = None  # the text of `stop`'s tokens (with a tokenizer)
    generated: int = 0
    cached: int = 0  # tokens of this row in the KV cache
    pending: int | None = None  # newest token, not yet fed to the model
    done: bool = False
    slot: int = -1  # row index in the current cache (or in the prefill cache while joining)
    constraint: object = None  # structured output: a TokenConstraint (lmkit.infer.constraint), or None
    output: list[int] = field(default_factory=list)  # the chosen tokens (speculation looks up n-grams in them)


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    batch_rows: int = 0  # sum over decode steps of the batch size (mean batch = batch_rows / decode_steps)
    prefills: int = 0
    errors: int = 0  # requests the engine failed
    queue_wait_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Engine:
    """Continuous-batching generation for one decoder model.

    engine = Engine(model, tokenizer, max_batch_size=8); engine.start()
    handle = engine.submit(prompt_ids, GenerationConfig(max_new_tokens=32), callback)
    result = engine.generate(prompt_ids, GenerationConfig(...))   # blocking helper
    engine.stop()   # finishes running and queued requests first (graceful)
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, max_waiting: int = 1024,
                 fused: bool = True, speculator=None) -> None:
        if type(model).__name__ != "DecoderLM" or not hasattr(model, "make_cache"):
            raise ConfigError(f"the engine serves decoder language models (DecoderLM), got {type(model).__name__}")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.config
        self.fused = fast_decoder(model, cfg.max_seq_len) if fused else None
        self.vocab_limit = renderable_size(tokenizer)  # rows beyond the tokenizer are never chosen
        self._waiting: collections.deque[_Row] = collections.deque()
        self._rows: list[_Row] = []
        self._cache: KVCache | None = None
        self._bias: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.stats = EngineStats()
        self.speculator = speculator  # serve/speculation.py: drafts verified in one forward, or None

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmkit-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the running and queued ones, then end the thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ---- requests -----------------------------------------------------------------------
    def prepare_config(self, config: GenerationConfig) -> GenerationConfig:
        cfg = resolve_config(self.model, config)
        if cfg.num_beams > 1:
            raise ConfigError("beam search is not served (num_beams must be 1)")
        return cfg

    def submit(self, prompt_ids: list[int], config: GenerationConfig,
               callback: Callable[[TokenEvent], None], constraint: ConstraintArg = None) -> RequestHandle:
        """Queue a request; `callback(TokenEvent)` is called from the engine thread for every step.

        constraint: structured output, a compiled grammar (lmkit.infer.structured_output) or a
        `TokenConstraint`; the request's tokens are chosen among the ids it allows.
        """
        cfg = self.prepare_config(config)
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ConfigError("the prompt is empty: give at least one token")
        check_fits(self.model, [prompt], cfg)
        if cfg.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer")
        constraint = row_constraints(constraint, 1, cfg.eos_token_ids)[0]  # bound to the request's EOS ids
        handle = RequestHandle(uuid.uuid4().hex)
        row = _Row(handle, prompt, cfg, callback, constraint=constraint)
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise EngineOverloaded(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(row)
            self.stats.requests += 1
            self.stats.prompt_tokens += len(prompt)
            self._lock.notify_all()
        if self._thread is None:
            self.start()
        return handle

    def generate(self, prompt_ids: list[int], config: GenerationConfig, timeout: float | None = None,
                 constraint: ConstraintArg = None) -> Completion:
        """Blocking: submit and wait for the whole completion."""
        done = threading.Event()
        events: list[TokenEvent] = []

        def collect(ev: TokenEvent) -> None:
            events.append(ev)
            if ev.finish_reason is not None or ev.error is not None:
                done.set()

        cfg = self.prepare_config(config)
        self.submit(prompt_ids, cfg, collect, constraint)
        if not done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if events[-1].error:
            raise LmkitError(events[-1].error) from events[-1].exception
        toks = [e.token for e in events if e.token is not None]
        return Completion(
            "".join(e.text for e in events), toks, events[-1].finish_reason, events[-1].stop_reason,
            len(prompt_ids),
            [e.logprob for e in events] if cfg.logprobs else None,
            [e.top_logprobs for e in events] if cfg.top_logprobs else None,
        )

    # ---- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._rows and not self._waiting:
                    if self._stopping:
                        self._closed = True
                        return
                    self._lock.wait(0.5)
                room = self.max_batch_size - len(self._rows)
                joining = []
                while room > 0 and self._waiting:
                    row = self._waiting.popleft()
                    if row.handle.cancelled:
                        continue
                    joining.append(row)
                    room -= 1
            try:
                with torch.inference_mode():
                    if joining:
                        self._admit(joining)
                    if self._rows:
                        self._decode_step()
            except Exception as exc:  # the batched step failed (OOM, a bug): fail the requests in flight
                self._fail(self._rows + [r for r in joining if r not in self._rows], exc)
                self._rows, self._cache, self._bias, self._mask = [], None, None, None

    def _fail(self, rows: list[_Row], exc: BaseException) -> None:
        """End `rows` with an error event carrying `exc`; the other requests are not touched."""
        msg = f"generation failed: {type(exc).__name__}: {exc}"
        for row in rows:
            if not row.done:
                row.done = True
                self.stats.errors += 1
                _safe_call(row.callback, TokenEvent("", error=msg, exception=exc))

    def _init_row(self, row: _Row) -> None:
        cfg = row.cfg
        n = len(row.prompt)
        row.stop = StopTracker.for_config(cfg, self.tokenizer)
        row.procs = build_logits_processors(cfg, n, cfg.eos_token_ids)
        row.gen = make_generator(cfg, self.device)
        if row.procs:
            row.history = torch.empty(1, n + cfg.max_new_tokens, dtype=torch.long, device=self.device)
            row.history[0, :n] = torch.tensor(row.prompt, dtype=torch.long)
        if self.tokenizer is not None:
            row.stream = TextStream(self.tokenizer, skip_ids=cfg.eos_token_ids, tracker=row.stop)
        self.stats.queue_wait_s += time.perf_counter() - row.handle.submitted

    def _admit(self, joining: list[_Row]) -> None:
        """Set up the newcomers (a request that cannot be set up fails alone), then join them."""
        ready = []
        for row in joining:
            try:
                self._init_row(row)
                ready.append(row)
            except Exception as exc:
                self._fail([row], exc)
        if ready:
            self._join(ready)

    def _join(self, joining: list[_Row]) -> None:
        """Prefill the newcomers together, choose their first tokens, merge them into the batch.

        A failed prefill of several newcomers is retried one by one, so only a request that
        cannot run fails; the running rows are untouched until the merge succeeds.
        """
        try:
            ids, mask = left_pad([r.prompt for r in joining], fill=0, device=self.device)
            k, t = ids.shape
            for j, r in enumerate(joining):
                r.slot = j
                r.cached = len(r.prompt)
            cache = self.model.make_cache(k, t)
            logits = ModelRunner(self.model, k, t, mask, fused=False).prefill(ids, cache)
        except Exception as exc:
            if len(joining) == 1:
                self._fail(joining, exc)
            else:
                for row in joining:
                    self._join([row])
            return
        self.stats.prefills += 1
        self._choose(joining, logits[:, -1])
        survivors = [r for r in joining if not r.done]
        old = [r for r in self._rows if not r.done]
        if survivors:
            try:
                self._relayout(old, survivors, cache, t)
            except Exception as exc:  # self._rows and the shared cache are unchanged: only the newcomers fail
                self._fail(survivors, exc)

    def _decode_step(self) -> None:
        rows = self._rows
        b = len(rows)
        cache = self._cache
        if not self._speculative_step():
            ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self.device)
            pos = torch.tensor([[r.cached] for r in rows], dtype=torch.long, device=self.device)
            logits = forward_step(self.model, self.fused, ids, pos, cache, self._mask, self._bias)
            for r in rows:
                r.cached += 1
            self.stats.decode_steps += 1
            self.stats.batch_rows += b
            self._choose(rows, logits[:, -1])
        if any(r.done for r in rows):
            keep = [r for r in rows if not r.done]
            if keep:
                self._relayout(keep, [], None, 0)
            else:
                self._rows, self._cache, self._bias, self._mask = [], None, None, None

    # ---- speculative decoding (the hook; the method is in speculation.py) ---------------
    def _speculative_step(self) -> bool:
        """One verifying forward of the pending token + drafts, when speculation applies; False if not.

        Applies to a lone, plain greedy request (see speculation.py for why): the drafts are
        fed after the pending token in one step, the target keeps the agreeing prefix plus its
        own next token, and the rejected columns are dropped from the cache (truncate).
        """
        spec, rows = self.speculator, self._rows
        if spec is None or len(rows) != 1 or self._waiting or self._mask is not None:
            return False
        r = rows[0]
        if r.procs or r.cfg.do_sample or r.cfg.logprobs or r.constraint is not None or r.handle.cancelled:
            return False
        drafts = spec.propose(r.prompt + r.output, r.cfg.max_new_tokens - r.generated - 1)
        if not drafts:
            return False
        cache, g = self._cache, len(drafts)
        ids = torch.tensor([[r.pending, *drafts]], dtype=torch.long, device=self.device)
        pos = torch.arange(r.cached, r.cached + g + 1, device=self.device)[None]
        logits = forward_step(self.model, self.fused, ids, pos, cache, None, None, last_only=False)[0]
        n_acc, nxt = spec.verify(mask_unrenderable(logits.float(), self.vocab_limit), drafts)
        spec.record(g, n_acc)
        cache.truncate(cache.seq_len - g + n_acc)  # keep the pending token and the accepted drafts
        r.cached += 1 + n_acc
        self.stats.decode_steps += 1
        self.stats.batch_rows += 1
        for tok in drafts[:n_acc] + [nxt]:
            try:
                self._advance(r, tok, None, None)
            except Exception as exc:
                self._fail([r], exc)
            if r.done:
                break
        return True

    # ---- choosing tokens ----------------------------------------------------------------
    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """logits [len(rows), V] -> one token per row, through each row's own processors.

        Ids the tokenizer cannot render are masked out for every row; a row whose choice
        fails ends with an error event, the others go on.
        """
        scores = mask_unrenderable(logits.float(), self.vocab_limit)
        plain = [not r.procs and not r.cfg.do_sample and not r.cfg.logprobs and r.constraint is None for r in rows]
        greedy_all = select_tokens(scores).tokens.tolist() if any(plain) else None  # one batched argmax
        for j, r in enumerate(rows):
            if r.handle.cancelled:
                r.done = True
                continue
            try:
                if plain[j]:
                    self._advance(r, greedy_all[j], None, None)
                else:
                    self._choose_one(r, scores[j : j + 1])
            except Exception as exc:
                self._fail([r], exc)

    def _choose_one(self, r: _Row, scores: torch.Tensor) -> None:
        """scores [1, V] -> the row's token through its processors, sampler and logprobs."""
        cfg = r.cfg
        history = r.history[:, : len(r.prompt) + r.generated] if r.procs else None
        allowed = r.constraint.allowed_mask(scores.shape[-1])[None].to(scores.device) if r.constraint else None
        sel = select_tokens(scores, history=history, processors=r.procs, do_sample=cfg.do_sample,
                            generator=r.gen, allowed=allowed, logprobs=cfg.logprobs, top_logprobs=cfg.top_logprobs)
        lp = top = None
        if sel.logprobs is not None:
            lp = float(sel.logprobs[0])
            if sel.top_logprobs is not None:
                top = dict(zip(sel.top_logprobs[1][0].tolist(), sel.top_logprobs[0][0].tolist()))
        self._advance(r, int(sel.tokens[0]), lp, top)

    def _advance(self, r: _Row, tok: int, lp: float | None, top: dict | None) -> None:
        if r.constraint is not None:
            r.constraint.advance(tok)
        if r.history is not None:
            r.history[0, len(r.prompt) + r.generated] = tok
        r.generated += 1
        r.pending = tok
        r.output.append(tok)
        self.stats.generated_tokens += 1
        if r.stream is not None:
            text = r.stream.push(tok)  # pushes r.stop too
        else:
            r.stop.push(tok)
            text = ""
        if r.stop.done:
            r.done = True
            if r.stream is not None:
                text += r.stream.finish()
        _safe_call(r.callback, TokenEvent(text, tok, lp, top, r.stop.finish_reason, r.stop.stop_reason))

    # ---- cache layout -------------------------------------------------------------------
    def _relayout(self, old: list[_Row], new: list[_Row], new_cache: KVCache | None, new_cur: int) -> None:
        """Build the shared cache for rows `old` (in self._cache) + `new` (in new_cache), compactly."""
        rows = old + new
        cfg = self.model.config
        cur = max(r.cached for r in rows)
        room = max(r.cfg.max_new_tokens - r.generated for r in rows) + 1
        cap = cur + room
        cap = -(-cap // 16) * 16  # round up: fewer distinct shapes
        old_cache, old_cur = self._cache, (self._cache.seq_len if self._cache is not None else 0)
        src0 = (old_cache if old else new_cache).keys[0]  # the dtype the model writes (quantized models: float)
        cache = KVCache(cfg.n_layers, len(rows), cfg.n_kv_heads, cfg.head_dim, cap, dtype=src0.dtype,
                        device=src0.device)
        for layer in range(cfg.n_layers):
            nk, nv = cache.keys[layer], cache.values[layer]
            for j, r in enumerate(rows):
                src, end = (old_cache, old_cur) if j < len(old) else (new_cache, new_cur)
                # a joining row's cache holds only its prompt; an old row's holds everything fed so far
                n = r.cached
                nk[j, :, cur - n:cur] = src.keys[layer][r.slot, :, end - n:end]
                nv[j, :, cur - n:cur] = src.values[layer][r.slot, :, end - n:end]
        cache.lengths = [cur] * cfg.n_layers
        for j, r in enumerate(rows):
            r.slot = j
        self._rows, self._cache = rows, cache
        if all(r.cached == cur for r in rows):
            self._bias = self._mask = None
        else:
            mask = torch.ones(len(rows), cap, dtype=torch.long)
            for j, r in enumerate(rows):
                mask[j, : cur - r.cached] = 0
            mask = mask.to(self.device)
            self._mask = mask
            self._bias = padding_bias(mask, src0.dtype) if self.fused is not None else None


def _safe_call(callback, event: TokenEvent) -> None:
    try:
        callback(event)
    except Exception:  # a broken consumer must not stop the engine
        pass
