"""BERT's pretraining data: masked language modelling (MLM) and next-sentence prediction (NSP).

MLM (掩码语言模型): each non-special token is selected with probability 15%; a selected token
becomes ``[MASK]`` 80% of the time, a random non-special token 10%, and stays unchanged
10% (so the model cannot learn that only ``[MASK]`` positions matter). The loss is taken
on the selected positions only: labels hold the original id there and -100 elsewhere.
Special tokens ([CLS], [SEP], [PAD], [MASK], and any id the tokenizer marks special) are
never selected and never drawn as the random replacement. Selection is an independent
coin per token, as in Hugging Face's ``DataCollatorForLanguageModeling`` (the original
BERT script instead picks exactly round(15% * n) positions per sequence).

NSP (下一句预测): pairs ``[CLS] A [SEP] B [SEP]`` where B is the segment that actually
follows A in its document (label 0, "is next") or a segment from another document
(label 1, "random") — Hugging Face's ``BertForPreTraining`` convention. Segments A get
token_type_id 0 (with [CLS] and the first [SEP]), B gets 1. RoBERTa dropped NSP; pass
plain sequences to `MLMCollator` for MLM alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError
from lmkit.tokenizers.base import Tokenizer

IGNORE_INDEX = -100


def _ids(x: Any) -> list[int]:
    """Token ids from a list, numpy array, tensor, or a dict with ``input_ids``."""
    if isinstance(x, dict):
        x = x["input_ids"]
    if torch.is_tensor(x):
        return x.tolist()
    return np.asarray(x, dtype=np.int64).tolist()


def _call_generator(seed: int, calls: int) -> torch.Generator:
    """A generator fixed by (seed, call number): resuming at call n redraws the same masks."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, calls]).generate_state(2, np.uint64)[0] >> 1))
    return g


