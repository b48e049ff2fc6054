"""Loading without a second copy of the weights (issue 15): memory-mapped safetensors into a
meta-device skeleton, `dtype=` on load, and `lmkit info` from the config alone.

The reference for "bit-identical" is the loader as it was before: safetensors' own reader,
a fully built (randomly initialised) model cast to the dtype, then a copy into it. Peak
memory itself is measured by bench/bench_load_memory.py on a 185M-parameter checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lmkit.hub import load_pretrained, save_pretrained
from lmkit.hub.pretrained import _checkpoint_dtype, arch_module, cast_parameters, load_state_dict_strict, read_hf_config
from lmkit.models.build import build_model
from lmkit.models.presets import preset

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64)
FAMILIES = {
    "llama": ("llama-tiny", dict(n_kv_heads=2, tie_embeddings=False)),
    "gpt2": ("gpt2-tiny", {}),
    "bert": ("bert-tiny", {}),
    "t5": ("t5-tiny", {}),
    "mixtral": ("mixtral-tiny", dict(n_kv_heads=2, d_ff=32)),
}


def previous_load(directory: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The loader before issue 15: read every tensor, build a real model, cast, copy."""
    hf = read_hf_config(directory)
    arch = arch_module(hf["model_type"])
    cfg = arch.config_from_hf(hf)
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        raw.update(load_file(str(f)))
    sd = arch.state_from_hf(raw, cfg)
    model = arch.build_model(cfg)
    cast_parameters(model, dtype or _checkpoint_dtype(raw))
    load_state_dict_strict(model, sd)
    return model.eval()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(bits(sa[k]), bits(sb[k])), k
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent ones (RoPE inv_freq) too
    assert list(ba) == list(bb)
    for k in ba:
        assert ba[k].dtype == bb[k].dtype and torch.equal(ba[k], bb[k]), k


def no_meta(model: torch.nn.Module) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.device.type == "cpu", name


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny checkpoint per family (weights perturbed off their initial values)."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for family, (name, extra) in FAMILIES.items():
        torch.manual_seed(0)
        model = build_model(preset(name, **{**TINY, **extra}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        d = tmp_path_factory.mktemp(family)
        save_pretrained(model, d)
        out[family] = d
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mmap_meta_load_is_bit_identical_to_the_previous_loader(checkpoints, family):
    new = load_pretrained(checkpoints[family])
    no_meta(new)
    assert_same_state(new, previous_load(checkpoints[family]))


def test_tied_weights_stay_one_parameter(checkpoints):
    for family in ("gpt2", "t5"):
        model = load_pretrained(checkpoints[family])
        assert model.lm_head.weight is model.embed_tokens.weight, family
        before = previous_load(checkpoints[family])
        assert len(list(model.parameters())) == len(list(before.parameters()))
    bert = load_pretrained(checkpoints["bert"])
    assert bert.mlm_head.decoder.weight is bert.embed_tokens.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bf16", "fp16", "fp32"])
def test_dtype_on_load(checkpoints, dtype):
    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype, dtype)
    model = load_pretrained(checkpoints["llama"], dtype=dtype)
    no_meta(model)
    assert {p.dtype for p in model.parameters()} == {want}
    inv_freq = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)  # computed buffers stay fp32
    assert_same_state(model, previous_load(checkpoints["llama"], want))
    x = torch.randint(0, 64, (1, 6))
    assert torch.isfinite(model(x).logits.float()).all()


def test_dtype_names_are_checked(checkpoints):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="bf16"):
        load_pretrained(checkpoints["llama"], dtype="int3")


def test_a_bf16_checkpoint_loads_in_bf16_by_default_and_casts_back_up(tmp_path, checkpoints):
    model = load_pretrained(checkpoints["llama"], dtype="bf16")
    save_pretrained(model, tmp_path / "bf16")
    assert next(load_pretrained(tmp_path / "bf16").parameters()).dtype == torch.bfloat16
    up = load_pretrained(tmp_path / "bf16", dtype="fp32")
    assert_same_state(up, previous_load(tmp_path / "bf16", torch.float32))


def test_sharded_checkpoint(tmp_path, checkpoints):
    model = load_pretrained(checkpoints["mixtral"])
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    back = load_pretrained(tmp_path / "sharded")
    assert_same_state(back, model)
    assert_same_state(back, previous_load(tmp_path / "sharded"))


