"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

    lmkit_requests_total{path,status}          counter    HTTP requests to /v1 routes
    lmkit_request_failures_total{path,cause}   counter    failed requests (5xx or a stream cut short), by
                                                          cause (see failure_log.py)
    lmkit_request_duration_seconds{path}       histogram  latency, first byte to last byte
    lmkit_prompt_tokens_total                  counter    tokens read (prompts, embedding inputs)
    lmkit_generation_tokens_total              counter    tokens generated
    lmkit_running_requests                     gauge      rows in the decode batch now
    lmkit_waiting_requests                     gauge      requests queued for a batch slot (排队)
    lmkit_decode_steps_total                   counter    batched decode steps
    lmkit_decode_batch_rows_total              counter    sum of batch sizes over the steps
                                                          (mean batch = rows / steps)
    lmkit_queue_wait_seconds_total             counter    time requests spent queued
    lmkit_queue_depth                          gauge      the same as lmkit_waiting_requests
    lmkit_time_to_first_token_seconds          histogram  submit to first token, per request
    lmkit_inter_token_latency_seconds          histogram  between a request's consecutive tokens
    lmkit_preemptions_total                    counter    running requests sent back to the queue
                                                          (paged KV: no free block) to be recomputed
    lmkit_kv_blocks_in_use / _total            gauge      paged KV blocks referenced / in the pool
    lmkit_kv_block_size_tokens                 gauge      tokens per block
    lmkit_prefix_cache_hits_total              counter    prompt blocks found in the prefix cache
    lmkit_prefix_cache_misses_total            counter    full prompt blocks not found (computed)
    lmkit_prefix_cache_evictions_total         counter    cached blocks evicted (LRU) for new ones
    lmkit_prefix_cache_hit_rate                gauge      hits / (hits + misses), 0 before any
    lmkit_spec_proposed_tokens_total           counter    speculative drafts proposed (with --speculative)
    lmkit_spec_accepted_tokens_total           counter    drafts the model accepted
    lmkit_spec_verify_steps_total              counter    forwards that verified drafts
    lmkit_spec_acceptance_rate                 gauge      accepted / proposed, 0 before any
    lmkit_moderation_*, lmkit_rate_limited_*   counter    the safety layer (safety_metrics.py)

A histogram is cumulative buckets `_bucket{le=...}` plus `_sum` and `_count`, as Prometheus
expects; label values are escaped (backslash, double quote, newline).
"""

from __future__ import annotations

import threading
from collections import defaultdict

from lmkit.serve.safety_metrics import SafetyCounters

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    return "+Inf" if x == float("inf") else repr(float(x))


def _route_label(path: str) -> str:
    """The path as a label, with ids folded so the label's cardinality stays bounded."""
    return "/v1/models/{name}" if path.startswith("/v1/models/") else path


