"""Hook names -> residual-stream points of the reader model."""

from __future__ import annotations

import pytest

from ingest.hooks import HookPoint, parse_hook
from saedb.errors import ModelError


@pytest.mark.parametrize(
    ("name", "layer", "kind", "hidden_index"),
    [
        ("blocks.0.hook_resid_pre", 0, "resid_pre", 0),
        ("blocks.3.hook_resid_pre", 3, "resid_pre", 3),
        ("blocks.12.hook_resid_post", 12, "resid_post", 13),
        ("layers.5", 5, "resid_post", 6),
    ],
)
def test_parse_supported(name: str, layer: int, kind: str, hidden_index: int) -> None:
    hook = parse_hook(name)
    assert hook == HookPoint(layer=layer, kind=kind)  # type: ignore[arg-type]
    assert hook.hidden_states_index == hidden_index


def test_sparsify_layer_is_resid_post() -> None:
    assert parse_hook("layers.7") == parse_hook("blocks.7.hook_resid_post")
    assert parse_hook("layers.7").name == "blocks.7.hook_resid_post"


@pytest.mark.parametrize(
    "name",
    [
        "blocks.3.attn.hook_z",
        "blocks.3.hook_mlp_out",
        "blocks.3.hook_resid_mid",
        "blocks.x.hook_resid_pre",
        "blocks.3.hook_resid_pre.extra",
        "layers.3.mlp",
        "embed_tokens",
        "",
    ],
)
def test_unsupported_hooks_say_what_is_supported(name: str) -> None:
    with pytest.raises(ModelError) as exc:
        parse_hook(name)
    message = str(exc.value)
    assert repr(name) in message
    assert "blocks.L.hook_resid_pre" in message and "layers.L" in message


def test_non_string_hook() -> None:
    with pytest.raises(ModelError, match="Unsupported SAE hook None"):
        parse_hook(None)  # type: ignore[arg-type]
