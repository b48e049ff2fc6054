"""n-gram models: counting vs a naive counter, KN/Katz vs independent formulas, KenLM and NLTK oracles,
ARPA round trips, <unk> handling, sampling, CLI and bad input."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.ngram import (
    ArpaError,
    Vocabulary,
    count_ngrams,
    entropy,
    load_model,
    read_arpa,
    sample_sentence,
    save_counts_model,
    train_ngram,
    write_arpa,
)
from lmkit.ngram.keys import GramCodec, GramTable
from lmkit.ngram.kneser_ney import kneser_ney
from lmkit.ngram.vocab import BOS_ID, EOS_ID, UNK_ID

CORPUS = """the cat sat on the mat
the dog sat on the log
a cat and a dog met on the mat
the cat saw the dog
the dog saw a cat on a log
a mat is not a log
the cat ate the fish
the dog ate a bone
on the mat the cat slept
the log and the mat""".splitlines()
pytestmark = pytest.mark.filterwarnings("ignore:Kneser-Ney. too few")

TEST = ["the cat sat on a log", "a dog ate the fish", "the zebra sat on the mat", "cat cat cat"]


def padded(s: list[str]) -> list[str]:
    return ["<s>", *s, "</s>"]


def naive_counts(sents, n):
    c = Counter()
    for s in sents:
        t = padded(s)
        for k in range(1, n + 1):
            for i in range(len(t) - k + 1):
                c[tuple(t[i:i + k])] += 1
    return c


@pytest.fixture(scope="module")
def en_sentences(corpus_dir):
    lines = (corpus_dir / "en.txt").read_text(encoding="utf-8").splitlines()[:6000]
    sents = [line.split() for line in lines if line.strip()]
    return sents[:3500], sents[3500:4000]


# ---- counting ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=12), min_size=1, max_size=12), st.integers(1, 5),
       st.sampled_from([20, 1 << 20]), st.integers(1, 40))
def test_counts_match_naive_counter(sents, n, vocab_size, chunk):
    # vocab 2**20 forces the byte-string keys for n >= 4 (4 * 20 bits > 63)
    sents = [[w + 3 for w in s] for s in sents]
    got = count_ngrams(sents, n, vocab_size, chunk_tokens=chunk)
    want = Counter()
    for s in sents:
        t = [BOS_ID, *s, EOS_ID]
        for k in range(1, n + 1):
            for i in range(len(t) - k + 1):
                want[tuple(t[i:i + k])] += 1
    have = {}
    for k in range(1, n + 1):
        for g, c in zip(got.table(k).grams.tolist(), got.count(k).tolist()):
            have[tuple(g)] = c
    assert have == dict(want)
    assert got.n_tokens == sum(map(len, sents))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**20 - 1), min_size=5, max_size=5), min_size=1, max_size=30),
       st.lists(st.integers(0, 2**20 - 1), min_size=4, max_size=4))
def test_gram_table_lookup_and_prefix_range(rows, ctx):
    grams = np.unique(np.array(rows, dtype=np.int64), axis=0)
    for vocab in (2**20, 2**12 + 1):
        g = grams % vocab
        g = np.unique(g, axis=0)
        t = GramTable(g, vocab)
        assert t.codec.packed == (5 * (vocab - 1).bit_length() <= 63)
        assert np.array_equal(t.find(g), np.arange(len(g)))
        assert np.array_equal(GramCodec(vocab, 5).decode(t.keys), g)
        c = np.array(ctx) % vocab
        probe = np.vstack([g[:, :4], c[None]])
        for p in probe:
            lo, hi = t.prefix_range(p)
            want = np.flatnonzero(np.all(g[:, :4] == p, axis=1))
            assert list(range(lo, hi)) == want.tolist()


# ---- Kneser-Ney ---------------------------------------------------------------------------------

def zipf_corpus(n_sents=600, n_words=200, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    return [[f"w{i}" for i in rng.choice(n_words, size=rng.integers(2, 9), p=p)] for _ in range(n_sents)]


def naive_modified_kn(sents, n):
    """Chen & Goodman interpolated modified KN with KenLM's conventions, written with dicts."""
    raw = naive_counts(sents, n)
    vocab = sorted({w for g in raw for w in g} | {"<unk>"})
    left = defaultdict(set)
    for g in raw:
        if len(g) >= 2:
            left[g[1:]].add(g[0])
    adj = {}
    for g, c in raw.items():
        if len(g) == n or g[0] == "<s>":
            adj[g] = c
        else:
            adj[g] = len(left[g])
    disc = {}
    for k in range(1, n + 1):
        vals = [a for g, a in adj.items() if len(g) == k and g != ("<s>",)]
        t = [sum(1 for a in vals if a == j) for j in (1, 2, 3, 4)]
        y = t[0] / (t[0] + 2 * t[1])
        disc[k] = [0.0] + [j - (j + 1) * y * t[j] / t[j - 1] for j in (1, 2, 3)]

    def D(k, a):
        return disc[k][min(a, 3)]

    ext = defaultdict(list)
    for g, a in adj.items():
        if len(g) >= 2:
            ext[g[:-1]].append((g[-1], a))
    uni = {g[0]: a for g, a in adj.items() if len(g) == 1 and g[0] != "<s>"}
    tot = sum(uni.values())
    nv = len([w for w in vocab if w != "<s>"])
    gamma0 = sum(D(1, a) for a in uni.values()) / tot

    def p(w, h):
        if len(h) == 0:
            a = uni.get(w, 0)
            return (a - D(1, a) if a else 0) / tot + gamma0 / nv
        lower = p(w, h[1:])
        if h not in ext:
            return lower
        es = ext[h]
        denom = sum(a for _, a in es)
        k = len(h) + 1
        a = dict(es).get(w, 0)
        u = (a - D(k, a)) / denom if a else 0.0
        g = sum(D(k, x) for _, x in es) / denom
        return u + g * lower

    return p, vocab


