"""precision="auto" follows the hardware; bf16 autocast trains like fp32 with fp32 master
weights; the Trainer's fused AdamW computes the written-out AdamW's update."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.train import AdamW, TrainConfig, Trainer, build_optimizer, param_groups
from lmkit.train import precision as P

VOCAB = 32
CPU = torch.device("cpu")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64))


def pattern_batches(n: int, batch: int = 8, seq: int = 32, seed: int = 0) -> list[dict]:
    """Learnable data: each row counts up from a random start (token t+1 = token t + 1 mod V)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (batch, 1), generator=g)
        ids = (start + torch.arange(seq)) % VOCAB
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(max_steps=3, lr=1e-2, out_dir=str(tmp_path / "run"), progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# ---- detection ------------------------------------------------------------------------------
def test_auto_is_the_default():
    assert TrainConfig().precision == "auto"


def test_auto_picks_fp32_on_a_cpu_forced_to_have_no_bf16(monkeypatch, tmp_path):
    monkeypatch.setenv(P.CPU_BF16_ENV, "0")
    assert P.resolve_precision("auto", CPU)[0] == "fp32"
    tr = Trainer(tiny_model(), cfg(tmp_path), pattern_batches(2))
    assert tr.precision == "fp32"


def test_auto_follows_the_detected_cpu_features(monkeypatch):
    monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(P, "cpu_bf16_features", lambda: [])
    assert P.resolve_precision("auto", CPU) == ("fp32", "CPU has neither AVX512-BF16 nor AMX-BF16")
    monkeypatch.setattr(P, "cpu_bf16_features", lambda: ["amx_bf16"])
    assert P.resolve_precision("auto", CPU) == ("bf16", "CPU has AMX-BF16")
    monkeypatch.setattr(P, "cpu_bf16_features", lambda: ["avx512_bf16"])
    assert P.resolve_precision("auto", CPU)[0] == "bf16"


def test_forcing_bf16_and_explicit_choices(monkeypatch):
    monkeypatch.setenv(P.CPU_BF16_ENV, "1")
    assert P.resolve_precision("auto", CPU)[0] == "bf16"
    assert P.resolve_precision("fp32", CPU) == ("fp32", "set in the config")  # an explicit choice wins
    monkeypatch.setenv(P.CPU_BF16_ENV, "maybe")
    with pytest.raises(ConfigError, match=P.CPU_BF16_ENV):
        P.resolve_precision("auto", CPU)


def test_detection_agrees_with_torch():
    caps = torch.cpu.get_capabilities()
    want = [f for f in ("avx512_bf16", "amx_bf16") if caps.get(f)]
    assert P.cpu_bf16_features() == want


def test_the_choice_is_printed_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(P.CPU_BF16_ENV, "0")
    monkeypatch.setattr(P, "_announced", set())
    Trainer(tiny_model(), cfg(tmp_path / "a"), pattern_batches(2))
    Trainer(tiny_model(), cfg(tmp_path / "b"), pattern_batches(2))
    err = capsys.readouterr().err
    assert err.count("precision: auto -> fp32") == 1


# ---- bf16 training ----------------------------------------------------------------------------
def train_and_eval(tmp_path, precision: str, steps: int = 12) -> tuple[float, float, Trainer]:
    data = pattern_batches(steps)
    config = cfg(tmp_path / precision, precision=precision, max_steps=steps, schedule="constant", eval_steps=0)
    torch.manual_seed(0)
    tr = Trainer(tiny_model(), config, data, pattern_batches(4, seed=1))
    before = tr.evaluate()["eval_loss"]
    tr.train()
    return before, tr.evaluate()["eval_loss"], tr


def test_bf16_autocast_learns_like_fp32_with_fp32_master_weights(tmp_path):
    """The direction check on every run: same seed and data, bf16 autocast and fp32 both
    learn the pattern, and bf16 ends near fp32."""
    start32, end32, _ = train_and_eval(tmp_path, "fp32")
    start16, end16, tr = train_and_eval(tmp_path, "bf16")
    assert tr.precision == "bf16"
    assert abs(start16 - start32) / start32 < 0.01  # same initial model, only rounding differs
    assert end32 < 0.5 * start32 and end16 < 0.5 * start16  # both learn (3.44 -> 0.53 here)
    assert abs(end16 - end32) / end32 < 0.02  # the parity bound (0.03 % on AVX512-BF16)
    # master weights and the optimizer's moments stay fp32
    assert all(p.dtype == torch.float32 for p in tr.raw_model.parameters())
    states = [s for s in tr.optimizer.state.values()]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)


# ---- the hot-path optimizer ----------------------------------------------------------------------
def test_trainer_adamw_is_fused_and_matches_the_written_out_adamw():
    config = TrainConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    model_a, model_b = tiny_model(), tiny_model()
    fast = build_optimizer(model_a, config)
    assert isinstance(fast, torch.optim.AdamW) and all(g["fused"] for g in fast.param_groups)
    ref = AdamW(param_groups(model_b, 0.1), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    batch = pattern_batches(1)[0]
    for _ in range(4):
        for model, opt in ((model_a, fast), (model_b, ref)):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---- loss parity at the quickstart's size (issue 25 acceptance; slow) ------------------------------
@pytest.mark.slow
def test_quickstart_bf16_matches_fp32_after_300_steps(tmp_path):
    """300 steps of `lmkit quickstart` (same seed and data) in fp32 and with bf16 autocast
    forced: the final validation loss agrees within 2 %. Forcing works on any CPU (one without
    bf16 units emulates it: slower, same numerics)."""
    import math
    import os
    import re
    import subprocess
    import sys

    losses = {}
    for flag in ("0", "1"):
        env = dict(os.environ, **{P.CPU_BF16_ENV: flag})
        out = subprocess.run(
            [sys.executable, "-m", "lmkit", "quickstart", "--out", str(tmp_path / flag), "--steps", "300"],
            env=env, capture_output=True, text=True, timeout=3600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert ("-> bf16" if flag == "1" else "-> fp32") in out.stderr
        losses[flag] = math.log(float(re.search(r"validation perplexity ([\d.]+)", out.stdout).group(1)))
    assert abs(losses["1"] - losses["0"]) / losses["0"] < 0.02, losses


# ---- compile="auto" ------------------------------------------------------------------------------
def test_compile_auto_only_for_long_runs(monkeypatch, tmp_path):
    from lmkit.train import compile_choice as C

    assert TrainConfig().compile == "auto"
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="yes")
    assert C.resolve_compile("auto", 1200, CPU)[0] is False  # the quickstart's length: would not pay back
    assert C.resolve_compile(True, 10, CPU) == (True, "set in the config")
    assert C.resolve_compile(False, 10**6, CPU)[0] is False
    monkeypatch.setattr(C.shutil, "which", lambda name: "/usr/bin/c++")
    assert C.resolve_compile("auto", C.AUTO_MIN_STEPS, CPU)[0] is True
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    chosen, why = C.resolve_compile("auto", C.AUTO_MIN_STEPS, CPU)
    assert chosen is False and "no C++ compiler" in why
    tr = Trainer(tiny_model(), cfg(tmp_path), pattern_batches(2))
    assert tr.compiled is False and not hasattr(tr.model, "_orig_mod")
