"""Deduplication and decontamination: MinHash-LSH against its S-curve and against datasketch,
exact dedup, union-find, decontamination on planted items, and the two CLI commands."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmkit.data.decontaminate import DecontamConfig, Decontaminator, decontaminate
from lmkit.data.dedup import DedupConfig, ExactDeduplicator, dedup_texts, near_duplicates
from lmkit.data.lsh import candidate_pairs, optimal_param, s_curve
from lmkit.data.minhash import MinHasher
from lmkit.data.records import Record
from lmkit.data.shingles import Shingler
from lmkit.data.union_find import UnionFind

datasketch = pytest.importorskip("datasketch")
from datasketch.hashfunc import sha1_hash32  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD, NUM_PERM = 0.7, 128
LEVELS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 0.95)
PAIRS_PER_LEVEL, WORDS = 150, 60


# ---- planted near-duplicates with exactly known Jaccard similarity ----------------------------
@pytest.fixture(scope="module")
def planted():
    """Pairs (A, B) of 60-word documents of distinct words: B keeps A's first k words and
    replaces the rest, so the word 5-gram sets share exactly k-4 of 56 shingles each and
    J = (k-4) / (112 - (k-4)). Different pairs share no word, so every other pair has J = 0."""
    counter = iter(range(10**9))
    docs, pairs = [], {}
    shingles = WORDS - 4
    for level in LEVELS:
        shared = round(2 * shingles * level / (1 + level))
        for _ in range(PAIRS_PER_LEVEL):
            a = [f"w{next(counter)}" for _ in range(WORDS)]
            b = a[: shared + 4] + [f"w{next(counter)}" for _ in range(WORDS - shared - 4)]
            pairs[(len(docs), len(docs) + 1)] = shared / (2 * shingles - shared)
            docs += [" ".join(a), " ".join(b)]
    sh = Shingler(5)
    strings = [sorted(sh.shingle_strings(d)) for d in docs]
    for (i, j), jac in list(pairs.items())[:: PAIRS_PER_LEVEL // 3]:  # the construction gives the stated J
        si, sj = set(strings[i]), set(strings[j])
        assert len(si & sj) / len(si | sj) == pytest.approx(jac)
    return docs, pairs, strings


def _signatures(docs):
    sh, mh = Shingler(5), MinHasher(NUM_PERM)
    hashes, offsets = sh.hashes(docs)
    return mh.signatures(hashes, offsets)


def test_shingle_units_and_mersenne_modulo():
    sh = Shingler(2)
    assert sh.units("Ｈello,  WORLD! 大语言模型 GPU显存") == ["hello", "world", "大", "语", "言", "模", "型", "gpu", "显", "存"]
    assert sh.shingle_strings("a b c") == {"a b", "b c"} and Shingler(5).shingle_strings("a b") == {"a b"}
    sets = sh.hash_sets(["a b c", "A  b, c!", "b c d", "", "x"])
    assert np.array_equal(sets[0], sets[1]) and len(np.intersect1d(sets[0], sets[2])) == 1
    assert len(sets[3]) == 0 and len(sets[4]) == 1
    from lmkit.data.minhash import MERSENNE_PRIME, mod_mersenne

    x = np.random.default_rng(0).integers(0, 2**64 - 1, 100_000, dtype=np.uint64, endpoint=True)
    x[:4] = [0, MERSENNE_PRIME, 2**64 - 1, 2 * MERSENNE_PRIME]
    assert np.array_equal(mod_mersenne(x.copy()), x % MERSENNE_PRIME)


def test_optimal_param_is_datasketch_rule():
    from datasketch.lsh import _optimal_param

    for threshold, num_perm in [(THRESHOLD, NUM_PERM), (0.85, 64)]:
        assert optimal_param(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


@pytest.mark.parametrize("scheme,peer", [("affine32", "affine32"), ("mersenne", "legacy")])
def test_signatures_bit_identical_to_datasketch(planted, scheme, peer):
    """Same input hashes (datasketch's sha1_hash32 of each shingle), same seed -> same minima."""
    _, _, strings = planted
    sets = strings[:40] + [[]]
    hashes = [np.array([sha1_hash32(s.encode()) for s in st], dtype=np.uint64) for st in sets]
    ours = MinHasher(64, seed=3, scheme=scheme).signatures_of_sets(hashes)
    for st, sig in zip(sets, ours):
        m = datasketch.MinHash(num_perm=64, seed=3, scheme=peer)
        m.update_batch([s.encode() for s in st])
        assert np.array_equal(sig, m.hashvalues.astype(np.uint32))


def test_recall_and_precision_follow_the_s_curve(planted):
    """Per similarity level, the share of planted pairs that LSH finds is P(s) = 1-(1-s^r)^b.

    Pairs are made of disjoint words, so their outcomes are independent Bernoulli(P(s)) draws;
    we allow 4 binomial standard deviations (a chance failure ~1e-4 per level if the hash family
    were truly min-wise) plus 0.02 for the affine family being only approximately min-wise.
    Precision (share of found pairs with J >= threshold) is checked against the same prediction.
    """
    docs, pairs, _ = planted
    bands, rows = optimal_param(THRESHOLD, NUM_PERM)
    found = candidate_pairs(_signatures(docs), bands, rows)
    assert found <= set(pairs), "pairs of J = 0 must never be candidates"
    expected_found = true_found = similar = 0.0
    for level in LEVELS:
        level_pairs = [(p, j) for p, j in pairs.items() if abs(j - level) < 0.03]
        jac = level_pairs[0][1]
        p = s_curve(jac, bands, rows)
        rate = sum(pair in found for pair, _ in level_pairs) / len(level_pairs)
        tol = 4 * np.sqrt(p * (1 - p) / len(level_pairs)) + 0.02
        assert abs(rate - p) <= tol, f"J={jac:.3f}: found {rate:.3f}, S-curve {p:.3f} (tolerance {tol:.3f})"
        expected_found += p * len(level_pairs)
        if jac >= THRESHOLD:
            true_found += p * len(level_pairs)
            similar += len(level_pairs)
    above = [pair for pair in found if pairs[pair] >= THRESHOLD]
    assert abs(len(above) / similar - true_found / similar) <= 0.03  # recall
    assert abs(len(above) / len(found) - true_found / expected_found) <= 0.03


def test_pairs_agree_with_datasketch_lsh(planted):
    docs, pairs, strings = planted
    lsh = datasketch.MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    sketches = datasketch.MinHash.bulk([[s.encode() for s in st] for st in strings], num_perm=NUM_PERM)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    peer = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if i != j}
    bands, rows = optimal_param(THRESHOLD, NUM_PERM)
    assert (lsh.b, lsh.r) == (bands, rows)
    # on the same shingle hashes our MinHash + LSH finds the same pairs
    hashes = [np.array([sha1_hash32(s.encode()) for s in st], dtype=np.uint64) for st in strings]
    same = candidate_pairs(MinHasher(NUM_PERM).signatures_of_sets(hashes), bands, rows)
    assert len(same & peer) / len(same | peer) >= 0.95
    # with our own (xxhash) shingle hashes the outcomes near the threshold are independent coin
    # flips of the same S-curve: the overlap must match what that predicts
    ours = candidate_pairs(_signatures(docs), bands, rows)
    p = np.array([s_curve(j, bands, rows) for j in pairs.values()])
    predicted = (p * p).sum() / (2 * p - p * p).sum()
    observed = len(ours & peer) / len(ours | peer)
    assert abs(observed - predicted) <= 0.05, (observed, predicted)


