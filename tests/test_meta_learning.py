"""Reptile and first-order MAML: one meta step equals the update written out by hand."""

from __future__ import annotations

import copy

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.train.meta_learning import MetaConfig, MetaLearner

V = 20


def tiny() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(preset("llama-tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=48,
                            max_seq_len=16)).eval()


def fixed_task(seed: int):
    """A task whose batches are fixed (support: n=2 rows, query: n=3 rows), generator ignored."""
    g = torch.Generator().manual_seed(seed)
    data = {n: torch.randint(0, V, (n, 8), generator=g) for n in (2, 3)}
    return lambda n, _gen: (data[n], data[n])


def grads_at(model, ids):
    model.train()
    loss = model(ids, labels=ids).loss
    out = torch.autograd.grad(loss, list(model.parameters()))
    model.eval()
    return out


def test_reptile_step_is_theta_minus_beta_times_theta_minus_phi():
    model, (a, b) = tiny(), (0.05, 0.5)
    theta = [p.detach().clone() for p in model.parameters()]
    tasks = [fixed_task(1), fixed_task(2)]
    # by hand: φ_i = θ − α ∇L_i(θ) (one SGD step), θ' = θ − β mean_i (θ − φ_i) = θ − β α mean_i ∇L_i(θ)
    g = [grads_at(copy.deepcopy(model), t(2, None)[0]) for t in tasks]
    want = [t - b * a * (g0 + g1) / 2 for t, g0, g1 in zip(theta, *g)]
    cfg = MetaConfig(algorithm="reptile", inner_steps=1, inner_lr=a, inner_optimizer="sgd", support_size=2,
                     outer_lr=b, tasks_per_step=2)
    MetaLearner(model, cfg).meta_step(tasks)
    for p, w in zip(model.parameters(), want):
        assert torch.allclose(p, w, atol=1e-6)


def test_fomaml_step_uses_the_query_gradient_at_the_adapted_weights():
    model, (a, b) = tiny(), (0.05, 0.5)
    task = fixed_task(3)
    phi = copy.deepcopy(model)
    support_grads = grads_at(phi, task(2, None)[0])
    with torch.no_grad():
        for p, gr in zip(phi.parameters(), support_grads):
            p -= a * gr
    gq = grads_at(phi, task(3, None)[0])
    want = [p.detach() - b * gr for p, gr in zip(model.parameters(), gq)]
    cfg = MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=a, inner_optimizer="sgd", support_size=2,
                     query_size=3, outer_lr=b, tasks_per_step=1)
    MetaLearner(model, cfg).meta_step([task])
    for p, w in zip(model.parameters(), want):
        assert torch.allclose(p, w, atol=1e-6)


def test_lora_meta_learning_changes_only_the_adapters():
    from lmkit.peft.lora import LoraConfig, inject_lora, mark_only_lora_trainable

    model = tiny()
    inject_lora(model, LoraConfig(r=2, target_modules=("q_proj", "v_proj")))
    mark_only_lora_trainable(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = MetaConfig(inner_steps=2, inner_lr=1e-2, support_size=2, tasks_per_step=2)
    losses = MetaLearner(model, cfg).train(lambda n, g: [fixed_task(4), fixed_task(5)], meta_steps=2)
    assert len(losses) == 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_meta_config_validation():
    with pytest.raises(ConfigError, match="algorithm"):
        MetaConfig(algorithm="maml2")
    with pytest.raises(ConfigError, match="inner_steps"):
        MetaConfig(inner_steps=0)


def cipher_tasks(n: int, g: torch.Generator):
    """n random tasks: each maps x to a fixed permutation of the vocabulary (drawn from g)."""
    def make(perm):
        def task(k, gen):
            x = torch.randint(0, V, (k, 4), generator=gen)
            ids = torch.cat([x, perm[x]], 1)
            labels = ids.clone()
            labels[:, :4] = -100
            return ids, labels
        return task
    return [make(torch.randperm(V, generator=g)) for _ in range(n)]


@pytest.mark.parametrize("algorithm,lora", [("reptile", False), ("fomaml", True)])
def test_trainer_meta_mode_equals_the_standalone_meta_learner(tmp_path, algorithm, lora):
    """TrainConfig.meta drives the same meta-update as MetaLearner: equal parameters after 3 steps."""
    from lmkit.peft.lora import LoraConfig, inject_lora, mark_only_lora_trainable
    from lmkit.train.config import TrainConfig
    from lmkit.train.meta_learning import MetaEpisodes
    from lmkit.train.trainer import Trainer

    meta = dict(algorithm=algorithm, inner_steps=2, inner_lr=1e-2, support_size=3, query_size=4, tasks_per_step=2,
                seed=5)

    def model():
        m = tiny()
        if lora:
            inject_lora(m, LoraConfig(r=2, target_modules=("q_proj", "v_proj")))
            mark_only_lora_trainable(m)
        return m

    standalone = model()
    learner = MetaLearner(standalone, MetaConfig(**meta, outer_lr=0.5))
    learner.train(cipher_tasks, meta_steps=3)

    in_trainer = model()
    cfg = TrainConfig(optimizer="sgd", lr=0.5, schedule="constant", max_steps=3, max_grad_norm=None,
                      precision="fp32", compile=False, progress=False, out_dir=str(tmp_path), meta=meta)
    records = Trainer(in_trainer, cfg, MetaEpisodes(cipher_tasks, MetaConfig(**meta))).train()
    assert len(records) == 3 and all(r["loss"] > 0 for r in records)
    before = dict(model().named_parameters())
    changed = 0
    for (n, a), (_, b) in zip(standalone.named_parameters(), in_trainer.named_parameters()):
        assert torch.equal(a, b), n
        changed += not torch.equal(a, before[n])
    assert changed


def test_trainer_meta_config_validation():
    from lmkit.train.config import TrainConfig

    with pytest.raises(ConfigError, match="outer_lr"):
        TrainConfig(meta={"outer_lr": 0.1})
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig(meta={"inner_stepz": 3})
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        TrainConfig(meta={"algorithm": "reptile"}, grad_accum_steps=2)
    cfg = TrainConfig.from_dict({"meta": {"algorithm": "fomaml", "inner_steps": 3}})
    assert TrainConfig.from_json(cfg.to_json()).meta == {"algorithm": "fomaml", "inner_steps": 3}
