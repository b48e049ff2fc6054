"""`generate`: autoregressive decoding with a preallocated KV cache.

One forward over the prompt (prefill) fills the cache and gives the first next-token
scores; then each step feeds only the newest token (decode). Per step:

    scores = logits[:, -1] -> logits processors (penalties, then warpers when sampling)
    token  = argmax(scores) (greedy)  or  a draw from softmax(scores) (sampling)

Batches of prompts of different lengths are *left*-padded, so every row's newest token
sits in the same column and one [B, 1] forward serves all rows; the attention mask hides the
padding and position ids count real tokens only, so a padded row computes exactly what
it would alone. A row ends at an EOS token, at a stop string (matched on the decoded text,
see stop.py) or after max_new_tokens; ended rows are filled with pad_token_id while the
others go on, and the loop stops when every row has ended.

Everything per step is preallocated: the cache (prompt + max_new_tokens positions), the
token history the processors read, the attention mask and the position ids (each step
takes a view of them); beyond the model's activations a step allocates only a few
[B]-sized tensors.

`num_beams > 1` dispatches to beam_search.py; streaming (text deltas) is `stream_generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.sampling import LogitsProcessorList, build_logits_processors, choose_tokens
from lmkit.infer.streaming import TextStream
from lmkit.tokenizers.base import Tokenizer


# ---- results ----------------------------------------------------------------------------
@dataclass
class GenerationOutput:
    """What `generate` returns. Row r of a batch with num_return_sequences n is prompt r // n."""

    sequences: torch.Tensor  # [rows, P + steps]: left-padded prompt + generated ids (pad after a row ends)
    token_ids: list[list[int]]  # generated ids per row, up to and including the one that ended it
    finish_reasons: list[str]  # "stop" (EOS or a stop string) or "length" (max_new_tokens)
    stop_reasons: list[int | str | None]  # the EOS id or the stop string that ended the row
    prompt_lengths: list[int]  # real (unpadded) prompt tokens per row
    texts: list[str] | None = None  # with a tokenizer: the completion, without EOS, cut before a stop string
    logprobs: list[list[float]] | None = None  # log p of each generated token under the processed scores
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None  # the k most likely (id, log p) per step
    sequence_scores: torch.Tensor | None = None  # beam search: length-penalised log-probability per row

    @property
    def text(self) -> str:
        if self.texts is None:
            raise ValueError("no text: pass tokenizer= to generate")
        return self.texts[0]


@dataclass
class StreamDelta:
    """One piece of a streamed completion."""

    index: int  # row (prompt index * num_return_sequences + sample)
    text: str  # new visible text (never half a character, never part of a stop string)
    token_ids: list[int]  # ids generated since the previous delta of this row
    logprobs: list[float] | None = None  # their log-probabilities (when asked for)
    finish_reason: str | None = None  # set on the row's last delta: "stop" or "length"


@dataclass
class _Step:
    index: int
    tokens: torch.Tensor  # [B]
    logprob: torch.Tensor | None  # [B]
    top: tuple[torch.Tensor, torch.Tensor] | None  # values, indices [B, k]