# ---- exact dedup, union-find, the near-dup pipeline -------------------------------------------
def test_exact_dedup_document_level():
    ex = ExactDeduplicator("doc")
    texts = ["Hello  World", "hello world", "Hello World!", "HELLO\tWORLD\n", "ｈｅｌｌｏ world"]
    kept = [t for t in texts if ex.filter(t) is not None]
    assert kept == ["Hello  World", "Hello World!"]  # case, whitespace, NFKC width are not differences
    assert ex.documents_dropped == 3


def test_exact_dedup_paragraph_level():
    ex = ExactDeduplicator("paragraph")
    out = [ex.filter(t) for t in ["intro\n\nshared footer", "new text\n\n  \nShared  footer", "shared footer\n\nINTRO"]]
    assert out == ["intro\n\nshared footer", "new text", None]
    assert (ex.paragraphs_total, ex.paragraphs_dropped, ex.documents_dropped) == (6, 3, 1)


def test_union_find_matches_brute_force_components():
    rng = random.Random(0)
    n = 400
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(300)]
    uf = UnionFind(n)
    uf.union_edges(np.array([a for a, _ in edges]), np.array([b for _, b in edges]))
    adjacency = {i: set() for i in range(n)}
    for a, b in edges:
        adjacency[a].add(b)
        adjacency[b].add(a)
    expected, seen = np.arange(n), set()
    for start in range(n):
        if start in seen:
            continue
        stack, comp = [start], set()
        while stack:
            x = stack.pop()
            if x not in comp:
                comp.add(x)
                stack.extend(adjacency[x] - comp)
        seen |= comp
        expected[list(comp)] = min(comp)
    assert np.array_equal(uf.roots(), expected)
    one = UnionFind(n)
    for a, b in edges:
        one.union(a, b)
    assert [one.find(i) for i in range(n)] == expected.tolist()
    sizes = np.bincount(expected)
    assert uf.cluster_sizes().tolist() == sorted(sizes[sizes > 1].tolist(), reverse=True)