class Histogram:
    """A thread-safe latency histogram (cumulative buckets at render time): the engine thread
    observes, the HTTP thread renders."""

    def __init__(self, buckets: tuple[float, ...] = TOKEN_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        with self._lock:
            for i, le in enumerate(self.buckets):
                if seconds <= le:
                    self.counts[i] += 1
                    break
            self.sum += seconds
            self.count += 1

    def render(self, name: str) -> list[str]:
        with self._lock:
            counts, total, n = list(self.counts), self.sum, self.count
        lines, acc = [], 0
        for le, c in zip(self.buckets, counts):
            acc += c
            lines.append(f'{name}_bucket{{le="{_num(le)}"}} {acc}')
        return lines + [f"{name}_sum {total!r}", f"{name}_count {n}"]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.failures: dict[tuple[str, str], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.hist_count: dict[str, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.safety = SafetyCounters()  # moderation, rate limits, watermark (safety_metrics.py)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        path = _route_label(path)
        with self._lock:
            self.requests[(path, str(status))] += 1
            counts = self.hist.setdefault(path, [0] * len(BUCKETS))
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    counts[i] += 1
            self.hist_sum[path] += seconds
            self.hist_count[path] += 1

    def observe_failure(self, path: str, cause: str) -> None:
        with self._lock:
            self.failures[(_route_label(path), cause)] += 1

    def add_tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += int(prompt)
            self.generation_tokens += int(generated)

    def render(self, engine=None) -> str:
        out: list[str] = []

        def head(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("lmkit_requests_total", "counter", "HTTP requests to the /v1 API by path and status code.")
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'lmkit_requests_total{{path="{_esc(path)}",status="{_esc(status)}"}} {n}')
            head("lmkit_request_failures_total", "counter", "Failed requests (5xx or a stream cut short) by cause.")
            for (path, cause), n in sorted(self.failures.items()):
                out.append(f'lmkit_request_failures_total{{path="{_esc(path)}",cause="{_esc(cause)}"}} {n}')
            head("lmkit_request_duration_seconds", "histogram", "Request latency in seconds (to the last byte).")
            for path, counts in sorted(self.hist.items()):
                for le, c in zip(BUCKETS, counts):
                    out.append(f'lmkit_request_duration_seconds_bucket{{path="{_esc(path)}",le="{_num(le)}"}} {c}')
                out.append(f'lmkit_request_duration_seconds_sum{{path="{_esc(path)}"}} {self.hist_sum[path]!r}')
                out.append(f'lmkit_request_duration_seconds_count{{path="{_esc(path)}"}} {self.hist_count[path]}')
            head("lmkit_prompt_tokens_total", "counter", "Prompt (and embedding input) tokens processed.")
            out.append(f"lmkit_prompt_tokens_total {self.prompt_tokens}")
            head("lmkit_generation_tokens_total", "counter", "Tokens generated and returned.")
            out.append(f"lmkit_generation_tokens_total {self.generation_tokens}")
        out.extend(self.safety.render())
        if engine is not None:
            for name, kind, help_, value in engine_samples(engine):
                head(name, kind, help_)
                if isinstance(value, Histogram):
                    out.extend(value.render(name))
                else:
                    out.append(f"{name} {value!r}")
        return "\n".join(out) + "\n"


def engine_samples(engine) -> list[tuple[str, str, str, object]]:
    """(name, type, help, value or Histogram) of every engine metric, the paged KV cache's included."""
    st = engine.stats
    samples = [
        ("lmkit_running_requests", "gauge", "Requests in the decode batch.", engine.running),
        ("lmkit_waiting_requests", "gauge", "Requests queued for a batch slot.", engine.waiting),
        ("lmkit_decode_steps_total", "counter", "Batched decode steps run.", st.decode_steps),
        ("lmkit_decode_batch_rows_total", "counter", "Sum of the batch sizes of the decode steps.", st.batch_rows),
        ("lmkit_queue_wait_seconds_total", "counter", "Seconds requests waited in the queue.", st.queue_wait_s),
        ("lmkit_queue_depth", "gauge", "Requests queued for a batch slot (or KV blocks).", engine.waiting),
        ("lmkit_time_to_first_token_seconds", "histogram", "Seconds from submit to a request's first token.", st.ttft),
        ("lmkit_inter_token_latency_seconds", "histogram", "Seconds between a request's consecutive tokens.", st.itl),
        ("lmkit_preemptions_total", "counter", "Running requests preempted (no free KV block) and recomputed.",
         st.preemptions),
    ]
    pool = getattr(engine, "pool", None)
    if pool is not None:
        hits, misses = pool.hits, pool.misses
        samples += [
            ("lmkit_kv_blocks_in_use", "gauge", "Paged KV-cache blocks referenced by requests.", pool.in_use),
            ("lmkit_kv_blocks_total", "gauge", "Paged KV-cache blocks in the pool.", pool.n_blocks),
            ("lmkit_kv_block_size_tokens", "gauge", "Tokens per KV-cache block.", pool.block_size),
            ("lmkit_prefix_cache_hits_total", "counter", "Prompt KV blocks found in the prefix cache.", hits),
            ("lmkit_prefix_cache_misses_total", "counter", "Full prompt KV blocks not found (computed).", misses),
            ("lmkit_prefix_cache_evictions_total", "counter", "Cached KV blocks evicted (LRU) for new ones.",
             pool.evictions),
            ("lmkit_prefix_cache_hit_rate", "gauge", "Prefix cache hits / (hits + misses), in blocks.",
             hits / (hits + misses) if hits + misses else 0.0),
        ]
    spec = getattr(engine, "speculator", None)
    if spec is not None:  # --speculative (speculation.py)
        ss = spec.stats
        samples += [
            ("lmkit_spec_proposed_tokens_total", "counter", "Speculative draft tokens proposed.", ss.proposed),
            ("lmkit_spec_accepted_tokens_total", "counter", "Draft tokens the model accepted.", ss.accepted),
            ("lmkit_spec_verify_steps_total", "counter", "Forwards that verified drafts.", ss.steps),
            ("lmkit_spec_acceptance_rate", "gauge", "Accepted / proposed draft tokens.", ss.acceptance_rate),
        ]
    return samples