# ---- preparation ------------------------------------------------------------------------
def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_config(model: torch.nn.Module, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """`config` (default GenerationConfig()) with overrides; EOS and pad ids filled from the model config.

    eos_token_id=[] means "no EOS: always generate max_new_tokens".
    """
    cfg = config if config is not None else GenerationConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    mc = getattr(model, "config", None)
    changes: dict = {}
    if cfg.eos_token_id is None and mc is not None:
        eos = getattr(mc, "extra", {}).get("eos_token_id") if isinstance(getattr(mc, "extra", None), dict) else None
        eos = eos if isinstance(eos, list) else getattr(mc, "eos_token_id", None)
        if eos is not None:
            changes["eos_token_id"] = eos
    if cfg.pad_token_id is None:
        pad = getattr(mc, "pad_token_id", None) if mc is not None else None
        if pad is None:
            eos_ids = GenerationConfig(eos_token_id=changes.get("eos_token_id", cfg.eos_token_id)).eos_ids
            pad = eos_ids[0] if eos_ids else 0
        changes["pad_token_id"] = pad
    return cfg.replace(**changes) if changes else cfg


def prepare_prompts(
    input_ids,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (a [B, T] tensor with optional mask, one id list, or a list of id lists) ->
    (ids [B, P] left-padded with pad_token_id, mask [B, P] bool)."""
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.long()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            if attention_mask.numel() != ids.numel():
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(ids.shape)}"
                )
            mask = attention_mask.reshape(ids.shape).to(ids.device).bool()
    else:
        rows = list(input_ids)
        if rows and not isinstance(rows[0], (list, tuple)) and not hasattr(rows[0], "tolist"):
            rows = [rows]
        rows = [r.tolist() if hasattr(r, "tolist") else list(r) for r in rows]
        if not rows:
            raise ValueError("no prompts given")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = True
    if ids.shape[1] == 0 or not bool(mask.any(1).all()):
        raise ValueError("every prompt needs at least one token (e.g. the BOS token)")
    if ids.shape[1] > 1 and not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError("prompts must be left-padded (attention_mask 0...0 1...1): generation appends on the right")
    ids = ids.masked_fill(~mask, pad_token_id)
    if vocab_size is not None:
        real = ids[mask]
        if int(real.min()) < 0 or int(real.max()) >= vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {vocab_size}); got {int(real.min())}..{int(real.max())}")
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def check_context(model: torch.nn.Module, prompt_len: int, max_new_tokens: int) -> None:
    """A prompt longer than the context, or a learned-position model asked past its table, is an error."""
    mc = getattr(model, "config", None)
    limit = getattr(mc, "max_seq_len", None)
    if limit is None:
        return
    if prompt_len > limit:
        raise ValueError(f"the prompt has {prompt_len} tokens but the model's context is max_seq_len={limit}; "
                         "shorten the prompt")
    if getattr(mc, "position", None) in ("learned", "sinusoidal") and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) > max_seq_len={limit}: this model "
            f"has no position embedding beyond {limit}; set max_new_tokens <= {limit - prompt_len}"
        )


def _make_cache(model: torch.nn.Module, batch: int, max_len: int):
    if hasattr(model, "make_cache"):
        return model.make_cache(batch, max_len)
    from lmkit.models.kv_cache import KVCache

    return KVCache.for_model(model, batch, max_len)


def _encode_prompts(prompts, tokenizer: Tokenizer | None):
    if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str)):
        if tokenizer is None:
            raise ConfigError("text prompts need a tokenizer: pass tokenizer=")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        return [tokenizer.encode(t) for t in texts]
    return prompts


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


# ---- the decoding loop --------------------------------------------------------------------
class _SamplingRun:
    """Greedy/sampled decoding of a batch; iterate to get one `_Step` per generated column.

    A consumer may end a row early (stop string) by clearing ``unfinished[row]``.
    """

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, cfg: GenerationConfig,
                 extra_processors: Sequence | None = None) -> None:
        self.model, self.cfg = model, cfg
        self.ids, self.mask = ids, mask
        b, p = ids.shape
        n = cfg.max_new_tokens
        device = ids.device
        self.batch, self.prompt_len, self.max_new = b, p, n
        self.tokens = torch.full((b, p + n), -1, dtype=torch.long, device=device)  # history; -1 = padding
        self.tokens[:, :p] = ids.masked_fill(~mask, -1)
        self.padded = not bool(mask.all())
        lengths = mask.sum(1)
        self.prompt_lengths = lengths.tolist()
        self.model_mask = torch.cat([mask.long(), mask.new_ones(b, n, dtype=torch.long)], 1) if self.padded else None
        self.positions = lengths[:, None] + torch.arange(n, device=device)[None]
        self.processors = build_logits_processors(cfg, p)
        if extra_processors:
            self.processors = LogitsProcessorList([*self.processors, *extra_processors])
        self.eos = torch.tensor(cfg.eos_ids, dtype=torch.long, device=device) if cfg.eos_ids else None
        self.pad = torch.tensor(cfg.pad_token_id, dtype=torch.long, device=device)
        self.unfinished = torch.ones(b, dtype=torch.bool, device=device)
        self.generator = _generator(cfg.seed, device)
        self.steps = 0

    def __iter__(self) -> Iterator[_Step]:
        return self._run()

    @torch.inference_mode()
    def _run(self) -> Iterator[_Step]:
        cfg, model = self.cfg, self.model
        p, n = self.prompt_len, self.max_new
        if n == 0:
            return
        cache = _make_cache(model, self.batch, p + n)
        out = model(self.ids, attention_mask=self.model_mask[:, :p] if self.padded else None, kv_cache=cache,
                    num_logits_to_keep=1)
        k = cfg.top_logprobs
        for i in range(n):
            scores = out.logits[:, -1].float()
            if self.processors:
                scores = self.processors(self.tokens[:, : p + i], scores)
            nxt = choose_tokens(scores, cfg.do_sample, self.generator)
            nxt = torch.where(self.unfinished, nxt, self.pad)
            self.tokens[:, p + i] = nxt
            lp = top = None
            if cfg.logprobs:
                logp = scores.log_softmax(-1)
                lp = logp.gather(1, nxt[:, None])[:, 0]
                if k:
                    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            self.steps = i + 1
            yield _Step(i, nxt, lp, top)
            if self.eos is not None:
                self.unfinished &= ~torch.isin(nxt, self.eos)
            if i + 1 == n or not bool(self.unfinished.any()):
                break
            out = model(
                nxt[:, None],
                attention_mask=self.model_mask[:, : p + i + 1] if self.padded else None,
                position_ids=self.positions[:, i: i + 1],
                kv_cache=cache,
            )

    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len: self.prompt_len + self.steps]


def _row_ends(gen: list[list[int]], eos: set[int], stop_steps: list[int | None]) -> list[tuple[int, int | None]]:
    """(generated length, EOS id or None) per row."""
    out = []
    for r, row in enumerate(gen):
        if stop_steps[r] is not None:
            out.append((stop_steps[r], None))
            continue
        end = next((j for j, t in enumerate(row) if t in eos), None)
        out.append((len(row), None) if end is None else (end + 1, row[end]))
    return out


# ---- public API ---------------------------------------------------------------------------
def generate(
    model: torch.nn.Module,
    input_ids,
    config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Tokenizer | None = None,
    logits_processors: Sequence | None = None,
    **overrides,
) -> GenerationOutput:
    """Continue each prompt. `input_ids`: a [B, T] tensor (left-padded, with attention_mask),
    a list of id lists (padded here), or text (a string or list of strings, with tokenizer=).

    Options come from `config` and keyword overrides (GenerationConfig fields, e.g.
    ``max_new_tokens=64, do_sample=True, top_p=0.9, seed=0``). `logits_processors` are extra
    callables run after the built-in ones. The model is used as it is (call ``model.eval()``).
    """
    cfg = resolve_config(model, config, **overrides)
    if cfg.stop and tokenizer is None:
        raise ConfigError("stop strings are matched on text: pass tokenizer= to generate")
    input_ids = _encode_prompts(input_ids, tokenizer)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    ids, mask = prepare_prompts(input_ids, attention_mask, cfg.pad_token_id, model_device(model), vocab)
    check_context(model, ids.shape[1], cfg.max_new_tokens)
    if cfg.num_beams > 1:
        from lmkit.infer.beam_search import beam_search

        return beam_search(model, ids, mask, cfg, tokenizer=tokenizer, logits_processors=logits_processors)
    if cfg.num_return_sequences > 1:
        ids = ids.repeat_interleave(cfg.num_return_sequences, 0)
        mask = mask.repeat_interleave(cfg.num_return_sequences, 0)
    run = _SamplingRun(model, ids, mask, cfg, logits_processors)
    b = run.batch
    streams = [TextStream(tokenizer, cfg.stop, cfg.eos_ids) for _ in range(b)] if cfg.stop else None
    stop_strings: list[str | None] = [None] * b
    stop_steps: list[int | None] = [None] * b
    lps, tops = [], []
    for step in run:
        if cfg.logprobs:
            lps.append(step.logprob)
            tops.append(step.top)
        if streams is not None:
            toks, alive = step.tokens.tolist(), run.unfinished.tolist()
            for r in range(b):
                if alive[r]:
                    _, matched = streams[r].push(toks[r])
                    if matched is not None:
                        run.unfinished[r] = False
                        stop_strings[r], stop_steps[r] = matched, step.index + 1

    gen = run.generated().tolist()
    ends = _row_ends(gen, set(cfg.eos_ids), stop_steps)
    token_ids = [row[:end] for row, (end, _) in zip(gen, ends)]
    finish = ["stop" if (eos is not None or stop_strings[r] is not None) else "length"
              for r, (_, eos) in enumerate(ends)]
    reasons: list[int | str | None] = [stop_strings[r] if stop_strings[r] is not None else eos
                                       for r, (_, eos) in enumerate(ends)]
    texts = None
    if tokenizer is not None:
        eos_set = set(cfg.eos_ids)
        if streams is not None:
            texts = []
            for r, s in enumerate(streams):
                if stop_strings[r] is None:
                    s.finish()
                texts.append(s.text)
        else:
            texts = [tokenizer.decode([t for t in row if t not in eos_set] if row and row[-1] in eos_set else row)
                     for row in token_ids]
    logprobs = top_logprobs = None
    if cfg.logprobs:
        lp = torch.stack(lps, 1).tolist() if lps else [[] for _ in range(b)]
        logprobs = [row[:end] for row, (end, _) in zip(lp, ends)]
        if cfg.top_logprobs:
            vals = torch.stack([t[0] for t in tops], 1).tolist()
            idx = torch.stack([t[1] for t in tops], 1).tolist()
            top_logprobs = [[list(zip(idx[r][j], vals[r][j])) for j in range(end)] for r, (end, _) in enumerate(ends)]
    sequences = torch.cat([ids, run.generated()], 1)
    return GenerationOutput(
        sequences=sequences, token_ids=token_ids, finish_reasons=finish, stop_reasons=reasons,
        prompt_lengths=run.prompt_lengths, texts=texts, logprobs=logprobs, top_logprobs=top_logprobs,
    )


def generate_text(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, config: GenerationConfig | None = None,
                  **overrides) -> str:
    """The completion of one text prompt, as text."""
    return generate(model, prompt, config, tokenizer=tokenizer, **overrides).text


def stream_generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts,
    config: GenerationConfig | None = None,
    *,
    logits_processors: Sequence | None = None,
    **overrides,
) -> Iterator[StreamDelta]:
    """Generate and yield text deltas as tokens arrive, for one prompt or a batch (text or ids).

    Each row's deltas concatenate to exactly `generate(...).texts[row]`; the last delta of a
    row carries its finish_reason. Beam search cannot stream (the best beam is known only at the end).
    """
    cfg = resolve_config(model, config, **overrides)
    if cfg.num_beams > 1:
        raise ConfigError("beam search cannot stream: its best sequence is only known at the end (num_beams=1)")
    ids, mask = prepare_prompts(_encode_prompts(prompts, tokenizer), None, cfg.pad_token_id, model_device(model),
                                getattr(getattr(model, "config", None), "vocab_size", None))
    check_context(model, ids.shape[1], cfg.max_new_tokens)
    if cfg.num_return_sequences > 1:
        ids = ids.repeat_interleave(cfg.num_return_sequences, 0)
        mask = mask.repeat_interleave(cfg.num_return_sequences, 0)
    run = _SamplingRun(model, ids, mask, cfg, logits_processors)
    b = run.batch
    eos = set(cfg.eos_ids)
    streams = [TextStream(tokenizer, cfg.stop, eos) for _ in range(b)]
    pending_ids: list[list[int]] = [[] for _ in range(b)]
    pending_lp: list[list[float]] = [[] for _ in range(b)]
    done = [False] * b
    for step in run:
        toks = step.tokens.tolist()
        lps = step.logprob.tolist() if step.logprob is not None else None
        for r in range(b):
            if done[r]:
                continue
            pending_ids[r].append(toks[r])
            if lps is not None:
                pending_lp[r].append(lps[r])
            text, matched = streams[r].push(toks[r])
            finish = None
            if matched is not None:
                finish = "stop"
                run.unfinished[r] = False
            elif toks[r] in eos:
                extra, _ = streams[r].finish()
                text += extra
                finish = "stop"
            elif step.index + 1 == cfg.max_new_tokens:
                extra, matched = streams[r].finish()
                text += extra
                finish = "stop" if matched is not None else "length"
            if text or finish:
                yield StreamDelta(r, text, pending_ids[r], pending_lp[r] if lps is not None else None, finish)
                pending_ids[r], pending_lp[r] = [], []
            done[r] = finish is not None
