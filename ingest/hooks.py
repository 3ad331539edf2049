"""Hook names: where in the reader model an SAE reads its activations.

An SAE's cfg names its hook the way its training library does. saedb runs plain Hugging Face
transformers (no TransformerLens), so each supported name maps onto a module of the HF model:

============================================  ===============================================
hook name                                     HF transformers
============================================  ===============================================
``blocks.L.hook_resid_pre`` (TransformerLens)  input of ``layers[L]`` = ``hidden_states[L]``
``blocks.L.hook_resid_post``                   output of ``layers[L]`` = ``hidden_states[L+1]``
``blocks.L.hook_mlp_out``                      what the MLP adds to the residual stream: the
                                               output of ``layers[L].mlp``, or of its
                                               ``post_feedforward_layernorm`` where the layer
                                               has one (Gemma 2/3, OLMo 2)
``hook_embed``                                 output of the input embedding module
sparsify ``layers.L`` / ``h.L``                = ``blocks.L.hook_resid_post``
sparsify ``layers.L.mlp`` / ``h.L.mlp``        output of the module ``layers[L].mlp`` itself
                                               (before any ``post_feedforward_layernorm``)
sparsify ``embed_tokens`` / ``wte`` / ...      = ``hook_embed``
============================================  ===============================================

A sparsify hookpoint names a module of the HF base model, and its SAE was trained on that
module's output: ``layers.L.mlp`` is ``blocks.L.hook_mlp_out`` only where no norm follows the
MLP (Llama, Qwen, GPT-2), and ``embed_tokens`` is the embedding module's output, which is
``hidden_states[0]`` only where no position embedding is added after it (not GPT-2). Gemma's
``sqrt(d_model)`` embedding scale is inside that module in transformers 5
(``Gemma2TextScaledWordEmbedding``), so it is part of ``hook_embed`` as it is of
TransformerLens's (which folds it into ``W_E``); transformers 4 applied it in the model's
forward, after the module.

The final-norm exception: HF applies the model's final norm to the last entry of
``hidden_states``, while TransformerLens's ``hook_resid_post`` of the last layer is before
it. ``capture`` therefore always takes the raw output of the module (a forward hook), never an
entry of ``hidden_states``, and stops the forward pass right there.

Hooks inside attention (``hook_z``, ``hook_q/k/v``, ``hook_pattern``, ``hook_attn_out``),
inside the MLP (``mlp.hook_pre/post``), ``hook_resid_mid`` and the norms' hooks cannot be
honoured from HF modules in a model-independent way; ``parse_hook`` refuses them by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from saedb.errors import ModelError

HookKind = Literal["resid_pre", "resid_post", "mlp_out", "mlp", "embed"]

#: What ``parse_hook`` accepts, for error messages and docs.
SUPPORTED_HOOKS = (
    "blocks.L.hook_resid_pre",
    "blocks.L.hook_resid_post",
    "blocks.L.hook_mlp_out",
    "hook_embed",
    "layers.L (sparsify; = blocks.L.hook_resid_post)",
    "layers.L.mlp (sparsify; the output of the mlp module)",
    "embed_tokens (sparsify; = hook_embed)",
)

_TRANSFORMERLENS = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out)")
#: sparsify hookpoints name modules of the HF base model; a multimodal Gemma 3 keeps its text
#: model under ``language_model``.
_PREFIX = r"(?:model\.)?(?:language_model\.)?"
_SPARSIFY = re.compile(_PREFIX + r"(?:layers|h)\.(\d+)(\.mlp)?")
_EMBEDDING = re.compile(_PREFIX + r"(?:embed_tokens|embed_in|embed|wte)|hook_embed")
#: Known hooks we refuse, with why (matched against the part after ``blocks.L.``).
_REFUSED = {
    r"attn\.hook_(z|q|k|v|pattern|attn_scores|result)|hook_(q|k|v)_input|hook_attn_in": (
        "it is inside the attention block, which HF models do not expose per head"
    ),
    r"hook_attn_out": "attention outputs are not exposed the same way by every HF model",
    r"mlp\.hook_(pre|post|pre_linear)|hook_mlp_in": "it is inside the MLP block",
    r"hook_resid_mid": "the residual stream between attention and MLP is not a module output",
    r"ln\d?(_final)?\.hook_(scale|normalized)": "it is inside a layer norm",
}


@dataclass(frozen=True)
class HookPoint:
    """A point of the reader: the input (``resid_pre``) or output (``resid_post``) of one
    layer, what its MLP adds to the residual stream (``mlp_out``), the output of its ``mlp``
    module (``mlp``, sparsify) or the output of the input embedding (``embed``, layer 0)."""

    layer: int
    kind: HookKind

    @property
    def name(self) -> str:
        """The canonical name of this hook: SAELens / TransformerLens where it has one,
        sparsify's ``layers.L.mlp`` for the raw MLP output; ``parse_hook`` reads it back."""
        if self.kind == "embed":
            return "hook_embed"
        if self.kind == "mlp":
            return f"layers.{self.layer}.mlp"
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def hidden_states_index(self) -> int | None:
        """Index into HF ``output_hidden_states`` (mind the final-norm exception above);
        None for the hooks that are not an entry of the residual stream in every model."""
        if self.kind not in ("resid_pre", "resid_post"):
            return None
        return self.layer if self.kind == "resid_pre" else self.layer + 1


