"""`lmkit merge-models` on checkpoints and LoRA adapters; LoRA "cat"/"linear" vs PEFT's
add_weighted_adapter on a randomly initialised tiny Llama (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from lmkit.cli import cli
from lmkit.edit.merge_lora import combine_cat, combine_linear, lora_task_vectors
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.peft.lora import LoraConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

V, TARGETS = 61, ["q_proj", "v_proj"]


def run(*args):
    result = CliRunner().invoke(cli, ["merge-models", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("base")
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def peft_adapters(base_dir, tmp_path_factory):
    """A PEFT model with adapters t1 (r 4, alpha 8) and t2 (r 4, alpha 16), random B, saved apart."""
    base = transformers.LlamaForCausalLM.from_pretrained(base_dir).eval()
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), adapter_name="t1")
    pm.add_adapter("t2", peft.LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    root = tmp_path_factory.mktemp("adapters")
    for name in ("t1", "t2"):
        pm.save_pretrained(root / name, selected_adapters=[name])
    return pm, {n: root / n / n for n in ("t1", "t2")}


def _states(pm, name):
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(pm, adapter_name=name)


@pytest.mark.parametrize("combination", ["cat", "linear"])
def test_lora_combination_equals_peft_add_weighted_adapter(peft_adapters, combination):
    pm, _ = peft_adapters
    weights = [0.7, -1.3]
    new = f"m_{combination}"
    pm.add_weighted_adapter(["t1", "t2"], weights, new, combination_type=combination)
    ours_in = [(LoraConfig(r=4, alpha=8, target_modules=tuple(TARGETS)), _states(pm, "t1")),
               (LoraConfig(r=4, alpha=16, target_modules=tuple(TARGETS)), _states(pm, "t2"))]
    config, state = (combine_cat if combination == "cat" else combine_linear)(ours_in, weights)
    theirs = _states(pm, new)
    assert config.r == pm.peft_config[new].r and config.alpha == pm.peft_config[new].lora_alpha
    assert sorted(state) == sorted(theirs)
    for k in state:
        assert torch.allclose(state[k], theirs[k], atol=1e-6), k
    if combination == "cat":  # exact: B A = Σ w_i s_i B_i A_i
        want = {k: weights[0] * lora_task_vectors(ours_in[0])[k] + weights[1] * lora_task_vectors(ours_in[1])[k]
                for k in lora_task_vectors(ours_in[0])}
        got = lora_task_vectors((config, state))
        assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)


def test_cli_cat_adapter_loads_in_peft_with_their_logits(peft_adapters, base_dir, tmp_path):
    pm, dirs = peft_adapters
    pm.add_weighted_adapter(["t1", "t2"], [0.5, 1.0], "cat_ref", combination_type="cat")
    out = run("--method", "linear", "--lora-combine", "cat", "--base", base_dir, "--models", dirs["t1"], dirs["t2"],
              "--weights", "0.5 1.0", "-o", tmp_path / "cat")
    assert "rank 8" in out
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    pm.set_adapter("cat_ref")
    want = pm(ids).logits
    base = transformers.LlamaForCausalLM.from_pretrained(base_dir).eval()
    got = peft.PeftModel.from_pretrained(base, tmp_path / "cat").eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_cli_lora_delta_task_arithmetic_folds_every_update(peft_adapters, base_dir, tmp_path):
    pm, dirs = peft_adapters
    run("--method", "task_arithmetic", "--base", base_dir, "--models", dirs["t1"], dirs["t2"], "--weights", "1", "0.5",
        "-o", tmp_path / "delta")
    merged, base = load_pretrained(tmp_path / "delta"), load_pretrained(base_dir)
    la = pm.base_model.model.model.layers[0].self_attn.q_proj
    want = base.layers[0].self_attn.q_proj.weight + la.get_delta_weight("t1") + 0.5 * la.get_delta_weight("t2")
    assert torch.allclose(merged.layers[0].self_attn.q_proj.weight, want, atol=1e-5)
    assert torch.equal(merged.layers[0].mlp.up_proj.weight, base.layers[0].mlp.up_proj.weight)  # not adapted


@pytest.fixture(scope="module")
def full_checkpoints(base_dir, tmp_path_factory):
    """Two 'fine-tunes' of the base: base + noise, saved as lmkit Hugging Face directories."""
    root = tmp_path_factory.mktemp("tuned")
    out = []
    for i in range(2):
        m = load_pretrained(base_dir)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        save_pretrained(m, root / f"m{i}")
        out.append(root / f"m{i}")
    return out


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear", "slerp"])
def test_cli_full_checkpoints(full_checkpoints, base_dir, tmp_path, method):
    m0, m1 = full_checkpoints
    models = [m0] if method == "slerp" else [m0, m1]
    run("--method", method, "--base", base_dir, "--models", *models, "--density", "0.5", "-o", tmp_path / "out")
    merged = load_pretrained(tmp_path / "out").layers[0].mlp.down_proj.weight
    b, x, y = (load_pretrained(d).layers[0].mlp.down_proj.weight for d in (base_dir, m0, m1))
    if method == "linear":
        assert torch.allclose(merged, (x + y) / 2, atol=1e-6)
    elif method == "task_arithmetic":
        assert torch.allclose(merged, x + y - b, atol=1e-6)
    elif method == "ties":  # half of each task vector's entries are trimmed: merged ≠ the sum, still near the base
        assert not torch.allclose(merged, x + y - b) and (merged - b).abs().max() < 0.5
    elif method == "dare_linear":  # kept entries of δ_i are doubled (density 0.5)
        kept = (merged - b).abs() > 0
        assert 0.5 < kept.float().mean() < 0.9
    else:  # slerp halfway from the base to m0: sin(Ω/2)/sin(Ω) (b + x), cos Ω between the flattened tensors
        omega = torch.arccos(torch.dot(b.flatten(), x.flatten()) / (b.norm() * x.norm()))
        assert torch.allclose(merged, torch.sin(omega / 2) / torch.sin(omega) * (b + x), atol=1e-6)
    assert (tmp_path / "out" / "config.json").is_file()


def test_cli_refuses_mixed_inputs(full_checkpoints, peft_adapters, base_dir, tmp_path):
    result = CliRunner().invoke(cli, ["merge-models", "--method", "ties", "--models", str(full_checkpoints[0]),
                                      str(full_checkpoints[1]), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "base" in result.output
    result = CliRunner().invoke(cli, ["merge-models", "--method", "linear", "--base", str(base_dir), "--models",
                                      str(full_checkpoints[0]), str(peft_adapters[1]["t1"]), "-o", str(tmp_path / "y")])
    assert result.exit_code == 1 and "not both" in result.output


def test_cli_reads_lmkit_training_checkpoints(tmp_path):
    """A training run directory (checkpoint-STEP with trainer_state.json) is a merge input too."""
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset
    from lmkit.train import checkpoint as ckpt_io

    runs = []
    for i in range(2):
        torch.manual_seed(i)
        m = DecoderLM(preset("llama-tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=48,
                             max_seq_len=32))
        writer = ckpt_io.CheckpointWriter(tmp_path / f"run{i}", 5)
        writer.prepare()
        writer.write_model(m.state_dict(), metadata={"step": "5", "format": "pt"})
        writer.write_json(ckpt_io.STATE_FILE, {"step": 5, "model_config": m.config.to_dict()})
        writer.commit(keep=1)
        runs.append((tmp_path / f"run{i}", m))
    run("--method", "linear", "--models", runs[0][0], runs[1][0], "-o", tmp_path / "avg")
    merged = load_pretrained(tmp_path / "avg")
    want = (runs[0][1].layers[0].mlp.up_proj.weight + runs[1][1].layers[0].mlp.up_proj.weight) / 2
    assert torch.allclose(merged.layers[0].mlp.up_proj.weight, want, atol=1e-6)


def test_cli_negative_weight_subtracts_a_task_vector(full_checkpoints, base_dir, tmp_path):
    m0, m1 = full_checkpoints
    run("--method", "task_arithmetic", "--base", base_dir, "--models", m0, m1, "--weights", "1", "-1",
        "--lam", "0.5", "-o", tmp_path / "neg")
    merged = load_pretrained(tmp_path / "neg").layers[0].mlp.down_proj.weight
    b, x, y = (load_pretrained(d).layers[0].mlp.down_proj.weight for d in (base_dir, m0, m1))
    assert torch.allclose(merged, b + 0.5 * ((x - b) - (y - b)), atol=1e-6)
