"""The static-cache decode step (infer/compiled_step.py) against transformers and lmkit's eager step.

Tiny randomly initialised HF Llama (GQA, RoPE, RMSNorm, SwiGLU) and GPT-2 (learned positions,
LayerNorm with bias, GELU) are saved and loaded into lmkit. `generate` is run with its
`ModelRunner` swapped for one that uses `CompiledDecoder` (as `ModelRunner` will once wired);
greedy token ids over left-padded batches must equal `transformers.generate`'s. The static-cache
math is checked eagerly (compile=False) for both architectures; one compiled run (inductor,
tiny model: a few seconds to compile) checks the compiled graph and the compile cache. A
hypothesis property checks attention over the whole preallocated buffer with the slot bias
against SDPA over the written prefix only.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmkit.infer.compiled_step as cs
from lmkit.hub import load_pretrained
from lmkit.infer import generate
from lmkit.infer.fused_step import FusedDecoder
from lmkit.infer.runner import ModelRunner

decode_mod = importlib.import_module("lmkit.infer.decode")  # the greedy/sampling loop behind generate

transformers = pytest.importorskip("transformers")

from test_generate import V, _hf_config, pair  # noqa: E402,F401  (the same tiny HF models and their lmkit twins)

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [18, 19, 20, 21, 22, 23, 24]]


def hf_generate(hf, prompts, new):
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, pad_token_id=0, eos_token_id=None, max_new_tokens=new,
                          do_sample=False)
    return out[:, t:].tolist()


@pytest.fixture
def use_static(monkeypatch):
    """Make `generate` run its decode steps through CompiledDecoder(**options); records the decoders used."""
    used = []

    def install(**options):
        class Runner(ModelRunner):
            def __init__(self, model, batch_size, total, mask, fused=True, compiled=False):
                super().__init__(model, batch_size, total, mask, fused)
                assert cs.use_compiled(self, model, total, **options)
                used.append(self.fused)

        monkeypatch.setattr(decode_mod, "ModelRunner", Runner)
        monkeypatch.setattr(importlib.import_module("lmkit.infer.beam_search"), "ModelRunner", Runner)
        return used

    return install


@pytest.mark.parametrize("batch", [1, 4])
def test_static_cache_step_matches_transformers(pair, use_static, batch):
    hf, model = pair
    prompts = PROMPTS[:batch]
    used = use_static(compile=False)
    ours = generate(model, prompts, max_new_tokens=12, eos_token_id=[]).sequences
    assert used and isinstance(used[0], cs.CompiledDecoder)
    assert ours == hf_generate(hf, prompts, 12)


def test_static_cache_step_beam_search_matches_transformers(pair, use_static):
    """Beam search reorders cache rows and the padding bias every step (cache.select / runner.select)."""
    hf, model = pair
    prompts = PROMPTS[:3]
    used = use_static(compile=False)
    ours = generate(model, prompts, max_new_tokens=8, num_beams=3, eos_token_id=[]).sequences
    assert used
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, pad_token_id=0, eos_token_id=None, max_new_tokens=8,
                          do_sample=False, num_beams=3)
    assert ours == ref[:, t:].tolist()


def test_static_step_logits_match_fused_step(pair):
    """Per-step logits of the static-cache step equal the eager fused step's (padding included)."""
    _, model = pair
    prompts = PROMPTS
    t = max(map(len, prompts))
    total = t + 7
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.zeros(len(prompts), total, dtype=torch.long)
    for i, p in enumerate(prompts):
        mask[i, t - len(p):] = 1
    with torch.inference_mode():
        outs = []
        for step_cls in (None, cs.CompiledDecoder):
            runner = ModelRunner(model, len(prompts), total, mask, True)
            if step_cls is not None:
                runner.fused = step_cls(model, compile=False)
            # the static step also runs on a cache larger than the generation (bucketed sizes)
            cache = model.make_cache(len(prompts), total + (9 if step_cls is not None else 0))
            logits = [runner.prefill(ids, cache)]
            for _ in range(5):
                logits.append(runner.step(logits[-1][:, -1].argmax(-1, keepdim=True), cache))
            # a 2-token step (speculative verification) goes to the eager fused step, still correct
            logits.append(runner.step(torch.tensor([[3, 4]] * len(prompts)), cache, last_only=False))
            assert cache.seq_len == total
            outs.append(logits)
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_step_matches_transformers_and_is_cached(pair, use_static):
    hf, model = pair
    if model.config.position != "rope":
        pytest.skip("one compiled architecture is enough for the default run (the eager tests cover GPT-2)")
    prompts = PROMPTS[:2]
    used = use_static(compile=True)
    first = generate(model, prompts, max_new_tokens=10, eos_token_id=[]).sequences
    assert first == hf_generate(hf, prompts, 10)

    def compiled():
        return {k: v[1] for k, v in cs._COMPILED[model].items() if k[4]}  # key[4]: compile flag

    entries = compiled()
    assert len(entries) == 1
    other = [[30, 31, 32, 33, 34, 35], [40]]  # same batch and prompt length: same static shapes
    assert generate(model, other, max_new_tokens=10, eos_token_id=[]).sequences == hf_generate(hf, other, 10)
    assert len(used) == 2 and compiled() == entries  # compiled once, reused by the second generate call
    # changing a weight invalidates the compiled step (weights are frozen into it as constants)
    noise = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad():
            model.lm_head.weight.add_(noise)
            hf.lm_head.weight.add_(noise)
        changed = generate(model, prompts, max_new_tokens=10, eos_token_id=[]).sequences
        assert changed != first and changed == hf_generate(hf, prompts, 10)
    finally:
        with torch.no_grad():
            model.lm_head.weight.sub_(noise)
            hf.lm_head.weight.sub_(noise)
    assert len(compiled()) == 1 and set(compiled().values()).isdisjoint(entries.values())


