"""The GRACE codebook editor: the weights never change, an edit answers within its radius, inputs
outside every radius run exactly as before, and removing an edit restores the model bit for bit.
Also FT-L's L∞ bound and causal tracing's bookkeeping, on the same untrained tiny model."""

from __future__ import annotations

import torch

from edit_tiny import SUBJECT_LAST, tiny_model, world_and_tokenizer
from lmkit.edit.causal_tracing import TraceResult, layer_to_edit, layers_to_spread, trace_fact
from lmkit.edit.ft_l import FineTuneConfig, apply_ft_l
from lmkit.edit.grace import GraceEditor
from lmkit.edit.prompt_tokens import pad_right
from lmkit.edit.target_vector import EditRequest


def _logits(model, tok, prompts):
    with torch.no_grad():
        return model(pad_right([tok.encode(p) for p in prompts])).logits


def test_grace_edits_within_radius_leave_the_rest_and_are_reversible():
    world, records, tok = world_and_tokenizer()
    model = tiny_model()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rw = records[0]["requested_rewrite"]
    req = EditRequest(rw["prompt"], rw["subject"], rw["target_new"]["str"])
    others = [r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]) for r in records[2:8]]
    before = _logits(model, tok, others)
    editor = GraceEditor(model, layer=1, epsilon=1e-3).attach()
    edit_id = editor.add(tok, req)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    prompt = tok.encode(req.prompt.format(req.subject))
    target = tok.encode(" " + req.target_new)
    out = list(prompt)
    with torch.no_grad():
        for _ in target:  # every target token comes from the codebook
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    assert out[len(prompt):] == target
    assert torch.equal(_logits(model, tok, others), before)  # outside the radius: bit-identical
    state = editor.state_dict()
    editor.remove(edit_id)
    assert not editor.entries
    unedited = _logits(model, tok, [req.prompt.format(req.subject)])
    editor.load_state_dict(state)
    assert int(_logits(model, tok, [req.prompt.format(req.subject)])[0, len(prompt) - 1].argmax()) == target[0]
    editor.detach()
    assert torch.equal(_logits(model, tok, [req.prompt.format(req.subject)]), unedited)


def test_grace_splits_radii_of_conflicting_keys():
    _, records, tok = world_and_tokenizer()
    model = tiny_model()
    editor = GraceEditor(model, layer=1, epsilon=1e6, steps=5)
    rw0, rw1 = records[0]["requested_rewrite"], records[2]["requested_rewrite"]
    editor.add(tok, EditRequest(rw0["prompt"], rw0["subject"], rw0["target_new"]["str"]))
    editor.add(tok, EditRequest(rw1["prompt"], rw1["subject"], rw1["target_new"]["str"]))
    radii = [e.radius for e in editor.entries]
    assert max(radii) < 1e6  # the huge initial balls overlapped and were split


def test_ft_l_stays_in_its_linf_ball():
    _, records, tok = world_and_tokenizer()
    model = tiny_model()
    w0 = model.layers[0].mlp.down_proj.weight.detach().clone()
    rw = records[0]["requested_rewrite"]
    apply_ft_l(model, tok, [EditRequest(SUBJECT_LAST, rw["subject"], rw["target_new"]["str"])],
               FineTuneConfig(layer=0, steps=5, lr=0.1, max_change=1e-3))
    change = (model.layers[0].mlp.down_proj.weight - w0).abs().max()
    assert 0 < change <= 1e-3 + 1e-7


def test_causal_tracing_restoring_the_last_layer_at_the_last_token_recovers_the_clean_run():
    _, records, tok = world_and_tokenizer()
    model = tiny_model()
    rw = records[0]["requested_rewrite"]
    res = trace_fact(model, tok, rw["prompt"], rw["subject"], rw["target_true"]["str"], samples=3)
    n_layers, t = res.hidden.shape
    assert n_layers == 2 and t == len(tok.encode(rw["prompt"].format(rw["subject"])))
    assert abs(res.hidden[-1, -1] - (res.clean - res.corrupted)) < 1e-5  # the whole clean state is back
    assert torch.all(res.hidden[:, : res.subject_first] .abs() < 1e-6)  # before the subject nothing was corrupted
    assert layer_to_edit([res]) in (0, 1)


def test_layers_to_spread_run_from_the_traced_layer_while_the_subject_still_carries_the_fact():
    def result(mlp_effect, hidden_effect):
        n = len(mlp_effect)
        mlp, hidden = torch.zeros(n, 3), torch.zeros(n, 3)
        mlp[:, 1], hidden[:, 1] = torch.tensor(mlp_effect), torch.tensor(hidden_effect)
        return TraceResult(hidden, mlp, 0.9, 0.1, 0, 1)

    assert layers_to_spread([result([0.3, 0.05, 0.0, 0.0], [0.4, 0.38, 0.3, 0.02])]) == [0, 1, 2]
    assert layers_to_spread([result([0.0, 0.3, 0.0, 0.0], [0.5, 0.5, 0.1, 0.0])]) == [1]
