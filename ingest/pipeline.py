"""The ingest pipeline: a corpus file in, SAE embeddings committed to the store.

    source rows --chunk of commit_docs--> skip documents already encoded with this SAE
      -> reader.tokenize -> reader.windows -> reader.batches
      -> for each batch: reader.forward (stops at the hook) -> sae.encode_sparse -> pool_tokens
      -> merge partial pools -> Store.write_batch (one transaction per chunk)

Every stage's wall time is measured (``IngestResult.stage_seconds``), which is what
``bench/ingest.py`` reports. Re-running the same command adds nothing; after a crash it
continues with the first chunk that was not committed.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

import saedb
from ingest import sae as sae_mod
from ingest.config import IngestConfig, ReaderConfig
from ingest.hooks import parse_hook
from ingest.pooling import Pooled, merge, pool_tokens
from ingest.reader import DEFAULT_READER, Reader, resolve_reader
from ingest.sae_add import check_reader_model, load_recorded_sae
from ingest.sources import BadRow, SourceDoc, count_rows, detect_format, read_documents, sha256_text
from saedb.errors import InputError, ModelError
from saedb.store import SaeRecord, Store

BUILTIN_SAE = "builtin:default"
STAGES = ("read", "tokenize", "forward", "encode", "pool", "write")


@dataclass
class IngestResult:
    """What one run did."""

    run_id: int
    n_docs: int
    n_tokens: int
    n_bad: int
    n_skipped: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


# Loaded models are kept per process: a notebook or test that ingests several files
# pays the load once.
_LOADED: dict[tuple, tuple[Reader, sae_mod.SAE]] = {}


def default_sae_dir() -> Path:
    """Directory of the SAE that ships with saedb (SAELens format)."""
    return Path(__file__).parent / "default_sae"


def resolve_sae_path(path: str) -> Path:
    return default_sae_dir() if path == BUILTIN_SAE else Path(path)


def sae_record(sae: sae_mod.SAE, *, name: str, path: str, reader: str) -> SaeRecord:
    """The store record of a loaded SAE (reader spec kept in its config)."""
    meta = sae.cfg.get("metadata", {}) or {}
    hook_name = meta.get("hook_name") or sae.cfg.get("hook_name")
    if not hook_name:
        raise ModelError(f"SAE at {path} does not say which hook it reads (metadata.hook_name)")
    hook = parse_hook(hook_name)
    resolved = resolve_reader(reader)
    return SaeRecord(
        name=name,
        reader_model=str(meta.get("model_name") or resolved.model_name),
        reader_revision=resolved.revision,
        hook_name=hook_name,
        layer=hook.layer,
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        weights_sha256=sae.weights_sha256,
        path=path,
        config={"reader": reader, "sae_cfg": sae.cfg},
        format=sae.format or "saelens",
    )


def load_components(rec: SaeRecord, reader_spec: str | None, rcfg: ReaderConfig):
    """Load (or reuse) the reader and SAE for an SAE record, checking they fit together."""
    spec = reader_spec or rec.config.get("reader") or DEFAULT_READER
    resolved = resolve_reader(spec)
    hook = parse_hook(rec.hook_name)
    key = (str(resolved.path), rec.hook_name, rec.weights_sha256, asdict(rcfg).__repr__())
    check_reader_model(rec, resolved.model_name)
    if key not in _LOADED:
        sae = load_recorded_sae(rec, resolve_sae_path(rec.path))
        if sae.weights_sha256 != rec.weights_sha256:
            raise ModelError(
                f"the SAE weights at {rec.path} changed since they were registered as "
                f"'{rec.name}' (sha256 {sae.weights_sha256[:12]} != {rec.weights_sha256[:12]}); "
                f"register the new weights under another name (saedb sae add STORE "
                f"{rec.path} --name NEW) and ingest with --sae NEW"
            )
        reader = Reader(resolved, hook, rcfg)
        if reader.d_model != sae.d_in:
            raise ModelError(
                f"reader {resolved.model_name} has hidden size {reader.d_model} but SAE "
                f"'{rec.name}' expects d_in={sae.d_in}: they do not belong together"
            )
        _LOADED.clear()  # keep one model in memory at a time
        _LOADED[key] = (reader, sae)
    return _LOADED[key]


class _Timer:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def _chunks(rows: Iterable[SourceDoc | BadRow], n_docs: int, timer: _Timer) -> Iterator[list]:
    """Group rows so that each chunk holds ``n_docs`` documents (bad rows ride along)."""
    chunk: list = []
    n = 0
    it = iter(rows)
    while True:
        t = time.perf_counter()
        row = next(it, None)
        timer.add("read", t)
        if row is None:
            break
        chunk.append(row)
        n += isinstance(row, SourceDoc)
        if n >= n_docs:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def run_ingest(store: Store, cfg: IngestConfig) -> IngestResult:
    """Run one ingest of ``cfg.source`` into ``store``."""
    path = Path(cfg.source)
    fmt = detect_format(path, cfg.input_format)
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec = store.get_sae(cfg.sae)
    reader, sae = load_components(rec, cfg.reader, cfg.reader_config)
    dataset_id = store.dataset_id(cfg.dataset, create=True, description=cfg.description)
    run_config = {
        "ingest": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "sae": {"sae_id": rec.sae_id, "name": rec.name, "weights_sha256": rec.weights_sha256},
        "reader": {
            "model": reader.resolved.model_name,
            "revision": reader.resolved.revision,
            "path": str(reader.resolved.path),
            "hook": rec.hook_name,
        },
        "versions": {
            "saedb": saedb.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    run_id = store.start_run(run_config)
    result = IngestResult(run_id, 0, 0, 0, 0, 0.0)
    timer = _Timer()
    started = time.perf_counter()
    bar = tqdm(
        total=count_rows(path, fmt),
        unit="doc",
        disable=not cfg.progress,
        file=sys.stderr,
        desc=f"ingest {path.name}",
        dynamic_ncols=True,
    )
    try:
        rows = read_documents(path, text_field=cfg.text_field, id_field=cfg.id_field, fmt=fmt)
        for chunk in _chunks(rows, cfg.commit_docs, timer):
            _ingest_chunk(store, cfg, chunk, reader, sae, rec, dataset_id, run_id, result, timer)
            result.seconds = time.perf_counter() - started
            bar.update(len(chunk))
            bar.set_postfix(
                docs=result.n_docs,
                tok_s=f"{result.tokens_per_second:,.0f}",
                bad=result.n_bad,
                skipped=result.n_skipped,
            )
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", "interrupted by the user")
        raise
    except BaseException as exc:
        store.finish_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.close()
    store.finish_run(run_id, "done")
    result.seconds = time.perf_counter() - started
    result.stage_seconds = timer.seconds
    return result


def _ingest_chunk(store, cfg, chunk, reader, sae, rec, dataset_id, run_id, result, timer) -> None:
    t = time.perf_counter()
    bad = [r for r in chunk if isinstance(r, BadRow)]
    docs = [r for r in chunk if isinstance(r, SourceDoc)]
    # Render chats first: the rendered text is what is stored and hashed.
    texts: list[str] = []
    spans: list[list[tuple[int, int]] | None] = []
    rendered: list[SourceDoc] = []
    for d in docs:
        if d.messages is not None:
            try:
                text, sp = reader.render_chat(d.messages)
            except ModelError as exc:  # e.g. the template rejects this sequence of roles
                bad.append(BadRow(cfg.source, d.line, f"cannot render chat: {exc}", None))
                continue
            texts.append(text)
            spans.append(sp)
        else:
            texts.append(d.text or "")
            spans.append(None)
        rendered.append(d)
    docs = rendered
    shas = [sha256_text(x) for x in texts]
    known = store.known_documents(dataset_id, [d.external_id for d in docs], rec.sae_id)
    todo: list[int] = []
    doc_ids: list[int | None] = []
    n_skipped = 0
    for i, d in enumerate(docs):
        hit = known.get(d.external_id)
        if hit is None:
            todo.append(i)
            doc_ids.append(None)
        elif hit[2] != shas[i]:
            bad.append(
                BadRow(
                    cfg.source,
                    d.line,
                    f"id '{d.external_id}' is already in dataset "
                    f"'{cfg.dataset}' (doc_id {hit[0]}) with a different text",
                    None,
                )
            )
        elif hit[1]:
            n_skipped += 1
        else:  # stored, not yet encoded with this SAE
            todo.append(i)
            doc_ids.append(hit[0])
    if cfg.strict and bad:
        first = min(bad, key=lambda b: b.line)
        raise InputError(f"{first.describe()} (--strict stops at the first bad row)")
    t = timer.add("write", t)
    tokenized = reader.tokenize([texts[i] for i in todo], [spans[i] for i in todo])
    batches = reader.batches(reader.windows(tokenized))
    t = timer.add("tokenize", t)
    parts: list[Pooled] = []
    for batch in batches:
        hb = reader.forward(batch)
        t = timer.add("forward", t)
        tok_idx, lat_idx, vals = sae.encode_sparse(hb.hidden)
        t = timer.add("encode", t)
        parts.append(
            pool_tokens(hb.doc, hb.starts, hb.ends, tok_idx.numpy(), lat_idx.numpy(), vals.numpy())
        )
        t = timer.add("pool", t)
    pooled = merge(Pooled.concat(parts)) if parts else None
    t = timer.add("pool", t)
    documents = pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.int64()),
            "external_id": pa.array([docs[i].external_id for i in todo], pa.string()),
            "text": pa.array([texts[i] for i in todo], pa.string()),
            "text_sha256": pa.array([shas[i] for i in todo], pa.string()),
            "n_tokens": pa.array([tk.n_content for tk in tokenized], pa.int32()),
            "metadata": pa.array([docs[i].metadata for i in todo], pa.string()),
        }
    )
    latents = _latent_table(pooled)
    bad_table = pa.table(
        {
            "source": pa.array([b.source for b in bad], pa.string()),
            "line": pa.array([b.line for b in bad], pa.int64()),
            "error": pa.array([b.error for b in bad], pa.string()),
            "raw": pa.array([b.raw for b in bad], pa.string()),
        }
    )
    store.write_batch(
        run_id=run_id,
        dataset_id=dataset_id,
        sae_id=rec.sae_id,
        documents=documents,
        latents=latents,
        bad_rows=bad_table,
        n_skipped=n_skipped,
    )
    timer.add("write", t)
    result.n_docs += documents.num_rows
    result.n_tokens += int(sum(tk.n_content for tk in tokenized))
    result.n_bad += len(bad)
    result.n_skipped += n_skipped
    if len(result.bad_examples) < 5:
        result.bad_examples.extend(b.describe() for b in bad[: 5 - len(result.bad_examples)])


def _latent_table(p: Pooled | None) -> pa.Table:
    if p is None:
        p = Pooled(
            *(
                np.zeros(0, dtype=t)
                for t in (np.int64, np.int32, np.float32, np.float32, np.int32, np.int32, np.int32)
            )
        )
    return pa.table(
        {
            "doc_index": pa.array(p.doc, pa.int64()),
            "latent_id": pa.array(p.latent, pa.int32()),
            "max_act": pa.array(p.max_act, pa.float32()),
            "sum_act": pa.array(p.sum_act, pa.float32()),
            "n_active": pa.array(p.n_active, pa.int32()),
            "max_char_start": pa.array(p.char_start, pa.int32()),
            "max_char_end": pa.array(p.char_end, pa.int32()),
        }
    )


def summarize(result: IngestResult) -> dict[str, Any]:
    """A JSON-able summary for the CLI."""
    return {
        "run_id": result.run_id,
        "documents": result.n_docs,
        "tokens": result.n_tokens,
        "bad_rows": result.n_bad,
        "skipped_existing": result.n_skipped,
        "seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_per_second),
    }


def init_store(
    path: str | Path,
    *,
    reader: str | None = None,
    sae: str | None = None,
    sae_name: str | None = None,
) -> SaeRecord:
    """Create a store (or open an existing one) and register an SAE with its reader.

    Defaults: the builtin reader and the builtin SAE. The SAE becomes the store's default
    when it is the first one. Registering the same SAE again is a no-op.
    """
    reader_spec = reader or DEFAULT_READER
    sae_path = sae or BUILTIN_SAE
    loaded = sae_mod.load_sae(resolve_sae_path(sae_path))
    if sae is not None:
        sae_path = str(Path(sae).resolve())
    name = sae_name or ("default" if sae is None else Path(sae_path).name)
    rec = sae_record(loaded, name=name, path=sae_path, reader=reader_spec)
    # Check the pair really fits before recording it: the hidden size must match d_in.
    load_components(rec, None, ReaderConfig())
    with Store(path) as store:
        rec.sae_id = store.register_sae(rec)
    return rec
