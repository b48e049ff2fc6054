"""The LSTM language model: the recurrent baseline, checked against torch's own LSTM cell math."""

import torch
import torch.nn.functional as F

from lmkit.models.config import ModelConfig
from lmkit.models.lstm import LSTMLM
from lmkit.train.config import TrainConfig
from lmkit.train.trainer import Trainer

CFG = ModelConfig(arch="lstm", vocab_size=40, d_model=16, n_layers=2, n_heads=1, d_ff=16)


def test_forward_equals_hand_unrolled_cells():
    torch.manual_seed(0)
    m = LSTMLM(CFG).eval()
    x = torch.randint(0, 40, (2, 6))
    out = m(x, labels=x)
    # unroll the two layers by hand with the standard LSTM equations
    h_in = m.embed_tokens(x)
    for layer in range(2):
        w_ih, w_hh = getattr(m.lstm, f"weight_ih_l{layer}"), getattr(m.lstm, f"weight_hh_l{layer}")
        b = getattr(m.lstm, f"bias_ih_l{layer}") + getattr(m.lstm, f"bias_hh_l{layer}")
        h = c = torch.zeros(2, 16)
        outs = []
        for t in range(6):
            i, f, g, o = (h_in[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        h_in = torch.stack(outs, 1)
    logits = m.lm_head(h_in)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 40), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)


def test_state_carries_across_chunks():
    m = LSTMLM(CFG).eval()
    x = torch.randint(0, 40, (3, 9))
    full = m(x).logits
    a = m(x[:, :4])
    b = m(x[:, 4:], state=a.kv_cache)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full)


def test_trains_with_the_trainer(tmp_path):
    torch.manual_seed(0)
    seq = torch.arange(32) % 8  # a periodic sequence the LSTM must learn to continue
    batches = [{"input_ids": seq.repeat(4, 1), "labels": seq.repeat(4, 1)}] * 200
    tr = Trainer(LSTMLM(CFG), TrainConfig(max_steps=200, lr=3e-2, schedule="constant", out_dir=str(tmp_path), progress=False), batches)
    hist = tr.train()
    assert hist[-1]["loss"] < 0.3 * hist[0]["loss"]