def test_near_dedup_clusters_and_report(planted, tmp_path):
    docs, pairs, _ = planted
    # clusters of 3: a document and two copies with the last word changed (J = 55/57 with it,
    # P(found) = 1 - 1e-8), made from planted documents that share no word with each other
    base = [docs[i] for (i, _), j in pairs.items() if j > 0.9][:60]
    texts = []
    for d in base:
        words = d.split()[:-1]
        texts += [d, " ".join(words + ["changed"]), " ".join(words + ["end"])]
    sharded = near_duplicates(texts, DedupConfig(mode="near", shard_docs=50, batch_docs=32), work_dir=tmp_path)
    whole = near_duplicates(texts, DedupConfig(mode="near"))
    assert np.array_equal(sharded.roots, whole.roots)  # shards on disk change nothing
    assert sharded.cluster_sizes().tolist() == [3] * len(base)
    assert np.flatnonzero(sharded.keep).tolist() == list(range(0, len(texts), 3))
    kept, report = dedup_texts(texts + texts[:5])
    assert kept == texts[::3]
    assert (report.documents, report.exact_duplicates, report.near_duplicates) == (len(texts) + 5, 5, 2 * len(base))
    assert report.cluster_size_histogram == {"3": len(base)}
    assert report.duplicate_rate == pytest.approx((5 + 2 * len(base)) / (len(texts) + 5))
    assert list(tmp_path.iterdir()) == []  # signature shards are cleaned up


