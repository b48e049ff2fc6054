"""Tensor-parallel serving: the same engine loop on every rank, in lockstep (SPMD, like vLLM's workers).

Under `lmkit serve --tp N` each of N processes holds 1/N of the model (serve/tensor_parallel.py)
and runs this engine; only rank 0 runs the HTTP server. A tensor-parallel forward is a
collective, so every rank must run the same model step with the same batch at the same time.
The engine's choices (admission, batching, prefill chunks, KV blocks, preemption, the tokens)
depend only on its queue and on the logits, and the logits are replicated (the LM head gathers
them), so it is enough that every rank sees the same queue at the same loop iteration:

    each loop iteration, on every rank:
        sync    rank 0 broadcasts what arrived since the last sync: new requests (id, prompt,
                resolved config, constraint), cancellations, and whether the server is stopping;
                every rank applies them in that order
        step    the ordinary engine iteration (serve/engine.py)

So a `cancel()` on rank 0 takes effect at the next sync, never in the middle of a step, and a
sampled request without a seed gets one drawn on rank 0, so every rank draws the same token.
While idle, rank 0 sends an empty message every 0.5 s (the others wait in the broadcast).
The messages are pickled Python objects over a gloo group (`Ranks.control`).

Not served under tensor parallelism (refused by name): speculative decoding and multi-LoRA
(`lora=` / `speculator=`), and the routes that run the model outside the engine (embeddings,
attention inspection: `refuse_outside_engine`).
"""

from __future__ import annotations

import collections
import pickle
import secrets
import uuid
from dataclasses import dataclass, replace

from lmkit.errors import ConfigError
from lmkit.serve.api_errors import APIError
from lmkit.serve.engine import Engine, RequestHandle, TokenEvent, _Row


class _SyncedHandle(RequestHandle):
    """Rank 0's handle: `cancel()` is queued for the next sync instead of flagging the row at once."""

    def __init__(self, request_id: str, cancels: collections.deque) -> None:
        super().__init__(request_id)
        self._cancels = cancels

    def cancel(self) -> None:
        self._cancels.append(self.id)


@dataclass(frozen=True)
class _GrammarSource:
    """A structured-output constraint on its way to the other ranks: its grammar text (llguidance's
    compiled matcher does not pickle), compiled again there for the same tokenizer."""

    source: tuple[str, str]
    eos_ids: tuple[int, ...]


def _portable(constraint):
    """What rank 0 sends for a request's constraint: the grammar source when it has one, else itself."""
    source = getattr(constraint, "source", None)
    if source is not None:
        return _GrammarSource(tuple(source), tuple(constraint.eos_ids))
    return constraint


def _ignore(event: TokenEvent) -> None:
    """The callback of a request on ranks > 0: rank 0 answers the client."""


class TensorParallelEngine(Engine):
    """An `Engine` whose loop iterations are kept in step across the tensor-parallel ranks.

    Rank 0: start() and submit() as usual (the server does). Ranks > 0: `follow()` runs the loop in
    the calling thread until rank 0 stops.
    """

    def __init__(self, model, tokenizer, *, ranks, **kwargs) -> None:
        for name in ("lora", "speculator"):
            if kwargs.get(name) is not None:
                what = "multi-LoRA (--lora)" if name == "lora" else "speculative decoding (--speculative)"
                raise ConfigError(f"{what} is not served under tensor parallelism (--tp); drop one of them")
        super().__init__(model, tokenizer, **kwargs)
        self.ranks = ranks
        self.tensor_parallel = ranks.world
        self._outbox: list[_Row] = []  # rank 0: submitted since the last sync (self._lock held)
        self._cancels: collections.deque[str] = collections.deque()  # rank 0: ids to cancel at the next sync

    # ---- rank 0: requests wait in the outbox until the next sync -----------------------------
    def _new_handle(self) -> RequestHandle:
        return _SyncedHandle(uuid.uuid4().hex, self._cancels)

    def _enqueue(self, row: _Row) -> None:
        if not self.ranks.leader:
            raise ConfigError("only rank 0 takes requests under tensor parallelism")
        if row.cfg.do_sample and row.cfg.seed is None:
            row.cfg = replace(row.cfg, seed=secrets.randbits(63))
        try:
            pickle.dumps((row.cfg, _portable(row.constraint)))
        except Exception as exc:
            raise ConfigError(f"this request's settings cannot be sent to the other tensor-parallel ranks: {exc}") \
                from None
        self._outbox.append(row)

    # ---- every rank: one sync per loop iteration ---------------------------------------------
    def _await_work(self, busy) -> bool:
        while True:
            stopping = self._sync()
            if busy() or self._waiting:
                return True
            if stopping:
                self._closed = True
                return False
            if self.ranks.leader and not self._outbox and not self._cancels and not self._stopping:
                self._lock.wait(0.5)

    def _sync(self) -> bool:
        """Broadcast rank 0's new requests, cancellations and stop flag; apply them. -> stopping."""
        import torch.distributed as dist

        if self.ranks.leader:
            rows, self._outbox = self._outbox, []
            cancels = [self._cancels.popleft() for _ in range(len(self._cancels))]
            box = [([(r.handle.id, r.prompt, r.cfg, _portable(r.constraint)) for r in rows], cancels, self._stopping)]
        else:
            box = [None]
        dist.broadcast_object_list(box, src=0, group=self.ranks.control)
        sent, cancels, stopping = box[0]
        if not self.ranks.leader:
            rows = [_Row(RequestHandle(rid), prompt, cfg, _ignore, constraint=self._rebuilt(constraint),
                         tokens=list(prompt)) for rid, prompt, cfg, constraint in sent]
            self._stopping = stopping
        for row in rows:
            super()._enqueue(row)
        if cancels:
            live = {r.handle.id: r for r in (*self._waiting, *self._running, *self._rows)}
            for rid in cancels:
                if rid in live:
                    live[rid].handle.cancelled = True
        return stopping

    def _rebuilt(self, sent):
        """A constraint as rank 0 sent it: a grammar recompiled here (see `_portable`), or the object."""
        if isinstance(sent, _GrammarSource):
            from lmkit.infer.structured_output import constraint_from_source

            return constraint_from_source(self.tokenizer, sent.source, sent.eos_ids)
        return sent

    def follow(self) -> None:
        """Ranks > 0: run the engine loop here until rank 0 stops the server."""
        if self.ranks.leader:
            raise ConfigError("rank 0 runs the engine in its thread (start()), not follow()")
        self._loop()


def refuse_outside_engine(engine, what: str) -> None:
    """Routes that would run the model on rank 0 alone (the other ranks would never join the
    forward's collectives) call this first: a clear error under tensor parallelism."""
    if getattr(engine, "tensor_parallel", 1) > 1:
        raise APIError(400, f"{what} is not served under tensor parallelism (--tp): it runs the model outside "
                          "the batching engine that keeps the ranks in step")
