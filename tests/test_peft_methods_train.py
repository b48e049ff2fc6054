"""Every PEFT method trains on a small task and beats its frozen base on held-out data,
leaves the base weights bit-identical, and trains exactly its closed-form number of
parameters.

Tasks. LM: counting modulo 8 (x_{t+1} = x_t + 1 mod 8) in a 32-token vocabulary, learned
by a tiny random-initialised decoder (initializer_range 0.2, so a frozen head can still
express confident predictions); held-out data are fresh sequences. Classification:
"which half of the vocabulary do most of the tokens come from?" on a tiny
post-norm BERT-style encoder; the frozen baseline is chance (an untrained head).
Training uses lmkit's Trainer (it optimises only parameters with requires_grad).
"""

from __future__ import annotations

import torch

import pytest

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.encoder import EncoderLM
from lmkit.peft.adapter import AdapterConfig, apply_adapter, set_active_adapters
from lmkit.peft.adapter_fusion import FusionConfig, apply_fusion, fusion_param_count
from lmkit.peft.method_common import count_trainable
from lmkit.peft.prompt_tuning import VirtualTokenModel
from lmkit.peft.p_tuning import PTuningConfig, apply_ptuning
from lmkit.peft.probing import SequenceClassifier
from lmkit.peft.registry import METHODS
from lmkit.train.config import TrainConfig
from lmkit.train.trainer import Trainer

V = 32


def decoder(seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
                                 initializer_range=0.2, **kw))


def encoder(seed: int = 0) -> EncoderLM:
    torch.manual_seed(seed)
    return EncoderLM(ModelConfig(
        arch="encoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
        norm="layernorm", norm_eps=1e-12, norm_position="post", activation="gelu", gated_ffn=False,
        position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, initializer_range=0.2,
    ), heads=("pooler",))


def counting(n: int, seed: int, step: int = 1, offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 8, (n, 1), generator=g)
    return (start + step * torch.arange(12)[None]) % 8 + offset


