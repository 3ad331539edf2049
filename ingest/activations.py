"""Collecting reader activations for SAE training, streamed to disk.

The reader's hidden states at the hook, for every content token of a corpus (the same
tokens ingestion pools: no sink, specials or padding), are appended to a float32 ``.npy``
file opened as a memory map, so a training corpus larger than RAM is fine. Training then
reads shuffled batches from that file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ingest.reader import Reader
from ingest.sources import BadRow, read_documents
from saedb.errors import ConfigError


def corpus_texts(paths: Iterable[str | Path], text_field: str = "text") -> Iterator[str]:
    """Texts of the good rows of one or more corpus files (bad rows are reported on stderr)."""
    for path in paths:
        n_bad = 0
        for row in read_documents(path, text_field=text_field):
            if isinstance(row, BadRow):
                n_bad += 1
                continue
            if row.text is not None:
                yield row.text
        if n_bad:
            print(f"{path}: skipped {n_bad} bad rows", file=sys.stderr)


def collect(
    reader: Reader,
    texts: Iterable[str],
    out: str | Path,
    *,
    max_tokens: int,
    chunk_docs: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Write up to ``max_tokens`` activation rows to ``out`` (.npy); return them memory-mapped."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.npy")
    mm = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(max_tokens, reader.d_model)
    )
    n = 0
    bar = tqdm(
        total=max_tokens,
        unit="tok",
        disable=not progress,
        file=sys.stderr,
        desc="activations",
        dynamic_ncols=True,
    )
    chunk: list[str] = []

    def flush() -> None:
        nonlocal n
        toks = reader.tokenize(chunk, [None] * len(chunk))
        for batch in reader.batches(reader.windows(toks)):
            if n >= max_tokens:
                return
            hidden = reader.forward(batch).hidden.numpy()
            take = min(len(hidden), max_tokens - n)
            mm[n : n + take] = hidden[:take]
            n += take
            bar.update(take)

    for text in texts:
        chunk.append(text)
        if len(chunk) >= chunk_docs:
            flush()
            chunk = []
            if n >= max_tokens:
                break
    if chunk and n < max_tokens:
        flush()
    bar.close()
    # Keep exactly the rows written: copy into a right-sized file, then drop the partial one.
    final = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, reader.d_model))
    for lo in range(0, n, 1 << 16):
        final[lo : lo + (1 << 16)] = mm[lo : lo + (1 << 16)]
    final.flush()
    tmp.unlink()
    return np.load(out, mmap_mode="r")
