"""Pretraining objectives: BERT MLM + NSP, T5 span corruption, prefix LM (lmkit.data.*)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.data.mlm import MaskingConfig, MLMCollator, NSPExample, build_nsp_examples, mask_tokens
from lmkit.data.packing import PackedDataset, PackedLoader
from lmkit.data.prefix_lm import PrefixLMCollator
from lmkit.data.span_corruption import (
    SpanCorruptionCollator,
    compute_input_and_target_lengths,
    corrupt_spans,
    default_sentinel_ids,
    noise_span_counts,
    random_spans_noise_mask,
)

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
SPECIAL = [PAD, CLS, SEP, MASK, UNK]


def _within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# ---- MLM ------------------------------------------------------------------------------------
def test_masking_statistics_80_10_10():
    vocab = 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL), vocab, (400, 128), generator=g)
    ids[:, 0], ids[:, -1], ids[::3, 60:70] = CLS, SEP, PAD  # specials sprinkled in
    out, labels = mask_tokens(ids, mask_id=MASK, vocab_size=vocab, special_ids=SPECIAL, generator=g)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != -100
    n_candidates = int((~special).sum())
    n_sel = int(selected.sum())
    assert _within(n_sel / n_candidates, 0.15, n_candidates)
    assert not (selected & special).any() and torch.equal(out[special], ids[special])
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(out[~selected], ids[~selected])
    masked = out[selected] == MASK
    unchanged = out[selected] == ids[selected]
    random = ~masked & ~unchanged
    p_same = 0.1 / (vocab - len(SPECIAL))  # a random draw may hit the original token
    assert _within(float(masked.float().mean()), 0.8, n_sel)
    assert _within(float(random.float().mean()), 0.1 - p_same, n_sel)
    assert _within(float(unchanged.float().mean()), 0.1 + p_same, n_sel)
    assert not torch.isin(out[selected][random], torch.tensor(SPECIAL)).any()


def test_random_replacement_never_draws_special_tokens():
    # a tiny vocabulary where half of the ids are special: a wrong draw would show at once
    vocab = 10
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (200, 64), generator=g)
    cfg = MaskingConfig(mlm_probability=0.5, mask_fraction=0.0, random_fraction=1.0)
    out, labels = mask_tokens(ids, mask_id=MASK, vocab_size=vocab, special_ids=SPECIAL, config=cfg, generator=g)
    sel = labels != -100
    assert sel.sum() > 5000
    assert out[sel].min() >= 5 and set(out[sel].unique().tolist()) == set(range(5, vocab))


def test_masking_config_is_validated():
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskingConfig(mlm_probability=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskingConfig(mask_fraction=0.9, random_fraction=0.2)


def _documents(n_docs=60, seed=0):
    """Documents of sentences whose ids are consecutive integers, distinct per document."""
    rng = np.random.default_rng(seed)
    docs, base = [], 10
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(2, 12))):
            k = int(rng.integers(3, 15))
            doc.append(list(range(base, base + k)))
            base += k
        docs.append(doc)
    return docs


def _doc_of(token: int, docs) -> int:
    for i, d in enumerate(docs):
        if d[0][0] <= token <= d[-1][-1]:
            return i
    raise AssertionError(token)


def _consecutive(xs) -> bool:
    return all(b == a + 1 for a, b in zip(xs, xs[1:]))


def test_nsp_pairs_are_half_random_and_segments_are_right():
    docs = _documents(300)
    examples = build_nsp_examples(docs, max_length=64, seed=3, short_seq_prob=0.1)
    labels = np.array([e.next_sentence_label for e in examples])
    assert len(examples) > 300 and _within(labels.mean(), 0.5, len(examples))
    for e in examples:
        assert e.tokens_a and e.tokens_b and len(e.tokens_a) + len(e.tokens_b) <= 64 - 3
        a_docs = {_doc_of(t, docs) for t in e.tokens_a}
        b_docs = {_doc_of(t, docs) for t in e.tokens_b}
        assert a_docs == {e.doc_index} and b_docs == {e.b_doc_index}
        assert _consecutive(e.tokens_a) and _consecutive(e.tokens_b)  # contiguous runs of the documents
        if e.next_sentence_label == 0:
            assert e.b_doc_index == e.doc_index and e.tokens_b[0] > e.tokens_a[-1]
        else:
            assert e.b_doc_index != e.doc_index


def test_nsp_without_truncation_b_follows_a_exactly():
    docs = _documents(80, seed=1)
    for e in build_nsp_examples(docs, max_length=512, seed=0, short_seq_prob=0.0):
        assert _consecutive(e.tokens_a) and _consecutive(e.tokens_b)
        # A and B are whole sentences; an "is next" B starts right where A ends
        assert (e.tokens_b[0] == e.tokens_a[-1] + 1) == (e.next_sentence_label == 0)
    with pytest.raises(ValueError, match="at least 2"):
        build_nsp_examples(docs[:1], 64)


def test_sentences_for_nsp_from_text():
    from lmkit.data.mlm import nsp_documents, split_sentences

    assert split_sentences("他来了。你好！Hello world. Next one? e.g.x\nLast") == ["他来了。", "你好！", "Hello world.", "Next one?", "e.g.x", "Last"]

    class Chars:
        def encode(self, text):
            return [ord(c) for c in text]

    assert nsp_documents(Chars(), ["ab。c", "d"]) == [[[97, 98, 12290], [99]], [[100]]]


def test_mlm_collator_builds_bert_pairs():
    vocab = 200
    col = MLMCollator(vocab_size=vocab, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, special_ids=[UNK], max_length=12, seed=0)
    exs = [NSPExample([10, 11, 12], [20, 21], 0), {"tokens_a": list(range(30, 40)), "tokens_b": list(range(50, 60)), "next_sentence_label": 1}]
    col.masking = MaskingConfig(mlm_probability=1e-9)  # no masking: check the layout
    b = col(exs)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}
    assert b["input_ids"][0].tolist() == [CLS, 10, 11, 12, SEP, 20, 21, SEP, PAD, PAD, PAD, PAD]
    assert b["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert b["attention_mask"][0].tolist() == [1] * 8 + [0] * 4
    row = b["input_ids"][1].tolist()  # truncated to 12: 9 content tokens, longer side first
    assert len(row) == 12 and row[0] == CLS and row.count(SEP) == 2 and row[-1] == SEP
    assert b["next_sentence_label"].tolist() == [0, 1]
    assert (b["labels"] == -100).all()

    col.masking = MaskingConfig()
    b = MLMCollator(vocab_size=vocab, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, max_length=64)([list(range(5, 50))] * 64)
    assert "next_sentence_label" not in b
    sel = b["labels"] != -100
    assert not sel[:, 0].any() and not sel[:, 46].any() and not sel[b["attention_mask"] == 0].any()
    assert _within(float(sel[:, 1:46].float().mean()), 0.15, 64 * 45)


def test_mlm_collator_resumes_the_same_masks():
    def make():
        return MLMCollator(vocab_size=100, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, seed=11)

    data = [list(range(5, 60))] * 8
    a = make()
    a(data)
    state = a.state_dict()
    nxt = a(data)
    b = make()
    b.load_state_dict(state)
    again = b(data)
    assert all(torch.equal(nxt[k], again[k]) for k in nxt)
    assert not torch.equal(make()(data)["input_ids"], nxt["input_ids"])


# ---- span corruption ------------------------------------------------------------------------
def reference_random_spans_noise_mask(length, noise_density, mean_noise_span_length, rng):
    """Line-by-line numpy transcription of t5.data.preprocessors.random_spans_noise_mask.

    ``seqio.stateless_shuffle(x, seed_i)`` becomes ``rng.permutation(x)`` (noise first), the
    same permutation source lmkit uses; tf.math.segment_sum / unsorted_segment_sum become
    np.bincount.
    """
    if noise_density == 0.0:
        return np.zeros(length, bool)
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(np.round(float(length) * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(float(num_noise_tokens) / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments):
        first_in_segment = np.pad(rng.permutation((np.arange(num_items - 1) < num_segments - 1).astype(np.int32)), [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id)  # segment_sum(ones_like(segment_id), segment_id)

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved_span_lengths = np.reshape(np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2])
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.bincount(span_starts, minlength=length)  # unsorted_segment_sum
    span_num = np.cumsum(span_start_indicator)
    is_noise = np.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each True run."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 700),
    density=st.sampled_from([0.05, 0.15, 0.3, 0.5]),
    mean_span=st.sampled_from([1.0, 2.0, 3.0, 5.0, 8.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_noise_mask_matches_reference_transcription(length, density, mean_span, seed):
    n = max(length, 2)
    num_noise = min(max(round(n * density), 1), n - 1)
    if max(round(num_noise / mean_span), 1) > n - num_noise:
        return  # the reference itself fails here (more spans than non-noise tokens)
    ours = random_spans_noise_mask(length, density, mean_span, np.random.default_rng(seed))
    ref = reference_random_spans_noise_mask(length, density, mean_span, np.random.default_rng(seed))
    assert ours.dtype == bool and np.array_equal(ours, ref)


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(2, 2000),
    density=st.floats(0.01, 0.95),
    mean_span=st.floats(1.0, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_noise_mask_invariants(length, density, mean_span, seed):
    mask = random_spans_noise_mask(length, density, mean_span, seed)
    num_noise = min(max(int(np.round(length * density)), 1), length - 1)
    num_spans = min(max(int(np.round(num_noise / mean_span)), 1), length - num_noise)
    assert noise_span_counts(length, density, mean_span) == (num_noise, num_spans)
    assert mask.shape == (length,) and int(mask.sum()) == num_noise
    spans = _spans(mask)
    assert len(spans) == num_spans and not mask[0]  # interleaving starts with non-noise
    assert all(e > s for s, e in spans)


def test_noise_mask_statistics_and_edge_cases():
    masks = [random_spans_noise_mask(512, 0.15, 3.0, s) for s in range(50)]
    assert all(m.sum() == 77 and len(_spans(m)) == 26 for m in masks)  # round(76.8), round(77/3)
    assert len({m.tobytes() for m in masks}) == 50
    assert random_spans_noise_mask(1, 0.15).tolist() == [False]
    assert random_spans_noise_mask(2, 0.15, rng=0).tolist() == [False, True]
    assert not random_spans_noise_mask(10, 0.0).any()


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 400), seed=st.integers(0, 10_000))
def test_inputs_and_targets_reassemble_the_original(length, seed):
    vocab = 32_100
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab - 100, length)
    mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
    sentinels = default_sentinel_ids(vocab)
    inputs, targets = corrupt_spans(tokens, mask, sentinels, eos_id=1)
    assert inputs[-1] == 1 and targets[-1] == 1
    n_spans = len(_spans(mask))
    assert len(inputs) == length - mask.sum() + n_spans + 1 and len(targets) == mask.sum() + n_spans + 1
    # targets: <extra_id_k> followed by span k; inputs: sentinel k where span k was
    span_of, current = {}, None
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = t
            span_of[t] = []
        else:
            span_of[current].append(t)
    assert list(span_of) == sentinels[:n_spans]
    rebuilt = [x for t in inputs[:-1].tolist() for x in (span_of[t] if t in span_of else [t])]
    assert rebuilt == tokens.tolist()


def test_t5_paper_example():
    words = "Thank you for inviting me to your party last week .".split()
    vocab = {w: i + 10 for i, w in enumerate(words)}
    ids = [vocab[w] for w in words]
    mask = np.array([w in ("for", "inviting", "last") for w in words])
    inputs, targets = corrupt_spans(ids, mask, [99, 98], eos_id=1)
    X, Y = 99, 98
    assert inputs.tolist() == [vocab["Thank"], vocab["you"], X, vocab["me"], vocab["to"], vocab["your"], vocab["party"], Y, vocab["week"], vocab["."], 1]
    assert targets.tolist() == [X, vocab["for"], vocab["inviting"], Y, vocab["last"], 1]


def test_input_and_target_lengths_fit_exactly():
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)  # T5 / HF run_t5_mlm_flax values
    for inputs_length in (16, 64, 128, 512):
        raw, tgt = compute_input_and_target_lengths(inputs_length)
        col = SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=32_100)
        b = col([np.arange(2, 2 + raw)] * 4)
        assert b["input_ids"].shape == (4, inputs_length) and b["labels"].shape == (4, tgt)


def test_span_corruption_collator():
    col = SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=1000, seed=0)
    exs = [list(range(2, 102)), torch.arange(2, 42), {"input_ids": np.arange(2, 12)}]
    b = col(exs)
    assert set(b) == {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
    # decoder inputs are the targets shifted right behind the pad (decoder start) id
    assert (b["decoder_input_ids"][:, 0] == 0).all()
    shifted = b["labels"][:, :-1].masked_fill(b["labels"][:, :-1] == -100, 0)
    assert torch.equal(b["decoder_input_ids"][:, 1:], shifted)
    lens = b["attention_mask"].sum(1).tolist()
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    for r, n in enumerate(lens):
        assert b["input_ids"][r, n - 1] == 1
        tgt = b["labels"][r]
        real = tgt[tgt != -100]
        assert real[0] == 999 and real[-1] == 1 and (tgt[len(real):] == -100).all()
    assert lens[0] < 100 and b["labels"].shape[1] < 40
    with pytest.raises(ValueError, match="sentinel id 999"):
        col([[5, 999, 6]])
    # resumable: call n draws the same masks after a restore
    state = col.state_dict()
    nxt = col(exs)
    fresh = SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=1000)
    fresh.load_state_dict(state)
    again = fresh(exs)
    assert all(torch.equal(nxt[k], again[k]) for k in nxt)


def test_objective_collators_plug_into_the_packed_loader():
    ds = PackedDataset(np.arange(5, 3005), seq_len=40, stride=40)
    loader = PackedLoader(ds, 4, collate_fn=SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=32_100, seed=2), seed=0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    want = next(it)
    other = PackedLoader(ds, 4, collate_fn=SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=32_100, seed=2), seed=0)
    other.load_state_dict(state)
    got = next(iter(other))
    assert all(torch.equal(want[k], got[k]) for k in want)


# ---- prefix LM ------------------------------------------------------------------------------
def test_prefix_lm_labels_are_ignored_exactly_on_the_prefix():
    col = PrefixLMCollator(pad_id=0, seed=1)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 100, int(rng.integers(2, 30))) for _ in range(64)]
    b = col(seqs)
    assert set(b) == {"input_ids", "attention_mask", "prefix_len", "labels"}
    assert b["prefix_len"].shape == (64,)
    prefixes = set()
    for r, s in enumerate(seqs):
        p, n = int(b["prefix_len"][r]), len(s)
        prefixes.add(p)
        assert 1 <= p <= n - 1
        assert b["input_ids"][r, :n].tolist() == s.tolist()
        assert (b["labels"][r, :p] == -100).all() and b["labels"][r, p:n].tolist() == s[p:].tolist()
        assert (b["labels"][r, n:] == -100).all() and b["attention_mask"][r].sum() == n
    assert len(prefixes) > 5  # random boundaries


def test_prefix_lm_fixed_and_explicit_prefixes():
    col = PrefixLMCollator(pad_id=0, prefix_len=3)
    b = col([[5, 6, 7, 8, 9], [5, 6, 7]])
    assert b["prefix_len"].tolist() == [3, 2]  # clipped to keep one target token
    assert b["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, -100, 7, -100, -100]]
    b = col([{"prefix": [1, 2], "target": [3, 4, 5]}])
    assert b["prefix_len"].tolist() == [2] and b["labels"].tolist() == [[-100, -100, 3, 4, 5]]
    with pytest.raises(ValueError, match="cannot hold"):
        PrefixLMCollator(pad_id=0, min_prefix=2)([[1, 2]])


# ---- the batches drive lmkit's models (skipped until those models exist) ------------------
def _model_class(name: str, *modules: str):
    for mod in ("lmkit.models", *modules):
        try:
            found = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            found = None
        if found is not None:
            return found
    pytest.skip(f"lmkit.models has no {name} yet")


def _tiny(**kw):
    from lmkit.models.config import ModelConfig

    base = dict(vocab_size=200, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


def test_prefix_lm_batch_runs_through_the_decoder():
    DecoderLM = _model_class("DecoderLM", "lmkit.models.decoder")
    torch.manual_seed(0)
    model = DecoderLM(_tiny())
    b = PrefixLMCollator(pad_id=0, seed=0)([list(range(1, 20)), list(range(3, 15))])
    out = model(**b)
    assert out.logits.shape == (2, 19, 200) and torch.isfinite(out.loss)
    clm = next(iter(PackedLoader(PackedDataset(np.arange(1, 199).repeat(3), 16), 4)))
    assert torch.isfinite(model(**clm).loss)


def test_mlm_nsp_batch_runs_through_the_encoder():
    EncoderLM = _model_class("EncoderLM", "lmkit.models.encoder")
    torch.manual_seed(0)
    model = EncoderLM(_tiny(arch="encoder", type_vocab_size=2, norm="layernorm", norm_position="post", position="learned", activation="gelu", gated_ffn=False))
    col = MLMCollator(vocab_size=200, cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, max_length=32, seed=0)
    docs = [[list(range(10 + 20 * d + 5 * s, 15 + 20 * d + 5 * s)) for s in range(4)] for d in range(8)]
    batch = col(build_nsp_examples(docs, max_length=32, seed=0)[:4])
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["input_ids"].shape


def test_span_corruption_batch_runs_through_the_encoder_decoder():
    EncoderDecoderLM = _model_class("EncoderDecoderLM", "lmkit.models.encoder_decoder")
    torch.manual_seed(0)
    model = EncoderDecoderLM(_tiny(arch="encoder_decoder", position="t5_bias"))
    batch = SpanCorruptionCollator(eos_id=1, pad_id=0, vocab_size=200, seed=0)([np.arange(2, 40), np.arange(5, 30)])
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["labels"].shape
