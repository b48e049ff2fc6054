"""Gradient checkpointing recomputes activations: same loss and gradients, less memory kept."""

import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM


def test_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64))
    x = torch.randint(0, 100, (2, 16))
    model.train()
    loss = model(x, labels=x).loss
    loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    loss2 = model(x, labels=x).loss
    loss2.backward()
    assert loss2.item() == loss.item()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=1e-7)
