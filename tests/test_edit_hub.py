"""Editing a Hugging Face-format checkpoint: load it, ROME-edit it, save it, and `transformers`
(LlamaForCausalLM from the saved directory) gives the edited answer greedily, as lmkit does."""

from __future__ import annotations

import torch

from edit_tiny import SUBJECT_LAST, tiny_model, world_and_tokenizer
from lmkit.edit.key_statistics import key_second_moment
from lmkit.edit.rome import RomeConfig, apply_rome
from lmkit.edit.target_vector import EditRequest, TargetVectorConfig
from lmkit.hub import load_pretrained, save_pretrained

# an untrained model's MLP outputs are tiny next to its embeddings: no clamp on the change
FREE = TargetVectorConfig(steps=30, clamp_norm=1e4, weight_decay=0.0)


def test_rome_edit_of_a_hf_checkpoint_is_reproduced_by_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    world, records, tok = world_and_tokenizer()
    save_pretrained(tiny_model(seed=3), tmp_path / "base", tokenizer=tok)
    model = load_pretrained(tmp_path / "base")
    rw = records[1]["requested_rewrite"]
    req = EditRequest(SUBJECT_LAST, rw["subject"], rw["target_new"]["str"])
    prompt = tok.encode(req.prompt.format(req.subject))
    target = tok.encode(" " + req.target_new)
    cov = key_second_moment(model, tok, world.statements(), [1])
    apply_rome(model, tok, req, cov[1], world.statements()[:2], RomeConfig(layer=1, target=FREE))
    with torch.no_grad():
        ours = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    assert ours == target[0]
    save_pretrained(model, tmp_path / "edited", tokenizer=tok)

    hf = LlamaForCausalLM.from_pretrained(tmp_path / "edited").eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=1, do_sample=False, pad_token_id=0)
    assert out[0, len(prompt):].tolist() == [ours]
    reloaded = load_pretrained(tmp_path / "edited")
    assert torch.equal(reloaded.layers[1].mlp.down_proj.weight, model.layers[1].mlp.down_proj.weight)
