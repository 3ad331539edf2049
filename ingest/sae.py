"""The SAE at inference time: architectures and encode / decode.

Encode follows SAELens (see ``shared/reference/sae-formats.md``): cast to float32, normalise
(``normalize_activations``), subtract ``b_dec`` when ``apply_b_dec_to_input``, then
``h = x' W_enc + b_enc`` and the architecture's activation. ``encode_sparse`` is the hot path of
ingestion: one matmul per row chunk, then ``topk`` or ``nonzero``; it never builds the dense
``[n, d_sae]`` result for more than one chunk at a time.

``expected_average_only_in`` has no runtime op: its scalar ``s`` is folded into the weights at
load (``W_enc *= s; W_dec /= s; b_dec /= s``), so an ``SAE`` always takes raw activations.

Reading and writing SAEs on disk (SAELens, sparsify, Gemma Scope, ...) lives in
``ingest.sae_formats`` and ``ingest.sae_loaders``; the names they define are re-exported here
(``from ingest.sae import load_sae, save_saelens`` keeps working).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch

from saedb.errors import ModelError, RegistryError

T = TypeVar("T")

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")
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
#: ``metadata.sae_lens_version`` of the cfgs we write: the SAELens release whose cfg layout
#: (v6, nested metadata) they follow. SAELens reads a cfg without it, or with one below 6, as
#: a flat pre-6.0 cfg and drops the nested metadata (model_name, hook_name).
SAELENS_CFG_VERSION = "6.0.0"
#: Elements of ``h`` computed at once by ``encode_sparse`` (16 MiB of float32): chunks of
#: ~1k rows keep the post-matmul passes (mask, nonzero, topk) in cache and memory bounded.
_CHUNK_ELEMENTS = 1 << 22
#: ... but never fewer rows than this per matmul: sgemm on a 64-row slice of a wide SAE
#: (d_sae 65536) runs at less than half the speed of a 1024-row one (bench/sae.py), which
#: costs more than the bigger chunk (256 MiB of h at d_sae 65536) saves.
_MIN_CHUNK_ROWS = 1024
#: SAEs at least this wide in d_in keep W_enc column-major and encode_sparse computes
#: ``(W_enc^T x'^T)^T`` (see ``_project``): there sgemm gains 5-30% that way, more than the
#: transposes after it cost (they scale with n * d_sae, the matmul with n * d_sae * d_in; at
#: d_in 576 they ate the gain, bench/sae.py).
_COLUMN_MAJOR_MIN_D_IN = 2048
#: Rows per matmul on the column-major path: sgemm per row is as fast at 256 rows there as at
#: 1024 on the row-major one, and the [256, d_sae] transposes stay in cache.
_COLUMN_MAJOR_CHUNK_ROWS = 256


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
    """COO activations of a batch: the nonzero values, ordered by token then latent.

    Values are strictly positive for every architecture but ``abstopk``, whose latents are
    signed (it keeps the k largest ``|h|`` without a ReLU)."""

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


def _coo(mask: torch.Tensor, values: torch.Tensor, cols: torch.Tensor | None = None) -> SparseCodes:
    """The entries of ``values [n, m]`` where ``mask`` holds, as COO in row-major order; the
    latent is the column, or ``cols[row, column]`` when given (top-k indices).

    On CPU numpy does it: ``flatnonzero`` + ``divmod`` is one pass over the mask and ~5x less
    CPU time than torch's ``nonzero`` + ``//`` + ``%`` + indexing (bench/sae.py). ``mask`` and
    ``values`` may be column-major (see ``_project``): the mask is then copied row-major
    first (torch's blocked transpose of bytes, a quarter of the traffic of the floats)."""
    if mask.device.type != "cpu":
        rows, pos = torch.nonzero(mask, as_tuple=True)
        lat = pos if cols is None else cols[rows, pos]
        return SparseCodes(rows, lat, values[rows, pos])
    flat = np.flatnonzero(mask.contiguous().numpy())
    rows, pos = np.divmod(flat, mask.shape[1])
    lat = pos if cols is None else cols.numpy().reshape(-1)[flat]
    if values.is_contiguous():
        vals = values.numpy().reshape(-1)[flat]
    else:
        vals = values.numpy()[rows, pos]
    return SparseCodes(torch.from_numpy(rows), torch.from_numpy(lat), torch.from_numpy(vals))


def _project(sae: SAE, x: torch.Tensor, *, column_major: bool = False) -> torch.Tensor:
    """``x' W_enc`` as ``[n, d_sae]``. With ``column_major`` (the sparse paths), when the SAE
    holds W_enc column-major (``_column_major``), it is computed as ``(W_enc^T x'^T)^T``, a
    column-major view: MKL's sgemm runs 5-30% faster with the wide encoder as its right
    operand, and gives the same bits as ``x' @ W_enc`` as SAELens computes it (each output
    is the same dot product; tests/test_sae_math.py and tests/test_sae_parity.py check)."""
    if column_major and _column_major(sae) and x.device.type == "cpu":
        return torch.mm(sae.W_enc.t(), x.t()).t()
    return torch.mm(x, sae.W_enc)


def _column_major(sae: SAE) -> bool:
    """Whether the SAE holds W_enc column-major (``W_enc.t()`` contiguous) on CPU."""
    w = sae.W_enc
    return w.device.type == "cpu" and w.t().is_contiguous() and not w.is_contiguous()


def _pre_acts(sae: SAE, x: torch.Tensor, *, column_major: bool = False) -> torch.Tensor:
    """``h = x' W_enc + b_enc`` as SAELens computes it: the matmul, then the bias added. A
    fused ``addmm`` rounds differently, which flips the sign of the odd ``h`` within an ulp
    of 0 (a latent that fires in SAELens and not here, at values ~1e-7); the separate add
    costs one pass over ``h``, small next to the matmul. On CPU numpy adds the bias: one
    IEEE float32 add per element like torch's (the same bits), without torch's thread-pool
    hand-off, which costs several ms per call on a busy 2-core machine (bench/sae.py).
    ``column_major``: see ``_project``."""
    pre = _project(sae, x, column_major=column_major)
    if _numpy_ok(pre) and not sae.b_enc.requires_grad:
        h = pre.numpy()
        np.add(h, sae.b_enc.numpy(), out=h)
        return pre
    return pre.add_(sae.b_enc)


def _greater(pre: torch.Tensor, floor: torch.Tensor | float) -> torch.Tensor:
    """``pre > floor`` as a bool tensor; on CPU by numpy (see ``_pre_acts`` for why)."""
    if _numpy_ok(pre) and not (isinstance(floor, torch.Tensor) and floor.requires_grad):
        bound = floor.numpy() if isinstance(floor, torch.Tensor) else floor
        return torch.from_numpy(np.greater(pre.numpy(), bound))
    return pre > floor


def _numpy_ok(t: torch.Tensor) -> bool:
    """Whether ``t`` can be worked on in place through ``t.numpy()``: a plain float32 CPU
    tensor outside autograd, row-major or (a 2-d one) column-major; numpy's elementwise
    passes keep either layout."""
    return (
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and (t.is_contiguous() or (t.ndim == 2 and t.t().is_contiguous()))
        and not t.requires_grad
    )


class MaskedArchitecture(Architecture):
    """An architecture whose activation is ``pre`` where ``mask`` holds and 0 elsewhere."""

    def masked(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(pre, mask)``; ``mask`` must imply ``pre > 0``. ``column_major``: the
        two may come column-major (see ``_project``)."""
        raise NotImplementedError

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        pre, mask = self.masked(sae, x)
        return pre.masked_fill_(~mask, 0.0)

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        pre, mask = self.masked(sae, x, column_major=True)
        return _coo(mask, pre)


@register_architecture("standard")
class Standard(MaskedArchitecture):
    """``f = ReLU(x' W_enc + b_enc)``."""

    tensors = ("b_enc",)

    def masked(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pre = _pre_acts(sae, x, column_major=column_major)
        return pre, _greater(pre, 0.0)


@register_architecture("jumprelu")
class JumpReLU(MaskedArchitecture):
    """``f = ReLU(h) * 1[h > threshold]`` (strict), i.e. ``h`` where ``h > max(threshold, 0)``."""

    tensors = ("b_enc", "threshold")

    def masked(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.threshold is not None
        pre = _pre_acts(sae, x, column_major=column_major)
        return pre, _greater(pre, sae.threshold.clamp_min(0.0))


@register_architecture("gated")
class Gated(MaskedArchitecture):
    """``f = 1[x' W_enc + b_gate > 0] * ReLU(x' (W_enc * exp(r_mag)) + b_mag)``; no b_enc.

    Both paths share one matmul: ``x' (W_enc * exp(r_mag)) = (x' W_enc) * exp(r_mag)``.
    """

    tensors = ("b_gate", "r_mag", "b_mag")

    def masked(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.b_gate is not None and sae.r_mag is not None and sae.b_mag is not None
        proj = _project(sae, x, column_major=column_major)
        gate = (proj + sae.b_gate) > 0
        mag = torch.addcmul(sae.b_mag, proj, sae.r_mag.exp())
        return mag, gate & (mag > 0)


def _ranked_pre_acts(sae: SAE, x: torch.Tensor, *, column_major: bool = False) -> torch.Tensor:
    """``h`` (times ``||W_dec[i]||`` if rescaling) row-major, as the top-k ranking reads it:
    ``topk`` along a strided row is several times slower than copying ``h`` row-major first
    (bench/sae.py), so a ``column_major`` product is copied once here."""
    pre = _pre_acts(sae, x, column_major=column_major)
    if sae.rescale_acts_by_decoder_norm:
        pre.mul_(sae.W_dec.norm(dim=1))
    return pre.contiguous()


@register_architecture("topk")
class TopK(Architecture):
    """Keep the k largest of ``h`` (times ``||W_dec[i]||`` if rescaling), then ReLU."""

    tensors = ("b_enc",)

    def _topk(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.k is not None
        pre = _ranked_pre_acts(sae, x, column_major=column_major)
        values, idx = pre.topk(sae.k, dim=1, sorted=False)
        return values, idx

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        values, idx = self._topk(sae, x)
        out = torch.zeros(x.shape[0], sae.d_sae, dtype=values.dtype)
        return out.scatter_(1, idx, values.relu_())

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        values, idx = self._topk(sae, x, column_major=True)
        idx, order = idx.sort(dim=1)
        values = values.gather(1, order)
        return _coo(values > 0, values, idx)


@register_architecture("abstopk")
class AbsTopK(TopK):
    """Keep the k largest ``|h|`` (times ``||W_dec[i]||`` if rescaling) with their sign; no ReLU."""

    def _topk(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.k is not None
        pre = _ranked_pre_acts(sae, x, column_major=column_major)
        size = torch.from_numpy(np.abs(pre.numpy())) if _numpy_ok(pre) else pre.abs()
        idx = size.topk(sae.k, dim=1, sorted=False).indices
        return pre.gather(1, idx), idx

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        values, idx = self._topk(sae, x)
        out = torch.zeros(x.shape[0], sae.d_sae, dtype=values.dtype)
        return out.scatter_(1, idx, values)

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        values, idx = self._topk(sae, x, column_major=True)
        idx, order = idx.sort(dim=1)
        values = values.gather(1, order)
        return _coo(values != 0, values, idx)


@register_architecture("groupmax")
class GroupMax(Architecture):
    """sparsify's groupmax: split ``h`` into k equal groups of consecutive latents and keep
    each group's largest value, then ReLU."""

    tensors = ("b_enc",)

    def _groupmax(
        self, sae: SAE, x: torch.Tensor, *, column_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert sae.k is not None
        pre = _pre_acts(sae, x, column_major=column_major).contiguous()
        values, idx = pre.view(x.shape[0], sae.k, -1).max(dim=2)
        return values, idx + torch.arange(0, sae.d_sae, sae.d_sae // sae.k)

    def dense(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        values, idx = self._groupmax(sae, x)
        out = torch.zeros(x.shape[0], sae.d_sae, dtype=values.dtype)
        return out.scatter_(1, idx, values.relu_())

    def sparse(self, sae: SAE, x: torch.Tensor) -> SparseCodes:
        values, idx = self._groupmax(
            sae, x, column_major=True
        )  # idx is already ascending within a row
        return _coo(values > 0, values, idx)


#: Architectures that rank latents per token and take ``k`` (and may rescale by the decoder
#: norm); groupmax takes ``k`` (its number of groups) too.
TOPK_ARCHITECTURES = ("topk", "abstopk")
K_ARCHITECTURES = (*TOPK_ARCHITECTURES, "groupmax")


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


def _v6_version(version: object) -> bool:
    """Whether a ``sae_lens_version`` is 6 or later (the v6 cfg layout)."""
    major = str(version or "").split(".", 1)[0]
    return major.isdigit() and int(major) >= 6


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder ready to encode, float32 on CPU, tensors in SAELens shapes.

    ``architecture`` names an entry of ``ARCHITECTURES`` and decides which of the optional
    tensors exist (``b_enc``; ``threshold``; gated: ``b_gate, r_mag, b_mag`` and no b_enc).
    ``k`` and ``rescale_acts_by_decoder_norm`` are topk's. With ``normalize_activations ==
    "expected_average_only_in"`` the tensors already have ``norm_scaling_factor`` folded in
    (see the module docstring). ``metadata`` is the cfg's (model_name, hook_name, ...).
    ``weights_sha256`` is the sha256 of the weights file this SAE was last loaded from or
    saved to, and ``format`` the name of its on-disk format (both None for an SAE built in
    memory). Tensors are held row-major, but W_enc column-major (``W_enc.t()`` contiguous)
    when d_in >= ``_COLUMN_MAJOR_MIN_D_IN``: the sparse encode multiplies by it (``_project``).
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
    format: str | None = None

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
                t = t.detach().to(torch.float32)
                setattr(self, name, t if name == "W_enc" else t.contiguous())
        if self.W_enc.ndim != 2:
            raise ModelError(f"W_enc must be [d_in, d_sae], got shape {tuple(self.W_enc.shape)}")
        if self.W_enc.shape[0] >= _COLUMN_MAJOR_MIN_D_IN:
            # W_enc.t() [d_sae, d_in] contiguous, as the sparse encode multiplies by it
            self.W_enc = self.W_enc.t().contiguous().t()
        else:
            self.W_enc = self.W_enc.contiguous()
        d_in, d_sae = self.W_enc.shape
        for name, shape in expected_shapes(self.architecture, d_in, d_sae).items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ModelError(
                    f"tensor '{name}' has shape {got}, expected {shape} "
                    f"(d_in={d_in}, d_sae={d_sae})"
                )
        if self.architecture in K_ARCHITECTURES:
            if type(self.k) is not int or not 1 <= self.k <= d_sae:
                raise ModelError(
                    f"a {self.architecture} SAE needs an integer k in [1, {d_sae}], got {self.k!r}"
                )
            if self.architecture == "groupmax" and (
                d_sae % self.k or self.rescale_acts_by_decoder_norm
            ):
                raise ModelError(
                    f"a groupmax SAE needs d_sae ({d_sae}) divisible by k ({self.k}) and "
                    "no rescale_acts_by_decoder_norm"
                )
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
        if not _v6_version(metadata.get("sae_lens_version")):
            metadata["sae_lens_version"] = SAELENS_CFG_VERSION
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
        if self.architecture in K_ARCHITECTURES:
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
        """Nonzero activations of ``x [n, d_in]`` as COO, by token then latent (strictly
        positive but for abstopk)."""
        arch = ARCHITECTURES[self.architecture]
        if _column_major(self):
            rows = _COLUMN_MAJOR_CHUNK_ROWS
        else:
            rows = max(_MIN_CHUNK_ROWS, _CHUNK_ELEMENTS // self.d_sae)
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


# --- on-disk formats, re-exported -----------------------------------------------------------

_FORMAT_NAMES = (
    "CFG_FILE",
    "SAE_FORMATS",
    "SAVE_DTYPES",
    "SAEFormat",
    "WEIGHTS_FILE",
    "load_sae",
    "load_saelens",
    "register_sae_format",
    "save_saelens",
    "sha256_file",
)


def __getattr__(name: str) -> Any:
    """``ingest.sae.load_sae`` etc.: the format names live in ``ingest.sae_formats`` (imported
    lazily, since that module imports this one)."""
    if name in _FORMAT_NAMES:
        return getattr(importlib.import_module("ingest.sae_formats"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
