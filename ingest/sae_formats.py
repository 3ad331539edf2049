"""SAEs on disk: the format registry, auto-detection, and the SAELens directory format.

Every format is an ``SAEFormat`` in ``SAE_FORMATS``: a name, what a path in that format holds
(for error messages), a ``detect(path)`` test and a ``load(path, norm_scaling_factor=None)``
that returns an ``ingest.sae.SAE`` with ``format`` and ``weights_sha256`` (the sha256 of the
weights file) set. ``load_sae`` picks the one format whose ``detect`` accepts the path, or
the one named. SAELens lives here; the other formats (sparsify, Gemma Scope, Goodfire, Llama
Scope, dictionary_learning) are in ``ingest.sae_loaders``, registered when this module loads.

SAELens on disk: ``cfg.json`` + ``sae_weights.safetensors``. We write the folded weights of an
``expected_average_only_in`` SAE with ``normalize_activations: "none"`` (what SAELens does
after folding, so SAELens reads them right) and keep ``s`` as
``metadata.norm_scaling_factor_folded``, from which ``load_saelens`` restores the mode.
SAELens training checkpoints of ``batchtopk`` / ``matryoshka_batchtopk`` SAEs (weights with a
scalar ``topk_threshold``) load as the ``jumprelu`` SAE SAELens itself saves for inference.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ingest.sae import _FOLDED_KEY, ARCHITECTURES, K_ARCHITECTURES, SAE, Registry
from saedb.errors import ConfigError, ModelError, RegistryError

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
#: SAELens training architectures saved for inference as jumprelu (threshold = topk_threshold).
BATCHTOPK_ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk")


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ModelError naming the file otherwise."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def require_files(directory: Path, files: tuple[str, ...], what: str) -> None:
    """ModelError naming the first of ``files`` missing from ``directory``."""
    for name in files:
        if not (directory / name).is_file():
            raise ModelError(f"{directory / name} does not exist: {what} holds {', '.join(files)}")


def check_tensor(
    source: Path, key: str, t: torch.Tensor, shape: tuple[int, ...], means: str
) -> torch.Tensor:
    """``t`` as float32 if it is a float tensor of ``shape``; ModelError naming file and key.
    A one-element tensor broadcasts to a ``[d_sae]`` shape (scalar thresholds)."""
    if not t.is_floating_point():
        raise ModelError(f"{source}: tensor '{key}' has dtype {t.dtype}, not float")
    if len(shape) == 1 and t.numel() == 1 and shape[0] != 1:
        t = t.reshape(()).expand(shape)
    if tuple(t.shape) != shape:
        raise ModelError(
            f"{source}: tensor '{key}' has shape {tuple(t.shape)}, but {means} means {shape}"
        )
    return t.to(torch.float32)


def take(stored: Mapping[str, Any], source: Path, *keys: str, needed_for: str) -> torch.Tensor:
    """The first of ``keys`` present in ``stored``; ModelError listing what the file holds."""
    for key in keys:
        if key in stored:
            t = stored[key]
            if isinstance(t, torch.Tensor):
                return t
            raise ModelError(f"{source}: '{key}' is a {type(t).__name__}, not a tensor")
    wanted = " or ".join(f"'{k}'" for k in keys)
    raise ModelError(
        f"{source} has no tensor {wanted}, which {needed_for} needs "
        f"(it holds: {', '.join(sorted(map(str, stored))) or 'nothing'})"
    )


def build_sae(source: Path, **kwargs: Any) -> SAE:
    """``SAE(**kwargs)`` with the path prefixed to any error it raises."""
    try:
        return SAE(**kwargs)
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None


# --- the SAELens directory format -----------------------------------------------------------


def _v6_cfg(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """A SAELens cfg.json (v6, or legacy flat < 6.0) as a v6-shaped dict."""
    if isinstance(raw.get("metadata"), dict):
        return {**raw, "metadata": dict(raw["metadata"])}
    rest = dict(raw)  # legacy: every key not in the v6 top level goes to metadata
    hook_name = rest.pop("hook_name", None) or rest.pop("hook_point", None)
    rest.pop("hook_point", None)
    act_fn = rest.pop("activation_fn", None) or rest.pop("activation_fn_str", None) or "relu"
    rest.pop("activation_fn_str", None)
    act_kwargs = rest.pop("activation_fn_kwargs", None) or {}
    cfg: dict[str, Any] = {"architecture": rest.pop("architecture", None) or "standard"}
    if act_fn == "topk":
        cfg["architecture"] = "topk"
        cfg["k"] = act_kwargs.get("k", rest.pop("k", None))
    elif act_fn != "relu":
        raise ModelError(f"{source}: activation_fn {act_fn!r} is not supported (relu, topk)")
    normalize = rest.pop("normalize_activations", "none")
    if normalize is True:
        normalize = "expected_average_only_in"
    elif normalize in (False, None):
        normalize = "none"
    cfg["normalize_activations"] = normalize
    cfg["apply_b_dec_to_input"] = rest.pop("apply_b_dec_to_input", True)
    for key in (
        "d_in",
        "d_sae",
        "dtype",
        "reshape_activations",
        "rescale_acts_by_decoder_norm",
        "k",
    ):
        if key in rest:
            cfg[key] = rest.pop(key)
    rest.pop("device", None)
    cfg["metadata"] = {"hook_name": hook_name, **rest}
    return cfg


def _scaling(
    cfg: dict[str, Any], metadata: dict[str, Any], given: float | None, cfg_path: Path
) -> tuple[str, float | None, float | None]:
    """``(normalize_activations, factor to fold now, factor already folded)`` of a cfg."""
    normalize = cfg.get("normalize_activations", "none")
    folded = metadata.pop(_FOLDED_KEY, None)  # written by save_saelens: already folded
    if normalize == "expected_average_only_in":
        for fold in (given, cfg.get("norm_scaling_factor"), metadata.get("norm_scaling_factor")):
            if fold is not None:
                return normalize, float(fold), None
        raise ModelError(
            f"{cfg_path}: normalize_activations is 'expected_average_only_in' "
            "but no norm_scaling_factor is given; pass norm_scaling_factor= "
            "(--norm-scaling-factor; the release's value in SAELens pretrained_saes.yaml)"
        )
    if normalize == "covariance_whitening":
        raise ModelError(
            f"{cfg_path}: normalize_activations 'covariance_whitening' is not supported: "
            "fold the whitening into the weights with SAELens (fold_activation_whitening) "
            "and save again"
        )
    if given is not None:
        raise ModelError(
            f"{cfg_path}: norm_scaling_factor given, but normalize_activations "
            f"is {normalize!r}, not 'expected_average_only_in'"
            + (" (its weights already fold one in)" if folded is not None else "")
        )
    if normalize == "none" and folded is not None:
        return "expected_average_only_in", None, float(folded)
    return normalize, None, None


def load_saelens(path: str | Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """Load a SAELens directory (cfg.json + sae_weights.safetensors; v6 or legacy cfg).

    ``norm_scaling_factor`` is needed for ``expected_average_only_in`` SAEs whose cfg does not
    carry it (SAELens keeps it in the release's pretrained_saes.yaml); it is folded in.
    """
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    require_files(path, (CFG_FILE, WEIGHTS_FILE), "a SAELens SAE directory")
    cfg = _v6_cfg(read_json(cfg_path), cfg_path)
    declared = cfg.get("architecture")
    arch = "jumprelu" if declared in BATCHTOPK_ARCHITECTURES else declared
    try:
        arch = ARCHITECTURES[arch].name
    except RegistryError as exc:
        raise RegistryError(
            f"{cfg_path}: {exc}, plus {', '.join(BATCHTOPK_ARCHITECTURES)} (read as jumprelu)"
        ) from None
    needs_k = arch in K_ARCHITECTURES
    for key in ("d_in", "d_sae") + (("k",) if needs_k else ()):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
            raise ModelError(f"{cfg_path}: '{key}' must be an integer, got {cfg.get(key)!r}")
    if cfg.get("reshape_activations", "none") != "none":
        raise ModelError(
            f"{cfg_path}: reshape_activations {cfg['reshape_activations']!r} "
            "is not supported (residual-stream and MLP-output SAEs only)"
        )
    metadata = cfg["metadata"]
    normalize, fold, folded = _scaling(cfg, metadata, norm_scaling_factor, cfg_path)

    sha = sha256_file(weights_path)
    try:
        stored = load_file(weights_path)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{weights_path}: cannot read safetensors ({exc})") from exc
    if "threshold" not in stored and "log_threshold" in stored:
        stored["threshold"] = stored["log_threshold"].float().exp()
    rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    if declared in BATCHTOPK_ARCHITECTURES and "threshold" not in stored:
        stored["threshold"] = take(
            stored, weights_path, "topk_threshold", needed_for=f"a {declared} SAE"
        ).to(torch.float64)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    means = f"{CFG_FILE} (d_in={d_in}, d_sae={d_sae})"
    tensors: dict[str, torch.Tensor] = {}
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    shapes |= {name: (d_sae,) for name in ARCHITECTURES[arch].tensors}
    for key, shape in shapes.items():
        t = take(stored, weights_path, key, needed_for=f"a {arch} SAE")
        tensors[key] = check_tensor(weights_path, key, t, shape, means)
    if declared in BATCHTOPK_ARCHITECTURES and rescale:
        # the threshold is in units of h * ||W_dec[i]||: fold the norms into the encoder
        norms = tensors["W_dec"].norm(dim=1)
        tensors["W_enc"] = tensors["W_enc"] * norms
        tensors["b_enc"] = tensors["b_enc"] * norms
        tensors["W_dec"] = tensors["W_dec"] / norms.unsqueeze(1)
        rescale = False
    if fold is not None:
        tensors["W_enc"] = tensors["W_enc"] * fold
        tensors["W_dec"] = tensors["W_dec"] / fold
        tensors["b_dec"] = tensors["b_dec"] / fold
    if declared != arch:
        metadata["saved_architecture"] = declared
    scaling = fold if fold is not None else folded
    return build_sae(
        path,
        architecture=arch,
        **tensors,
        k=cfg.get("k") if needs_k else None,
        rescale_acts_by_decoder_norm=rescale,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        norm_scaling_factor=scaling,
        metadata=metadata,
        weights_sha256=sha,
        format="saelens",
    )


def save_saelens(sae: SAE, path: str | Path, dtype: str = "float32") -> Path:
    """Write ``sae`` as a SAELens v6 directory (weights cast to ``dtype``); sets and returns
    the directory. ``sae.weights_sha256`` becomes the sha256 of the written weights file."""
    if dtype not in SAVE_DTYPES:
        raise ConfigError(
            f"dtype {dtype!r} is not supported. Valid dtypes are: {', '.join(SAVE_DTYPES)}"
        )
    cfg = {**sae.cfg, "dtype": dtype}
    try:
        cfg_text = json.dumps(cfg, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"SAE metadata cannot be written as JSON ({exc})") from exc
    tensors = {name: t.to(SAVE_DTYPES[dtype]).contiguous() for name, t in sae.tensors().items()}
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ModelError(f"tensor '{name}' has values that do not fit {dtype}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / WEIGHTS_FILE
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".sae_weights.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, weights_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    (path / CFG_FILE).write_text(cfg_text, encoding="utf-8")
    sae.weights_sha256 = sha256_file(weights_path)
    sae.format = "saelens"
    return path


# --- format registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEFormat:
    """An on-disk SAE format: how to recognise a path and how to load it."""

    name: str
    expects: str  # what the path must hold, for error messages
    detect: Callable[[Path], bool]
    load: Callable[..., SAE]  # load(path, *, norm_scaling_factor=None) -> SAE


SAE_FORMATS: Registry[SAEFormat] = Registry("SAE format", "SAE formats")


def register_sae_format(fmt: SAEFormat) -> SAEFormat:
    """Add an SAE format to ``SAE_FORMATS`` (no duplicates)."""
    return SAE_FORMATS.add(fmt.name, fmt)


register_sae_format(
    SAEFormat(
        name="saelens",
        expects=f"a directory with {CFG_FILE} and {WEIGHTS_FILE}",
        detect=lambda p: (p / WEIGHTS_FILE).is_file(),
        load=load_saelens,
    )
)


def detect_sae_format(path: str | Path) -> str:
    """The name of the one format that recognises ``path``; ModelError if none or several."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"SAE path {path} does not exist")
    found = [name for name in SAE_FORMATS if SAE_FORMATS[name].detect(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ModelError(
            f"{path} looks like several SAE formats ({', '.join(found)}); choose one with --format"
        )
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
    expected = "; ".join(f"{n}: {SAE_FORMATS[n].expects}" for n in SAE_FORMATS)
    raise ModelError(
        f"No SAE found in {path}. Expected {expected}. It holds: {', '.join(held) or 'nothing'}"
    )


def load_sae(
    path: str | Path, format: str | None = None, *, norm_scaling_factor: float | None = None
) -> SAE:
    """Load an SAE from ``path`` in ``format``, or in the one format that recognises it."""
    path = Path(path)
    if format is None:
        format = detect_sae_format(path)
    fmt = SAE_FORMATS[format]
    if not path.exists():
        raise ModelError(f"SAE path {path} does not exist")
    sae = fmt.load(path, norm_scaling_factor=norm_scaling_factor)
    sae.format = fmt.name
    return sae


import ingest.sae_loaders  # noqa: E402, F401 - registers the other formats
