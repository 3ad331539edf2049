"""Activations for SAE training, streamed: sources, the held-out split and the shuffle buffer.

A *source* yields activation rows in chunks, each with a resumable position, never the
whole corpus at once:

- ``ReaderSource``: the reader's hidden states at the hook for every content token of a
  stream of documents (the same tokens ingestion pools: no sink, specials or padding), one
  forward batch at a time. Documents come from corpus files (``corpus_documents``) or from a
  store's ``documents`` table (``store_documents``), at most ``max_tokens`` rows per epoch.
- ``ArraySource``: rows of a ``.npy`` file (memory-mapped) or an array, in blocks whose order
  is shuffled every epoch. ``collect`` writes a reader's activations to such a file once.

Every row says whether it is held out for evaluation. The split is fixed by the row's
identity, never by the order it arrives in: a whole document (by its index or ``doc_id``)
for reader sources, a row index for arrays. ``held_out`` is a low-discrepancy rule, so the
held-out share is close to ``fraction`` over any stretch of the stream.

``ShuffleBuffer`` mixes the training rows: it holds ``capacity`` rows (plus, briefly, what
the last chunk brought beyond that) and hands out batches drawn at random from them, so
memory stays ``(capacity + batch_size + chunk) x d_in`` floats whatever the corpus size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ingest.reader import Reader
from ingest.sources import BadRow, read_documents
from saedb.errors import ConfigError

#: frac(i * phi) spreads consecutive ids evenly over [0, 1) (the golden-ratio sequence).
_PHI = (5**0.5 - 1) / 2


def held_out(ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the ids (document or row numbers) held out for evaluation."""
    return np.modf(np.asarray(ids, dtype=np.float64) * _PHI)[0] < fraction


@dataclass
class Chunk:
    """Activation rows from a source, which of them are held out, and where the source is
    after them (pass ``position`` back to ``chunks`` to continue right after this chunk)."""

    x: np.ndarray  # float32 [n, d_in]
    held_out: np.ndarray  # bool [n]
    position: dict[str, int]


# --- documents --------------------------------------------------------------------------------

#: documents(epoch, skip) -> (document id, text) from the ``skip``-th document of that epoch on.
Documents = Callable[[int, int], Iterator[tuple[int, str]]]


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


def corpus_documents(paths: list[str], text_field: str = "text") -> Documents:
    """The texts of corpus files in file order (every epoch), numbered from 0."""
    for p in paths:
        if not Path(p).is_file():
            raise ConfigError(f"corpus file {p} does not exist")

    def documents(epoch: int, skip: int) -> Iterator[tuple[int, str]]:
        return islice(enumerate(corpus_texts(paths, text_field)), skip, None)

    return documents


class StoreDocuments:
    """The documents of a store (of some datasets, or all) in a random order fixed by
    ``seed`` and the epoch; texts are fetched ``fetch`` at a time over one read-only
    connection (``close`` it when done). Only one epoch's ids are held (8 bytes a document).
    """

    def __init__(
        self,
        path: str | Path,
        datasets: list[str] | None = None,
        *,
        seed: int = 0,
        fetch: int = 256,
    ) -> None:
        import saedb

        self.store = saedb.open(path, read_only=True)
        self.seed, self.fetch = seed, fetch
        try:
            self.ids = [self.store.dataset_id(name) for name in datasets or []]
            self.where = "WHERE dataset_id IN (SELECT unnest($ids))" if self.ids else ""
            n = self._query(f"SELECT count(*) FROM documents {self.where}")[0][0]
        except Exception:
            self.store.close()
            raise
        if n == 0:
            self.store.close()
            scope = f"datasets {', '.join(datasets or [])} of " if datasets else ""
            raise ConfigError(f"no documents in {scope}{path} to train on")
        self.n_documents = int(n)

    def _query(self, sql: str, **params: Any) -> list[tuple]:
        if self.ids:
            params["ids"] = self.ids
        return self.store.con.execute(sql, params or None).fetchall()

    def __call__(self, epoch: int, skip: int) -> Iterator[tuple[int, str]]:
        order = self._query(
            f"SELECT doc_id FROM documents {self.where} ORDER BY hash(doc_id, $salt), doc_id",
            salt=self.seed * 1_000_003 + epoch,
        )
        todo = [r[0] for r in order[skip:]]
        del order
        for lo in range(0, len(todo), self.fetch):
            part = todo[lo : lo + self.fetch]
            rows = dict(
                self.store.con.execute(
                    "SELECT doc_id, text FROM documents WHERE doc_id IN (SELECT unnest($p))",
                    {"p": part},
                ).fetchall()
            )
            for doc_id in part:
                yield doc_id, rows[doc_id]

    def close(self) -> None:
        self.store.close()


# --- sources --------------------------------------------------------------------------------


