"""The whole fp32 / bf16 decode step as one native call (infer/native_step.py) against the fused step it replaces."""

import copy

import pytest
import torch

from lmkit import native_gemv
from lmkit.infer import generate
from lmkit.infer import native_step as ns
from lmkit.infer.fused_step import FusedDecoder
from lmkit.models.decoder import DecoderLM
from lmkit.models.kv_cache import KVCache
from test_decoder import make as make_decoder

pytestmark = pytest.mark.skipif(native_gemv.unavailable() is not None,
                                reason=f"native kernels unavailable: {native_gemv.unavailable()}")
V = 97
VARIANTS = {
    "llama-gqa": {},
    "qwen2-bias-mqa": dict(n_kv_heads=1, qkv_bias=True),
    "gpt2-learned-layernorm": dict(n_kv_heads=4, norm="layernorm", position="learned", gated_ffn=False,
                                   activation="gelu_tanh", qkv_bias=True, ffn_bias=True, tie_embeddings=True),
    "relu-ungated": dict(gated_ffn=False, activation="relu"),
    "quick-gelu-odd-dims": dict(d_model=40, n_heads=5, n_kv_heads=5, d_ff=70, activation="quick_gelu"),
}


def make(dtype=torch.float32, **kw) -> DecoderLM:
    """test_decoder's tiny perturbed decoder, here with V tokens and 80 positions, in `dtype`."""
    return make_decoder(**{"vocab_size": V, "max_seq_len": 80, **kw}).to(dtype)


def steps(model, fused, native: bool, ids: torch.Tensor, prompt: int = 5, cache_len: int = 40):
    """Prefill `prompt` tokens through the fused step, then one token at a time: (logits [n, V], cache)."""
    saved = fused.native
    fused.native = saved if native else None
    try:
        cache = KVCache.for_model(model, 1, cache_len)
        with torch.inference_mode():
            out = [fused(ids[:, :prompt], torch.arange(prompt)[None], cache)[0, 0]]
            for p in range(prompt, ids.shape[1]):
                out.append(fused(ids[:, p:p + 1], torch.tensor([[p]]), cache)[0, 0])
        return torch.stack(out), cache
    finally:
        fused.native = saved


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_step_equals_the_fused_step(name, threads, dtype, monkeypatch):
    """Logits and the cache it writes are the fused step's within fp32 rounding (bf16: rounded where the fused
    step rounds, so equal but for the odd value an fp32 difference tips over a bf16 rounding boundary), on one
    thread and split over several (the tiny model is made to count as large enough for threads; 3 splits
    heads and rows unevenly)."""
    model = make(dtype, **VARIANTS[name])
    fused = FusedDecoder.for_model(model)
    assert fused.native is not None, ns.NativeStep.unsupported(fused)
    monkeypatch.setattr(fused.native, "_parallel", True)
    ids = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, cache = steps(model, fused, True, ids)
    finally:
        torch.set_num_threads(before)
    ref, ref_cache = steps(model, fused, False, ids)
    assert ours.dtype == ref.dtype == dtype and cache.keys[0].dtype == dtype
    assert cache.lengths == ref_cache.lengths == [30] * len(model.layers)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        assert (ours.argmax(-1) == ref.argmax(-1)).all()
        for a, b in zip(cache.keys + cache.values, ref_cache.keys + ref_cache.values):
            torch.testing.assert_close(a[:, :, :30], b[:, :, :30], rtol=1e-5, atol=1e-6)
        return
    diff = (ours.float() - ref.float()).abs()
    assert (diff == 0).float().mean() > 0.9  # most logits bit for bit
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2**-6, atol=2e-2)
    top2 = ref.float().topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # where the fused step's choice is not a near tie, the same choice
    assert (ours.argmax(-1) == ref.argmax(-1))[clear].all()
    for a, b in zip(cache.keys + cache.values, ref_cache.keys + ref_cache.values):
        torch.testing.assert_close(a[:, :, :30].float(), b[:, :, :30].float(), rtol=2**-6, atol=2e-2)


def test_generate_is_the_same_with_and_without_it(monkeypatch):
    """Greedy generation through `generate` (eager and compile=True) gives the fused step's tokens."""
    model = make()
    prompt = [[5, 17, 3, 44, 9]]
    ours = generate(model, prompt, max_new_tokens=20, do_sample=False, eos_token_id=[]).sequences
    compiled = generate(model, prompt, max_new_tokens=20, do_sample=False, eos_token_id=[], compile=True).sequences
    monkeypatch.setattr(ns, "ENABLED", False)
    ref = generate(model, prompt, max_new_tokens=20, do_sample=False, eos_token_id=[]).sequences
    assert ours == compiled == ref