# ---- decontamination --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decontam_data(corpus_dir):
    lines = [ln for ln in (corpus_dir / "en.txt").read_text(encoding="utf-8").split("\n") if len(ln.split()) >= 8]
    train = lines[:3000]
    items = [f"{lines[i]} {lines[i + 1]}" for i in range(12000, 12080, 2)]  # ~21-word items
    rng = random.Random(0)
    planted_train = list(train)
    for k, item in enumerate(items[:24]):
        words = item.split()
        if k % 3 == 0:  # verbatim inside a training line
            text = f"{train[k]} {item} {train[k + 1]}"
        elif k % 3 == 1:  # lightly edited: one word in the middle changed, upper-cased, embedded
            words[len(words) // 2] = "zebra"
            text = f"{train[k]} {' '.join(words).upper()} and more."
        else:  # lightly edited near copy on its own: a word dropped, punctuation added
            del words[len(words) // 3]
            text = "; ".join(words) + "!"
        planted_train.insert(rng.randrange(len(planted_train)), text)
    return train, planted_train, items, items[24:]


def test_decontamination_finds_every_planted_item_and_nothing_on_clean_data(decontam_data):
    train, planted_train, items, _ = decontam_data
    records = lambda data: lambda: (Record(t, str(i)) for i, t in enumerate(data))  # noqa: E731
    clean = decontaminate(records(train), {"bench": items}, progress=False)
    assert clean.contaminated_documents == 0 and clean.eval_sets["bench"]["contaminated_items"] == 0
    kept: list[str] = []
    report = decontaminate(records(planted_train), {"bench": items}, lambda r: kept.append(r.text), progress=False)
    found = report.eval_sets["bench"]["found"]
    assert sorted(f["index"] for f in found) == list(range(24))
    assert report.removed == report.contaminated_documents == 24
    assert kept == train  # exactly the planted documents were removed
    methods = {f["index"] % 3: f["method"] for f in found}
    assert methods[0] == "ngram" and methods[1] == "containment"


def test_decontamination_short_items_and_edits():
    d = Decontaminator({"qa": ["What is the capital of France", "yes no", "Name the largest planet in our solar system"]},
                       DecontamConfig())
    assert d.too_short.tolist() == [False, True, False]
    hits = d.scan(["Q: what is the capital of france? A: Paris", "the largest planet is Jupiter", "yes no maybe"])
    assert [[m.item for m in h] for h in hits] == [[0], [], []]


# ---- the CLI ----------------------------------------------------------------------------------
def _lmkit(*args, cwd):
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src"), "LMKIT_PROGRESS": "off"}
    return subprocess.run([sys.executable, "-m", "lmkit", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_dedup_writes_what_it_says(planted, tmp_path):
    docs, pairs, _ = planted
    base = [docs[i] for (i, _), j in pairs.items() if j > 0.9][:20]
    rows = [{"id": k, "text": t} for k, t in enumerate(base)]
    rows += [{"id": 100 + k, "text": t.upper()} for k, t in enumerate(base[:5])]  # exact after normalising
    rows += [{"id": 200 + k, "text": t.rsplit(" ", 1)[0] + " x"} for k, t in enumerate(base[5:10], 5)]  # J = 55/57
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _lmkit("data", "dedup", src, "-o", tmp_path / "out.jsonl", "--threshold", "0.8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(20))
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert (report["documents"], report["kept"], report["exact_duplicates"], report["near_duplicates"]) == (30, 20, 5, 5)
    assert "30 documents" in r.stdout and "kept 20" in r.stdout


def test_cli_decontaminate_writes_what_it_says(decontam_data, tmp_path):
    _, planted_train, items, _ = decontam_data
    (tmp_path / "train.txt").write_text("\n".join(planted_train) + "\n")
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps({"question": q, "answer": "A"}) + "\n" for q in items))
    r = _lmkit("data", "decontaminate", "train.txt", "-e", "bench.jsonl", "-o", "clean.txt", "--report", "r.json",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    clean = (tmp_path / "clean.txt").read_text().splitlines()
    assert len(clean) == len(planted_train) - 24
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["eval_sets"]["bench"]["contaminated_items"] == 24 and report["removed"] == 24
    assert "bench: 24 of 40 items" in r.stdout


def test_cli_bad_input_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    runner = CliRunner()
    r = runner.invoke(cli, ["data", "dedup", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 1 and "no text field 'text' (fields: body); choose one with --field" in r.output
    assert not (tmp_path / "o.jsonl").exists()
    good = tmp_path / "good.txt"
    good.write_text("some words here\n")
    r = runner.invoke(cli, ["data", "dedup", str(good), "-o", str(tmp_path / "o.txt"), "--threshold", "1.5"])
    assert r.exit_code == 1 and "threshold must be between 0 and 1" in r.output
    r = runner.invoke(cli, ["data", "dedup", str(good), "-o", str(good)])
    assert r.exit_code == 2 and "is also an input" in r.output
    (tmp_path / "ev.jsonl").write_text("not json\n")
    r = runner.invoke(cli, ["data", "decontaminate", str(good), "-e", str(tmp_path / "ev.jsonl"), "-o", str(tmp_path / "c.txt")])
    assert r.exit_code == 1 and "ev.jsonl:1: not valid JSON" in r.output
    r = runner.invoke(cli, ["data", "decontaminate", str(good), "-e", str(good)])
    assert r.exit_code == 2 and "--report-only" in r.output