def parse_hook(hook_name: str) -> HookPoint:
    """Parse an SAE's hook name into a ``HookPoint``; ModelError for unsupported hooks."""
    if isinstance(hook_name, str):
        m = _TRANSFORMERLENS.fullmatch(hook_name)
        if m:
            return HookPoint(layer=int(m.group(1)), kind=m.group(2))  # type: ignore[arg-type]
        m = _SPARSIFY.fullmatch(hook_name)
        if m:
            kind: HookKind = "mlp" if m.group(2) else "resid_post"
            return HookPoint(layer=int(m.group(1)), kind=kind)
        if _EMBEDDING.fullmatch(hook_name):
            return HookPoint(layer=0, kind="embed")
        site = re.sub(r"^(blocks|" + _PREFIX + r"(layers|h))\.\d+\.", "", hook_name)
        why = next((w for p, w in _REFUSED.items() if re.fullmatch(p, site)), None)
        if why is None and re.match(r"(self_attn|attn)\b", site):
            why = "it is inside the attention block, which HF models do not expose per head"
        if why is not None:
            raise ModelError(
                f"Unsupported SAE hook {hook_name!r}: it cannot be honoured ({why}). "
                "saedb reads the "
                f"residual stream and MLP outputs. Supported hooks are: "
                f"{', '.join(SUPPORTED_HOOKS)}"
            )
    raise ModelError(
        f"Unsupported SAE hook {hook_name!r}: saedb reads the residual stream and MLP "
        f"outputs only. Supported hooks are: {', '.join(SUPPORTED_HOOKS)}"
    )


def hook_module(layer: Any, hook: HookPoint, model_name: str = "the reader") -> Any:
    """The module of one decoder layer whose output (``mlp_out``, ``mlp``) or input / output
    (``resid_pre`` / ``resid_post``: the layer itself) the hook reads. ``embed`` reads no
    layer: the layer is returned as it is (``capture`` hooks the embedding module)."""
    if hook.kind not in ("mlp_out", "mlp"):
        return layer
    attrs = ("post_feedforward_layernorm", "mlp") if hook.kind == "mlp_out" else ("mlp",)
    for attr in attrs:
        module = getattr(layer, attr, None)
        if module is not None:
            return module
    raise ModelError(
        f"Unsupported SAE hook {hook.name}: it cannot be honoured (the layers of {model_name} "
        f"({type(layer).__name__}) have no 'mlp' module)"
    )


def _embedding_module(model: Any) -> Any:
    get = getattr(model, "get_input_embeddings", None)
    module = get() if callable(get) else None
    if module is None:
        raise ModelError(
            f"Unsupported SAE hook hook_embed: {type(model).__name__} has no input embedding"
        )
    return module


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass at the SAE's hook."""


def capture(model: Any, layers: Any, hook: HookPoint, **inputs: Any) -> Any:
    """Run ``model(**inputs)`` up to ``hook`` and return the activations there
    ``[batch, seq, d]`` (the forward pass stops right after them)."""
    captured: list[Any] = []
    if hook.layer >= len(layers):
        raise ModelError(f"SAE hook layer {hook.layer} does not exist ({len(layers)} layers)")
    if hook.kind == "embed":
        module = _embedding_module(model)
    else:
        module = hook_module(layers[hook.layer], hook, type(model).__name__)

    def post_hook(_module, _args, output):  # every other hook: the module's output
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    def pre_hook(_module, args, kwargs):  # resid_pre: the layer's input
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    if hook.kind == "resid_pre":
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(post_hook)
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ModelError(f"the forward pass never reached {hook.name}")
    return captured[0]
