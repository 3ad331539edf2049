"""The SAE at inference time: architectures, encode / decode, and the SAELens directory format.

Encode follows SAELens (see ``shared/reference/sae-formats.md``): cast to float32, normalise
(``normalize_activations``), subtract ``b_dec`` when ``apply_b_dec_to_input``, then
``h = x' W_enc + b_enc`` and the architecture's activation. ``encode_sparse`` is the hot path of
ingestion: one matmul per row chunk, then ``topk`` or ``nonzero``; it never builds the dense
``[n, d_sae]`` result for more than one chunk at a time.

``expected_average_only_in`` has no runtime op: its scalar ``s`` is folded into the weights at
load (``W_enc *= s; W_dec /= s; b_dec /= s``), so an ``SAE`` always takes raw activations.
On disk we write the folded weights with ``normalize_activations: "none"`` (what SAELens does
after folding, so SAELens reads them right) and keep ``s`` as
``metadata.norm_scaling_factor_folded``, from which ``load_saelens`` restores the mode.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import torch
from safetensors.torch import load_file, save_file

from saedb.errors import ConfigError, ModelError, RegistryError

T = TypeVar("T")

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
#: Metadata keys every cfg we write carries (None when unknown), as in SAELens v6.
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_head_index",
    "prepend_bos",
    "context_size",
    "dataset_path",
)
_FOLDED_KEY = "norm_scaling_factor_folded"
#: Elements of ``h`` computed at once by ``encode_sparse`` (16 MiB of float32): chunks of
#: ~1k rows keep the post-matmul passes (mask, nonzero, topk) in cache and memory bounded.
_CHUNK_ELEMENTS = 1 << 22


class Registry(Generic[T]):
    """Name -> entry map that refuses duplicates and lists the valid names on a miss."""

    def __init__(self, kind: str, plural: str) -> None:
        self.kind, self.plural = kind, plural
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; RegistryError if the name is taken."""
        if name in self._entries:
            raise RegistryError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise RegistryError(
                f"{self.kind} '{name}' not found. "
                f"Valid {self.plural} are: {', '.join(self.names())}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)


# --- architectures --------------------------------------------------------------------------


class SparseCodes(NamedTuple):
    """COO activations of a batch: strictly positive values, ordered by token then latent."""

    token_idx: torch.Tensor  # int64 [nnz]
    latent_idx: torch.Tensor  # int64 [nnz]
    values: torch.Tensor  # float32 [nnz]


class Architecture:
    """How one architecture turns preprocessed inputs ``x'`` into activations."""

    name = ""
    #: Tensors needed besides W_enc, W_dec and b_dec (all of shape [d_sae]).
    tensors: tuple[str, ...] = ()

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        """Activations ``[n, d_sae]`` of preprocessed inputs ``x [n, d_in]``."""
        raise NotImplementedError

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        """The strictly positive activations of ``x`` as COO (see ``SparseCodes``)."""
        raise NotImplementedError


ARCHITECTURES: Registry[Architecture] = Registry("Architecture", "architectures")


def register_architecture(name: str) -> Callable[[type[Architecture]], type[Architecture]]:
    """Class decorator: register an instance of the class under ``name`` (no duplicates)."""

    def decorate(cls: type[Architecture]) -> type[Architecture]:
        ARCHITECTURES.add(name, cls())
        cls.name = name
        return cls

    return decorate


class MaskedArchitecture(Architecture):
    """An architecture whose activation is ``pre`` where ``mask`` holds and 0 elsewhere."""

    def masked(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(pre, mask)``; ``mask`` must imply ``pre > 0``."""
        raise NotImplementedError

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        pre, mask = self.masked(sae, x)
        return pre.masked_fill_(~mask, 0.0)

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        pre, mask = self.masked(sae, x)
        flat = torch.nonzero(mask.view(-1)).squeeze(1)  # row-major: token, then latent
        d_sae = pre.shape[1]
        return SparseCodes(flat // d_sae, flat % d_sae, pre.view(-1)[flat])


@register_architecture("standard")
class Standard(MaskedArchitecture):
    """``f = ReLU(x' W_enc + b_enc)``."""

    tensors = ("b_enc",)

    def masked(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.addmm(sae.b_enc, x, sae.W_enc)
        return pre, pre > 0


@register_architecture("jumprelu")
class JumpReLU(MaskedArchitecture):
    """``f = ReLU(h) * 1[h > threshold]`` (strict), i.e. ``h`` where ``h > max(threshold, 0)``."""

    tensors = ("b_enc", "threshold")

    def masked(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.threshold is not None
        pre = torch.addmm(sae.b_enc, x, sae.W_enc)
        return pre, pre > sae.threshold.clamp_min(0.0)


@register_architecture("gated")
class Gated(MaskedArchitecture):
    """``f = 1[x' W_enc + b_gate > 0] * ReLU(x' (W_enc * exp(r_mag)) + b_mag)``; no b_enc.

    Both paths share one matmul: ``x' (W_enc * exp(r_mag)) = (x' W_enc) * exp(r_mag)``.
    """

    tensors = ("b_gate", "r_mag", "b_mag")

    def masked(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.b_gate is not None and sae.r_mag is not None and sae.b_mag is not None
        proj = x @ sae.W_enc
        gate = (proj + sae.b_gate) > 0
        mag = torch.addcmul(sae.b_mag, proj, sae.r_mag.exp())
        return mag, gate & (mag > 0)


@register_architecture("topk")
class TopK(Architecture):
    """Keep the k largest of ``h`` (times ``||W_dec[i]||`` if rescaling), then ReLU."""

    tensors = ("b_enc",)

    def _topk(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.k is not None
        pre = torch.addmm(sae.b_enc, x, sae.W_enc)
        if sae.rescale_acts_by_decoder_norm:
            pre.mul_(sae.W_dec.norm(dim=1))
        values, idx = pre.topk(sae.k, dim=1, sorted=False)
        return values, idx

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        values, idx = self._topk(sae, x)
        out = torch.zeros(x.shape[0], sae.d_sae, dtype=values.dtype)
        return out.scatter_(1, idx, values.relu_())

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        values, idx = self._topk(sae, x)
        idx, order = idx.sort(dim=1)
        values = values.gather(1, order)
        keep = values > 0
        tokens = torch.arange(x.shape[0]).unsqueeze(1).expand_as(idx)
        return SparseCodes(tokens[keep], idx[keep], values[keep])


# --- the SAE --------------------------------------------------------------------------------

_ALWAYS = ("W_enc", "W_dec", "b_dec")
_OPTIONAL = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag")


def expected_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> SAELens shape for an architecture (W_enc, W_dec, b_dec first)."""
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    for name in ARCHITECTURES[architecture].tensors:
        shapes[name] = (d_sae,)
    return shapes


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder ready to encode, float32 on CPU, tensors in SAELens shapes.

    ``architecture`` names an entry of ``ARCHITECTURES`` and decides which of the optional
    tensors exist (``b_enc``; ``threshold``; gated: ``b_gate, r_mag, b_mag`` and no b_enc).
    ``k`` and ``rescale_acts_by_decoder_norm`` are topk's. With ``normalize_activations ==
    "expected_average_only_in"`` the tensors already have ``norm_scaling_factor`` folded in
    (see the module docstring). ``metadata`` is the cfg's (model_name, hook_name, ...).
    ``weights_sha256`` is the sha256 of the sae_weights.safetensors file this SAE was last
    loaded from or saved to (None for an SAE built in memory).
    """

    architecture: str
    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    b_enc: torch.Tensor | None = None
    threshold: torch.Tensor | None = None
    b_gate: torch.Tensor | None = None
    r_mag: torch.Tensor | None = None
    b_mag: torch.Tensor | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        arch = ARCHITECTURES[self.architecture]
        needed = (*_ALWAYS, *arch.tensors)
        for name in (*_ALWAYS, *_OPTIONAL):
            t = getattr(self, name)
            if name in needed and t is None:
                raise ModelError(f"A {self.architecture} SAE needs tensor '{name}'")
            if name not in needed and t is not None:
                raise ModelError(f"A {self.architecture} SAE has no tensor '{name}'")
            if t is not None:
                setattr(self, name, t.detach().to(torch.float32).contiguous())
        if self.W_enc.ndim != 2:
            raise ModelError(f"W_enc must be [d_in, d_sae], got shape {tuple(self.W_enc.shape)}")
        d_in, d_sae = self.W_enc.shape
        for name, shape in expected_shapes(self.architecture, d_in, d_sae).items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ModelError(
                    f"tensor '{name}' has shape {got}, expected {shape} "
                    f"(d_in={d_in}, d_sae={d_sae})"
                )
        if self.architecture == "topk":
            if type(self.k) is not int or not 1 <= self.k <= d_sae:
                raise ModelError(f"a topk SAE needs an integer k in [1, {d_sae}], got {self.k!r}")
        elif self.k is not None or self.rescale_acts_by_decoder_norm:
            raise ModelError(
                f"k and rescale_acts_by_decoder_norm apply to topk SAEs only, "
                f"not {self.architecture}"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise ModelError(
                f"normalize_activations {self.normalize_activations!r} is not "
                f"supported. Valid values are: {', '.join(NORMALIZATIONS)}"
            )
        s = self.norm_scaling_factor
        if (self.normalize_activations == "expected_average_only_in") != (s is not None):
            raise ModelError(
                "norm_scaling_factor goes with normalize_activations="
                "'expected_average_only_in', and only with it"
            )
        if s is not None and not (math.isfinite(s) and s > 0):
            raise ModelError(f"norm_scaling_factor must be a positive number, got {s!r}")
        self.metadata = {**dict.fromkeys(METADATA_KEYS), **self.metadata}

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of latents; latent ids are indices into this dimension."""
        return int(self.W_enc.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The architecture's tensors by SAELens name, as saved in sae_weights.safetensors."""
        names = expected_shapes(self.architecture, self.d_in, self.d_sae)
        return {name: getattr(self, name) for name in names}

    @property
    def cfg(self) -> dict[str, Any]:
        """The SAELens v6 cfg.json of this SAE (dtype float32; save_saelens sets the saved one)."""
        metadata = dict(self.metadata)
        normalize = self.normalize_activations
        if normalize == "expected_average_only_in":
            normalize, metadata[_FOLDED_KEY] = "none", self.norm_scaling_factor
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": normalize,
            "reshape_activations": "none",
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        cfg["metadata"] = metadata
        return cfg

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Cast, normalise and subtract b_dec: the ``x'`` every architecture starts from."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ModelError(
                f"SAE expects activations of shape [n, {self.d_in}], got {tuple(x.shape)}"
            )
        x = x.to(torch.float32)
        if self.normalize_activations == "constant_norm_rescale":
            # all-zero rows (padding) stay zero instead of turning into NaN
            x = x * (math.sqrt(self.d_in) / x.norm(dim=1, keepdim=True).clamp_min(1e-12))
        elif self.normalize_activations == "layer_norm":
            x = x - x.mean(dim=1, keepdim=True)
            x = x / (x.std(dim=1, keepdim=True) + 1e-5)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense activations ``[n, d_sae]`` of activations ``x [n, d_in]``."""
        with torch.inference_mode():
            return ARCHITECTURES[self.architecture].dense(self, self.preprocess(x))

    def encode_sparse(self, x: torch.Tensor) -> SparseCodes:
        """Strictly positive activations of ``x [n, d_in]`` as COO, by token then latent."""
        arch = ARCHITECTURES[self.architecture]
        rows = max(1, _CHUNK_ELEMENTS // self.d_sae)
        with torch.inference_mode():
            if x.shape[0] <= rows:
                return arch.sparse(self, self.preprocess(x))
            parts = []
            for start in range(0, x.shape[0], rows):
                part = arch.sparse(self, self.preprocess(x[start : start + rows]))
                parts.append(part._replace(token_idx=part.token_idx + start))
            return SparseCodes(*(torch.cat(cols) for cols in zip(*parts, strict=True)))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``[n, d_in]`` from activations ``f [n, d_sae]``, in the SAE's input
        space (after ``constant_norm_rescale`` / ``layer_norm``, which decode does not undo)."""
        with torch.inference_mode():
            f = f.to(torch.float32)
            if self.rescale_acts_by_decoder_norm:
                f = f / self.W_dec.norm(dim=1)
            return torch.addmm(self.b_dec, f, self.W_dec)


# --- the SAELens directory format -----------------------------------------------------------


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    for key in ("d_in", "d_sae", "dtype", "reshape_activations", "rescale_acts_by_decoder_norm"):
        if key in rest:
            cfg[key] = rest.pop(key)
    rest.pop("device", None)
    cfg["metadata"] = {"hook_name": hook_name, **rest}
    return cfg


def load_saelens(path: str | Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """Load a SAELens directory (cfg.json + sae_weights.safetensors; v6 or legacy cfg).

    ``norm_scaling_factor`` is needed for ``expected_average_only_in`` SAEs whose cfg does not
    carry it (SAELens keeps it in the release's pretrained_saes.yaml); it is folded in.
    """
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ModelError(
                f"{p} does not exist: a SAELens SAE directory holds {CFG_FILE} and {WEIGHTS_FILE}"
            )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    cfg = _v6_cfg(raw, cfg_path)
    try:
        arch = ARCHITECTURES[cfg["architecture"]].name
    except RegistryError as exc:
        raise RegistryError(f"{cfg_path}: {exc}") from None
    for key in ("d_in", "d_sae") + (("k",) if arch == "topk" else ()):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
            raise ModelError(f"{cfg_path}: '{key}' must be an integer, got {cfg.get(key)!r}")
    if cfg.get("reshape_activations", "none") != "none":
        raise ModelError(
            f"{cfg_path}: reshape_activations {cfg['reshape_activations']!r} "
            "is not supported (residual-stream SAEs only)"
        )
    metadata = cfg["metadata"]
    normalize = cfg.get("normalize_activations", "none")
    folded = metadata.pop(_FOLDED_KEY, None)  # written by save_saelens: already folded
    fold: float | None = None
    if normalize == "expected_average_only_in":
        for fold in (
            norm_scaling_factor,
            cfg.get("norm_scaling_factor"),
            metadata.get("norm_scaling_factor"),
        ):
            if fold is not None:
                break
        if fold is None:
            raise ModelError(
                f"{cfg_path}: normalize_activations is 'expected_average_only_in' "
                "but no norm_scaling_factor is given; pass norm_scaling_factor= "
                "(the release's value in SAELens pretrained_saes.yaml)"
            )
    elif norm_scaling_factor is not None:
        raise ModelError(
            f"{cfg_path}: norm_scaling_factor given, but normalize_activations "
            f"is {normalize!r}, not 'expected_average_only_in'"
            + (" (its weights already fold one in)" if folded is not None else "")
        )
    elif normalize == "none" and folded is not None:
        normalize = "expected_average_only_in"
    scaling = fold if fold is not None else folded

    sha = sha256_file(weights_path)
    try:
        stored = load_file(weights_path)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{weights_path}: cannot read safetensors ({exc})") from exc
    if "threshold" not in stored and "log_threshold" in stored:
        stored["threshold"] = stored["log_threshold"].float().exp()
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in expected_shapes(arch, cfg["d_in"], cfg["d_sae"]).items():
        if key not in stored:
            raise ModelError(
                f"{weights_path} has no tensor '{key}', which a {arch} SAE needs "
                f"(it holds: {', '.join(sorted(stored)) or 'nothing'})"
            )
        t = stored[key]
        if not t.is_floating_point():
            raise ModelError(f"{weights_path}: tensor '{key}' has dtype {t.dtype}, not float")
        if key == "threshold" and t.numel() == 1:
            t = t.reshape(()).expand(shape)
        if tuple(t.shape) != shape:
            raise ModelError(
                f"{weights_path}: tensor '{key}' has shape {tuple(t.shape)}, but "
                f"{CFG_FILE} (d_in={cfg['d_in']}, d_sae={cfg['d_sae']}) means "
                f"{shape}"
            )
        tensors[key] = t.to(torch.float32)
    if fold is not None:
        tensors["W_enc"] = tensors["W_enc"] * fold
        tensors["W_dec"] = tensors["W_dec"] / fold
        tensors["b_dec"] = tensors["b_dec"] / fold
    try:
        return SAE(
            architecture=arch,
            **tensors,
            k=cfg.get("k") if arch == "topk" else None,
            rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            normalize_activations=normalize,
            norm_scaling_factor=None if scaling is None else float(scaling),
            metadata=metadata,
            weights_sha256=sha,
        )
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


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


def load_sae(
    path: str | Path, format: str | None = None, *, norm_scaling_factor: float | None = None
) -> SAE:
    """Load an SAE from ``path`` in ``format``, or in the first format that recognises it."""
    path = Path(path)
    if format is not None:
        return SAE_FORMATS[format].load(path, norm_scaling_factor=norm_scaling_factor)
    if not path.exists():
        raise ModelError(f"SAE path {path} does not exist")
    for name in SAE_FORMATS:
        fmt = SAE_FORMATS[name]
        if fmt.detect(path):
            return fmt.load(path, norm_scaling_factor=norm_scaling_factor)
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    expected = "; ".join(f"{SAE_FORMATS[n].name}: {SAE_FORMATS[n].expects}" for n in SAE_FORMATS)
    raise ModelError(
        f"No SAE found in {path}. Expected {expected}. It holds: {', '.join(held) or 'nothing'}"
    )
