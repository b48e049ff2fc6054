"""Adversarial training on embeddings (FGM/FGSM/PGD/FreeLB), DANN's gradient reversal, and the
PGD and word-substitution attacks, on tiny classifiers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkit.errors import ConfigError
from lmkit.eval.adversarial_attack import embedding_neighbours, pgd_attack, word_substitution_attack
from lmkit.models.config import ModelConfig
from lmkit.models.encoder import EncoderLM
from lmkit.peft.probing import SequenceClassifier
from lmkit.train.adversarial import EmbeddingAdversary, EmbeddingPerturbation, embedding_pgd
from lmkit.train.config import TrainConfig
from lmkit.train.domain_adversarial import DomainAdversarial, dann_lambda, reverse_gradient
from lmkit.train.trainer import Trainer

V = 40


def classifier(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="encoder", vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16,
                      norm="layernorm", norm_position="post", position="learned", gated_ffn=False,
                      activation="gelu", type_vocab_size=0)
    return SequenceClassifier(EncoderLM(cfg, heads=()), num_labels=2, pooling="mean")


def batch(n: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 0] % 2)}


def test_fgm_gradient_is_clean_plus_perturbed_by_hand():
    model, b = classifier(), batch()
    adv = EmbeddingAdversary(model, "fgm", epsilon=0.5)
    clean, perturbed = adv.step(lambda: model(**b).loss, lambda loss: loss.backward(), mask=b["attention_mask"])
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = classifier()
    d0 = torch.zeros(8, 6, 16, requires_grad=True)  # ∂L/∂e without cutting the table's own gradient
    hook = ref.base_model.embed_tokens.register_forward_hook(lambda m, a, out: out + d0)
    loss = ref(**b).loss
    (g,) = torch.autograd.grad(loss, d0, retain_graph=True)
    loss.backward()
    hook.remove()
    g = g * b["attention_mask"][..., None]
    r = 0.5 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    hook = ref.base_model.embed_tokens.register_forward_hook(lambda m, a, out: out + r)
    loss_adv = ref(**b).loss
    loss_adv.backward()
    hook.remove()
    assert clean == pytest.approx(loss.item()) and perturbed == pytest.approx(loss_adv.item())
    assert perturbed > clean
    for n, p in ref.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6), n


@pytest.mark.parametrize("method", ["fgm", "fgsm", "pgd", "freelb"])
def test_trainer_option_runs_and_raises_the_loss_it_reports(method, tmp_path):
    model, b = classifier(), batch()
    cfg = TrainConfig(max_steps=3, lr=1e-3, shift_labels=False, adversarial=method, adv_epsilon=0.5,
                      adv_steps=2, out_dir=str(tmp_path), progress=False, precision="fp32", compile=False)
    records = Trainer(model, cfg, [b]).train()
    assert len(records) == 3 and all("adv_loss" in r for r in records)
    assert all(torch.isfinite(torch.tensor([r["loss"], r["adv_loss"], r["grad_norm"]])).all() for r in records)
    if method != "freelb":  # freelb's "loss" is already at a random start
        assert records[0]["adv_loss"] > records[0]["loss"]
    with pytest.raises(ConfigError, match="adversarial"):
        TrainConfig(adversarial="fsgm")


def test_pgd_stays_in_the_ball_and_hurts():
    model, b = classifier(), batch()
    model.eval()
    perturb = EmbeddingPerturbation(model)
    loss_fn = lambda: F.cross_entropy(model(b["input_ids"]).logits, b["labels"], reduction="none")  # noqa: E731
    r = embedding_pgd(loss_fn, perturb, epsilon=0.3, alpha=0.1, steps=5)
    assert r.flatten(1).norm(dim=1).max() <= 0.3 + 1e-5
    with torch.no_grad(), perturb.active(r):
        attacked = loss_fn().mean()
    with torch.no_grad():
        assert attacked > loss_fn().mean()
    assert all(p.grad is None for p in model.parameters())  # the attack leaves the parameters alone
    res = pgd_attack(model, b["input_ids"], b["labels"], b["attention_mask"], epsilon=5.0, steps=5)
    assert res.attacked_accuracy <= res.clean_accuracy


def test_word_substitution_uses_only_candidates_and_the_budget():
    model, b = classifier(), batch(16)
    neighbours = embedding_neighbours(model.base_model.embed_tokens.weight, k=4, exclude=[0])
    res = word_substitution_attack(model, b["input_ids"], b["labels"], neighbours, b["attention_mask"], max_changes=2,
                                   protected=[0])
    assert res.attacked_accuracy <= res.clean_accuracy
    diff = res.adversarial_ids != b["input_ids"]
    assert (diff.sum(1) == res.changes).all() and res.changes.max() <= 2
    for i, j in diff.nonzero().tolist():
        assert int(res.adversarial_ids[i, j]) in neighbours[int(b["input_ids"][i, j])].tolist()
    dictionary = {int(t): [] for t in b["input_ids"].flatten()}  # nothing to substitute: no change
    res = word_substitution_attack(model, b["input_ids"], b["labels"], dictionary, b["attention_mask"])
    assert res.attacked_accuracy == res.clean_accuracy and int(res.changes.sum()) == 0


def test_gradient_reversal_and_dann_in_the_trainer(tmp_path):
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    reverse_gradient(x, 0.3).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.3, -0.3]))
    assert dann_lambda(0.0) == 0.0 and dann_lambda(1.0) == pytest.approx(1.0, abs=1e-4)

    model = DomainAdversarial(classifier(), d_features=16)
    b = batch()
    b["labels"][4:] = -100  # the target rows are unlabelled
    b["domain_labels"] = (torch.arange(8) >= 4).long()
    cfg = TrainConfig(max_steps=4, lr=1e-3, shift_labels=False, out_dir=str(tmp_path), progress=False,
                      precision="fp32", compile=False)
    Trainer(model, cfg, [b]).train()
    assert model.grl.lam == pytest.approx(dann_lambda(3 / 4))  # the schedule followed the steps
    out = model(**b)
    assert out.loss is not None and out.hidden_states.shape == (8, 16)


def test_substitution_table_and_hull_training_in_the_trainer(tmp_path):
    from lmkit.train.substitution_adversary import SubstitutionAdversary, substitution_table

    table = substitution_table({3: [4, 5, 3, 99], 4: [3], 0: [1]}, vocab_size=8, protected=[0, 5])
    assert table.shape == (8, 2) and table[3].tolist() == [3, 4] and table[4].tolist() == [4, 3]
    assert table[0].tolist() == [0, -1] and table[7].tolist() == [7, -1]  # protected / no substitutes

    model, b = classifier(), batch()
    subs = embedding_neighbours(model.base_model.embed_tokens.weight, k=3, exclude=[0])
    adv = SubstitutionAdversary(model, subs, alpha=1.0, steps=2)
    clean, hull = adv.step(lambda: model(**b).loss, lambda loss: loss.backward(), mask=b["attention_mask"])
    assert hull > clean  # the ascent found a worse point in the hulls
    with torch.no_grad():  # a vertex of the hulls is a real substitution; their centre is not the clean input
        adv.mask, adv._eligible = b["attention_mask"], None
        with adv._active(torch.zeros(8, 6, 4)):
            centre = model(**b).logits
        with adv._active(torch.full((8, 6, 4), -1e4).index_fill_(-1, torch.tensor([1]), 0.0)):
            vertex = model(**b).logits
        swapped = torch.where(b["attention_mask"].bool(), subs[b["input_ids"], 0], b["input_ids"])
        assert torch.allclose(vertex, model(swapped, attention_mask=b["attention_mask"]).logits, atol=1e-5)
        assert not torch.allclose(centre, model(**b).logits)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    cfg = TrainConfig(max_steps=2, lr=1e-3, shift_labels=False, adversarial="substitution", adv_steps=2,
                      adv_positions=0.5, out_dir=str(tmp_path), progress=False, precision="fp32", compile=False)
    records = Trainer(classifier(), cfg, [b], substitutions=subs).train()
    assert len(records) == 2 and records[0]["adv_loss"] > records[0]["loss"]
    with pytest.raises(ConfigError, match="substitutions"):
        Trainer(classifier(), cfg, [b])
    with pytest.raises(ConfigError, match="adv_positions"):
        TrainConfig(adversarial="substitution", adv_positions=0.0)