class ReaderSource:
    """The reader's activations over a stream of documents, one forward batch per chunk.

    Documents are read ``chunk_docs`` at a time; a position ``{"doc", "row", "tokens"}``
    says: the chunk starting at document ``doc`` has had its first ``row`` rows emitted, and
    ``tokens`` rows in all this epoch. Resuming re-reads that chunk and skips those rows.
    """

    def __init__(
        self,
        reader: Reader,
        documents: Documents,
        *,
        max_tokens: int,
        val_fraction: float,
        chunk_docs: int = 64,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        self.reader, self.documents = reader, documents
        self.max_tokens, self.val_fraction, self.chunk_docs = max_tokens, val_fraction, chunk_docs
        self.d_in = reader.d_model
        self.size_hint = max_tokens

    def chunks(self, epoch: int, position: dict[str, int] | None = None) -> Iterator[Chunk]:
        pos = dict(position or {"doc": 0, "row": 0, "tokens": 0})
        docs = self.documents(epoch, pos["doc"])
        skip_rows = pos["row"]
        while pos["tokens"] < self.max_tokens:
            part = list(islice(docs, self.chunk_docs))
            if not part:
                return
            keys = np.array([key for key, _ in part], dtype=np.int64)
            texts = [text for _, text in part]
            toks = self.reader.tokenize(texts, [None] * len(texts))
            batches = self.reader.batches(self.reader.windows(toks))
            row = 0
            for i, batch in enumerate(batches):
                out = self.reader.forward(batch)
                x, doc = out.hidden.numpy(), out.doc
                row += len(x)
                if row <= skip_rows:
                    continue
                if row - len(x) < skip_rows:  # resuming inside this batch
                    x, doc = x[skip_rows - (row - len(x)) :], doc[skip_rows - (row - len(x)) :]
                take = min(len(x), self.max_tokens - pos["tokens"])
                x, doc = x[:take], doc[:take]
                pos["tokens"] += take
                last = i == len(batches) - 1 or pos["tokens"] >= self.max_tokens
                if last:
                    pos = {"doc": pos["doc"] + len(part), "row": 0, "tokens": pos["tokens"]}
                else:
                    pos = {"doc": pos["doc"], "row": row, "tokens": pos["tokens"]}
                yield Chunk(x, held_out(keys[doc], self.val_fraction), dict(pos))
                if pos["tokens"] >= self.max_tokens:
                    return
            skip_rows = 0
            if pos["row"]:  # a chunk whose batches held no tokens at all
                pos = {"doc": pos["doc"] + len(part), "row": 0, "tokens": pos["tokens"]}

    def describe(self) -> dict[str, Any]:
        return {"source": "reader", "max_tokens": self.max_tokens, "chunk_docs": self.chunk_docs}


class ArraySource:
    """Rows of an array or memmap ``[N, d_in]`` in blocks of ``block_rows``, the block order
    shuffled per epoch (by ``seed`` and the epoch); position ``{"block": blocks done}``."""

    def __init__(
        self, acts: np.ndarray, *, val_fraction: float, seed: int = 0, block_rows: int = 4096
    ) -> None:
        if acts.ndim != 2 or not np.issubdtype(acts.dtype, np.floating):
            raise ConfigError(
                f"activations must be a float array [N, d_in], got {acts.dtype} {acts.shape}"
            )
        self.acts, self.val_fraction, self.seed = acts, val_fraction, seed
        self.block_rows = block_rows
        self.d_in = int(acts.shape[1])
        self.size_hint = int(acts.shape[0])

    def chunks(self, epoch: int, position: dict[str, int] | None = None) -> Iterator[Chunk]:
        n_blocks = -(-len(self.acts) // self.block_rows)
        order = np.random.default_rng([self.seed, epoch]).permutation(n_blocks)
        for b in range((position or {}).get("block", 0), n_blocks):
            lo = int(order[b]) * self.block_rows
            hi = min(lo + self.block_rows, len(self.acts))
            x = np.ascontiguousarray(self.acts[lo:hi], dtype=np.float32)
            yield Chunk(x, held_out(np.arange(lo, hi), self.val_fraction), {"block": b + 1})

    def describe(self) -> dict[str, Any]:
        return {"source": "array", "rows": len(self.acts), "block_rows": self.block_rows}


def collect(source: ReaderSource, out: str | Path, *, progress: bool = True) -> np.ndarray:
    """Write a reader source's rows (one epoch, held-out rows too) to ``out`` (.npy) and
    return them memory-mapped. Rows go to a ``.partial.npy`` file first, then into a file of
    exactly the rows written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.npy")
    mm = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(source.max_tokens, source.d_in)
    )
    n = 0
    with tqdm(
        total=source.max_tokens,
        unit="tok",
        disable=not progress,
        file=sys.stderr,
        desc="activations",
        dynamic_ncols=True,
    ) as bar:
        for chunk in source.chunks(epoch=1):
            mm[n : n + len(chunk.x)] = chunk.x
            n += len(chunk.x)
            bar.update(len(chunk.x))
    final = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, source.d_in))
    for lo in range(0, n, 1 << 16):
        final[lo : lo + (1 << 16)] = mm[lo : lo + (1 << 16)]
    final.flush()
    del mm
    tmp.unlink()
    return np.load(out, mmap_mode="r")


# --- the shuffle buffer ---------------------------------------------------------------------


class ShuffleBuffer:
    """Rows in, random batches out, with bounded memory.

    ``put`` copies rows into the buffer while it has room and queues the rest; once the
    buffer is full and ``batch_size`` rows are queued, ``take`` draws ``batch_size`` rows
    at random from the buffer and refills their slots from the queue. After ``finish`` (end
    of the stream) ``take`` empties the buffer in random batches (the last may be short).
    Every row put in comes out exactly once. ``state`` / ``load_state`` capture it all
    for checkpoints. ``peak_rows`` is the most rows ever held (buffer + queue).
    """

    def __init__(self, capacity: int, d_in: int, batch_size: int, rng: np.random.Generator):
        if capacity < batch_size:
            raise ConfigError(f"shuffle capacity {capacity} is below the batch size {batch_size}")
        self.capacity, self.batch_size, self.rng = capacity, batch_size, rng
        self.buf = np.empty((0, d_in), dtype=np.float32)  # grown on demand up to capacity
        self.n = 0
        self.queue: list[np.ndarray] = []
        self.n_queued = 0
        self.finished = False
        self.peak_rows = 0

    def _room(self, rows: int) -> None:
        if len(self.buf) < rows:
            size = min(self.capacity, max(rows, 2 * len(self.buf)))
            grown = np.empty((size, self.buf.shape[1]), dtype=np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown

    def put(self, x: np.ndarray) -> None:
        """Add rows (float32 [n, d_in])."""
        if self.finished:
            raise RuntimeError("put after finish")
        fit = min(len(x), self.capacity - self.n)
        if fit:
            self._room(self.n + fit)
            self.buf[self.n : self.n + fit] = x[:fit]
            self.n += fit
        if fit < len(x):
            self.queue.append(np.array(x[fit:], dtype=np.float32))
            self.n_queued += len(x) - fit
        self.peak_rows = max(self.peak_rows, self.n + self.n_queued)

    def finish(self) -> None:
        """The stream has ended: from now on ``take`` drains what is left."""
        self.finished = True

    def ready(self) -> bool:
        """Whether ``take`` has a batch to give."""
        if self.finished:
            return self.n + self.n_queued > 0
        return self.n == self.capacity and self.n_queued >= self.batch_size

    def take(self) -> np.ndarray:
        """A batch of rows drawn at random (see the class docstring)."""
        if not self.ready():
            raise RuntimeError("take from a shuffle buffer that is not ready")
        m = min(self.batch_size, self.n)
        holes = self.rng.choice(self.n, size=m, replace=False)
        batch = self.buf[holes]
        refill = self._dequeue(m)
        self.buf[holes[: len(refill)]] = refill
        holes = np.sort(holes[len(refill) :])
        if len(holes):  # compact: move the last rows into the remaining holes
            end = self.n - len(holes)
            movers = np.setdiff1d(np.arange(end, self.n), holes, assume_unique=True)
            self.buf[holes[holes < end]] = self.buf[movers]
            self.n = end
        if self.finished and self.n < self.capacity and self.n_queued:
            self.put_queued()
        return batch

    def put_queued(self) -> None:
        """Move queued rows into free buffer slots (only while draining)."""
        fit = min(self.capacity - self.n, self.n_queued)
        rows = self._dequeue(fit)
        self._room(self.n + fit)
        self.buf[self.n : self.n + fit] = rows
        self.n += fit

    def _dequeue(self, m: int) -> np.ndarray:
        out, need = [], m
        while need and self.queue:
            head = self.queue[0]
            out.append(head[:need])
            if len(head) <= need:
                self.queue.pop(0)
            else:
                self.queue[0] = head[need:]
            need -= len(out[-1])
        self.n_queued -= m - need
        return np.concatenate(out) if out else np.empty((0, self.buf.shape[1]), np.float32)

    def state(self) -> dict[str, Any]:
        return {
            "rows": np.array(self.buf[: self.n]),
            "queued": self._dequeue_copy(),
            "finished": self.finished,
            "rng": self.rng.bit_generator.state,
        }

    def _dequeue_copy(self) -> np.ndarray:
        if not self.queue:
            return np.empty((0, self.buf.shape[1]), dtype=np.float32)
        return np.concatenate(self.queue)

    def load_state(self, state: dict[str, Any]) -> None:
        rows = np.asarray(state["rows"], dtype=np.float32)
        self.buf = np.empty((0, rows.shape[1]), dtype=np.float32)
        self._room(len(rows))
        self.buf[: len(rows)] = rows
        self.n = len(rows)
        queued = np.asarray(state["queued"], dtype=np.float32)
        self.queue = [queued] if len(queued) else []
        self.n_queued = len(queued)
        self.finished = bool(state["finished"])
        self.rng.bit_generator.state = state["rng"]