@pytest.mark.parametrize("n", [2, 3, 4])
def test_kn_matches_formula_and_sums_to_one(n):
    sents = zipf_corpus()
    p, vocab = naive_modified_kn(sents, n)
    lm = train_ngram(sents, n, "kn")
    assert lm.meta["discount_fallback"] == []
    contexts = [(), ("<s>",), ("w0",), ("w0", "w1"), ("w3", "w0"), ("<s>", "w1", "w0"), ("zebra", "w0"), ("w199", "w198")]
    for h in contexts:
        h = h[len(h) - min(len(h), n - 1):]
        ids = [BOS_ID if w == "<s>" else int(lm.vocab.encode([w])[0]) for w in h]
        dist = 10 ** lm.next_log10(ids)
        dist[BOS_ID] = 0
        assert dist.sum() == pytest.approx(1.0, abs=1e-9)
        for w in vocab:
            if w == "<s>":
                continue
            wid = lm.vocab.index[w]
            hh = tuple("<unk>" if x == "zebra" else x for x in h)
            assert dist[wid] == pytest.approx(p(w, hh), rel=1e-9), (w, h)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_kn_arpa_loads_in_kenlm_and_scores_match(n, tmp_path, en_sentences):
    kenlm = pytest.importorskip("kenlm")
    train, test = en_sentences
    lm = train_ngram(train, n, "kn")
    path = tmp_path / "kn.arpa"
    write_arpa(lm, path)
    km = kenlm.Model(str(path))
    assert km.order == n
    n_oov = 0
    for s in test[:300]:
        text = " ".join(s)
        ours = lm.token_log10probs(s)
        theirs = [x[0] for x in km.full_scores(text)]
        n_oov += sum(1 for x in km.full_scores(text) if x[2])
        assert np.allclose(ours, theirs, atol=2e-5)
        assert lm.score(s) == pytest.approx(km.score(text), abs=1e-4)
        assert lm.score(s, bos=False, eos=False) == pytest.approx(km.score(text, bos=False, eos=False), abs=1e-4)
    assert n_oov > 0  # unseen words were scored as <unk> by both
    r = lm.evaluate(test[:300])
    total = sum(km.score(" ".join(s)) for s in test[:300])
    assert r.perplexity == pytest.approx(10 ** (-total / r.n_tokens), rel=1e-4)
    assert r.n_oov == n_oov


