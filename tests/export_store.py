"""A small synthetic store for the export tests, written through ``Store.write_batch``.

Three datasets (one name with a quote and one non-ASCII), two SAEs, documents where nothing
fired, JSON metadata, labels (two versions of one latent), label embeddings and a
materialised co-occurrence scope: every table ``saedb export`` writes has rows. The firing
pattern is random but seeded, with latent 0 firing in most documents of 'alpha' and few of
'beta', so diff has real differences and npmi real pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from saedb.store import SaeRecord, Store

DATASETS = ("alpha", "beta", "gamma's dëlta")
D_SAE = 24


def _sae(name: str, seed: int) -> SaeRecord:
    return SaeRecord(
        name=name,
        reader_model="test/reader",
        reader_revision=None,
        hook_name="blocks.2.hook_resid_post",
        layer=2,
        architecture="topk",
        d_in=8,
        d_sae=D_SAE,
        weights_sha256=f"{seed:064d}",
        path=f"/nowhere/{name}",
        config={"k": 4, "seed": seed, "note": "ünïcode"},
    )


def build_store(path: Path, n_docs: int = 90, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    with Store(path) as store:
        saes = [store.register_sae(_sae("tiny", 1)), store.register_sae(_sae("other", 2))]
        for d, name in enumerate(DATASETS):
            dataset_id = store.dataset_id(name, create=True, description=f"dataset {name}")
            run_id = store.start_run({"ingest": {"dataset": name, "source": f"{name}.jsonl"}})
            texts = [
                " ".join(
                    rng.choice(["cat", "naïve", "漢字", "dog", "—", "x"], size=rng.integers(2, 12))
                )
                for _ in range(n_docs // len(DATASETS))
            ]
            documents = pa.table(
                {
                    "doc_id": pa.array([None] * len(texts), pa.int64()),
                    "external_id": [f"{name}-{i}" for i in range(len(texts))],
                    "text": texts,
                    "text_sha256": ["0" * 64] * len(texts),
                    "n_tokens": pa.array([len(t.split()) for t in texts], pa.int32()),
                    "metadata": [
                        json.dumps({"parity": ("even", "odd")[i % 2]}) for i in range(len(texts))
                    ],
                }
            )
            for s, sae_id in enumerate(saes):
                prob = rng.uniform(0.05, 0.5, size=D_SAE)
                prob[0] = (0.9, 0.15, 0.5)[d]
                prob[1] = 0.9 if s == 0 else 0.4
                prob[-3:] = 0.0
                rows = []
                doc_ids = documents.column("doc_id").to_pylist()
                for i, text in enumerate(texts):
                    if i % 11 == 5:  # encoded, nothing fired
                        continue
                    for latent in np.flatnonzero(rng.random(D_SAE) < prob):
                        start = int(rng.integers(0, len(text)))
                        act = round(float(rng.exponential(1.0)), 2) + 0.01
                        rows.append(
                            (i, int(latent), act, act * 2, 2, start, min(len(text), start + 3))
                        )
                latents = pa.table(
                    {
                        "doc_index": pa.array([r[0] for r in rows], pa.int64()),
                        "latent_id": pa.array([r[1] for r in rows], pa.int32()),
                        "max_act": pa.array([r[2] for r in rows], pa.float32()),
                        "sum_act": pa.array([r[3] for r in rows], pa.float32()),
                        "n_active": pa.array([r[4] for r in rows], pa.int32()),
                        "max_char_start": pa.array([r[5] for r in rows], pa.int32()),
                        "max_char_end": pa.array([r[6] for r in rows], pa.int32()),
                    }
                )
                ids = store.write_batch(
                    run_id=run_id,
                    dataset_id=dataset_id,
                    sae_id=sae_id,
                    documents=documents,
                    latents=latents,
                )
                if doc_ids[0] is None:  # the second SAE encodes the same documents
                    documents = documents.set_column(0, "doc_id", pa.array(ids, pa.int64()))
            store.finish_run(run_id, "done")
        con = store.con
        con.execute(
            """
            INSERT INTO latent_labels (label_id, sae_id, latent_id, label, description, labeler,
                                       model, prompt_version, score, n_examples, created_at)
            VALUES (1, 1, 0, 'cats', 'about cats', 'offline', 'log-odds', 'v1', NULL, 20,
                    TIMESTAMPTZ '2026-01-02 03:04:05+00'),
                   (2, 1, 0, 'felines', NULL, 'llm', 'm', 'p1', 0.8, 30,
                    TIMESTAMPTZ '2026-01-03 03:04:05+02'),
                   (3, 1, 5, 'naïve 漢字', NULL, 'offline', 'log-odds', 'v1', NULL, 20,
                    TIMESTAMPTZ '2026-01-02 03:04:05+00')
            """
        )
        con.execute(
            """
            INSERT INTO label_embeddings (label_id, model, embedding)
            VALUES (1, 'mini', [0.5, -0.25, 0.125]::FLOAT[]),
                   (2, 'mini', [0.25, 0.5, -1.0]::FLOAT[]),
                   (3, 'mini', [1.0, 0.0, 0.0]::FLOAT[])
            """
        )
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "query_embeddings" in tables:  # a query embedded for latents_for_query
            con.execute(
                "INSERT INTO query_embeddings (query, model, embedding) "
                "VALUES ('cats and dogs', 'mini', [0.75, 0.5, -0.5]::FLOAT[])"
            )
        from saedb.cooccurrence import refresh_cooccurrence

        refresh_cooccurrence(store, min_count=3, progress=False)
    return path
