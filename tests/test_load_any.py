"""`load_model_for_inference`: full checkpoints and adapter folders (LoRA merged, prompt tuning
and prefix tuning wrapped) give the same logits and greedy tokens as the model that was saved."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import CheckpointError
from lmkit.hub import save_pretrained
from lmkit.infer import generate
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.peft.load_any import load_model_for_inference, require_full_checkpoint
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 10


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("load_any") / "base"
    tok = BPETokenizer.train(TEXT, vocab_size=290, special_tokens=list(CHAT_SPECIAL_TOKENS))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=64, model_type="llama", tie_embeddings=False)
    save_pretrained(DecoderLM(cfg).eval(), path, tokenizer=tok)
    return path


def _fresh(base):
    from lmkit.hub import load_pretrained

    return load_pretrained(base)


def _perturb(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)


def _check_same(tuned, loaded):
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tuned(ids).logits, rtol=1e-4, atol=1e-4)
    a = generate(tuned.eval(), [[5, 17, 42]], max_new_tokens=6).sequences[0]
    b = generate(loaded, [[5, 17, 42]], max_new_tokens=6).sequences[0]
    assert a == b


def test_full_checkpoint(base):
    model, tok = load_model_for_inference(base)
    assert not model.training and tok.token_to_id("<|im_end|>") is not None


def test_lora_folder_alone_and_with_base(base, tmp_path):
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_lora

    tuned = inject_lora(_fresh(base), LoraConfig(r=4, alpha=8))
    _perturb(tuned)
    save_lora(tuned, tmp_path / "lora", base_model_name_or_path=str(base))
    loaded, tok = load_model_for_inference(tmp_path / "lora")
    assert not any("lora" in n for n, _ in loaded.named_parameters())  # merged into the base weights
    _check_same(tuned, loaded)
    again, _ = load_model_for_inference(base, adapter=tmp_path / "lora")
    _check_same(tuned, again)
    with pytest.raises(CheckpointError, match="lmkit merge"):
        require_full_checkpoint(tmp_path / "lora", "quantize")


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_unmergeable_method_folder(base, tmp_path, method):
    from lmkit.peft.finetune import apply_method
    from lmkit.peft.method_io import save_method

    tuned, config, _ = apply_method(method, _fresh(base))
    _perturb(tuned)
    tuned.eval()
    save_method(tuned, tmp_path / method, method, config, base_model_name_or_path=str(base))
    loaded, _ = load_model_for_inference(tmp_path / method)
    _check_same(tuned, loaded)


def test_folder_without_base_names_the_fix(base, tmp_path):
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_lora
    from lmkit.peft.finetune import apply_method
    from lmkit.peft.method_io import save_method

    save_lora(inject_lora(_fresh(base), LoraConfig(r=2)), tmp_path / "lora", base_model_name_or_path="nowhere/x")
    with pytest.raises(CheckpointError, match=r"--adapter .*lmkit merge"):
        load_model_for_inference(tmp_path / "lora")
    tuned, config, _ = apply_method("prompt", _fresh(base))
    save_method(tuned, tmp_path / "prompt", "prompt", config)
    with pytest.raises(CheckpointError, match="does not record its base model") as err:
        load_model_for_inference(tmp_path / "prompt")
    assert "lmkit merge" not in str(err.value)
    loaded, _ = load_model_for_inference(base, adapter=tmp_path / "prompt")
    assert type(loaded).__name__ == "VirtualTokenModel"
    with pytest.raises(CheckpointError, match="not an adapter folder"):
        load_model_for_inference(base, adapter=base)
