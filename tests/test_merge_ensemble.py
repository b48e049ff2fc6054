"""Output ensembles: EnsembleLM's combined distributions and generation through infer's decode core."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer.ensemble import EnsembleLM, combine_logits
from lmkit.infer.generate import generate
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset

V = 50


def tiny(seed: int, vocab: int = V) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(preset("llama-tiny", vocab_size=vocab, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                            d_ff=48, max_seq_len=64)).eval()


@pytest.fixture(scope="module")
def members():
    return [tiny(0), tiny(1), tiny(2)]


def test_combined_distributions(members):
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    zs = [m(ids).logits for m in members]
    w = [0.2, 0.3, 0.5]
    probs = sum(wi * torch.softmax(z, -1) for wi, z in zip(w, zs))
    got = EnsembleLM(members, w, combine="probs")(ids).logits
    assert torch.allclose(torch.softmax(got, -1), probs, atol=1e-6)
    assert torch.allclose(got.exp().sum(-1), torch.ones(2, 7), atol=1e-5)  # log-probabilities
    geo = sum(wi * torch.log_softmax(z, -1) for wi, z in zip(w, zs))
    assert torch.allclose(EnsembleLM(members, w, combine="logprobs")(ids).logits, geo, atol=1e-6)
    assert torch.allclose(combine_logits(zs, w, "logits"), sum(wi * z for wi, z in zip(w, zs)), atol=1e-6)


def test_greedy_generation_equals_a_loop_over_full_forwards(members):
    prompt = [[3, 9, 4, 17], [8, 1, 30, 2]]
    ens = EnsembleLM(members[:2], [1.0, 2.0], combine="probs")
    out = generate(ens, prompt, max_new_tokens=6, do_sample=False)
    seqs = torch.tensor(prompt)
    for _ in range(6):  # no cache: every step runs the whole sequence through both members
        p = (torch.softmax(members[0](seqs).logits[:, -1], -1) + 2 * torch.softmax(members[1](seqs).logits[:, -1], -1))
        seqs = torch.cat([seqs, p.argmax(-1, keepdim=True)], 1)
    assert out.sequences == seqs[:, 4:].tolist()


def test_one_member_ensemble_decodes_like_the_model_with_beams(members):
    prompt = [[5, 6, 7], [11, 12, 13]]
    for beams in (1, 2):
        want = generate(members[0], prompt, max_new_tokens=5, num_beams=beams).sequences
        got = generate(EnsembleLM(members[:1], combine="logits"), prompt, max_new_tokens=5, num_beams=beams).sequences
        assert got == want


def test_members_must_share_a_vocabulary(members):
    with pytest.raises(ConfigError, match="tokenizer"):
        EnsembleLM([members[0], tiny(3, vocab=V + 1)])
    with pytest.raises(ConfigError, match="combine"):
        EnsembleLM(members, combine="vote")
