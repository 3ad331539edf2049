"""Streaming SAE training: the shuffle buffer's memory bound and bookkeeping, sources that
never materialise the corpus, and checkpoints that resume to the very same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.activations import ArraySource, Chunk, ShuffleBuffer, held_out
from ingest.config import TrainConfig
from ingest.train import train
from saedb.errors import ConfigError

META = {"model_name": "synthetic", "hook_name": "blocks.0.hook_resid_post"}
D_IN = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ids_rows(n: int, start: int = 0) -> np.ndarray:
    """Rows whose first column is their id, so where each row went can be traced."""
    x = np.random.default_rng(start).standard_normal((n, D_IN)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


# --- the shuffle buffer ---------------------------------------------------------------------


def run_buffer(buf: ShuffleBuffer, chunks: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for c in chunks:
        buf.put(c)
        while buf.ready():
            out.append(buf.take())
            # the bound the docs promise: capacity + one batch + one chunk
            assert buf.n <= buf.capacity
            assert buf.n + buf.n_queued <= buf.capacity + buf.batch_size + len(c)
    buf.finish()
    while buf.ready():
        out.append(buf.take())
    return out


@pytest.mark.parametrize(("capacity", "batch", "chunk"), [(64, 16, 10), (50, 50, 7), (100, 8, 300)])
def test_shuffle_buffer_emits_every_row_once_within_its_bound(capacity, batch, chunk) -> None:
    n = 1000
    rows = ids_rows(n)
    chunks = [rows[i : i + chunk] for i in range(0, n, chunk)]
    buf = ShuffleBuffer(capacity, D_IN, batch, np.random.default_rng(0))
    out = run_buffer(buf, chunks)
    assert all(len(b) == batch for b in out[:-1]) and 0 < len(out[-1]) <= batch
    got = np.concatenate(out)
    assert sorted(got[:, 0].astype(int).tolist()) == list(range(n))  # each row exactly once
    order = got[np.argsort(got[:, 0])]
    assert np.array_equal(order, rows)  # rows intact, not just their ids
    assert buf.peak_rows <= capacity + batch + chunk
    assert buf.peak_rows >= capacity  # it did fill up: the bound is what it used
    # shuffled: output order is far from input order
    assert abs(np.corrcoef(np.arange(n), got[:, 0])[0, 1]) < 0.999
    assert np.mean(np.abs(np.arange(n) - got[:, 0])) > capacity / 8


def test_shuffle_buffer_state_round_trip() -> None:
    rows = ids_rows(600)
    chunks = [rows[i : i + 37] for i in range(0, 600, 37)]
    a = ShuffleBuffer(100, D_IN, 32, np.random.default_rng(3))
    full = run_buffer(a, chunks)
    b = ShuffleBuffer(100, D_IN, 32, np.random.default_rng(3))
    got, i = [], 0
    while len(got) < 5:  # stop after 5 batches, as a checkpoint would
        b.put(chunks[i])
        i += 1
        while b.ready() and len(got) < 5:
            got.append(b.take())
    state = b.state()
    c = ShuffleBuffer(100, D_IN, 32, np.random.default_rng(99))
    c.load_state(state)
    while c.ready():
        got.append(c.take())
    got += run_buffer(c, chunks[i:])
    assert len(got) == len(full)
    for x, y in zip(got, full, strict=True):
        assert np.array_equal(x, y)


def test_shuffle_buffer_refuses_misuse() -> None:
    with pytest.raises(ConfigError, match="below the batch size"):
        ShuffleBuffer(8, D_IN, 16, np.random.default_rng(0))
    buf = ShuffleBuffer(16, D_IN, 8, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="not ready"):
        buf.take()


# --- sources and the held-out split ---------------------------------------------------------


def test_held_out_share_and_stability() -> None:
    ids = np.arange(100_000)
    mask = held_out(ids, 0.05)
    assert abs(mask.mean() - 0.05) < 0.001
    assert abs(mask[:1000].mean() - 0.05) < 0.01  # even over short stretches
    assert np.array_equal(held_out(ids[::-1], 0.05), mask[::-1])  # by id, not by position


def test_array_source_covers_every_row_once_per_epoch_in_new_orders() -> None:
    acts = ids_rows(1000)
    src = ArraySource(acts, val_fraction=0.1, seed=0, block_rows=64)
    seen = {}
    for epoch in (1, 2):
        chunks = list(src.chunks(epoch))
        rows = np.concatenate([c.x for c in chunks])
        assert sorted(rows[:, 0].astype(int)) == list(range(1000))
        held = np.concatenate([c.held_out for c in chunks])
        assert set(rows[held, 0].astype(int)) == set(np.flatnonzero(held_out(np.arange(1000), 0.1)))
        seen[epoch] = rows[:, 0].copy()
        # resuming from any chunk's position continues with exactly the remaining chunks
        rest = list(src.chunks(epoch, chunks[5].position))
        assert np.array_equal(np.concatenate([c.x for c in rest]), rows[6 * 64 :])
    assert not np.array_equal(seen[1], seen[2])


class LazySource:
    """An endless-looking stream generated chunk by chunk; counts what was pulled."""

    def __init__(self, n_rows: int, chunk: int = 256, fail_after: int | None = None) -> None:
        self.d_in, self.size_hint, self.n_rows, self.chunk = D_IN, n_rows, n_rows, chunk
        self.fail_after = fail_after
        self.pulled = 0
        atoms = np.random.default_rng(1).standard_normal((64, D_IN)).astype(np.float32)
        self.atoms = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        rng = np.random.default_rng(lo)
        w = rng.random((hi - lo, 64)).astype(np.float32) * (rng.random((hi - lo, 64)) < 0.06)
        return w @ self.atoms + 0.3

    def chunks(self, epoch: int, position: dict | None = None) -> Iterator[Chunk]:
        start = (position or {}).get("row", 0)
        for lo in range(start, self.n_rows, self.chunk):
            if self.fail_after is not None and self.pulled >= self.fail_after:
                raise OSError("the source went away")  # a crash mid-run
            hi = min(lo + self.chunk, self.n_rows)
            self.pulled += hi - lo
            yield Chunk(self.rows(lo, hi), held_out(np.arange(lo, hi), 0.05), {"row": hi})

    def describe(self) -> dict:
        return {"source": "lazy", "rows": self.n_rows}


def small(**kw) -> TrainConfig:
    base = dict(
        d_sae=64,
        k=4,
        lr=3e-3,
        batch_size=64,
        epochs=1,
        val_fraction=0.05,
        val_tokens=300,
        shuffle_tokens=512,
        checkpoint_every=7,
        dead_tokens_threshold=500,
        threshold_decay=0.9,
        normalize_activations="none",
    )
    return TrainConfig(**{**base, **kw})


def test_training_streams_within_the_buffer_bound() -> None:
    """Ten million rows on offer; five steps pull only what the buffer needs."""
    src = LazySource(10_000_000)
    cfg = small(max_steps=5)
    res = train(src, cfg, metadata=META, progress=False)
    assert not res.finished and res.final["step"] == 5 and res.final["partial"]
    needed = cfg.shuffle_tokens + 5 * cfg.batch_size
    assert needed <= src.pulled * 0.95 + 1  # held-out rows do not count towards the buffer
    assert src.pulled <= (needed + src.chunk) / 0.9
    assert res.sae.metadata["training"]["n_val_tokens"] <= cfg.val_tokens


def test_val_tokens_caps_the_held_out_rows() -> None:
    res = train(LazySource(12_000), small(val_tokens=100), metadata=META, progress=False)
    assert res.finished and res.sae.metadata["training"]["n_val_tokens"] == 100


def weights(sae) -> dict[str, torch.Tensor]:
    return sae.tensors()


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "matryoshka"])
def test_stop_and_resume_equals_an_uninterrupted_run(architecture: str, tmp_path: Path) -> None:
    cfg = small(architecture=architecture, epochs=2)
    whole = train(LazySource(3000), cfg, metadata=META, progress=False)
    steps = whole.sae.metadata["training"]["steps"]
    assert steps > 40

    ckpt = tmp_path / "ckpt.pt"
    half = small(architecture=architecture, epochs=2, max_steps=steps // 2)
    first = train(LazySource(3000), half, metadata=META, progress=False, checkpoint=ckpt)
    assert not first.finished and ckpt.is_file()
    rest = train(LazySource(3000), cfg, metadata=META, progress=False, checkpoint=ckpt, resume=True)
    assert rest.finished and rest.history == whole.history
    for name, t in weights(whole.sae).items():
        assert torch.equal(weights(rest.sae)[name], t), name
    assert rest.sae.metadata["training"] == whole.sae.metadata["training"]


def test_resume_after_a_crash_from_the_last_periodic_checkpoint(tmp_path: Path) -> None:
    cfg = small(architecture="batchtopk", epochs=2)
    whole = train(LazySource(3000), cfg, metadata=META, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    crashing = LazySource(3000, fail_after=4000)  # dies in the second epoch
    with pytest.raises(OSError, match="went away"):
        train(crashing, cfg, metadata=META, progress=False, checkpoint=ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["step"] % cfg.checkpoint_every == 0
    rest = train(LazySource(3000), cfg, metadata=META, progress=False, checkpoint=ckpt, resume=True)
    for name, t in weights(whole.sae).items():
        assert torch.equal(weights(rest.sae)[name], t), name
    assert rest.history == whole.history


def test_resume_refuses_other_settings_or_no_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(ConfigError, match="no checkpoint at"):
        train(LazySource(3000), small(), metadata=META, checkpoint=ckpt, resume=True)
    train(LazySource(3000), small(max_steps=3), metadata=META, progress=False, checkpoint=ckpt)
    with pytest.raises(ConfigError, match=r"other settings: train\.k \(checkpoint 4, now 8\)"):
        train(LazySource(3000), small(k=8), metadata=META, checkpoint=ckpt, resume=True)
    with pytest.raises(ConfigError, match=r"source\.rows \(checkpoint 3000, now 4000\)"):
        train(LazySource(4000), small(), metadata=META, checkpoint=ckpt, resume=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        train(LazySource(3000), small(), metadata=META, checkpoint=ckpt, resume=True)


def test_max_steps_at_the_very_end_finishes_the_run(tmp_path: Path) -> None:
    whole = train(LazySource(2000), small(), metadata=META, progress=False)
    steps = whole.sae.metadata["training"]["steps"]
    ckpt = tmp_path / "ckpt.pt"
    res = train(
        LazySource(2000), small(max_steps=steps), metadata=META, progress=False, checkpoint=ckpt
    )
    assert res.finished and res.history == whole.history
    # one step short: stopped; resuming with the same limit takes no step but stays stopped,
    # and resuming without it finishes where the uninterrupted run did
    short = small(max_steps=steps - 1)
    ckpt.unlink()
    assert not train(
        LazySource(2000), short, metadata=META, progress=False, checkpoint=ckpt
    ).finished
    again = train(
        LazySource(2000), short, metadata=META, progress=False, checkpoint=ckpt, resume=True
    )
    assert not again.finished and again.final["step"] == steps - 1
    done = train(
        LazySource(2000), small(), metadata=META, progress=False, checkpoint=ckpt, resume=True
    )
    assert done.finished and done.history == whole.history
    for name, t in whole.sae.tensors().items():
        assert torch.equal(done.sae.tensors()[name], t), name