def test_the_model_owns_its_memory_after_load(tmp_path, checkpoints):
    """The mapping is closed once loading returns: rewriting the file in place (same inode, as
    `cp new old` does) or deleting it leaves the loaded model untouched."""
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoints["llama"], d)
    model = load_pretrained(d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = d / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * (size - size // 2))
    assert str(weights) not in Path("/proc/self/maps").read_text()
    weights.unlink()
    for k, v in model.state_dict().items():
        assert torch.equal(bits(v), bits(before[k])), k


def test_strict_false_keeps_initial_values_for_missing_tensors(tmp_path, checkpoints):
    from safetensors.torch import save_file

    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text((checkpoints["llama"] / "config.json").read_text())
    sd = load_file(str(checkpoints["llama"] / "model.safetensors"))
    sd.pop("model.norm.weight")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.warns(UserWarning, match="missing"):
        model = load_pretrained(d, strict=False)
    no_meta(model)
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    ref = previous_load(checkpoints["llama"])
    assert torch.equal(model.layers[0].self_attn.q_proj.weight, ref.layers[0].self_attn.q_proj.weight)


# ---- lmkit info ---------------------------------------------------------------------------
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def _info(*args: str) -> str:
    from lmkit.cli import cli

    res = CliRunner().invoke(cli, ["info", *args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("weights", ["truncated", "missing"])
def test_info_reads_the_config_only(tmp_path, checkpoints, weights):
    d = tmp_path / "m"
    d.mkdir()
    cfg = json.loads((checkpoints["llama"] / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    if weights == "truncated":
        (d / "model.safetensors").write_bytes((checkpoints["llama"] / "model.safetensors").read_bytes()[:100])
    out = _info(str(d))
    for field in ("family       llama", "parameters", "dtype        fp32", "context      64 tokens",
                  "RoPE type linear (factor 2)", "template     Jinja in tokenizer_config.json",
                  "eos ids      2, 5", "inference", "KV cache", "full finetune", "LoRA"):
        assert field in out, (field, out)
    total = sum(p.numel() for p in load_pretrained(checkpoints["llama"]).parameters())
    assert f"({total:,})" in out
    kv = 2 * 2 * 2 * 8 * 64 * 4  # K+V x layers x kv_heads x head_dim x context x fp32
    assert f"KV cache {kv / 1024:.1f} KiB" in out
    bf16 = _info(str(d), "--dtype", "bf16")
    assert f"KV cache {kv / 2048:.1f} KiB" in bf16 and "figures below for bf16" in bf16


def test_info_template_from_jinja_file_and_builtin(tmp_path, checkpoints):
    from lmkit.tokenizers.bpe import BPETokenizer

    d = tmp_path / "m"
    tok = BPETokenizer.train(["hello world " * 20], vocab_size=300,
                             special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    save_pretrained(load_pretrained(checkpoints["gpt2"]), d)
    tok.save_hf_json(d / "tokenizer.json")
    assert "built-in chatml" in _info(str(d))
    (d / "chat_template.jinja").write_text(TEMPLATE)
    assert "Jinja in chat_template.jinja" in _info(str(d))


def test_dtype_is_one_shared_option_on_the_loading_commands():
    from lmkit.cli import cli

    for args in (["generate"], ["chat"], ["serve"], ["eval", "ppl"], ["eval", "mc"], ["convert"], ["info"]):
        res = CliRunner().invoke(cli, [*args, "--help"])
        assert res.exit_code == 0 and "--dtype [auto|fp32|bf16|fp16]" in res.output, args


@pytest.mark.parametrize("family", list(FAMILIES))
def test_info_on_every_family(checkpoints, family):
    out = _info(str(checkpoints[family]))
    assert f"family       {family}" in out and "full finetune" in out and "eos ids" in out
    assert ("KV cache" in out) == (family != "bert")  # an encoder keeps no cache


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_released_tensors_leave_the_process_rss(tmp_path):
    """A mapped tensor's pages count towards RSS once read; `release` hands them back (and the
    tensor still reads correctly: the pages come back from the page cache)."""
    from safetensors.torch import save_file

    from lmkit.hub.safetensors_io import map_state_dict

    data = torch.arange(2**20, dtype=torch.float32)  # 4 MiB
    save_file({"w": data}, str(tmp_path / "model.safetensors"))
    mapped = map_state_dict(tmp_path)
    w = mapped.tensors["w"]
    before = _rss_file_kib()
    assert torch.equal(w, data)
    read = _rss_file_kib()
    mapped.release(w)
    assert read - before > 3000 and read - _rss_file_kib() > 3000
    assert torch.equal(w, data)
