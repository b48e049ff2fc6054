"""Continued pretraining: EWC / L2-SP penalties (formulas), the Trainer option, replay mixing,
and `lmkit pretrain --init-from` end to end with the forgetting measurement."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.build import build_model
from lmkit.models.config import ModelConfig
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.train.config import TrainConfig
from lmkit.train.continual import ContinualConfig, replay_mixture
from lmkit.train.forgetting_penalty import AnchorPenalty, estimate_fisher, l2sp_penalty
from lmkit.train.trainer import Trainer

TINY = dict(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu", gated_ffn=True, position="rope",
            d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64, norm_eps=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_penalties_follow_their_formulas():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    fisher = {"weight": torch.rand(2, 3), "bias": torch.rand(2)}
    l2sp, ewc = l2sp_penalty(model, 0.7), AnchorPenalty(model, 0.7, importance=fisher, name="ewc")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert l2sp(model).item() == 0.0 and ewc(model).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    d = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    torch.testing.assert_close(l2sp(model), 0.35 * sum((v ** 2).sum() for v in d.values()))
    torch.testing.assert_close(ewc(model), 0.35 * sum((fisher[n] * v ** 2).sum() for n, v in d.items()))
    ewc(model).backward()  # gradient λ F (θ − θ*)
    torch.testing.assert_close(model.weight.grad, 0.7 * fisher["weight"] * d["weight"])
    with pytest.raises(ConfigError):
        l2sp_penalty(model, -1.0)


def test_fisher_is_the_mean_of_per_sequence_squared_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**TINY, "vocab_size": 50}))
    ids = torch.randint(0, 50, (3, 8))
    fisher = estimate_fisher(model, [{"input_ids": ids, "labels": ids}], n_samples=3)
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for r in range(3):
        model.zero_grad()
        model(input_ids=ids[r:r + 1], labels=ids[r:r + 1]).loss.backward()
        for n, p in model.named_parameters():
            want[n] += p.grad ** 2 / 3
    for n in want:
        torch.testing.assert_close(fisher[n], want[n])
    assert sum(f.sum() for f in fisher.values()) > 0


def test_trainer_adds_the_penalty_to_each_step(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**TINY, "vocab_size": 50}))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 50, (2, 8))
    data = [{"input_ids": ids, "labels": ids}] * 4
    cfg = TrainConfig(optimizer="sgd", lr=0.5, max_steps=4, out_dir=str(tmp_path / "run"), progress=False,
                      max_grad_norm=None, precision="fp32", compile=False)
    free = Trainer(build_model(ModelConfig.from_dict({**TINY, "vocab_size": 50})), cfg, data)
    free.raw_model.load_state_dict(model.state_dict())
    free.train()
    held = Trainer(model, TrainConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "held")}), data,
                   penalty=l2sp_penalty(model, 1.5))
    records = held.train()
    assert records[0]["penalty"] == 0.0 and records[-1]["penalty"] > 0

    def dist(m):
        return sum(((p.detach() - start[n]) ** 2).sum() for n, p in m.named_parameters()).item()

    assert dist(held.raw_model) < 0.5 * dist(free.raw_model)


def test_replay_mixes_general_examples_at_the_ratio():
    from lmkit.data.packing import PackedLoader

    domain = [{"input_ids": torch.tensor([0, 0])}] * 300
    general = [{"input_ids": torch.tensor([1, 1])}] * 50
    mix = replay_mixture(PackedLoader(domain, 10), PackedLoader(general, 10), 0.25, batch_size=10, seed=0)
    firsts = torch.cat([b["input_ids"][:, 0] for b in mix])
    assert len(firsts) == 400
    assert 0.18 < firsts.float().mean().item() < 0.32


def test_continual_config_is_checked(tmp_path):
    from lmkit.train.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="general_data"):
        ContinualConfig(replay_ratio=0.2)
    with pytest.raises(ConfigError, match="penalty"):
        ContinualConfig(penalty="si")
    with pytest.raises(ConfigError, match="init_from"):
        PretrainConfig(data="d", tokenizer="t", continual={"penalty": "l2sp", "penalty_weight": 1.0})
    (tmp_path / "cpt.yaml").write_text("data: d\ntokenizer: t\ninit_from: ckpt\ntrain: {max_steps: 100}\n"
                                       "continual: {general_data: g, replay_ratio: 0.1}\n", encoding="utf-8")
    cfg = PretrainConfig.load(tmp_path / "cpt.yaml")
    assert cfg.continual_config.replay_ratio == 0.1 and cfg.train_config.warmup_steps == 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory, corpus_dir):
    from lmkit.data.shards import ShardConfig, prepare_shards

    d = tmp_path_factory.mktemp("cpt")
    en = (corpus_dir / "en.txt").read_text(encoding="utf-8")[:30_000]
    zh = (corpus_dir / "zh.txt").read_text(encoding="utf-8")[:10_000]
    tok = BPETokenizer.train([en], 300, special_tokens=["<|endoftext|>"])
    tok.save(d / "tok.json")
    for name, text in (("en", en), ("zh", zh)):
        (d / f"{name}.txt").write_text(text, encoding="utf-8")
        prepare_shards([d / f"{name}.txt"], tok, d / name, ShardConfig(split_by="paragraph", val_fraction=0.1),
                       progress=False)
    return d, tok


def test_pretrain_init_from_with_replay_and_ewc_reports_forgetting(shards):
    from click.testing import CliRunner

    from lmkit.cli import cli
    from lmkit.hub.pretrained import load_pretrained, save_pretrained

    d, tok = shards
    torch.manual_seed(0)
    save_pretrained(build_model(ModelConfig.from_dict({**TINY, "vocab_size": tok.vocab_size})), d / "base", tokenizer=tok)
    res = CliRunner().invoke(cli, ["pretrain", "--init-from", str(d / "base"), "--data", str(d / "zh"),
                                   "--general-data", str(d / "en"), "--replay-ratio", "0.25", "--penalty", "ewc",
                                   "--penalty-weight", "10", "--steps", "6", "--lr", "1e-3", "--seq-len", "32",
                                   "--batch-size", "4", "-o", str(d / "run"), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "general perplexity" in res.output and "(forgetting)" in res.output
    trained = load_pretrained(d / "run" / "hf")
    assert trained.config.vocab_size == tok.vocab_size
    state = json.loads((d / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["train_config"]["warmup_steps"] == 1  # the re-warmup default


def test_new_rows_only_continued_pretraining_leaves_the_rest_untouched(shards):
    from lmkit.hub.pretrained import load_pretrained, save_pretrained
    from lmkit.train.pretrain import PretrainConfig, run_pretrain

    d, tok = shards
    torch.manual_seed(1)
    save_pretrained(build_model(ModelConfig.from_dict({**TINY, "vocab_size": tok.vocab_size, "tie_embeddings": False})),
                    d / "untied", tokenizer=tok)
    first = tok.vocab_size - 40
    run_pretrain(PretrainConfig(data=str(d / "zh"), tokenizer=str(d / "tok.json"), seq_len=32, batch_size=4,
                                init_from=str(d / "untied"), continual={"new_rows_only_from": first},
                                train={"max_steps": 3, "lr": 1e-2, "out_dir": str(d / "rows"), "progress": False,
                                       "eval_steps": 1, "precision": "fp32"}))
    before, after = load_pretrained(d / "untied").state_dict(), load_pretrained(d / "rows" / "hf").state_dict()
    for k, v in after.items():
        if k in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(v[:first], before[k][:first])
            assert not torch.equal(v[first:], before[k][first:]), k
        else:
            assert torch.equal(v, before[k]), k