def test_katz_arpa_in_kenlm(tmp_path, en_sentences):
    kenlm = pytest.importorskip("kenlm")
    train, test = en_sentences
    lm = train_ngram(train, 3, "katz")
    write_arpa(lm, tmp_path / "katz.arpa")
    km = kenlm.Model(str(tmp_path / "katz.arpa"))
    for s in test[:200]:
        assert lm.score(s) == pytest.approx(km.score(" ".join(s)), abs=1e-4)


def test_kn_top_order_agrees_with_nltk_kneser_ney():
    """NLTK's KneserNeyInterpolated uses ONE discount for all counts and a uniform base
    distribution instead of the continuation-count unigram; with our discounts forced to
    D1=D2=D3=d the discounted top-order term and the interpolation weight gamma(h) must agree."""
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    sents = [s.split() for s in CORPUS]
    d = 0.75
    train, vocab = padded_everygram_pipeline(2, sents)
    ref = KneserNeyInterpolated(2, discount=d)
    ref.fit(train, vocab)
    lm = kneser_ney(count_ngrams([Vocabulary.build(sents).encode(s) for s in sents], 2, len(Vocabulary.build(sents))),
                    Vocabulary.build(sents), discounts=[(d, d, d)] * 2)
    p1 = 10 ** lm.next_log10([])
    for h in ["<s>", "the", "cat", "a", "on"]:
        hid = BOS_ID if h == "<s>" else lm.vocab.index[h]
        ci = lm.tables[0].find(np.array([[hid]]))[0]
        gamma = 10 ** lm.logbo[0][ci]
        dist = 10 ** lm.next_log10([hid])
        for w in lm.vocab.words[2:] + ["</s>"]:
            if w in ("<s>", "<unk>"):
                continue
            alpha, g_ref = ref.estimator.alpha_gamma(w, (h,))
            assert gamma == pytest.approx(g_ref, rel=1e-9)
            assert dist[lm.vocab.index[w]] - gamma * p1[lm.vocab.index[w]] == pytest.approx(alpha, abs=1e-12)


# ---- Katz, add-k, stupid backoff ---------------------------------------------------------------

def good_turing(counter, K=5):
    nr = Counter(counter.values())
    common = (K + 1) * nr[K + 1] / nr[1]

    def d(r):
        if r > K:
            return 1.0
        # the formula is meaningless when (K+1) n_{K+1} / n_1 >= 1: fall back to (r - 0.5) / r
        v = ((r + 1) * nr[r + 1] / (r * nr[r]) - common) / (1 - common) if nr[r] and common < 1 else -1
        return v if 0 < v < 1 else (r - 0.5) / r

    return d


def test_katz_formula():
    sents = zipf_corpus()
    lm = train_ngram(sents, 2, "katz")
    raw = naive_counts(sents, 2)
    uni = Counter({g[0]: c for g, c in raw.items() if len(g) == 1 and g[0] != "<s>"})
    big = Counter({g: c for g, c in raw.items() if len(g) == 2})
    d1, d2 = good_turing(uni), good_turing(big)
    n_words = sum(uni.values())
    ustar = {w: d1(c) * c / n_words for w, c in uni.items()}
    nv = len(lm.vocab) - 1
    p_uni = {w: ustar.get(w, 0.0) + (1 - sum(ustar.values())) / nv for w in lm.vocab.words if w != "<s>"}
    for h in ["w0", "w1", "<s>", "w150"]:
        hid = BOS_ID if h == "<s>" else lm.vocab.index[h]
        seen = {g[1]: c for g, c in big.items() if g[0] == h}
        ch = sum(seen.values())
        pstar = {w: d2(c) * c / ch for w, c in seen.items()}
        alpha = (1 - sum(pstar.values())) / (1 - sum(p_uni[w] for w in seen))
        dist = 10 ** lm.next_log10([hid])
        for w in lm.vocab.words:
            if w == "<s>":
                continue
            want = pstar[w] if w in pstar else alpha * p_uni[w]
            assert dist[lm.vocab.index[w]] == pytest.approx(want, rel=1e-9)
        assert dist[[i for i in range(len(dist)) if i != BOS_ID]].sum() == pytest.approx(1.0)


