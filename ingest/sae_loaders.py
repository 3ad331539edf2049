"""Loaders for SAE formats other than SAELens, registered in ``ingest.sae_formats.SAE_FORMATS``.

Each turns its library's tensors into SAELens shapes (``W_enc [d_in, d_sae]``, ``W_dec
[d_sae, d_in]``) and its encode into one of our architectures, from the layouts documented
in shared/reference/sae-formats.md:

- ``sparsify`` (EleutherAI): ``<hookpoint>/cfg.json`` + ``sae.safetensors``; topk or groupmax,
  always subtracts ``b_dec``; the hookpoint is the directory name (``layers.8``).
- ``gemmascope``: ``params.npz`` (Gemma Scope 1) and ``gemmascope2``: ``params.safetensors``
  with lowercase keys and a ``config.json`` (Gemma Scope 2); jumprelu without ``b_dec``
  subtraction. Layer, site and model come from the release's directory names.
- ``goodfire``: one ``.pth`` state dict of ``encoder_linear`` / ``decoder_linear``; ReLU.
- ``llamascope``: ``hyperparams.json`` + ``checkpoints/final.safetensors``; jumprelu with a
  scalar threshold and dataset-wise input normalisation (``expected_average_only_in``).
- ``dictionary_learning``: ``ae.pt`` + ``config.json`` (``trainer.dict_class`` decides).

Transcoders and skip connections are refused: saedb embeds what an SAE reads, and an SAE with
a different output would decode wrongly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ingest.sae import SAE
from ingest.sae_formats import (
    SAEFormat,
    build_sae,
    check_tensor,
    read_json,
    register_sae_format,
    require_files,
    sha256_file,
    take,
)
from saedb.errors import ModelError


def _no_scaling(source: Path, given: float | None, fmt: str) -> None:
    if given is not None:
        raise ModelError(f"{source}: norm_scaling_factor does not apply to {fmt} SAEs")


def _shaped(
    source: Path, tensors: dict[str, torch.Tensor], d_in: int, d_sae: int, means: str
) -> dict[str, torch.Tensor]:
    """Check every tensor against the SAELens shape for (d_in, d_sae); float32 out."""
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    return {
        k: check_tensor(source, k, t, shapes.get(k, (d_sae,)), means) for k, t in tensors.items()
    }


def _torch_state_dict(path: Path) -> dict[str, Any]:
    """A state dict saved with torch.save, read without unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike
        raise ModelError(f"{path}: cannot read it as a torch state dict ({exc})") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _int(cfg: dict[str, Any], key: str, source: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{source}: '{key}' must be a positive integer, got {value!r}")
    return value


# --- sparsify (EleutherAI) ------------------------------------------------------------------

SPARSIFY_FILES = ("cfg.json", "sae.safetensors")


def _sparsify_dirs(path: Path) -> list[Path]:
    """Hookpoint directories of a sparsify checkpoint root, sorted by name."""
    if not path.is_dir():
        return []
    return sorted(d for d in path.iterdir() if d.is_dir() and (d / SPARSIFY_FILES[1]).is_file())


def _detect_sparsify(path: Path) -> bool:
    return (path / SPARSIFY_FILES[1]).is_file() or bool(_sparsify_dirs(path))


def load_sparsify(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """One sparsify sparse coder: the directory named for its hookpoint (``layers.8``)."""
    _no_scaling(path, norm_scaling_factor, "sparsify")
    if not (path / SPARSIFY_FILES[1]).is_file() and (subdirs := _sparsify_dirs(path)):
        names = ", ".join(d.name for d in subdirs)
        raise ModelError(
            f"{path} is a sparsify checkpoint with {len(subdirs)} sparse coders ({names}); "
            f"pass one of them, e.g. {subdirs[0]}"
        )
    require_files(path, SPARSIFY_FILES, "a sparsify hookpoint directory")
    cfg_path, weights_path = path / "cfg.json", path / "sae.safetensors"
    cfg = read_json(cfg_path)
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise ModelError(
            f"{cfg_path}: sparsify transcoders and skip connections are not supported "
            "(saedb embeds with SAEs that reconstruct their own input)"
        )
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise ModelError(f"{cfg_path}: activation {activation!r} is not supported (topk, groupmax)")
    d_in, k = _int(cfg, "d_in", cfg_path), _int(cfg, "k", cfg_path)
    d_sae = cfg.get("num_latents") or d_in * _int(cfg, "expansion_factor", cfg_path)
    try:
        stored = load_file(weights_path)
    except Exception as exc:
        raise ModelError(f"{weights_path}: cannot read safetensors ({exc})") from exc
    need = f"a sparsify {activation} SAE"
    enc = take(stored, weights_path, "encoder.weight", needed_for=need)
    tensors = {
        "W_enc": enc.T,
        "b_enc": take(stored, weights_path, "encoder.bias", needed_for=need),
        "W_dec": take(stored, weights_path, "W_dec", needed_for=need),
        "b_dec": take(stored, weights_path, "b_dec", needed_for=need),
    }
    means = f"cfg.json (d_in={d_in}, {d_sae} latents)"
    metadata: dict[str, Any] = {"hook_name": path.name, "sparsify_cfg": cfg}
    run_cfg = path.parent / "config.json"  # the training run's config, when kept beside
    if run_cfg.is_file():
        with_model = read_json(run_cfg)
        if isinstance(with_model.get("model"), str):
            metadata["model_name"] = with_model["model"]
    return build_sae(
        path,
        architecture=activation,
        **_shaped(weights_path, tensors, d_in, d_sae, means),
        k=k,
        apply_b_dec_to_input=True,
        metadata=metadata,
        weights_sha256=sha256_file(weights_path),
        format="sparsify",
    )


register_sae_format(
    SAEFormat(
        name="sparsify",
        expects="a hookpoint directory with cfg.json and sae.safetensors",
        detect=_detect_sparsify,
        load=load_sparsify,
    )
)


# --- Gemma Scope 1 and 2 --------------------------------------------------------------------

_GEMMA_RELEASE = re.compile(r"gemma-scope-(?P<two>2-)?(?P<size>\d+(?:\.\d+)?[bm])-(?P<kind>pt|it)")
_GEMMA_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
#: Gemma Scope 1 release suffixes (``-res``) and Gemma Scope 2 folder names (``resid_post``,
#: ``resid_post_all``) of one site
_GEMMA_SITE = re.compile(
    r"gemma-scope-[^/]*-(res|mlp|att)\b|/(resid_post|mlp_out|attn_out)(?:_all)?(?=/|$)"
)


def gemma3_model_name(name: str) -> str:
    """The Hugging Face id of the Gemma 3 model a Gemma Scope 2 SAE names (``gemma-v3-1b-pt``,
    ``google/gemma-3-1b-pt``): ``google/`` prefixed, and no ``-pt`` for 270m, whose base model
    is published as ``google/gemma-3-270m``."""
    name = name.replace("-v3", "-3")
    if "/" not in name:
        name = f"google/{name}"
    if re.search(r"-270m-pt$", name):
        name = name[: -len("-pt")]
    return name


def _gemma_scope_metadata(path: Path, generation: int) -> dict[str, Any]:
    """model_name and hook_name from a Gemma Scope release path such as
    ``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`` or (Gemma Scope 2)
    ``gemma-scope-2-1b-pt/resid_post/layer_10_width_16k_l0_small`` (None where not there)."""
    text = str(path.resolve())
    meta: dict[str, Any] = {"model_name": None, "hook_name": None}
    release = _GEMMA_RELEASE.search(text)
    if release and bool(release["two"]) == (generation == 2):
        size, kind = release["size"], release["kind"]
        if generation == 1:
            meta["model_name"] = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        else:
            meta["model_name"] = gemma3_model_name(f"gemma-3-{size}-{kind}")
    layer = re.search(r"layer_(\d+)", text)
    site = _GEMMA_SITE.search(text)
    if layer and site:
        word = (
            site.group(1)
            or {"resid_post": "res", "mlp_out": "mlp", "attn_out": "att"}[site.group(2)]
        )
        meta["hook_name"] = f"blocks.{layer.group(1)}.{_GEMMA_SITES[word]}"
    return meta


def _file_or_dir(path: Path, name: str) -> Path:
    return path if path.is_file() and path.name == name else path / name


def load_gemmascope(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """Gemma Scope 1: ``params.npz`` with W_enc, W_dec, b_enc, b_dec, threshold."""
    _no_scaling(path, norm_scaling_factor, "Gemma Scope")
    npz = _file_or_dir(path, "params.npz")
    if not npz.is_file():
        raise ModelError(f"{npz} does not exist: a Gemma Scope SAE directory holds params.npz")
    try:
        with np.load(npz, allow_pickle=False) as data:
            stored = {k: torch.from_numpy(np.asarray(data[k])) for k in data.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{npz}: cannot read it as an .npz archive ({exc})") from exc
    return _gemma_jumprelu(npz, stored, _gemma_scope_metadata(npz, 1), "gemmascope", upper=True)


def _gemma_jumprelu(
    source: Path, stored: dict[str, torch.Tensor], meta: dict[str, Any], fmt: str, upper: bool
) -> SAE:
    names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    keys = names if upper else ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
    need = "a Gemma Scope JumpReLU SAE"
    tensors = {
        n: take(stored, source, k, needed_for=need) for n, k in zip(names, keys, strict=True)
    }
    if tensors["W_enc"].ndim != 2:
        raise ModelError(f"{source}: '{keys[0]}' must be a matrix [d_in, d_sae]")
    d_in, d_sae = tensors["W_enc"].shape
    return build_sae(
        source,
        architecture="jumprelu",
        **_shaped(source, tensors, d_in, d_sae, f"{keys[0]} [d_in={d_in}, d_sae={d_sae}]"),
        apply_b_dec_to_input=False,
        metadata=meta,
        weights_sha256=sha256_file(source),
        format=fmt,
    )


#: ``model.layers.L...``; a multimodal Gemma 3 (4b and up) keeps its text model under
#: ``language_model`` (``model.language_model.layers.L``, before transformers 4.52
#: ``language_model.model.layers.L``)
_HF_HOOK = re.compile(r"(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)(?:\.(.+))?")


def _hook_from_hf(hf_hook: str | None) -> str | None:
    """TransformerLens name of a Gemma Scope 2 ``hf_hook_point_in`` (None if unknown)."""
    m = _HF_HOOK.fullmatch(hf_hook or "")
    if not m:
        return None
    layer, rest = m.groups()
    site = {
        "output": "hook_resid_post",
        "post_feedforward_layernorm.output": "hook_mlp_out",
        "self_attn.o_proj.input": "attn.hook_z",
        "pre_feedforward_layernorm.output": "hook_mlp_in",
    }.get(rest or "")
    return f"blocks.{layer}.{site}" if site else None


def load_gemmascope2(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """Gemma Scope 2: ``params.safetensors`` (w_enc, w_dec, b_enc, b_dec, threshold) and an
    optional ``config.json`` (architecture jump_relu, model_name, hf_hook_point_in)."""
    _no_scaling(path, norm_scaling_factor, "Gemma Scope 2")
    weights = _file_or_dir(path, "params.safetensors")
    if not weights.is_file():
        raise ModelError(
            f"{weights} does not exist: a Gemma Scope 2 SAE directory holds params.safetensors"
        )
    meta = _gemma_scope_metadata(weights, 2)
    cfg_path = weights.parent / "config.json"
    if cfg_path.is_file():
        cfg = read_json(cfg_path)
        if cfg.get("architecture", "jump_relu") != "jump_relu":
            raise ModelError(
                f"{cfg_path}: architecture {cfg.get('architecture')!r} is not supported "
                "(Gemma Scope 2 SAEs are jump_relu)"
            )
        if cfg.get("hf_hook_point_out") or cfg.get("affine_connection"):
            raise ModelError(f"{cfg_path}: Gemma Scope 2 transcoders are not supported")
        if isinstance(cfg.get("model_name"), str):
            meta["model_name"] = gemma3_model_name(cfg["model_name"])
        meta["hook_name"] = _hook_from_hf(cfg.get("hf_hook_point_in")) or meta["hook_name"]
        meta["gemmascope2_cfg"] = cfg
    try:
        stored = load_file(weights)
    except Exception as exc:
        raise ModelError(f"{weights}: cannot read safetensors ({exc})") from exc
    if "affine_skip_connection" in stored:
        raise ModelError(f"{weights}: Gemma Scope 2 transcoders are not supported")
    return _gemma_jumprelu(weights, stored, meta, "gemmascope2", upper=False)


register_sae_format(
    SAEFormat(
        name="gemmascope",
        expects="params.npz (Gemma Scope), or a directory holding it",
        detect=lambda p: _file_or_dir(p, "params.npz").is_file(),
        load=load_gemmascope,
    )
)
register_sae_format(
    SAEFormat(
        name="gemmascope2",
        expects="params.safetensors (+ config.json) of Gemma Scope 2, or a directory holding it",
        detect=lambda p: _file_or_dir(p, "params.safetensors").is_file(),
        load=load_gemmascope2,
    )
)


# --- Goodfire -------------------------------------------------------------------------------

_GOODFIRE_NAME = re.compile(r"(?P<model>.+)-SAE-l(?P<layer>\d+)")


def _goodfire_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix in (".pth", ".pt") and path.name != "ae.pt" else None
    if path.is_dir() and not (path / "ae.pt").exists():
        found = sorted(path.glob("*.pth"))
        return found[0] if len(found) == 1 else None
    return None


def load_goodfire(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """A Goodfire ``.pth``: encoder_linear.{weight [d_sae, d_in], bias}, decoder_linear.{weight
    [d_in, d_sae], bias}; ReLU without b_dec subtraction. Model and layer from the file name
    (``Llama-3.1-8B-Instruct-SAE-l19.pth``: meta-llama/..., blocks.19.hook_resid_post)."""
    _no_scaling(path, norm_scaling_factor, "Goodfire")
    weights = _goodfire_file(path)
    if weights is None:
        raise ModelError(f"{path}: expected a Goodfire .pth file or a directory with one")
    stored = _torch_state_dict(weights)
    need = "a Goodfire SAE"
    enc = take(stored, weights, "encoder_linear.weight", needed_for=need)
    if enc.ndim != 2:
        raise ModelError(f"{weights}: 'encoder_linear.weight' must be a matrix [d_sae, d_in]")
    d_sae, d_in = enc.shape
    tensors = {
        "W_enc": enc.T,
        "b_enc": take(stored, weights, "encoder_linear.bias", needed_for=need),
        "W_dec": take(stored, weights, "decoder_linear.weight", needed_for=need).T,
        "b_dec": take(stored, weights, "decoder_linear.bias", needed_for=need),
    }
    meta: dict[str, Any] = {"model_name": None, "hook_name": None}
    m = _GOODFIRE_NAME.fullmatch(weights.stem)
    if m:
        meta["model_name"] = f"meta-llama/{m['model']}"
        meta["hook_name"] = f"blocks.{m['layer']}.hook_resid_post"
    return build_sae(
        weights,
        architecture="standard",
        **_shaped(weights, tensors, d_in, d_sae, f"encoder_linear.weight [{d_sae}, {d_in}]"),
        apply_b_dec_to_input=False,
        metadata=meta,
        weights_sha256=sha256_file(weights),
        format="goodfire",
    )


register_sae_format(
    SAEFormat(
        name="goodfire",
        expects="a Goodfire .pth file, or a directory with exactly one",
        detect=lambda p: _goodfire_file(p) is not None,
        load=load_goodfire,
    )
)


# --- Llama Scope ----------------------------------------------------------------------------

LLAMASCOPE_FILES = ("hyperparams.json", "checkpoints/final.safetensors")


def load_llamascope(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """Llama Scope: jumprelu with one scalar threshold, inputs normalised dataset-wise.

    ``s = sqrt(d_in) / dataset_average_activation_norm.in`` is folded into the weights
    (``expected_average_only_in``) and the threshold becomes ``jump_relu_threshold * s``,
    as SAELens reads these SAEs; b_dec is not subtracted from the input.
    """
    _no_scaling(path, norm_scaling_factor, "Llama Scope (its factor is in hyperparams.json)")
    require_files(path, LLAMASCOPE_FILES, "a Llama Scope SAE directory")
    hp_path, weights = path / LLAMASCOPE_FILES[0], path / LLAMASCOPE_FILES[1]
    hp = read_json(hp_path)
    hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out", hp.get("hook_point_in"))
    if hook_in != hook_out:
        raise ModelError(
            f"{hp_path}: Llama Scope transcoders ({hook_in} -> {hook_out}) are not supported"
        )
    d_in, d_sae = _int(hp, "d_model", hp_path), _int(hp, "d_sae", hp_path)
    try:
        avg = float(hp["dataset_average_activation_norm"]["in"])
        jrt = float(hp["jump_relu_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{hp_path}: needs numbers dataset_average_activation_norm.in and "
            f"jump_relu_threshold ({exc!r})"
        ) from None
    if not avg > 0:
        raise ModelError(f"{hp_path}: dataset_average_activation_norm.in must be > 0, got {avg}")
    s = d_in**0.5 / avg
    try:
        stored = load_file(weights)
    except Exception as exc:
        raise ModelError(f"{weights}: cannot read safetensors ({exc})") from exc
    need = "a Llama Scope SAE"
    t = _shaped(
        weights,
        {
            "W_enc": take(stored, weights, "encoder.weight", needed_for=need).T,
            "b_enc": take(stored, weights, "encoder.bias", needed_for=need),
            "W_dec": take(stored, weights, "decoder.weight", needed_for=need).T,
            "b_dec": take(stored, weights, "decoder.bias", needed_for=need),
        },
        d_in,
        d_sae,
        f"hyperparams.json (d_model={d_in}, d_sae={d_sae})",
    )
    meta = {
        "model_name": hp.get("model_name") or "meta-llama/Llama-3.1-8B",
        "hook_name": hook_in,
        "llamascope_hyperparams": hp,
    }
    return build_sae(
        path,
        architecture="jumprelu",
        W_enc=t["W_enc"] * s,
        W_dec=t["W_dec"] / s,
        b_dec=t["b_dec"] / s,
        b_enc=t["b_enc"],
        threshold=torch.full((d_sae,), jrt * s, dtype=torch.float32),
        apply_b_dec_to_input=False,
        normalize_activations="expected_average_only_in",
        norm_scaling_factor=s,
        metadata=meta,
        weights_sha256=sha256_file(weights),
        format="llamascope",
    )


register_sae_format(
    SAEFormat(
        name="llamascope",
        expects="a directory with hyperparams.json and checkpoints/final.safetensors",
        detect=lambda p: (p / LLAMASCOPE_FILES[0]).is_file(),
        load=load_llamascope,
    )
)


# --- dictionary_learning --------------------------------------------------------------------

#: trainer.dict_class -> (architecture, subtracts b_dec from the input)
DICT_CLASSES = {
    "AutoEncoder": ("standard", True),
    "AutoEncoderTopK": ("topk", True),
    "BatchTopKSAE": ("jumprelu", True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", True),
    "GatedAutoEncoder": ("gated", True),
    "JumpReluAutoEncoder": ("jumprelu", False),
}


def _dl_hook(trainer: dict[str, Any], source: Path) -> str:
    layer = trainer.get("layer")
    if not isinstance(layer, int):
        raise ModelError(f"{source}: trainer.layer must be an integer, got {layer!r}")
    sub = str(trainer.get("submodule_name") or "resid_post")
    site = "hook_mlp_out" if "mlp" in sub else "attn.hook_z" if "attn" in sub else "hook_resid_post"
    return f"blocks.{layer}.{site}"


def load_dictionary_learning(path: Path, *, norm_scaling_factor: float | None = None) -> SAE:
    """dictionary_learning: ``ae.pt`` (state dict) + ``config.json`` whose ``trainer`` names
    dict_class, activation_dim, dict_size, k, layer and lm_name."""
    _no_scaling(path, norm_scaling_factor, "dictionary_learning")
    require_files(path, ("ae.pt", "config.json"), "a dictionary_learning SAE directory")
    cfg_path, weights = path / "config.json", path / "ae.pt"
    trainer = read_json(cfg_path).get("trainer")
    if not isinstance(trainer, dict):
        raise ModelError(f"{cfg_path}: has no 'trainer' object")
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise ModelError(
            f"{cfg_path}: dict_class {dict_class!r} is not supported. "
            f"Valid dict classes are: {', '.join(sorted(DICT_CLASSES))}"
        )
    arch, subtract = DICT_CLASSES[dict_class]
    d_in = _int(trainer, "activation_dim", cfg_path)
    d_sae = _int(trainer, "dict_size", cfg_path)
    sd = _torch_state_dict(weights)
    need = f"a {dict_class}"
    t: dict[str, torch.Tensor] = {}
    # nn.Parameter classes (JumpReluAutoEncoder, MatryoshkaBatchTopKSAE) store W_enc [d_in,
    # d_sae] and W_dec [d_sae, d_in] as SAELens does; nn.Linear ones store the transposes
    for name, linear in (("W_enc", "encoder.weight"), ("W_dec", "decoder.weight")):
        if name in sd:
            t[name] = take(sd, weights, name, needed_for=need)
        else:
            t[name] = take(sd, weights, linear, name, needed_for=need).T
    t["b_dec"] = take(sd, weights, "b_dec", "bias", "decoder_bias", needed_for=need)
    if arch == "gated":
        t["b_gate"] = take(sd, weights, "gate_bias", needed_for=need)
        t["r_mag"] = take(sd, weights, "r_mag", needed_for=need)
        t["b_mag"] = take(sd, weights, "mag_bias", needed_for=need)
    else:
        t["b_enc"] = take(sd, weights, "b_enc", "encoder.bias", needed_for=need)
    if arch == "jumprelu":
        t["threshold"] = take(sd, weights, "threshold", needed_for=need)
    k = None
    if arch == "topk":
        k = trainer.get("k")
        if k is None and "k" in sd:
            k = int(sd["k"])
    meta = {
        "model_name": trainer.get("lm_name"),
        "hook_name": _dl_hook(trainer, cfg_path),
        "dictionary_learning_trainer": trainer,
    }
    return build_sae(
        path,
        architecture=arch,
        **_shaped(
            weights, t, d_in, d_sae, f"config.json (activation_dim={d_in}, dict_size={d_sae})"
        ),
        k=k,
        apply_b_dec_to_input=subtract,
        metadata=meta,
        weights_sha256=sha256_file(weights),
        format="dictionary_learning",
    )


register_sae_format(
    SAEFormat(
        name="dictionary_learning",
        expects="a directory with ae.pt and config.json",
        detect=lambda p: (p / "ae.pt").is_file(),
        load=load_dictionary_learning,
    )
)