def test_two_models_same_shapes_keep_their_own_weights(pair, use_static):
    """Two compiled steps of the same shapes (same code, other frozen weights) must not be mixed up."""
    hf, model = pair
    if model.config.position != "rope":
        pytest.skip("compiled path checked on Llama")
    torch.manual_seed(7)
    other_hf = transformers.AutoModelForCausalLM.from_config(_hf_config("llama"), attn_implementation="eager").eval()
    other = type(model)(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p_ours, p_hf in zip([other.lm_head.weight], [other_hf.lm_head.weight]):
            p_ours.copy_(p_hf)
    other_hf.load_state_dict({**hf.state_dict(), "lm_head.weight": other_hf.lm_head.weight})
    prompts = PROMPTS[:2]
    use_static(compile=True)
    a = generate(model, prompts, max_new_tokens=8, eos_token_id=[]).sequences
    b = generate(other, prompts, max_new_tokens=8, eos_token_id=[]).sequences
    assert a == hf_generate(hf, prompts, 8) and b == hf_generate(other_hf, prompts, 8) and a != b
    assert generate(model, prompts, max_new_tokens=8, eos_token_id=[]).sequences == a


def test_unsupported(pair):
    _, model = pair
    assert cs.CompiledDecoder.unsupported(model, 32) is None
    model.train()
    try:
        assert "training" in cs.CompiledDecoder.unsupported(model, 32)
    finally:
        model.eval()
    assert cs.CompiledDecoder.unsupported(torch.nn.Linear(2, 2)) == FusedDecoder.unsupported(torch.nn.Linear(2, 2))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), hkv=st.sampled_from([1, 2]), g=st.sampled_from([1, 2]), length=st.integers(2, 12),
       data=st.data())
def test_attention_over_static_buffer_equals_prefix_attention(b, hkv, g, length, data):
    past = data.draw(st.integers(0, length - 1))
    torch.manual_seed(past * 31 + length)
    d, h = 8, hkv * g
    q = torch.randn(b, h, 1, d)
    k = torch.randn(b, hkv, length, d) * 3  # slots past `past` hold garbage: must not matter
    v = torch.randn(b, hkv, length, d) * 3
    pad = torch.zeros(b, 1, 1, length)
    pad[0, ..., : min(past, 1)] = torch.finfo(torch.float32).min  # row 0 left-padded by one slot (when past > 0)
    bias = torch.where(torch.arange(length) > past, torch.finfo(torch.float32).min, pad)
    step = cs._StaticStep.__new__(cs._StaticStep)
    step.manual_attention, step.h, step.hkv, step.scale = True, h, hkv, d**-0.5
    got = step._attend(q, k, v, bias)
    kr = k[:, :, : past + 1].repeat_interleave(g, dim=1)
    vr = v[:, :, : past + 1].repeat_interleave(g, dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, attn_mask=pad[..., : past + 1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_generate_compile_flag_reaches_the_runner(monkeypatch):
    """`generate(..., compile=True)` asks ModelRunner for the compiled step; the default does not."""
    import importlib

    from lmkit.infer import generate
    from lmkit.infer.config import GenerationConfig
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    runner_mod = importlib.import_module("lmkit.infer.runner")
    seen = []
    monkeypatch.setattr("lmkit.infer.compiled_step.use_compiled",
                        lambda runner, model, total, **kw: seen.append(total) or False)
    cfg = ModelConfig(arch="decoder", vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64,
                      norm="rmsnorm", activation="silu", gated_ffn=True, position="rope")
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    a = generate(model, [[1, 2, 3]], max_new_tokens=4, eos_token_id=[])
    assert seen == []
    b = generate(model, [[1, 2, 3]], max_new_tokens=4, eos_token_id=[], compile=True)
    assert seen == [7] and a.sequences == b.sequences
    with pytest.raises(Exception, match="compile"):
        GenerationConfig(compile="yes")
    assert runner_mod.ModelRunner is not None


@pytest.fixture(scope="module")
def quantized_models():
    """A tiny Llama with int8 weights, one with w8a8, and one with int4 (group 32) weights and an int8 lm_head."""
    import copy

    from lmkit.models.build import build_model
    from lmkit.models.config import ModelConfig
    from lmkit.quant.quantize_model import quantize_model

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64,
                      model_type="llama")
    base = build_model(cfg).eval()
    int8 = quantize_model(copy.deepcopy(base), "int8", skip=[])
    w8a8 = quantize_model(copy.deepcopy(base), "w8a8", skip=[])
    int4 = quantize_model(copy.deepcopy(base), "int4", group_size=32)
    quantize_model(int4, "int8", skip=[], targets=["lm_head"])
    return {"base": base, "int8": int8, "w8a8": w8a8, "int4": int4}


def _step_logits(model, step, n=6):
    """Prefill of 5 tokens, then n greedy decode steps through `step` (None: the eager fused step)."""
    with torch.inference_mode():
        runner = ModelRunner(model, 2, 5 + n, None, True)
        if step is not None:
            runner.fused = step
        cache = model.make_cache(2, 5 + n)
        out = [runner.prefill(torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]]), cache)]
        for _ in range(n):
            out.append(runner.step(out[-1][:, -1].argmax(-1, keepdim=True), cache))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kind", ["int8", "w8a8", "int4"])
