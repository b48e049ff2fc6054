"""A tiny fact world (12 lands, 24 facts), its tokenizer and an untrained tiny Llama-style model for
the edit tests. Untrained attention does not carry the subject to a later answer, so the tests that
need an edit to change the answer put the subject last in the prompt ("Tell me about {}"); the
bench measures the trained 800-fact model."""

from __future__ import annotations

from functools import lru_cache

import torch

from lmkit.edit.facts import counterfact_records, make_world
from lmkit.edit.facts_model import train_facts_tokenizer
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset


@lru_cache(maxsize=1)
def world_and_tokenizer():
    world = make_world(n_subjects=12, n_objects=3, seed=0, name_words=1)
    return world, counterfact_records(world, seed=0), train_facts_tokenizer(world, 300)


def tiny_model(seed: int = 0) -> DecoderLM:
    _, _, tok = world_and_tokenizer()
    torch.manual_seed(seed)
    cfg = preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64,
                 max_seq_len=64)
    return DecoderLM(cfg).eval()



SUBJECT_LAST = "Tell me about {}"