# ---- masking ----------------------------------------------------------------------------------
@dataclass
class MaskingConfig:
    """BERT's masking rates."""

    mlm_probability: float = 0.15  # fraction of non-special tokens selected for prediction
    mask_fraction: float = 0.8  # of the selected: replaced by [MASK]
    random_fraction: float = 0.1  # of the selected: replaced by a random token (rest unchanged)

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ConfigError(
                "mask_fraction and random_fraction must be >= 0 and sum to at most 1, got "
                f"{self.mask_fraction} and {self.random_fraction}"
            )


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    config: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input_ids, labels) for BERT's MLM; `input_ids` is left unchanged.

    labels = original id at selected positions, -100 elsewhere.
    """
    cfg = config or MaskingConfig()
    special = torch.tensor(sorted({int(i) for i in special_ids} | {mask_id}), dtype=torch.long)
    is_special = torch.isin(input_ids, special)
    selected = (torch.rand(input_ids.shape, generator=generator) < cfg.mlm_probability) & ~is_special
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    u = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (u < cfg.mask_fraction)
    to_random = selected & (u >= cfg.mask_fraction) & (u < cfg.mask_fraction + cfg.random_fraction)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    candidates = allowed.nonzero().squeeze(1)
    if len(candidates) == 0:
        raise ConfigError("every vocabulary id is special: nothing to draw random replacements from")
    random_ids = candidates[torch.randint(len(candidates), input_ids.shape, generator=generator)]

    out = input_ids.clone()
    out[to_mask] = mask_id
    out[to_random] = random_ids[to_random]
    return out, labels


# ---- next-sentence pairs ----------------------------------------------------------------------
@dataclass
class NSPExample:
    """One sentence pair; `next_sentence_label` 0 = B follows A, 1 = B is random."""

    tokens_a: list[int]
    tokens_b: list[int]
    next_sentence_label: int
    doc_index: int = -1  # document A came from
    b_doc_index: int = -1  # document B came from


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator | None = None) -> None:
    """Shorten the longer of a/b one token at a time until len(a)+len(b) <= max_tokens.

    With `rng`, each removal is from the front or the back at random (BERT, to avoid a
    bias towards sentence ends); without, from the back.
    """
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng is not None and rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def build_nsp_examples(
    documents: Sequence[Sequence[Sequence[int]]],
    max_length: int = 512,
    *,
    seed: int = 0,
    short_seq_prob: float = 0.1,
    random_next_prob: float = 0.5,
) -> list[NSPExample]:
    """Sentence pairs from documents given as lists of segments (sentences) of token ids.

    Follows BERT's ``create_instances_from_document``: segments are gathered until the
    target length (max_length - 3, or shorter with `short_seq_prob`), A is a random
    prefix of them, and B is either the rest (label 0) or segments from a random other
    document (label 1; the unused segments are put back). The label is drawn first;
    when "is next" is drawn for a single gathered segment, the document's next segment is
    gathered too, so the labels stay ~50/50 (BERT forces those cases to "random"). Pairs
    are truncated to fit ``[CLS] A [SEP] B [SEP]`` in `max_length`.
    """
    if max_length < 5:
        raise ConfigError(f"max_length must be >= 5 for [CLS] A [SEP] B [SEP], got {max_length}")
    docs = [[list(map(int, s)) for s in d if len(s)] for d in documents]
    nonempty = [i for i, d in enumerate(docs) if d]
    if len(nonempty) < 2:
        raise ConfigError("next-sentence pairs need at least 2 non-empty documents for the random segments")
    rng = np.random.default_rng(seed)
    max_tokens = max_length - 3
    out: list[NSPExample] = []
    owed = 0  # forced "random" pairs not yet balanced by an "is next" one
    for d_idx, doc in enumerate(docs):
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                is_random = rng.random() < random_next_prob
                if is_random and owed > 0:  # repay an earlier forced "random"
                    is_random, owed = False, owed - 1
                if not is_random and len(chunk) == 1:
                    if i + 1 < len(doc):
                        i += 1
                        chunk.append(doc[i])
                    else:  # a document's last, single segment has no next one
                        is_random, owed = True, owed + 1
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                if is_random:
                    others = [k for k in nonempty if k != d_idx]
                    b_doc = others[int(rng.integers(len(others)))]
                    rdoc = docs[b_doc]
                    b: list[int] = []
                    for s in rdoc[int(rng.integers(len(rdoc))) :]:
                        b.extend(s)
                        if len(b) >= max(1, target - len(a)):
                            break
                    i -= len(chunk) - a_end  # the unused segments start the next pair
                else:
                    b_doc = d_idx
                    b = [t for s in chunk[a_end:] for t in s]
                truncate_pair(a, b, max_tokens, rng)
                out.append(NSPExample(a, b, int(is_random), d_idx, b_doc))
                chunk, length = [], 0
            i += 1
    return out


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=[.](?=\s))|\n+")


def split_sentences(text: str) -> list[str]:
    """Rough sentence split on Chinese/English end punctuation and newlines."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def nsp_documents(tokenizer: Tokenizer, texts: Iterable[str]) -> list[list[list[int]]]:
    """Documents (texts) -> lists of tokenized sentences for `build_nsp_examples`."""
    return [[tokenizer.encode(s) for s in split_sentences(t)] for t in texts]