def test_add_k_hand_computation():
    sents = [s.split() for s in CORPUS]
    raw = naive_counts(sents, 2)
    for k in (1.0, 0.1):
        lm = train_ngram(sents, 2, "addk", k=k)
        V = len(lm.vocab) - 1  # <s> is never predicted
        words = "the cat saw a zebra".split()
        want = 0.0
        prev = "<s>"
        for w in [*words, "</s>"]:
            w2 = w if w in lm.vocab else "<unk>"
            ch = sum(c for g, c in raw.items() if len(g) == 2 and g[0] == prev)
            want += math.log10((raw.get((prev, w2), 0) + k) / (ch + k * V))
            prev = w2
        assert lm.score(words) == pytest.approx(want, rel=1e-12)


def test_stupid_backoff_scores():
    sents = [s.split() for s in CORPUS]
    raw = naive_counts(sents, 3)
    lm = train_ngram(sents, 3, "stupid")
    assert not lm.normalized
    lp = lm.token_log10probs("the cat ate".split())
    # the | <s>: seen bigram -> c(<s> the)/c(<s>)
    assert 10 ** lp[0] == pytest.approx(raw[("<s>", "the")] / raw[("<s>",)])
    # cat | <s> the: seen trigram
    assert 10 ** lp[1] == pytest.approx(raw[("<s>", "the", "cat")] / raw[("<s>", "the")])
    # ate | the cat: trigram seen
    assert 10 ** lp[2] == pytest.approx(raw[("the", "cat", "ate")] / raw[("the", "cat")])
    # </s> | cat ate: unseen trigram and bigram "ate </s>" unseen -> 0.4 * 0.4 * unigram (add-one)
    n_words = sum(c for g, c in raw.items() if len(g) == 1 and g != ("<s>",))
    uni = (raw[("</s>",)] + 1) / (n_words + len(lm.vocab) - 1)
    assert 10 ** lp[3] == pytest.approx(0.4 * 0.4 * uni)
    with pytest.raises(ArpaError, match="no ARPA form"):
        write_arpa(lm, "/nonexistent/x.arpa")


# ---- perplexity, entropy, <unk> -----------------------------------------------------------------

def test_perplexity_entropy_and_unk():
    sents = [s.split() for s in CORPUS]
    lm = train_ngram(sents, 3, "kn")
    r = lm.evaluate(TEST)
    lps = np.concatenate([lm.token_log10probs(s) for s in TEST])
    assert r.n_tokens == sum(len(s.split()) + 1 for s in TEST) == len(lps)
    assert r.perplexity == pytest.approx(10 ** -lps.mean())
    assert r.perplexity == pytest.approx(2 ** r.entropy_bits)
    assert r.n_oov == 1  # "zebra"
    # an unseen word is scored exactly like <unk> would be
    assert lm.score("the zebra sat") == pytest.approx(lm.score("the <unk> sat".split()[:1] + ["qqq", "sat"]))
    unk_p = lm.token_log10probs("zebra")[0]
    assert unk_p == pytest.approx(lm.next_log10([BOS_ID])[UNK_ID])
    assert unk_p < lm.token_log10probs("the")[0]
    # literal sentence markers inside text are unknown words, not boundaries
    assert lm.score("the </s> cat") == pytest.approx(lm.score("the qqq cat"))
    # min_count: rare words become <unk>, which then has training counts
    lm2 = train_ngram(sents, 2, "kn", min_count=2)
    assert "fish" not in lm2.vocab and lm2.evaluate(["the fish"]).n_oov == 1


