"""Any OpenAI-compatible endpoint as a harness model, through the `openai` client.

* generate_until: /v1/completions with temperature 0, `max_tokens` = max_gen_toks and the
  first four stop strings (the API's limit); the text is cut before every stop string.
* loglikelihood: /v1/completions of ``context + continuation`` with ``echo=True, logprobs=1``;
  the continuation's tokens are those whose `text_offset` is at or past the context's length
  (the server's tokenization, not a local one), and `is_greedy` says each is its position's
  top token. Servers that do not return the prompt's log-probabilities (lmkit's own server
  echoes the prompt text but gives log-probabilities of generated tokens only; OpenAI's
  current models neither) make this an `EndpointError` naming the task type.
* loglikelihood_rolling: the same over the whole text; the first token has no log-probability
  from the server and is not counted (lm-eval conditions it on BOS locally; an endpoint cannot).
"""

from __future__ import annotations

from lmkit.errors import LmkitError, require
from lmkit.eval.harness.generation_kwargs import GenerationRequest, cut_at_stops

MAX_STOPS = 4


class EndpointError(LmkitError):
    """The endpoint failed or cannot answer this kind of request."""


class EndpointLM:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        openai = require("openai", "eval")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout)
        self.base_url = base_url
        self.eos_text = None
        if model is None:
            try:
                model = self.client.models.list().data[0].id
            except Exception as exc:  # noqa: BLE001 - any client failure: say what to pass instead
                raise EndpointError(f"{base_url}: cannot list the models ({exc}); pass the model name") from None
        self.model = model
        self.name = f"{base_url}#{model}"

    def generate_until(self, requests: list[GenerationRequest]) -> list[str]:
        out = []
        for req in requests:
            try:
                resp = self.client.completions.create(
                    model=self.model, prompt=req.context, max_tokens=req.max_gen_toks, temperature=0.0,
                    stop=[s for s in req.until if s][:MAX_STOPS] or None)
            except Exception as exc:  # noqa: BLE001
                raise EndpointError(f"{self.base_url}: completion failed: {exc}") from None
            out.append(cut_at_stops(resp.choices[0].text or "", req.until))
        return out

    def _prompt_logprobs(self, prompt: str) -> tuple[list[float | None], list[int], list[bool]]:
        try:
            resp = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=1, temperature=0.0,
                                                  echo=True, logprobs=1)
        except Exception as exc:  # noqa: BLE001
            raise EndpointError(f"{self.base_url}: log-likelihood request failed: {exc}") from None
        lp = resp.choices[0].logprobs
        lps = list(getattr(lp, "token_logprobs", None) or [])
        offsets = list(getattr(lp, "text_offset", None) or [])
        keep = [i for i, off in enumerate(offsets) if off < len(prompt)]  # the prompt's tokens, not generated ones
        if not lps or len(lps) != len(offsets) or not keep:
            raise EndpointError(
                f"{self.base_url} does not return log-probabilities of the prompt (echo + logprobs), so "
                "multiple_choice / loglikelihood / loglikelihood_rolling tasks cannot run on it; "
                "generate_until tasks can")
        tokens = list(getattr(lp, "tokens", None) or [])
        tops = list(getattr(lp, "top_logprobs", None) or [])
        greedy = []
        for i, tok in enumerate(tokens):
            top = tops[i] if i < len(tops) and tops[i] else None
            greedy.append(bool(top) and max(top, key=top.get) == tok)
        return [lps[i] for i in keep], [offsets[i] for i in keep], [greedy[i] if i < len(greedy) else False
                                                                     for i in keep]

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in requests:
            lps, offsets, greedy = self._prompt_logprobs(context + continuation)
            idx = [i for i, off in enumerate(offsets) if off >= len(context)]
            if not idx or any(lps[i] is None for i in idx):
                raise EndpointError(f"{self.base_url}: no log-probabilities for the continuation {continuation!r}")
            out.append((float(sum(lps[i] for i in idx)), all(greedy[i] for i in idx)))
        return out

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            lps, _, _ = self._prompt_logprobs(text)
            out.append(float(sum(x for x in lps if x is not None)))
        return out