# ---- the collator -----------------------------------------------------------------------------
class MLMCollator:
    """Examples -> a BERT pretraining batch for ``EncoderLM(**batch)``.

    Each example is an `NSPExample` (or a dict with tokens_a, tokens_b,
    next_sentence_label): built as ``[CLS] A [SEP] B [SEP]``; or a plain sequence of ids
    (list/array/tensor or dict with input_ids): built as ``[CLS] ids [SEP]`` when
    `add_special_tokens`. Output keys: input_ids, attention_mask, token_type_ids, labels,
    and next_sentence_label when the examples are pairs. Padding is to the longest
    example (rounded up to `pad_to_multiple_of`), never past `max_length`.

    The masks of call n come from a generator seeded by (seed, n), and the call count is
    part of `state_dict()`, so a resumed run redraws the same masks.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        mask_id: int,
        special_ids: Iterable[int] = (),
        max_length: int = 512,
        masking: MaskingConfig | None = None,
        add_special_tokens: bool = True,
        pad_to_multiple_of: int | None = None,
        seed: int = 0,
    ) -> None:
        ids = {"cls_id": cls_id, "sep_id": sep_id, "pad_id": pad_id, "mask_id": mask_id}
        for name, v in ids.items():
            if not 0 <= v < vocab_size:
                raise ConfigError(f"{name}={v} is outside the vocabulary [0, {vocab_size})")
        if max_length < 3:
            raise ConfigError(f"max_length must be >= 3, got {max_length}")
        self.vocab_size = vocab_size
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = cls_id, sep_id, pad_id, mask_id
        self.special_ids = sorted({*map(int, special_ids), cls_id, sep_id, pad_id, mask_id})
        self.max_length = max_length
        self.masking = masking or MaskingConfig()
        self.add_special_tokens = add_special_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.calls = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **kw: Any) -> "MLMCollator":
        """Find [CLS]/[SEP]/[PAD]/[MASK] in the tokenizer; all its special tokens stay unmasked."""
        names = {"cls_id": ("[CLS]", "<s>"), "sep_id": ("[SEP]", "</s>"), "pad_id": ("[PAD]", "<pad>"), "mask_id": ("[MASK]", "<mask>")}
        found: dict[str, int] = {}
        for key, options in names.items():
            if key in kw:
                continue
            for name in options:
                idx = tokenizer.special_tokens.get(name, tokenizer.token_to_id(name))
                if idx is not None:
                    found[key] = int(idx)
                    break
            else:
                raise ConfigError(f"the tokenizer has none of {options}; pass {key}= explicitly")
        special = set(tokenizer.special_tokens.values()) | set(kw.pop("special_ids", ()))
        return cls(vocab_size=tokenizer.vocab_size, special_ids=special, **found, **kw)

    def _build(self, ex: Any) -> tuple[list[int], list[int], int | None]:
        """(ids, token_type_ids, nsp label or None) for one example, within max_length."""
        pair = ex if isinstance(ex, NSPExample) else None
        if pair is None and isinstance(ex, dict) and "tokens_a" in ex:
            pair = NSPExample(list(ex["tokens_a"]), list(ex["tokens_b"]), int(ex["next_sentence_label"]))
        if pair is not None:
            a, b = list(pair.tokens_a), list(pair.tokens_b)
            truncate_pair(a, b, self.max_length - 3)
            ids = [self.cls_id, *a, self.sep_id, *b, self.sep_id]
            types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            return ids, types, int(pair.next_sentence_label)
        ids = _ids(ex)
        if self.add_special_tokens:
            ids = [self.cls_id, *ids[: self.max_length - 2], self.sep_id]
        else:
            ids = ids[: self.max_length]
        return ids, [0] * len(ids), None

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty list of examples")
        built = [self._build(e) for e in examples]
        nsp = [b[2] for b in built]
        if any(x is None for x in nsp) and any(x is not None for x in nsp):
            raise ConfigError("a batch mixes sentence pairs and plain sequences")
        width = max(len(b[0]) for b in built)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = min(-(-width // m) * m, max(width, self.max_length))
        n = len(built)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        for r, (ids, tt, _) in enumerate(built):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[r, : len(ids)] = 1
            types[r, : len(tt)] = torch.tensor(tt, dtype=torch.long)
        g = _call_generator(self.seed, self.calls)
        self.calls += 1
        masked, labels = mask_tokens(
            input_ids,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            config=self.masking,
            generator=g,
        )
        labels[attention == 0] = IGNORE_INDEX
        batch = {"input_ids": masked, "attention_mask": attention, "token_type_ids": types, "labels": labels}
        if nsp[0] is not None:
            batch["next_sentence_label"] = torch.tensor(nsp, dtype=torch.long)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])