def test_entropy_matches_scipy():
    from scipy.stats import entropy as sp_entropy

    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.dirichlet(np.ones(7))
        p[2] = 0
        p /= p.sum()
        assert entropy(p) == pytest.approx(sp_entropy(p, base=2))
        assert entropy(p, base=math.e) == pytest.approx(sp_entropy(p))
    lm = train_ngram([s.split() for s in CORPUS], 2, "kn")
    assert lm.next_entropy([lm.vocab.index["the"]]) == pytest.approx(sp_entropy(lm.next_distribution([lm.vocab.index["the"]]), base=2))
    with pytest.raises(ValueError, match="probability"):
        entropy([0.5, 0.6])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.sampled_from("a b c d e".split()), min_size=1, max_size=8), min_size=3, max_size=15),
       st.integers(1, 4), st.sampled_from(["kn", "katz", "addk"]), st.lists(st.sampled_from("a b c z".split()), max_size=3))
def test_distributions_are_normalised(sents, n, method, ctx):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = train_ngram(sents, n, method)
    ids = [BOS_ID, *lm.vocab.encode(ctx).tolist()]
    lp = lm.next_log10(ids)
    p = 10 ** lp
    p[BOS_ID] = 0
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # the vectorised scorer agrees with the distribution
    s = ctx + ["a"]
    tl = lm.token_log10probs(s, eos=False)
    full = [BOS_ID, *lm.vocab.encode(s).tolist()]
    assert tl[-1] == pytest.approx(lm.next_log10(full[:-1])[full[-1]])


# ---- ARPA, storage ---------------------------------------------------------------------------------

def test_arpa_round_trip_and_npz(tmp_path):
    sents = [s.split() for s in CORPUS]
    for method in ("kn", "katz"):
        lm, counts = train_ngram(sents, 3, method, return_counts=True)
        write_arpa(lm, tmp_path / "m.arpa")
        back = read_arpa(tmp_path / "m.arpa")
        save_counts_model(lm, counts, {}, tmp_path / "m.npz")
        npz = load_model(tmp_path / "m.npz")
        assert back.order == 3 and npz.method == method
        for s in TEST:
            assert back.score(s) == pytest.approx(lm.score(s), abs=1e-5)
            assert npz.score(s) == pytest.approx(lm.score(s), abs=1e-12)
    text = (tmp_path / "m.arpa").read_text()
    assert text.startswith("\\data\\\nngram 1=") and "-99\t<s>" in text


def test_read_arpa_without_unk_and_bad_files(tmp_path):
    good = "\\data\\\nngram 1=3\nngram 2=2\n\n\\1-grams:\n-1\t<s>\t-0.3\n-0.5\t</s>\n-0.4\thi\t-0.2\n\n" \
           "\\2-grams:\n-0.1\t<s> hi\n-0.2\thi </s>\n\n\\end\\\n"
    (tmp_path / "a.arpa").write_text(good)
    lm = read_arpa(tmp_path / "a.arpa")
    assert lm.score("hi") == pytest.approx(-0.1 + -0.2)
    assert lm.token_log10probs("yo")[0] == pytest.approx(-0.3 + -100.0)  # <unk> added at -100
    (tmp_path / "b.arpa").write_text(good.replace("\\end\\\n", ""))
    with pytest.raises(ArpaError, match="truncated"):
        read_arpa(tmp_path / "b.arpa")
    (tmp_path / "c.arpa").write_text(good.replace("ngram 2=2", "ngram 2=5"))
    with pytest.raises(ArpaError, match="says 5"):
        read_arpa(tmp_path / "c.arpa")
    (tmp_path / "d.arpa").write_text("hello\n")
    with pytest.raises(ArpaError, match="not an ARPA"):
        read_arpa(tmp_path / "d.arpa")


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        train_ngram(["a b"], 0)
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        count_ngrams([[3]], -1, 10)
    with pytest.raises(ValueError, match="empty corpus"):
        train_ngram([], 2)
    with pytest.raises(ValueError, match="empty corpus"):
        train_ngram(["", "   "], 2)
    with pytest.raises(ValueError, match="unknown smoothing"):
        train_ngram(["a b"], 2, "witten-bell")
    with pytest.raises(ValueError, match="empty"):
        train_ngram(["a b"], 2).evaluate([])
    with pytest.raises(ValueError, match="out of range"):
        count_ngrams([[3, 99]], 2, 10)
    with pytest.raises(ArpaError, match="no ARPA form"):
        write_arpa(train_ngram(["a b"], 2, "addk"), "x.arpa")


