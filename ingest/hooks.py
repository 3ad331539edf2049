"""Hook names: where in the reader model an SAE reads its activations.

An SAE's cfg names its hook the way its training library does. We support the residual
stream only, which plain Hugging Face transformers expose without TransformerLens:

- SAELens / TransformerLens ``blocks.L.hook_resid_pre``: the input of decoder layer L
  (HF ``hidden_states[L]``);
- SAELens / TransformerLens ``blocks.L.hook_resid_post``: the output of decoder layer L
  (HF ``hidden_states[L + 1]``);
- sparsify ``layers.L``: the output of ``model.layers[L]``, i.e. ``resid_post`` of L.

HF applies the final norm to the last entry of ``hidden_states``, so the reader takes the raw
output of the layer (a forward hook) rather than indexing ``hidden_states``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from saedb.errors import ModelError

HookKind = Literal["resid_pre", "resid_post"]

#: What ``parse_hook`` accepts, for error messages and docs.
SUPPORTED_HOOKS = (
    "blocks.L.hook_resid_pre",
    "blocks.L.hook_resid_post",
    "layers.L (sparsify; = blocks.L.hook_resid_post)",
)

_TRANSFORMERLENS = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post)")
_SPARSIFY = re.compile(r"layers\.(\d+)")


@dataclass(frozen=True)
class HookPoint:
    """A point in the residual stream: the input (``resid_pre``) or output of one layer."""

    layer: int
    kind: HookKind

    @property
    def name(self) -> str:
        """The canonical SAELens / TransformerLens name of this hook."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def hidden_states_index(self) -> int:
        """Index into HF ``output_hidden_states`` (mind the final-norm exception above)."""
        return self.layer if self.kind == "resid_pre" else self.layer + 1


def parse_hook(hook_name: str) -> HookPoint:
    """Parse an SAE's hook name into a ``HookPoint``; ModelError for unsupported hooks."""
    if isinstance(hook_name, str):
        m = _TRANSFORMERLENS.fullmatch(hook_name)
        if m:
            kind: HookKind = "resid_pre" if m.group(2) == "resid_pre" else "resid_post"
            return HookPoint(layer=int(m.group(1)), kind=kind)
        m = _SPARSIFY.fullmatch(hook_name)
        if m:
            return HookPoint(layer=int(m.group(1)), kind="resid_post")
    raise ModelError(
        f"Unsupported SAE hook {hook_name!r}: saedb reads the residual stream only. "
        f"Supported hooks are: {', '.join(SUPPORTED_HOOKS)}"
    )
