"""Shared checks of an lmkit decoder against its transformers twin (imported by the test_arch_* and
test_rope_scaling tests): logits both ways through a checkpoint directory at a long, left-padded
batch, the KV-cache path against the full forward, and greedy generate token for token."""

from __future__ import annotations

from pathlib import Path

import torch

from lmkit.hub import load_pretrained, save_pretrained
from lmkit.infer.generate import generate

T = 40  # longer than the original RoPE context the tests set (16)


def perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 0, only: str = "") -> None:
    """Move every parameter (norm gains and biases included; with `only`, those whose name holds it)
    off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def padded_inputs(vocab: int, t: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, t), generator=g)
    mask = torch.ones(3, t, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :9] = 0
    return ids, mask


def hf_logits(hf, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    kw = {}
    if mask is not None:
        kw = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        return hf(input_ids=ids, **kw).logits


def assert_logits_match(ours, hf, vocab: int, tol: float = 1e-4) -> None:
    ids, mask = padded_inputs(vocab)
    with torch.no_grad():
        full = ours(ids).logits
        padded = ours(ids, attention_mask=mask).logits
    assert (full - hf_logits(hf, ids)).abs().max() <= tol
    keep = mask.bool()
    assert (padded - hf_logits(hf, ids, mask))[keep].abs().max() <= tol


def hf_to_lmkit_to_hf(hf, vocab: int, tmp_path: Path):
    """hf saved by transformers loads into lmkit with equal logits, and lmkit's save of that model loads
    back into transformers with equal logits. -> the lmkit model."""
    from transformers import AutoModelForCausalLM

    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert_logits_match(ours, hf, vocab)
    save_pretrained(ours, tmp_path / "ours")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert_logits_match(ours, again, vocab)
    assert load_pretrained(tmp_path / "ours").config == ours.config
    return ours


def lmkit_to_hf(ours, vocab: int, tmp_path: Path):
    """An lmkit-built model saved by lmkit loads into transformers with equal logits. -> the HF model."""
    from transformers import AutoModelForCausalLM

    perturb(ours)
    save_pretrained(ours, tmp_path / "native")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "native", attn_implementation="eager").eval()
    assert_logits_match(ours, hf, vocab)
    return hf


def assert_cache_matches_full(ours, vocab: int, prefill: int = 30) -> None:
    """Prefill then one token at a time through the KV cache gives the full forward's logits."""
    ids, mask = padded_inputs(vocab)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        cache = ours.make_cache(ids.shape[0], ids.shape[1])
        steps = [ours(ids[:, :prefill], attention_mask=mask[:, :prefill], kv_cache=cache).logits]
        for i in range(prefill, ids.shape[1]):
            steps.append(ours(ids[:, i:i + 1], attention_mask=mask[:, :i + 1], kv_cache=cache).logits)
    keep = mask.bool()
    assert (torch.cat(steps, dim=1) - full)[keep].abs().max() <= 1e-4


def assert_greedy_matches(ours, hf, vocab: int, new: int = 8, prompt_len: int = 24, **kw) -> None:
    """Greedy lmkit.infer.generate == transformers.generate on a left-padded batch of prompts (long
    ones by default: past the original RoPE context of 16)."""
    ids, _ = padded_inputs(vocab, prompt_len)
    prompts = [ids[0].tolist(), ids[1, 3:].tolist(), ids[2, 6:].tolist()]
    t = max(map(len, prompts))
    batch = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        theirs = hf.generate(batch, attention_mask=mask, pad_token_id=0, max_new_tokens=new, do_sample=False,
                             min_new_tokens=new, **kw).tolist()
    out = generate(ours, prompts, max_new_tokens=new, min_new_tokens=new, **kw)
    assert [list(s) for s in out.sequences] == [row[t:] for row in theirs]


def assert_lora_loads_in_peft(hf, ours, vocab: int, tmp_path: Path, targets: tuple[str, ...], **lora) -> None:
    """An lmkit LoRA on `ours` (the twin of `hf`) saved in PEFT's layout loads with peft.PeftModel on
    transformers' model with equal logits, and back into lmkit with equal logits."""
    import copy

    import peft
    from transformers import AutoModelForCausalLM

    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import load_peft_adapter, save_peft_adapter

    hf.save_pretrained(tmp_path / "base")
    tuned = copy.deepcopy(ours)
    inject_lora(tuned, LoraConfig(target_modules=targets, **lora))
    perturb(tuned, scale=0.3, seed=3, only="lora_")  # B starts at zero: move every LoRA factor
    tuned.eval()
    save_peft_adapter(tuned, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    again = load_peft_adapter(copy.deepcopy(ours), tmp_path / "adapter").eval()
    ids = torch.randint(3, vocab, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = tuned(ids).logits
        assert (want - ours(ids).logits).abs().max() > 1e-3  # the adapter changes the output
        assert (theirs(input_ids=ids).logits - want).abs().max() <= 1e-4
        assert (again(ids).logits - want).abs().max() <= 1e-4
