"""Bring your own SAE: register an SAE of any supported format in a store, bound to its reader.

``add_sae`` loads the SAE (auto-detecting its format), works out which model and hook it
reads (from its files, or ``--model-name`` / ``--hook`` for formats that do not say), checks
that the reader fits and records it in ``saes`` with the sha256 of its weights file. Ingest
(``ingest.pipeline.load_components``) runs the same checks against the reader it is given:

- the hook must be one saedb can honour and exist in the reader (always refused otherwise);
- the reader's hidden size must equal the SAE's ``d_in`` (always refused otherwise);
- the reader's model name must match the one the SAE was trained on, unless the SAE was
  added with ``--force`` (recorded in ``saes.force_reader``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ingest.hooks import parse_hook
from ingest.reader import DEFAULT_READER, ResolvedReader, resolve_reader
from ingest.sae import SAE
from ingest.sae_formats import detect_sae_format, load_sae
from saedb.errors import ConfigError, ModelError, StoreError
from saedb.store import SaeRecord, Store


@dataclass
class ReaderInfo:
    """What the checks need to know about a reader, read from its config.json only."""

    spec: str
    resolved: ResolvedReader
    d_model: int
    n_layers: int


def reader_info(spec: str) -> ReaderInfo:
    """Resolve a reader spec and read its hidden size and layer count (no weights loaded)."""
    from transformers import AutoConfig

    from ingest.reader import _hidden_size, _n_layers, _quiet_transformers

    resolved = resolve_reader(spec)
    with _quiet_transformers():
        cfg = AutoConfig.from_pretrained(resolved.path)
    return ReaderInfo(spec, resolved, _hidden_size(cfg), _n_layers(cfg))


def same_model(a: str, b: str) -> bool:
    """Model names match ignoring case and the hub organisation (``org/name``)."""
    return a.strip().lower().rsplit("/", 1)[-1] == b.strip().lower().rsplit("/", 1)[-1]


def check_reader_model(rec: SaeRecord, reader_model: str) -> None:
    """ModelError when the reader is another model than the SAE's, unless it was forced."""
    if rec.force_reader or same_model(rec.reader_model, reader_model):
        return
    raise ModelError(
        f"SAE '{rec.name}' was trained on {rec.reader_model}, but the reader is "
        f"{reader_model}: its latents would mean nothing. Use the matching reader "
        f"(--reader), or add the SAE again with `saedb sae add ... --force` if the models "
        "really are the same"
    )


def check_fit(sae_name: str, hook_name: str, d_in: int, info: ReaderInfo) -> None:
    """ModelError when the hook is not in the reader or the hidden size differs."""
    hook = parse_hook(hook_name)
    name = info.resolved.model_name
    if hook.layer >= info.n_layers:
        raise ModelError(
            f"SAE hook layer {hook.layer} does not exist: reader {name} has "
            f"{info.n_layers} layers (0..{info.n_layers - 1})"
        )
    if info.d_model != d_in:
        raise ModelError(
            f"reader {name} has hidden size {info.d_model} but SAE '{sae_name}' expects "
            f"d_in={d_in}: they do not belong together"
        )


def load_recorded_sae(rec: SaeRecord, path: Path | None = None) -> SAE:
    """Reload a registered SAE in its recorded format (with its recorded scaling factor)."""
    return load_sae(
        path or Path(rec.path),
        rec.format,
        norm_scaling_factor=rec.config.get("norm_scaling_factor"),
    )


def _default_reader(store_path: Path) -> str:
    """The reader of the store's default SAE, or the builtin reader for a new store."""
    if not store_path.exists():
        return DEFAULT_READER
    with Store(store_path, read_only=True) as store:
        try:
            return str(store.get_sae().config.get("reader") or DEFAULT_READER)
        except StoreError:  # no SAE yet
            return DEFAULT_READER


@dataclass
class Added:
    """The result of ``add_sae``: the record, and notes for the user."""

    record: SaeRecord
    notes: list[str]


def add_sae(
    store_path: str | Path,
    path: str | Path,
    *,
    format: str | None = None,
    name: str | None = None,
    reader: str | None = None,
    hook: str | None = None,
    model_name: str | None = None,
    norm_scaling_factor: float | None = None,
    force: bool = False,
    make_default: bool = False,
) -> Added:
    """Register the SAE at ``path`` in the store (created if needed); see the module doc."""
    store_path, path = Path(store_path), Path(path).expanduser().resolve()
    fmt = format or detect_sae_format(path)
    sae = load_sae(path, fmt, norm_scaling_factor=norm_scaling_factor)
    notes: list[str] = []
    meta = sae.metadata
    declared_hook, declared_model = meta.get("hook_name"), meta.get("model_name")
    if hook and declared_hook and parse_hook(hook) != parse_hook(declared_hook):
        raise ConfigError(f"--hook {hook} contradicts the SAE, which reads {declared_hook}")
    hook_name = declared_hook or hook
    if not hook_name:
        raise ConfigError(
            f"the SAE at {path} does not say which hook it reads; pass --hook "
            "(e.g. blocks.12.hook_resid_post)"
        )
    parse_hook(hook_name)  # refuses hooks we cannot honour, before any model is loaded
    if model_name and declared_model and not same_model(model_name, declared_model):
        raise ConfigError(
            f"--model-name {model_name} contradicts the SAE, which was trained on {declared_model}"
        )
    spec = reader or _default_reader(store_path)
    info = reader_info(spec)
    sae_model = declared_model or model_name
    if not sae_model:
        sae_model = info.resolved.model_name
        notes.append(
            f"the SAE does not say which model it was trained on: recorded as the reader, "
            f"{sae_model} (pass --model-name to state it)"
        )
    label = name or (path.stem if path.is_file() else path.name)
    rec = SaeRecord(
        name=label,
        reader_model=str(sae_model),
        reader_revision=info.resolved.revision,
        hook_name=str(hook_name),
        layer=parse_hook(hook_name).layer,
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        weights_sha256=str(sae.weights_sha256),
        path=str(path),
        config={
            "reader": spec,
            "sae_cfg": json.loads(json.dumps(sae.cfg, default=str)),
            "norm_scaling_factor": norm_scaling_factor,
        },
        format=fmt,
        force_reader=force,
    )
    check_fit(label, rec.hook_name, rec.d_in, info)
    if force and not same_model(rec.reader_model, info.resolved.model_name):
        notes.append(
            f"--force: the SAE was trained on {rec.reader_model}, the reader is "
            f"{info.resolved.model_name}; ingest will not refuse this pair"
        )
    check_reader_model(rec, info.resolved.model_name)
    with Store(store_path) as store:
        rec.sae_id = store.register_sae(rec, make_default=make_default)
    return Added(rec, notes)
