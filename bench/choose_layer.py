"""Which reader layer should the default SAE read? Measured, not guessed.

For each candidate layer: a linear probe (5-fold logistic regression) on the mean-pooled
residual stream separating fortune categories, and the reader's throughput when the forward
pass stops at that layer. The default layer is the knee: near the best probe accuracy at a
depth that keeps ingestion fast on a 2-core CPU.

    python bench/choose_layer.py FORTUNES_DIR [--per-category 150] [--layers 4,6,8,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _paths  # noqa: F401  (drops bench/ from sys.path: see _paths.py)
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ingest.hooks import HookPoint
from ingest.reader import DEFAULT_READER, Reader, ReaderConfig, resolve_reader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("corpus_dir", type=Path)
    ap.add_argument("--categories", default="computers,people,science,politics")
    ap.add_argument("--per-category", type=int, default=150)
    ap.add_argument("--layers", default="3,6,9,12,15,18,21")
    args = ap.parse_args()
    texts, labels = [], []
    for cat in args.categories.split(","):
        rows = [json.loads(x) for x in (args.corpus_dir / f"{cat}.jsonl").read_text().splitlines()]
        for r in rows[: args.per_category]:
            texts.append(r["text"])
            labels.append(cat)
    y = np.array(labels)
    resolved = resolve_reader(DEFAULT_READER)
    print(
        f"{len(texts)} documents, {len(set(labels))} categories; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("| layer | probe accuracy (5-fold) | reader tok/s |")
    print("|---|---|---|")
    for layer in map(int, args.layers.split(",")):
        reader = Reader(resolved, HookPoint(layer, "resid_post"), ReaderConfig())
        toks = reader.tokenize(texts, [None] * len(texts))
        batches = reader.batches(reader.windows(toks))
        sums = np.zeros((len(texts), reader.d_model))
        counts = np.zeros(len(texts))
        n_tok = 0
        t0 = time.perf_counter()
        for b in batches:
            hb = reader.forward(b)
            np.add.at(sums, hb.doc, hb.hidden.numpy())
            np.add.at(counts, hb.doc, 1)
            n_tok += len(hb.doc)
        dt = time.perf_counter() - t0
        X = sums / np.maximum(counts, 1)[:, None]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        acc = cross_val_score(clf, X, y, cv=5).mean()
        print(f"| {layer} | {acc:.3f} | {n_tok / dt:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