# ---- sampling ----------------------------------------------------------------------------------

def test_sampling_follows_the_model():
    sents = [s.split() for s in CORPUS]
    lm = train_ngram(sents, 2, "kn")
    rng = np.random.default_rng(0)
    firsts = Counter((sample_sentence(lm, rng, max_words=1, allow_unk=True) or ["</s>"])[0] for _ in range(3000))
    p = lm.next_distribution([BOS_ID])
    for w in ("the", "a", "on"):
        assert firsts[w] / 3000 == pytest.approx(p[lm.vocab.index[w]], abs=0.03)
    a = sample_sentence(lm, 5, max_words=20, prompt=["the"])
    assert a == sample_sentence(lm, 5, max_words=20, prompt=["the"]) and a[0] == "the"
    assert all(w in lm.vocab for w in a)


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_train_ppl_generate(tmp_path):
    from lmkit.cli import cli

    (tmp_path / "train.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(TEST) + "\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    r = CliRunner()
    out = r.invoke(cli, ["ngram", "train", str(tmp_path / "train.txt"), "-o", str(tmp_path / "m.arpa"), "-n", "3"])
    assert out.exit_code == 0, out.output
    res = r.invoke(cli, ["ngram", "ppl", str(tmp_path / "m.arpa"), str(tmp_path / "test.txt"), "--json"])
    assert res.exit_code == 0, res.output
    import json

    got = json.loads(res.output)
    want = train_ngram([s.split() for s in CORPUS], 3, "kn").evaluate(TEST)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-5) and got["n_oov"] == 1
    res = r.invoke(cli, ["ngram", "generate", str(tmp_path / "m.arpa"), "-n", "3", "--seed", "1"])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3
    bad = r.invoke(cli, ["ngram", "train", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "e.npz")])
    assert bad.exit_code != 0 and "empty" in bad.output
    bad = r.invoke(cli, ["ngram", "train", str(tmp_path / "train.txt"), "-o", str(tmp_path / "e.npz"), "-n", "0"])
    assert bad.exit_code != 0 and ">= 1" in bad.output
    bad = r.invoke(cli, ["ngram", "train", str(tmp_path / "train.txt"), "-o", str(tmp_path / "e.arpa"), "--method", "addk"])
    assert bad.exit_code != 0 and "no ARPA form" in bad.output


def test_cli_with_tokenizer(tmp_path):
    from lmkit.cli import cli
    from lmkit.tokenizers.simple import CharTokenizer

    (tmp_path / "train.txt").write_text("\n".join(CORPUS) + "\n")
    tok = CharTokenizer.train([tmp_path / "train.txt"])
    tok.save(tmp_path / "tok.json")
    r = CliRunner()
    out = r.invoke(cli, ["ngram", "train", str(tmp_path / "train.txt"), "-o", str(tmp_path / "c.arpa"), "-n", "4",
                         "--tokenizer", str(tmp_path / "tok.json")])
    assert out.exit_code == 0, out.output
    assert "<id:" in (tmp_path / "c.arpa").read_text()  # the space character token
    res = r.invoke(cli, ["ngram", "generate", str(tmp_path / "c.arpa"), "--seed", "0", "--prompt", "the c",
                         "--tokenizer", str(tmp_path / "tok.json")])
    assert res.exit_code == 0 and res.output.startswith("the c")
