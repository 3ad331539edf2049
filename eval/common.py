"""Helpers the studies share: documents of a store, MiniLM document embeddings (cached),
the reader's tokenizer for token counts, and plotting."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Doc:
    doc_id: int
    dataset: str
    text: str
    n_tokens: int


def load_docs(store: Any, datasets: Sequence[str]) -> list[Doc]:
    """Documents of the given datasets, by doc_id."""
    rows = store.con.execute(
        "SELECT d.doc_id, ds.name, d.text, d.n_tokens FROM documents d "
        "JOIN datasets ds USING (dataset_id) WHERE list_contains(?, ds.name) ORDER BY d.doc_id",
        [list(datasets)],
    ).fetchall()
    return [Doc(int(a), b, c, int(n)) for a, b, c, n in rows]


def sae_id(store: Any) -> int:
    rec = store.get_sae(None)
    return int(rec.sae_id)


@cache
def minilm() -> Any:
    from saedb.labels import MiniLM

    return MiniLM()


def doc_embeddings(docs: Sequence[Doc], cache_dir: Path) -> np.ndarray:
    """MiniLM embeddings (unit norm) of the documents' texts, cached by their content."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = cache_dir / "embeddings" / f"minilm-{h.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    vecs = minilm().encode([d.text for d in docs], batch_size=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


@cache
def reader_tokenizer() -> Any:
    """The default reader's tokenizer (SmolLM2), to count tokens as saedb does."""
    from transformers import AutoTokenizer

    from ingest.reader import DEFAULT_READER, resolve_reader

    return AutoTokenizer.from_pretrained(str(resolve_reader(DEFAULT_READER).path))


def n_tokens(texts: Sequence[str]) -> int:
    tok = reader_tokenizer()
    return sum(len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"])


def savefig(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
