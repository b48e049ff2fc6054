"""An lmkit checkpoint (full or quantized) answering the harness's three request types the way
lm-eval's HFLM answers them.

* loglikelihood: requests sorted longest first and run in right-padded batches; each input is
  ``(context + continuation)[-(max_len + 1):][:-1]`` (left truncation), the continuation's
  log-probabilities are summed, and `is_greedy` says whether argmax reproduces it.
* loglikelihood_rolling: the text's rolling windows (`rolling_windows.py`), summed.
* generate_until: greedy decoding of the left-truncated context (``max_len - max_gen_toks``
  tokens), stopped at EOS or a stop string, the text cut before the first stop string.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmkit.eval.harness.generation_kwargs import GenerationRequest, cut_at_stops
from lmkit.eval.harness.rolling_windows import disjoint_window, rolling_token_windows
from lmkit.eval.harness.tokenization import HarnessTokenizer


class LocalLM:
    """A model + tokenizer in this process."""

    def __init__(self, model: torch.nn.Module, tokenizer: HarnessTokenizer, max_length: int | None = None,
                 batch_size: int = 8, name: str = "local") -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.max_length = int(max_length or model.config.max_seq_len)
        self.batch_size = max(1, int(batch_size))
        self.name = name

    @classmethod
    def from_checkpoint(cls, directory: str | Path, batch_size: int = 8, tokenizer: str | Path | None = None,
                        max_length: int | None = None) -> "LocalLM":
        """Load a checkpoint directory written by lmkit or transformers (or `lmkit quantize`)."""
        from lmkit.hub.pretrained import load_pretrained
        from lmkit.tokenizers.loading import load_tokenizer

        model = load_pretrained(directory)
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
            model = model.float()  # scores in float32, as lm-eval is run with dtype=float32 for parity
        tok_dir = Path(tokenizer or directory)
        tok = HarnessTokenizer.from_checkpoint(tok_dir if tok_dir.is_dir() else tok_dir.parent,
                                               load_tokenizer(tok_dir), model.config)
        return cls(model, tok, max_length, batch_size, name=str(directory))

    # -- log-likelihoods ---------------------------------------------------------------------
    @torch.no_grad()
    def _score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Batches as lm-eval's Collator makes them, so even float32 rounding matches: requests
        with the same ``context + continuation[:-1]`` (the same model input) run once, as the one
        with the longest continuation; the rest sorted by (-length, tokens), `batch_size` a batch."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                raise ValueError("a log-likelihood request needs a non-empty context and continuation")
            if len(cont) > self.max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the model's context of "
                                 f"{self.max_length} tokens (lm-eval refuses it too)")
            groups.setdefault(tuple(ctx + cont[:-1]), []).append(i)
        reps = [max(members, key=lambda i: len(pairs[i][1])) for members in groups.values()]
        members_of = {rep: members for rep, members in zip(reps, groups.values())}
        reps.sort(key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), tuple(pairs[i][0] + pairs[i][1])))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        device = next(self.model.parameters()).device
        for start in range(0, len(reps), self.batch_size):
            idx = reps[start:start + self.batch_size]
            inps = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):][:-1] for i in idx]
            width = max(len(x) for x in inps)
            batch = torch.zeros(len(inps), width, dtype=torch.long, device=device)
            for r, x in enumerate(inps):
                batch[r, :len(x)] = torch.tensor(x, dtype=torch.long)
            logp = torch.log_softmax(self.model(batch).logits.float(), dim=-1)
            for r, rep in enumerate(idx):
                inplen = len(inps[r])
                rows = logp[r, inplen - len(pairs[rep][1]):inplen]
                greedy_ids = rows.argmax(-1)
                for i in members_of[rep]:
                    cont = pairs[i][1]
                    target = torch.tensor(cont, dtype=torch.long, device=device)
                    # lm-eval quirk, kept for identical numbers: a request sharing the input of a longer
                    # one (only repeated rolling windows do) is scored on the FIRST len(cont) positions
                    # of that one's continuation (torch.gather), while is_greedy uses the last ones.
                    lp = rows[:len(cont)]
                    out[i] = (float(lp.gather(-1, target[:, None]).squeeze(-1).sum()),
                              bool((greedy_ids[-len(cont):] == target).all()))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self._score_tokens([self.tok.encode_request(c, x) for c, x in requests])

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for n, text in enumerate(texts):
            for w in rolling_token_windows(self.tok.encode(text), self.tok.prefix_token_id, self.max_length):
                windows.append(disjoint_window(w))
                owner.append(n)
        scores: list[tuple[float, bool]] = []
        for start in range(0, len(windows), self.batch_size):  # lm-eval scores windows chunk by chunk
            scores.extend(self._score_tokens(windows[start:start + self.batch_size]))
        totals = [0.0] * len(texts)
        for n, (ll, _) in zip(owner, scores):
            totals[n] += ll
        return totals

    # -- generation --------------------------------------------------------------------------
    @property
    def eos_text(self) -> str | None:
        return self.tok.decode([self.tok.eos_id]) if self.tok.eos_id is not None else None

    def generate_until(self, requests: list[GenerationRequest]) -> list[str]:
        from lmkit.infer.generate import generate

        out: list[str] = []
        for req in requests:
            budget = self.max_length - req.max_gen_toks
            if budget <= 0:
                raise ValueError(f"max_gen_toks {req.max_gen_toks} leaves no room for the context in "
                                 f"the model's {self.max_length} tokens")
            ids = self.tok.encode(req.context)[-budget:]
            res = generate(self.model, [ids], tokenizer=self.tok.tokenizer, max_new_tokens=req.max_gen_toks,
                           do_sample=False, stop=[s for s in req.until if s] or None)
            out.append(cut_at_stops(res.texts[0], req.until))
        return out
