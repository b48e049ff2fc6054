"""The batching engine: one background thread decodes every running request together.

Serving one request at a time leaves most of the hardware idle: a decode step of a small
batch reads the same weights as a step of one row, so B rows cost little more than one
(吞吐量 / throughput grows with the batch while each row's latency barely moves). The engine
does **continuous batching** (iteration-level scheduling, as in Orca and vLLM):

    loop:
        admit   waiting requests (排队, the queue) join while the batch has room (rows, and
                KV blocks when paged): their prompts are prefilled (paged: in chunks between
                decode steps; contiguous: all at once), left-padded together, and each
                gets its first token from the prefill logits
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
Speculative decoding (`speculator`, serve/speculation.py): while one plain greedy request runs
alone, its decode step feeds the pending token plus drafts and keeps what the model agrees with.
Structured output: a request may carry a `TokenConstraint` (a compiled JSON schema, regex or
grammar); its row chooses among the ids the constraint allows (`select_tokens(allowed=...)`).

KV cache layout (kv_cache="paged", the default). The keys/values live in a `BlockPool`
(lmkit.infer.paged_kv): fixed-size blocks preallocated for a memory budget (kv_cache_mb or
kv_blocks), a `BlockTable` per request. A request is admitted (in arrival order) only when
the blocks for its prompt and its first new token are free, with a small reserve while
others run; a running row takes one more block each time its last one fills. When none is
left mid-decode the newest running request is preempted: its blocks go back to the pool and
it returns to the head of the queue, to be recomputed (prompt + tokens so far, mostly prefix
cache hits) when there is room again; its stream simply pauses. Newcomers are prefilled in
chunks, at most `prefill_chunk` tokens per loop iteration, shortest remaining first, between
decode steps (chunks of similar length share one left-padded forward), so a huge prompt
never stalls the running rows or the small requests behind it (fair scheduling). Automatic prefix caching: every full block is hashed
along the token prefix and shared read-only; a newcomer whose prompt starts with cached
blocks prefills only the rest (positions continuing), and unreferenced cached blocks are
evicted LRU when the pool needs room. Decode steps read the rows' blocks as one
right-aligned [B, kv_heads, S, head_dim] tensor: the same numbers as the contiguous layout
below. It is gathered once per batch (`DecodeBatch`: kept while the same rows decode, each
step appending one column) and again when rows join or leave (`PagedKVView` gathers per
step where the batch would be too large to keep, and for prefill chunks).

KV cache layout (kv_cache="contiguous"). All running rows share one `KVCache` [B, kv_heads, capacity, head_dim]
whose write position `cur` is common; row i holds its n_i cached tokens right-aligned in
columns [cur - n_i, cur). The columns to the left are hidden by an additive padding bias
and positions count real tokens only, so every row computes exactly what it would alone
(the same trick as left padding in `lmkit.infer.generate`). When rows join or leave the
cache is re-laid out compactly (cur = max n_i, capacity = cur + the most tokens any row
may still add), a copy proportional to the cache, not to the model. Under a memory budget
the contiguous layout must reserve that capacity for every row, so it admits fewer rows.

Tensor parallelism (`lmkit serve --tp N`): serve/tensor_parallel_engine.py runs this loop on every
rank in lockstep; its only hooks here are `_new_handle`, `_enqueue` and `_await_work`.

Decode steps go through lmkit.infer's runner (`forward_step`: the fused step when the
architecture allows it, else `model.forward` with the mask and positions); prefill uses
`ModelRunner`. Text comes from `TextStream` (never splits a character, holds back possible
stop strings).
"""

from __future__ import annotations

import collections
import contextlib
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
from lmkit.infer.paged_kv import (DECODE_BATCH_LIMIT_BYTES, BlockPool, BlockTable, DecodeBatch, PagedKVView,
                                  PoolExhausted, kv_bytes_per_token)
from lmkit.infer.runner import ModelRunner, fast_decoder, forward_step
from lmkit.infer.sampling import build_logits_processors
from lmkit.infer.select import make_generator, select_tokens
from lmkit.infer.stop import StopTracker
from lmkit.infer.streaming import TextStream
from lmkit.infer.vocab_padding import mask_unrenderable, renderable_size
from lmkit.models.kv_cache import KVCache, local_kv_heads
from lmkit.serve.metrics import Histogram