def classification(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class c draws 75% of its tokens from its own half of the vocabulary; random lengths 6-10."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    low = torch.randint(1, V // 2, (n, 10), generator=g)
    high = torch.randint(V // 2, V, (n, 10), generator=g)
    own = torch.rand(n, 10, generator=g) < 0.75
    use_high = torch.where(labels[:, None].bool(), own, ~own)
    ids = torch.where(use_high, high, low)
    lengths = torch.randint(6, 11, (n,), generator=g)
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    return ids * mask, mask, labels  # right padding with id 0


def lm_batches(ids: torch.Tensor, bs: int = 32) -> list[dict]:
    return [{"input_ids": ids[i:i + bs], "labels": ids[i:i + bs]} for i in range(0, len(ids), bs)]


def train(model, batches, lr: float, steps: int, tmp_path, shift: bool = True) -> None:
    cfg = TrainConfig(lr=lr, max_steps=steps, schedule="constant", out_dir=str(tmp_path / "run"), progress=False,
                      device="cpu", log_every=10_000, shift_labels=shift, max_grad_norm=1.0)
    Trainer(model, cfg, batches).train()


@torch.no_grad()
def lm_loss(model, ids) -> float:
    model.eval()
    return model(ids, labels=ids).loss.item()


@torch.no_grad()
def accuracy(model, ids, mask, labels) -> float:
    model.eval()
    return (model(ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean().item()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_base_unchanged(base: torch.nn.Module, before: dict[str, torch.Tensor], trained: set[str] = frozenset()):
    now = base.state_dict()
    for name, t in before.items():
        if name in trained:
            assert not torch.equal(now[name], t), f"{name} was meant to be trained"
        else:
            assert torch.equal(now[name], t), f"base weight {name} changed"


LM_METHODS = [
    ("adapter", {}, 1e-2),
    ("adapter", {"positions": ("ffn",), "bottleneck": 4, "train_norms": True}, 1e-2),
    ("adapterdrop", {"drop_layers": 1}, 1e-2),
    ("adapterdrop", {"drop_layers": 1, "stochastic": True}, 1e-2),
    ("prefix", {}, 1e-2),
    ("prefix", {"projection": False}, 3e-2),
    ("prompt", {"init": "vocab"}, 3e-2),
    ("prompt", {"init": "random"}, 3e-2),
    ("prompt", {"init": "text", "init_token_ids": [0, 1, 2, 3]}, 3e-2),
    ("ptuning", {"encoder": "mlp"}, 1e-2),
    ("ptuning", {"encoder": "lstm", "hidden_size": 16}, 1e-2),
    ("ptuning2", {}, 3e-2),
    ("bitfit", {"add_missing_bias": True}, 3e-2),
]


@pytest.mark.parametrize("name,options,lr", LM_METHODS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(LM_METHODS)])
def test_lm_method_beats_frozen_base(name, options, lr, tmp_path):
    spec = METHODS[name]
    cfg = spec.config_cls(**options)
    base = decoder()
    held_out = counting(64, seed=2)
    baseline = lm_loss(base, held_out)
    before = snapshot(base)
    model = spec.apply(base, cfg)
    assert count_trainable(model) == spec.param_count(base.config, cfg) > 0
    trained_names = {n for n, p in base.named_parameters() if p.requires_grad and n in before}
    assert (name == "bitfit" and trained_names) or (name == "adapter" and options.get("train_norms")) or not trained_names
    train(model, lm_batches(counting(512, seed=1)), lr, 60, tmp_path)
    after = lm_loss(model, held_out)
    assert after < 0.6 * baseline, (baseline, after)
    assert_base_unchanged(base, before, trained_names)


def test_bitfit_on_a_model_with_biases_trains_only_biases(tmp_path):
    spec = METHODS["bitfit"]
    cfg = spec.config_cls()
    base = decoder(qkv_bias=True, o_bias=True, ffn_bias=True, norm="layernorm", lm_head_bias=True)
    held_out = counting(64, seed=2)
    baseline = lm_loss(base, held_out)
    before = snapshot(base)
    model = spec.apply(base, cfg)
    assert count_trainable(model) == spec.param_count(base.config, cfg)
    trained = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith("bias") for n in trained)
    train(model, lm_batches(counting(512, seed=1)), 3e-2, 60, tmp_path)
    assert lm_loss(model, held_out) < 0.6 * baseline
    assert_base_unchanged(base, before, trained)


@pytest.mark.parametrize("name,options", [
    ("probe", {"pooling": "cls"}),
    ("probe", {"pooling": "mean"}),
    ("ptuning2", {"num_labels": 2, "pooling": "cls"}),
])
def test_classification_method_beats_chance(name, options, tmp_path):
    spec = METHODS[name]
    cfg = spec.config_cls(**options)
    base = encoder()
    before = snapshot(base)
    model = spec.apply(base, cfg)
    assert isinstance(model, SequenceClassifier)
    assert count_trainable(model) == spec.param_count(base.config, cfg)
    ids, mask, labels = classification(1024, seed=1)
    t_ids, t_mask, t_labels = classification(256, seed=2)
    chance = max(t_labels.float().mean().item(), 1 - t_labels.float().mean().item())
    batches = [{"input_ids": ids[i:i + 64], "attention_mask": mask[i:i + 64], "labels": labels[i:i + 64]}
               for i in range(0, len(ids), 64)]
    train(model, batches, 3e-2, 150, tmp_path, shift=False)
    acc = accuracy(model, t_ids, t_mask, t_labels)
    assert acc > chance + 0.1, (acc, chance)
    assert_base_unchanged(base, before)


def test_p_tuning_template_positions_on_an_encoder(tmp_path):
    """P-tuning v1 with virtual tokens before and after the input, on a bidirectional encoder, plus a head."""
    base = encoder()
    before = snapshot(base)
    cfg = PTuningConfig(n_virtual_tokens=6, encoder="mlp", template=(3, 3))
    wrapped = apply_ptuning(base, cfg)
    assert isinstance(wrapped, VirtualTokenModel) and (wrapped.n_before, wrapped.n_after) == (3, 3)
    model = SequenceClassifier(wrapped, 2, "mean")
    ids, mask, labels = classification(1024, seed=1)
    t_ids, t_mask, t_labels = classification(256, seed=2)
    chance = max(t_labels.float().mean().item(), 1 - t_labels.float().mean().item())
    batches = [{"input_ids": ids[i:i + 64], "attention_mask": mask[i:i + 64], "labels": labels[i:i + 64]}
               for i in range(0, len(ids), 64)]
    train(model, batches, 1e-2, 150, tmp_path, shift=False)
    assert accuracy(model, t_ids, t_mask, t_labels) > chance + 0.1
    assert_base_unchanged(base, before)


def test_adapter_fusion_two_stages(tmp_path):
    """Stage 1: one adapter per task (counting by 1 in tokens 0-7, by 3 in tokens 8-15).
    Stage 2: both frozen, a fusion layer trained on a mixture; beats the frozen base and
    leaves base and adapters bit-identical."""
    base = decoder()
    before = snapshot(base)
    task_a, task_b = counting(512, 1, step=1), counting(512, 3, step=3, offset=8)
    apply_adapter(base, AdapterConfig(name="count1", bottleneck=8))
    train(base, lm_batches(task_a), 1e-2, 40, tmp_path / "a")
    apply_adapter(base, AdapterConfig(name="count3", bottleneck=8))
    train(base, lm_batches(task_b), 1e-2, 40, tmp_path / "b")
    adapters_before = {k: v.clone() for k, v in base.state_dict().items() if ".adapters." in k}
    assert len(adapters_before) == 2 * 2 * 2 * 4  # layers x sites x adapters x (down, up) x (w, b)

    mix = torch.cat([counting(256, 5, step=1), counting(256, 6, step=3, offset=8)])[torch.randperm(512)]
    held = torch.cat([counting(32, 7, step=1), counting(32, 8, step=3, offset=8)])
    set_active_adapters(base, None)
    baseline = lm_loss(base, held)
    cfg = FusionConfig(adapters=["count1", "count3"])
    model = apply_fusion(base, cfg)
    assert count_trainable(model) == fusion_param_count(base.config, cfg)
    fused_start = lm_loss(model, held)
    train(model, lm_batches(mix), 1e-2, 40, tmp_path / "f")
    fused = lm_loss(model, held)
    assert fused < 0.5 * baseline and fused <= fused_start
    now = base.state_dict()
    for k, v in adapters_before.items():
        assert torch.equal(now[k], v), k
    assert_base_unchanged(base, {k: v for k, v in before.items()})
    # fusion attention weights: one distribution over the two adapters per token
    site = base.layers[1].mlp.adapter_site
    w = site.last_fusion_weights
    assert w.shape[-1] == 2 and torch.allclose(w.sum(-1), torch.ones(()))


def test_linear_probe_matches_logistic_regression_on_the_same_features(tmp_path):
    """Oracle: scikit-learn's logistic regression on the frozen, mean-pooled features reaches
    the same held-out accuracy as lmkit's trained probe (both are linear classifiers)."""
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    spec = METHODS["probe"]
    model = spec.apply(encoder(), spec.config_cls(pooling="mean"))
    ids, mask, labels = classification(1024, seed=1)
    t_ids, t_mask, t_labels = classification(256, seed=2)
    batches = [{"input_ids": ids[i:i + 64], "attention_mask": mask[i:i + 64], "labels": labels[i:i + 64]}
               for i in range(0, len(ids), 64)]
    train(model, batches, 0.1, 400, tmp_path, shift=False)
    ours = accuracy(model, t_ids, t_mask, t_labels)
    with torch.no_grad():
        model.eval()
        x, tx = model.features(ids, mask).numpy(), model.features(t_ids, t_mask).numpy()
    ref = sklearn_lm.LogisticRegression(C=10.0, max_iter=2000).fit(x, labels.numpy()).score(tx, t_labels.numpy())
    assert abs(ours - ref) <= 0.05, (ours, ref)