def test_what_it_leaves_to_the_fused_step():
    model = make()
    fused = FusedDecoder.for_model(model)
    native = fused.native
    assert native.accepts(KVCache.for_model(model, 1, 8), None)
    assert not native.accepts(KVCache.for_model(model, 2, 8), None)  # batches
    assert not native.accepts(KVCache.for_model(model, 1, 8), torch.zeros(1, 1, 1, 8))  # padding
    full = KVCache.for_model(model, 1, 4)
    full.lengths = [4, 4]
    assert not native.accepts(full, None)  # no room: the fused step raises the cache's own error
    uneven = KVCache.for_model(model, 1, 8)
    uneven.lengths = [3, 2]
    assert not native.accepts(uneven, None)
    half = copy.deepcopy(model).to(torch.float16)
    assert ns.NativeStep.unsupported(FusedDecoder.for_model(half)) == "not an fp32 or bf16 CPU model"
    gelu = make(activation="gelu")
    assert ns.NativeStep.unsupported(FusedDecoder.for_model(gelu)) == "gelu activation"
    assert FusedDecoder.for_model(gelu).native is None


def test_a_reselected_cache_is_followed():
    """`KVCache.select` (beam search) replaces the buffers: the step writes the new ones, not the freed ones."""
    model = make()
    fused = FusedDecoder.for_model(model)
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(2))
    outs = []
    for native in (True, False):
        saved = fused.native
        fused.native = saved if native else None
        cache = KVCache.for_model(model, 1, 16)
        with torch.inference_mode():
            fused(ids[:, :4], torch.arange(4)[None], cache)
            fused(ids[:, 4:5], torch.tensor([[4]]), cache)
            cache.select([0, 0])
            cache.select([1])
            row = [fused(ids[:, p:p + 1], torch.tensor([[p]]), cache)[0, 0] for p in range(5, 12)]
        fused.native = saved
        outs.append((torch.stack(row), cache))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1].keys[1][:, :, :12], outs[1][1].keys[1][:, :, :12], rtol=1e-5, atol=1e-6)


def test_bad_ids_and_positions_get_a_clear_error():
    model = make()
    fused = FusedDecoder.for_model(model)
    cache = KVCache.for_model(model, 1, 8)
    with torch.inference_mode(), pytest.raises(IndexError, match="token id 97 is out of range"):
        fused.native(torch.tensor([[V]]), torch.tensor([[0]]), cache)
    assert cache.lengths == [0, 0]
    learned = make(**VARIANTS["gpt2-learned-layernorm"])
    step = FusedDecoder.for_model(learned).native
    with torch.inference_mode(), pytest.raises(IndexError, match="position 80 is beyond the 80 learned"):
        step(torch.tensor([[1]]), torch.tensor([[80]]), KVCache.for_model(learned, 1, 8))
    with torch.inference_mode(), pytest.raises(IndexError, match="position -1 is negative"):
        fused.native(torch.tensor([[1]]), torch.tensor([[-1]]), cache)
    # rotary: positions past the table grow it, as the fused step does
    with torch.inference_mode():
        far = fused.native(torch.tensor([[1]]), torch.tensor([[300]]), KVCache.for_model(model, 1, 8))
    assert torch.isfinite(far).all() and fused._cos.shape[0] > 300


def test_bf16_step_is_as_close_to_fp32_as_the_fused_bf16_step():
    """Rounding where the fused step rounds: against the same weights in fp32, the native bf16 step's logits
    are no further off than the fused bf16 step's."""
    model = make(d_model=64, n_heads=4, n_kv_heads=2, d_ff=128)
    ids = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(3))
    ref, _ = steps(model, FusedDecoder.for_model(model), False, ids)
    half = copy.deepcopy(model).to(torch.bfloat16)
    fused = FusedDecoder.for_model(half)
    ours, _ = steps(half, fused, True, ids)
    theirs, _ = steps(half, fused, False, ids)
    err_ours, err_theirs = (ours.float() - ref).abs().mean(), (theirs.float() - ref).abs().mean()
    assert err_ours <= 1.25 * err_theirs, (err_ours, err_theirs)
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() >= (theirs.argmax(-1) == ref.argmax(-1)).float().mean() - 0.05