DEFAULT_KV_CACHE_MB = 1024  # the default pool: max_batch_size full contexts, at most this much (and at least one context)


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
    tokens: list[int] = field(default_factory=list)  # prompt + generated (paged: what is recomputed on preemption)
    table: BlockTable | None = None  # paged: its blocks
    last_token_at: float = 0.0
    adapter: int = -1  # multi-LoRA: the row's adapter id (-1: the base model)


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
    prefill_tokens: int = 0  # prompt tokens computed (paged: prefix-cache hits are not)
    preemptions: int = 0  # paged: running requests sent back to the queue for lack of KV blocks
    max_running: int = 0  # the most requests running at once
    queued_steps: int = 0  # decode steps taken while requests were waiting (the batch was full: of memory or rows)
    queued_rows: int = 0  # sum of their batch sizes (queued_rows / queued_steps: the concurrency sustained)
    ttft: Histogram = field(default_factory=Histogram)  # seconds from submit to the first token
    itl: Histogram = field(default_factory=Histogram)  # seconds between a request's consecutive tokens
    extra: dict = field(default_factory=dict)


class Engine:
    """Continuous-batching generation for one decoder model.

    engine = Engine(model, tokenizer, max_batch_size=8); engine.start()
    handle = engine.submit(prompt_ids, GenerationConfig(max_new_tokens=32), callback)
    result = engine.generate(prompt_ids, GenerationConfig(...))   # blocking helper
    engine.stop()   # finishes running and queued requests first (graceful)
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, max_waiting: int = 1024,
                 fused: bool = True, kv_cache: str = "paged", kv_cache_mb: float | None = None,
                 kv_blocks: int | None = None, block_size: int = 16, prefix_caching: bool = True,
                 prefill_chunk: int = 512, lora=None, speculator=None) -> None:
        """kv_cache: "paged" (blocks, prefix caching, preemption) or "contiguous" (one strip per row).

        The KV memory budget is kv_blocks blocks of block_size tokens, or kv_cache_mb MiB of
        keys/values; by default enough for max_batch_size full contexts, capped at
        DEFAULT_KV_CACHE_MB (but at least one full context). The contiguous layout honours a
        budget only when one is given. prefill_chunk: prompt tokens prefilled per loop
        iteration (paged), between decode steps. lora: an AdapterRegistry (serve/lora_adapters.py)
        whose adapters requests choose by name (multi-LoRA); None: the base model only.
        speculator: speculative decoding (serve/speculation.py), or None.
        """
        if type(model).__name__ != "DecoderLM" or not hasattr(model, "make_cache"):
            raise ConfigError(f"the engine serves decoder language models (DecoderLM), got {type(model).__name__}")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if kv_cache not in ("paged", "contiguous"):
            raise ConfigError(f"kv_cache must be 'paged' or 'contiguous', got {kv_cache!r}")
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk must be an integer >= 1, got {prefill_chunk!r}")
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.config
        self.prefill_chunk = prefill_chunk
        budget = dict(n_blocks=kv_blocks, memory_mb=kv_cache_mb, block_size=block_size, prefix_caching=prefix_caching)
        if kv_cache == "paged":
            if kv_blocks is None and kv_cache_mb is None:
                per_token = kv_bytes_per_token(cfg, p.dtype if p.is_floating_point() else torch.float32)
                cap = DEFAULT_KV_CACHE_MB * 2**20 // per_token
                budget["default_tokens"] = max(cfg.max_seq_len, min(max_batch_size * cfg.max_seq_len, cap))
            self.pool: BlockPool | None = BlockPool.for_model(model, **budget)
            self.budget_tokens = self.pool.n_blocks * block_size
        else:
            self.pool = None
            given = kv_blocks is not None or kv_cache_mb is not None
            self.budget_tokens = BlockPool.for_model(model, **budget).n_blocks * block_size if given else None
        self._batch: DecodeBatch | None = None  # paged: the decoding rows' keys/values kept contiguous
        self._last_rows: list[_Row] = []  # paged: the rows of the last decode step
        self._running: list[_Row] = []  # paged: admitted rows, oldest first (prefilling or decoding)
        self._prefilling: list[_Row] = []  # paged: admitted rows whose tokens are not all in the cache yet
        # multi-LoRA (serve/lora_adapters.py): per-row adapters; the fused step cannot run adapted layers
        self.lora = lora
        self.fused = fast_decoder(model, cfg.max_seq_len) if fused and lora is None else None
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
        return len(self._running) if self.pool is not None else len(self._rows)

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
               callback: Callable[[TokenEvent], None], constraint: ConstraintArg = None,
               adapter: str | None = None) -> RequestHandle:
        """Queue a request; `callback(TokenEvent)` is called from the engine thread for every step.

        constraint: structured output, a compiled grammar (lmkit.infer.structured_output) or a
        `TokenConstraint`; the request's tokens are chosen among the ids it allows.
        adapter: the name of a LoRA adapter of `self.lora` to run this request with (None: the base).
        """
        cfg = self.prepare_config(config)
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ConfigError("the prompt is empty: give at least one token")
        check_fits(self.model, [prompt], cfg)
        if cfg.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer")
        if adapter is not None and self.lora is None:
            raise ConfigError(f"adapter {adapter!r}: this engine serves no LoRA adapters (start it with lora=...)")
        if self.pool is not None and self.pool.blocks_for(len(prompt) + cfg.max_new_tokens) > self.pool.n_blocks:
            raise ConfigError(
                f"prompt of {len(prompt)} tokens + max_new_tokens={cfg.max_new_tokens} needs more KV cache than "
                f"the server has ({self.pool.n_blocks} blocks of {self.pool.block_size} tokens); "
                "shorten the prompt or lower max_tokens")
        constraint = row_constraints(constraint, 1, cfg.eos_token_ids)[0]  # bound to the request's EOS ids
        handle = self._new_handle()
        row = _Row(handle, prompt, cfg, callback, constraint=constraint, tokens=list(prompt))
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise EngineOverloaded(f"{len(self._waiting)} requests are already waiting; retry later")
            if adapter is not None:  # multi-LoRA: held until the request ends, so it cannot be unloaded under it
                row.adapter, row.callback = self.lora.lease(adapter, handle, callback)
            self._enqueue(row)
            self._lock.notify_all()
        if self._thread is None:
            self.start()
        return handle

    def _new_handle(self) -> RequestHandle:
        return RequestHandle(uuid.uuid4().hex)

    def _enqueue(self, row: _Row) -> None:
        """`row` joins the waiting queue (self._lock held). The tensor-parallel engine
        (serve/tensor_parallel_engine.py) defers this to its next sync with the other ranks."""
        self._waiting.append(row)
        self.stats.requests += 1
        self.stats.prompt_tokens += len(row.prompt)

    def _await_work(self, busy: Callable[[], bool]) -> bool:
        """(self._lock held) Block until `busy()` or a request waits; False: stopping and idle, end the loop.
        The tensor-parallel engine also syncs the ranks here, once per loop iteration."""
        while not busy() and not self._waiting:
            if self._stopping:
                self._closed = True
                return False
            self._lock.wait(0.5)
        return True

    def generate(self, prompt_ids: list[int], config: GenerationConfig, timeout: float | None = None,
                 constraint: ConstraintArg = None, adapter: str | None = None) -> Completion:
        """Blocking: submit and wait for the whole completion."""
        done = threading.Event()
        events: list[TokenEvent] = []

        def collect(ev: TokenEvent) -> None:
            events.append(ev)
            if ev.finish_reason is not None or ev.error is not None:
                done.set()

        cfg = self.prepare_config(config)
        self.submit(prompt_ids, cfg, collect, constraint, adapter)
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
        if self.pool is not None:
            return self._paged_loop()
        while True:
            with self._lock:
                if not self._await_work(lambda: bool(self._rows)):
                    return
                room = self.max_batch_size - len(self._rows)
                joining = []
                while room > 0 and self._waiting:
                    row = self._waiting[0]
                    if row.handle.cancelled:
                        self._waiting.popleft()
                        continue
                    if not self._fits_contiguous(joining + [row]) and (self._rows or joining):
                        break  # under a KV budget: every row reserves the longest row's capacity
                    joining.append(self._waiting.popleft())
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

    def _fits_contiguous(self, joining: list[_Row]) -> bool:
        """Whether the contiguous cache of the running rows + `joining` stays within the KV budget:
        every row reserves the longest prompt + the most new tokens any row may add."""
        if self.budget_tokens is None:
            return True
        rows = [r for r in self._rows if not r.done] + joining
        cap = max(r.cached or len(r.prompt) for r in rows) + max(r.cfg.max_new_tokens - r.generated for r in rows) + 1
        return len(rows) * (-(-cap // 16) * 16) <= self.budget_tokens

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
            self.stats.prefill_tokens += sum(len(r.prompt) for r in joining)
            with self._adapter_rows(joining):
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
        if self.pool is not None:
            return self._paged_decode_step()
        rows = self._rows
        if self._speculative_step():
            return self._retire_contiguous(rows)
        b = len(rows)
        cache = self._cache
        ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self.device)
        pos = torch.tensor([[r.cached] for r in rows], dtype=torch.long, device=self.device)
        with self._adapter_rows(rows):
            logits = forward_step(self.model, self.fused, ids, pos, cache, self._mask, self._bias)
        for r in rows:
            r.cached += 1
        self._count_decode_step(b)
        self._choose(rows, logits[:, -1])
        self._retire_contiguous(rows)

    def _retire_contiguous(self, rows: list[_Row]) -> None:
        """Finished rows leave the contiguous batch (the cache is re-laid out for the others)."""
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
        fed after the pending token in one forward, the model keeps the agreeing prefix plus
        its own next token, and the rejected positions are dropped (contiguous: the cache is
        truncated; paged: r.cached stops before them and later steps overwrite their slots).
        """
        spec = self.speculator
        if spec is None or self._waiting:
            return False
        paged = self.pool is not None
        rows = self._running if paged else self._rows
        if len(rows) != 1 or (paged and self._prefilling) or (not paged and self._mask is not None):
            return False
        r = rows[0]
        if r.procs or r.cfg.do_sample or r.cfg.logprobs or r.constraint is not None or r.handle.cancelled:
            return False
        drafts = spec.propose(r.tokens, r.cfg.max_new_tokens - r.generated - 1)
        if not drafts:
            return False
        g = len(drafts)
        n = r.cached + g + 1  # the row's tokens in the cache after the forward
        if paged:
            pool = self.pool
            need = pool.blocks_for(n) - len(r.table.blocks)
            if need > pool.available:
                return False
            r.table.blocks += [pool.allocate() for _ in range(max(0, need))]
            slots = self._slots(r, n)
            cache = PagedKVView(pool, slots[r.cached:][None].to(self.device), slots[None].to(self.device))
            fast = None  # a multi-token step over blocks goes through model.forward, as chunked prefill does
        else:
            cache, fast = self._cache, self.fused
        ids = torch.tensor([[r.pending, *drafts]], dtype=torch.long, device=self.device)
        pos = torch.arange(r.cached, n, device=self.device)[None]
        with self._adapter_rows([r]):
            logits = forward_step(self.model, fast, ids, pos, cache, None, None, last_only=False)[0]
        n_acc, nxt = spec.verify(mask_unrenderable(logits.float(), self.vocab_limit), drafts)
        spec.record(g, n_acc)
        if not paged:
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
        if paged:
            if r.done:
                self._finish(r)
            else:
                self._register_full_blocks(r)  # r.tokens now holds every token in the cache
        return True

    def _adapter_rows(self, rows: list[_Row]):
        """Multi-LoRA: the context in which the model's forward uses each row's adapter."""
        if self.lora is None:
            return contextlib.nullcontext()
        return self.lora.rows([r.adapter for r in rows], self.device)

    # ---- choosing tokens ----------------------------------------------------------------
    def _count_decode_step(self, rows: int) -> None:
        """Stats of one batched decode step (either KV layout)."""
        self.stats.decode_steps += 1
        self.stats.batch_rows += rows
        if self._waiting:
            self.stats.queued_steps += 1
            self.stats.queued_rows += rows

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
        now = time.perf_counter()
        if r.generated == 0:
            self.stats.ttft.observe(now - r.handle.submitted)
        else:
            self.stats.itl.observe(now - r.last_token_at)
        r.last_token_at = now
        r.generated += 1
        r.pending = tok
        r.tokens.append(tok)
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
        cache = KVCache(cfg.n_layers, len(rows), local_kv_heads(self.model), cfg.head_dim, cap, dtype=src0.dtype,
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
        self.stats.max_running = max(self.stats.max_running, len(rows))
        if all(r.cached == cur for r in rows):
            self._bias = self._mask = None
        else:
            mask = torch.ones(len(rows), cap, dtype=torch.long)
            for j, r in enumerate(rows):
                mask[j, : cur - r.cached] = 0
            mask = mask.to(self.device)
            self._mask = mask
            self._bias = padding_bias(mask, src0.dtype) if self.fused is not None else None

    # ---- paged KV: the loop, admission, chunked prefill, decode, preemption --------------
    @torch.inference_mode()  # entered once for the thread, not per step
    def _paged_loop(self) -> None:
        while True:
            with self._lock:
                if not self._await_work(lambda: bool(self._running)):
                    return
                self._admit_paged()
                # the head request does not fit an idle pool (submit rules this out): fail it, never spin
                stuck = self._waiting.popleft() if not self._running and self._waiting else None
            try:
                if stuck is not None:
                    self._fail([stuck], PoolExhausted("the request does not fit in the KV cache"))
                self._prefill_step()
                if len(self._running) > len(self._prefilling):
                    self._decode_step()
            except Exception as exc:  # the batched step failed (OOM, a bug): fail the requests in flight
                self._fail(list(self._running), exc)
                for r in list(self._running):
                    self._finish(r)

    def _target(self, r: _Row) -> int:
        """Tokens of `r` that must be in the cache before it decodes: the prompt, or after a
        preemption everything but the newest token (fed by the next decode step)."""
        return len(r.tokens) - (1 if r.generated else 0)

    def _admit_paged(self) -> None:
        """Admit waiting requests in arrival order while their blocks fit (self._lock held).

        A request needs blocks for its prompt and first new token, less the full blocks the
        prefix cache already holds; while others run, a reserve of ~1% of the pool stays free
        for the running rows' next blocks. The head of the queue is never skipped (no starvation).
        """
        pool, bs = self.pool, self.pool.block_size
        reserve = max(1, pool.n_blocks // 100)
        while self._waiting and len(self._running) < self.max_batch_size:
            r = self._waiting[0]
            if r.handle.cancelled:
                self._waiting.popleft()
                continue
            target = self._target(r)
            # an adapter's keys/values differ from the base model's: its blocks hash in their own chain
            table = r.table or BlockTable(root=b"root" if r.adapter < 0 else b"adapter:%d" % r.adapter)
            cacheable = (target if r.generated else target - 1) // bs  # a fresh prompt computes >= 1 token
            hit = pool.lookup(table.hashes_for(r.tokens, cacheable, bs)) if pool.prefix_caching else []
            need = pool.blocks_for(target + 1) - len(hit)
            revived = sum(1 for b in hit if pool.ref[b] == 0)  # cached blocks that stop being evictable
            if need + revived + (reserve if self._running else 0) > pool.available:
                break
            self._waiting.popleft()
            pool.acquire(hit)
            table.blocks = hit + [pool.allocate() for _ in range(need)]
            table.registered = len(hit)
            pool.hits += len(hit)
            pool.misses += cacheable - len(hit) if pool.prefix_caching else 0
            r.table, r.cached = table, len(hit) * bs
            self._running.append(r)
            self._prefilling.append(r)
        self.stats.max_running = max(self.stats.max_running, len(self._running))

    def _finish(self, r: _Row) -> None:
        """`r` leaves the batch: its blocks go back to the pool (full ones stay cached)."""
        if r in self._running:
            self._running.remove(r)
        if r in self._prefilling:
            self._prefilling.remove(r)
        if r.table is not None:
            self.pool.release(r.table.blocks)
            r.table.blocks = []
        r.cached = 0
        if not self._running:
            self._batch, self._last_rows = None, []  # its buffers go with the last row

    def _preempt(self, r: _Row) -> None:
        """Send running `r` back to the head of the queue; it is recomputed when blocks free up."""
        self._finish(r)
        r.table.registered = 0
        self.stats.preemptions += 1
        with self._lock:
            self._waiting.appendleft(r)

    def _register_full_blocks(self, r: _Row) -> None:
        """Enter `r`'s newly completed blocks in the prefix cache."""
        pool, table = self.pool, r.table
        full = r.cached // pool.block_size
        if pool.prefix_caching and full > table.registered:
            hashes = table.hashes_for(r.tokens, full, pool.block_size)
            for j in range(table.registered, full):
                pool.register(table.blocks[j], hashes[j])
            table.registered = full

    def _slots(self, r: _Row, n: int) -> torch.Tensor:
        """Pool slots of r's first n tokens."""
        bs = self.pool.block_size
        blocks = torch.tensor(r.table.blocks[: -(-n // bs)], dtype=torch.long)
        return (blocks[:, None] * bs + torch.arange(bs)).view(-1)[:n]

    def _prefill_step(self) -> None:
        """Set up the newly admitted rows, then prefill up to `prefill_chunk` of their tokens,
        shortest remaining first; a row whose prompt is in the cache gets its first token."""
        for r in list(self._prefilling):
            if r.handle.cancelled:
                r.done = True
                self._finish(r)
            elif r.stop is None:
                try:
                    self._init_row(r)
                except Exception as exc:
                    self._fail([r], exc)
                    self._finish(r)
        budget, chunks = self.prefill_chunk, []
        for r in sorted(self._prefilling, key=lambda row: self._target(row) - row.cached):
            n = min(budget, self._target(r) - r.cached)
            if n <= 0 and r.cached < self._target(r):
                break
            chunks.append((r, n))
            budget -= n
        for group in _padding_groups(chunks):
            self._prefill_group(group)

    def _prefill_group(self, group: list[tuple[_Row, int]]) -> None:
        """Prefill chunk (row, n tokens) of every row of `group` in one forward, left-padded.

        Row j's tokens [0, end_j) sit right-aligned in the S = max end_j key columns (its
        padding columns masked); its n_j new tokens are the last n_j of the T = max n_j inputs,
        the padding inputs before them writing to the pool's scratch slot. A failed forward of
        several rows is retried row by row, so only a request that cannot run fails.
        """
        work = [(r, n) for r, n in group if n > 0]
        logits = None
        if work:
            pool = self.pool
            k, t = len(work), max(n for _, n in work)
            s = max(r.cached + n for r, n in work)
            read = torch.empty(k, s, dtype=torch.long)
            write = torch.full((k, t), pool.scratch_slot, dtype=torch.long)
            mask = torch.ones(k, s, dtype=torch.long)
            ids = torch.zeros(k, t, dtype=torch.long)
            for j, (r, n) in enumerate(work):
                end = r.cached + n
                slots = self._slots(r, end)
                read[j, s - end:] = slots
                read[j, : s - end] = slots[0]  # padding columns: any written slot (masked)
                mask[j, : s - end] = 0
                write[j, t - n:] = slots[r.cached:]
                ids[j, t - n:] = torch.tensor(r.tokens[r.cached:end])
            padded = bool((mask == 0).any())
            view = PagedKVView(pool, write.to(self.device), read.to(self.device))
            ids = ids.to(self.device)
            mask = mask.to(self.device) if padded else None
            try:
                runner = ModelRunner(self.model, k, s, mask, fused=False)
                # a fresh prompt in one piece is a plain prefill; else the chunk continues the cache
                with self._adapter_rows([r for r, _ in work]):
                    logits = runner.prefill(ids, view) if s == t else runner.step(ids, view)
            except Exception as exc:
                if k == 1:
                    self._fail([work[0][0]], exc)
                    self._finish(work[0][0])
                else:
                    for one in group:
                        self._prefill_group([one])
                return
            for r, n in work:
                r.cached += n
                self.stats.prefill_tokens += n
                self._register_full_blocks(r)
        for r, n in group:
            if r.cached == self._target(r):
                self._prefilling.remove(r)
                if r.generated == 0:  # a fresh request: its first token comes from the prefill
                    self.stats.prefills += 1
                    j = next(j for j, (w, _) in enumerate(work) if w is r)
                    self._choose([r], logits[j : j + 1, -1])
                    if r.done:
                        self._finish(r)

    def _paged_decode_step(self) -> None:
        """One token for every decoding row over its blocks; preempts the newest request when
        a row needs a block and none is left."""
        if self._speculative_step():
            return
        pool, bs = self.pool, self.pool.block_size
        for r in [r for r in self._running if r not in self._prefilling]:
            while r in self._running and r.cached == len(r.table.blocks) * bs:
                try:
                    r.table.blocks.append(pool.allocate())
                except PoolExhausted:
                    self._preempt(self._running[-1])
        rows = [r for r in self._running if r not in self._prefilling]
        if not rows:
            return
        ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self.device)
        pos = torch.tensor([[r.cached] for r in rows], dtype=torch.long, device=self.device)
        batch = self._decode_batch(rows)
        if batch is None:  # too large to keep contiguous: gather the rows' blocks for this step
            view, mask, bias = self._gathered_view(rows)
        else:
            batch.begin([r.table.blocks[r.cached // bs] * bs + r.cached % bs for r in rows])
            view, mask, bias = batch, batch.mask, batch.bias
        try:
            with self._adapter_rows(rows):
                logits = forward_step(self.model, self.fused, ids, pos, view, mask, bias)
        except BaseException:
            self._batch = None
            raise
        if batch is not None:
            batch.end()
        b = len(rows)
        for r in rows:
            r.cached += 1
            self._register_full_blocks(r)
        self._count_decode_step(b)
        self._choose(rows, logits[:, -1])
        for r in rows:
            if r.done:
                self._finish(r)

    def _decode_batch(self, rows: list[_Row]) -> DecodeBatch | None:
        """The `DecodeBatch` of `rows`: the last step's when it continues, else a new one once
        the same rows have decoded two steps in a row (while rows come and go at every step a
        batch would be gathered and dropped each time); None: this step gathers instead (also
        when the contiguous copy would be too large)."""
        lengths = [r.cached for r in rows]
        if self._batch is not None and self._batch.matches(rows, lengths):
            return self._batch
        self._batch = None
        previous, self._last_rows = self._last_rows, rows
        if len(previous) != len(rows) or any(a is not b for a, b in zip(previous, rows)):
            return None
        pool = self.pool
        # the fused step upcasts a bf16/fp16 model's keys/values to fp32 on CPU: keep them in fp32
        kv_dtype = pool.keys[0].dtype if pool.keys[0] is not None else self.dtype
        if self.fused is not None and kv_dtype != torch.float32 and self.device.type == "cpu":
            kv_dtype = torch.float32
        if DecodeBatch.size_bytes(pool, len(rows), max(lengths), kv_dtype) > DECODE_BATCH_LIMIT_BYTES:
            return None
        bias_dtype = (pool.keys[0].dtype if pool.keys[0] is not None else self.dtype) if self.fused is not None else None
        self._batch = DecodeBatch(pool, rows, [r.table.blocks for r in rows], lengths, self.device, kv_dtype,
                                  bias_dtype)
        return self._batch

    def _gathered_view(self, rows: list[_Row]):
        """(PagedKVView, mask, bias) of one decode step of `rows`, gathered from the pool."""
        pool = self.pool
        b, s = len(rows), max(r.cached for r in rows) + 1
        read = torch.empty(b, s, dtype=torch.long)
        mask = torch.ones(b, s, dtype=torch.long) if any(r.cached + 1 < s for r in rows) else None
        for j, r in enumerate(rows):
            slots = self._slots(r, r.cached + 1)
            read[j, s - r.cached - 1:] = slots
            if mask is not None and r.cached + 1 < s:
                read[j, : s - r.cached - 1] = slots[0]  # padding columns: any valid slot (masked)
                mask[j, : s - r.cached - 1] = 0
        read = read.to(self.device)
        view = PagedKVView(pool, read[:, -1:], read)
        bias = None
        if mask is not None:
            mask = mask.to(self.device)
            if self.fused is not None:
                dtype = pool.keys[0].dtype if pool.keys[0] is not None else self.dtype
                bias = padding_bias(mask, dtype)
        return view, mask, bias


def _padding_groups(chunks: list[tuple[_Row, int]]) -> list[list[tuple[_Row, int]]]:
    """Split prefill chunks (sorted by length) into groups run as one padded forward each,
    starting a new group where padding would more than double the tokens computed."""
    groups: list[list[tuple[_Row, int]]] = []
    for r, n in chunks:
        g = groups[-1] if groups else None
        if g is not None and (len(g) + 1) * max(n, *(m for _, m in g)) <= 2 * (n + sum(m for _, m in g)):
            g.append((r, n))
        else:
            groups.append([(r, n)])
    return groups


def _safe_call(callback, event: TokenEvent) -> None:
    try:
        callback(event)
    except Exception:  # a broken consumer must not stop the engine
        pass
