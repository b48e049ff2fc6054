"""Paraphrase and back-translation augmentation through any text-generating model.

A paraphraser is any callable `str -> str`. `prompt_paraphraser` wraps a completion function
(an lmkit model through ``lmkit.infer.generate_text``, or anything else) with a prompt;
`openai_paraphraser` calls an OpenAI-compatible chat endpoint (`lmkit serve`, vLLM, OpenAI);
`back_translation` chains two translations (source -> pivot -> source), the classic way to get
a paraphrase that keeps the meaning. `paraphrase_records` adds the paraphrases as new records
with the label and every other field unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

from lmkit.errors import ConfigError

Paraphraser = Callable[[str], str]
PARAPHRASE_PROMPT = "Rewrite the following text in other words, keeping its meaning.\nText: {text}\nRewritten:"
TRANSLATE_PROMPT = "Translate the following text from {source} to {target}.\nText: {text}\nTranslation:"


def prompt_paraphraser(complete: Callable[[str], str], template: str = PARAPHRASE_PROMPT) -> Paraphraser:
    """A paraphraser from a completion function: the prompt filled with the text, first line of the answer."""
    def paraphrase(text: str) -> str:
        out = complete(template.format(text=text)).strip()
        return out.splitlines()[0].strip() if out else ""
    return paraphrase


def back_translation(translate: Callable[[str, str, str], str], source: str = "English", pivot: str = "Chinese") -> Paraphraser:
    """source -> pivot -> source through `translate(text, source, target)`."""
    def paraphrase(text: str) -> str:
        return translate(translate(text, source, pivot), pivot, source)
    return paraphrase


def prompt_translator(complete: Callable[[str], str], template: str = TRANSLATE_PROMPT) -> Callable[[str, str, str], str]:
    """A `translate(text, source, target)` function from a completion function and a prompt."""
    def translate(text: str, source: str, target: str) -> str:
        out = complete(template.format(text=text, source=source, target=target)).strip()
        return out.splitlines()[0].strip() if out else ""
    return translate


def openai_paraphraser(client: Any, model: str, instruction: str = PARAPHRASE_PROMPT, temperature: float = 0.7,
                       max_tokens: int = 256) -> Paraphraser:
    """A paraphraser over an OpenAI-compatible client (``openai.OpenAI(base_url=..., api_key=...)``)."""
    def complete(prompt: str) -> str:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                               temperature=temperature, max_tokens=max_tokens)
        return reply.choices[0].message.content or ""
    return prompt_paraphraser(complete, instruction)


def paraphrase_records(records: Iterable[Mapping[str, Any]], paraphrase: Paraphraser, text_field: str = "text",
                       keep_original: bool = True, skip_unchanged: bool = True) -> Iterator[dict[str, Any]]:
    """Each record and its paraphrase (labels kept); empty or unchanged paraphrases are skipped."""
    for index, record in enumerate(records):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise ConfigError(f"record {index} has no text field {text_field!r}")
        if keep_original:
            yield dict(record)
        new = paraphrase(text)
        if new and not (skip_unchanged and new.strip() == text.strip()):
            yield {**record, text_field: new, "augmentation": "paraphrase"}
