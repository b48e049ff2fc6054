"""Per-API-key rate limits and quotas: token buckets in front of /v1, 429 with Retry-After.

Each key has two buckets (Gregg's token bucket: capacity C, refilled at C per minute):

* requests: every /v1 request takes one; an empty bucket refuses the request;
* tokens: a request is let in while the bucket is above zero; once it has run, its prompt
  plus generated tokens are taken out (the bucket may go below zero: the next requests
  wait until it refills), since the real cost is known only at the end;

plus an optional quota: total tokens over the server's life, after which the key gets 429
with code ``insufficient_quota`` (no Retry-After: waiting does not help). A refusal has
OpenAI's error shape (type ``rate_limit_error``, code ``rate_limit_exceeded``) and a
``Retry-After`` header in whole seconds, and is counted in /metrics per key (the key's
SHA-256 prefix, never the key). Buckets are per key, so one busy key never slows another.
Without API keys, the client's address stands for the key.

Limits come from `RateLimitConfig`: defaults for every key plus per-key overrides, e.g. the
JSON file of `lmkit serve --rate-limits FILE`:

    {"requests_per_minute": 60, "tokens_per_minute": 20000,
     "keys": {"sk-batch": {"requests_per_minute": 600, "token_quota": 1000000}}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lmkit.errors import ConfigError
from lmkit.jsonl import read_json_object
from lmkit.serve.api_errors import error_body
from lmkit.serve.safety_metrics import SafetyCounters

STATE_KEY = "lmkit_rate_limit"  # in the ASGI scope's state: (limiter, key) for the route's charge


@dataclass
class KeyLimits:
    """One key's limits (None: unlimited)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    token_quota: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ConfigError(f"rate limit {f.name} must be a positive number, got {v!r}")


@dataclass
class RateLimitConfig:
    """Default limits for every key, and overrides per key (`keys`: key -> KeyLimits or dict)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    token_quota: int | None = None
    keys: dict[str, KeyLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        KeyLimits(self.requests_per_minute, self.tokens_per_minute, self.token_quota)  # validates
        self.keys = {k: v if isinstance(v, KeyLimits) else KeyLimits(**_known(v, k)) for k, v in self.keys.items()}

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute, self.token_quota)) \
            or bool(self.keys)

    def limits_for(self, key: str) -> KeyLimits:
        base = KeyLimits(self.requests_per_minute, self.tokens_per_minute, self.token_quota)
        own = self.keys.get(key)
        if own is None:
            return base
        return KeyLimits(*(getattr(own, f.name) if getattr(own, f.name) is not None else getattr(base, f.name)
                           for f in dataclasses.fields(KeyLimits)))

    @classmethod
    def from_file(cls, path: str | Path) -> "RateLimitConfig":
        data = read_json_object(path, "the rate limits")
        return cls(**_known(data, str(path), extra=("keys",)))


def _known(data, where: str, extra: tuple[str, ...] = ()) -> dict:
    names = {f.name for f in dataclasses.fields(KeyLimits)} | set(extra)
    if not isinstance(data, dict) or set(data) - names:
        raise ConfigError(f"rate limits of {where}: expected an object with {', '.join(sorted(names))}")
    return data


class TokenBucket:
    """Capacity `per_minute`, refilled continuously at per_minute / 60 per second."""

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.clock = clock
        self.level = self.capacity
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be taken (0: now)."""
        self._refill()
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class RateLimiter:
    """The buckets of every key seen so far; thread-safe."""

    def __init__(self, config: RateLimitConfig, counters: SafetyCounters | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        self.counters = counters or SafetyCounters()
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self.used: dict[str, int] = {}

    def _pair(self, key: str):
        pair = self._buckets.get(key)
        if pair is None:
            lim = self.config.limits_for(key)
            pair = self._buckets[key] = (
                TokenBucket(lim.requests_per_minute, self.clock) if lim.requests_per_minute else None,
                TokenBucket(lim.tokens_per_minute, self.clock) if lim.tokens_per_minute else None)
        return pair

    def admit(self, key: str) -> tuple[int, dict, float] | None:
        """None when the request may run (one request taken), else (status, error body, retry-after s)."""
        with self._lock:
            requests, tokens = self._pair(key)
            quota = self.config.limits_for(key).token_quota
            if quota is not None and self.used.get(key, 0) >= quota:
                self.counters.inc("lmkit_rate_limited_total", key_label(key), "quota")
                return 429, error_body(f"this API key has used its quota of {quota} tokens", "insufficient_quota",
                                       None, "insufficient_quota"), 0.0
            wait, limit = 0.0, ""
            if requests is not None and requests.wait_for(1.0) > 0:
                wait, limit = requests.wait_for(1.0), "requests"
            elif tokens is not None and tokens.wait_for(1e-9) > 0:
                wait, limit = tokens.wait_for(1e-9), "tokens"
            if limit:
                self.counters.inc("lmkit_rate_limited_total", key_label(key), limit)
                per = self.config.limits_for(key)
                rate = per.requests_per_minute if limit == "requests" else per.tokens_per_minute
                return 429, error_body(f"rate limit reached: {rate:g} {limit} per minute for this API key; "
                                       f"retry after {math.ceil(wait)} s", "rate_limit_error", None,
                                       "rate_limit_exceeded"), wait
            if requests is not None:
                requests.take(1.0)
            return None

    def charge(self, key: str, tokens: int) -> None:
        """Take a finished request's tokens (prompt + generated) from the key's bucket and quota."""
        with self._lock:
            bucket = self._pair(key)[1]
            if bucket is not None:
                bucket.take(float(tokens))
            self.used[key] = self.used.get(key, 0) + int(tokens)


def key_label(key: str) -> str:
    """How a key appears in metrics and logs: a SHA-256 prefix."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def request_key(scope) -> str:
    """The Bearer key of a request, else its client address."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and given.strip():
                return given.strip()
    client = scope.get("client") or ("anonymous", 0)
    return f"client:{client[0]}"


class RateLimitMiddleware:
    """ASGI middleware (inside the Guard: keys are checked first) limiting /v1 per key."""

    def __init__(self, app, limiter: RateLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1"):
            return await self.app(scope, receive, send)
        key = request_key(scope)
        refused = self.limiter.admit(key)
        if refused is not None:
            status, body, wait = refused
            data = json.dumps(body).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            if wait > 0:
                headers.append((b"retry-after", str(max(1, math.ceil(wait))).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        scope.setdefault("state", {})[STATE_KEY] = (self.limiter, key)
        await self.app(scope, receive, send)


def charge_tokens(request, tokens: int) -> None:
    """Called by a route when its request has finished: `tokens` count against the key's limits."""
    entry = request.scope.get("state", {}).get(STATE_KEY)
    if entry is not None:
        limiter, key = entry
        limiter.charge(key, tokens)