def test_static_step_runs_the_quantized_kernels(quantized_models, kind):
    """int8 / int4 layers run their fused weight-only kernels inside the static step: the same logits as
    the eager fused step (which calls the same kernels), within bf16 rounding of the kernel outputs."""
    model = quantized_models[kind]
    assert cs.CompiledDecoder.unsupported(model, 32) is None
    ref = _step_logits(model, None)
    ours = _step_logits(model, cs.CompiledDecoder(model, compile=False))
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("kind,tol", [("int4", 2e-2), ("w8a8", 1e-3)])
def test_compiled_step_with_quantized_kernels(quantized_models, kind, tol):
    """One compiled run per kernel kind, against the eager fused step.

    int4: int4 blocks and an int8 lm_head, the weight-only kernels as extern calls in the graph (bf16
    rounding of their outputs). w8a8: the per-row activation quantization is traced into the graph around
    the int8 x int8 product (an operator of our own: the inductor's own `_int_mm` on CPU is a plain loop);
    the integer sums are exact, so only the float rounding of the scales differs."""
    model = quantized_models[kind]
    ref = _step_logits(model, None)
    ours = _step_logits(model, cs.CompiledDecoder(model, compile=True))
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_quantized_layers_without_a_kernel_are_refused(quantized_models):
    import copy

    from lmkit.quant.quantize_model import quantize_model

    model = copy.deepcopy(quantized_models["base"])
    quantize_model(model, "int8", skip=[], targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"])
    quantize_model(model, "nf4", targets=["down_proj"])  # no fused kernel: the eager step dequantizes it
    assert "kernel" in cs.CompiledDecoder.unsupported(model, 32)


def test_static_cache_length_buckets():
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(max_seq_len=1000))
    assert [cs.static_cache_length(model, n) for n in (1, 64, 65, 80, 129, 600, 1000, 1200)] == \
        [64, 64, 128, 128, 256, 1000, 1000, 1200]


def test_generations_of_other_lengths_reuse_the_compiled_step(quantized_models):
    """generate(compile=True) rounds the cache up (static_cache_length): another prompt length and budget
    run the same compiled step (one compile), with the eager step's tokens."""
    import copy

    model = copy.deepcopy(quantized_models["base"])
    runs = [([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]], 10), ([[1, 2, 3], [4, 5, 6]], 7), ([[3, 1, 4, 1, 5, 9, 2], [6] * 7], 20)]
    for prompts, n in runs:
        ours = generate(model, prompts, max_new_tokens=n, eos_token_id=[], do_sample=False, compile=True).sequences
        assert ours == generate(model, prompts, max_new_tokens=n, eos_token_id=[], do_sample=False).sequences
    assert [k[2] for k in cs._COMPILED[model]] == [64]  # one step, over a 64-slot cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_dense_models_call_the_eager_gemvs(quantized_models, monkeypatch, dtype):
    """Above MAX_COMPILED_FP32_BYTES the graph calls the eager fused step's GEMVs (native or oneDNN-prepacked
    fp32; native bf16) through `lmkit::prepacked_linear` instead of freezing the weights in: the same
    logits as the eager step (here with the limit lowered so that the tiny model counts as large)."""
    import copy

    from lmkit import native_gemv

    if cs.PREPACKED_LINEAR_OP is None:
        pytest.skip("no torch.library.register_fake")
    if dtype == torch.bfloat16 and native_gemv.unavailable() is not None:
        pytest.skip("bf16 calls the eager GEMVs only where the native GEMV runs")
    model = quantized_models["base"] if dtype == torch.float32 else copy.deepcopy(quantized_models["base"]).to(dtype)
    monkeypatch.setattr(cs, "MAX_COMPILED_FP32_BYTES", 0)
    if not cs._prepacked_dense(FusedDecoder.for_model(model)):
        pytest.skip("oneDNN is not available: large fp32 models are refused instead")
    assert cs.CompiledDecoder.unsupported(model, 32) is None
    step = cs.CompiledDecoder(model, compile=True)
    ours = _step_logits(model, step)
    module = next(v[2] for v in cs._COMPILED[model].values())
    assert len(module.prepacked) == 4 * len(model.layers) + 1 and not hasattr(module, "qkv0_w")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ref = _step_logits(model, None)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
