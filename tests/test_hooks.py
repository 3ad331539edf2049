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
        ("h.5", 5, "resid_post", 6),
        ("model.layers.2", 2, "resid_post", 3),
        ("language_model.layers.2", 2, "resid_post", 3),
        ("model.language_model.layers.2", 2, "resid_post", 3),
        ("embed_tokens", 0, "embed", None),
        ("model.embed_tokens", 0, "embed", None),
        ("language_model.embed_tokens", 0, "embed", None),
        ("wte", 0, "embed", None),
        ("embed_in", 0, "embed", None),
        ("hook_embed", 0, "embed", None),
        ("blocks.4.hook_mlp_out", 4, "mlp_out", None),
        ("layers.4.mlp", 4, "mlp", None),
        ("h.4.mlp", 4, "mlp", None),
    ],
)
def test_parse_supported(name: str, layer: int, kind: str, hidden_index: int | None) -> None:
    hook = parse_hook(name)
    assert hook == HookPoint(layer=layer, kind=kind)  # type: ignore[arg-type]
    assert hook.hidden_states_index == hidden_index


def test_sparsify_layer_is_resid_post() -> None:
    assert parse_hook("layers.7") == parse_hook("blocks.7.hook_resid_post")
    assert parse_hook("layers.7").name == "blocks.7.hook_resid_post"


@pytest.mark.parametrize(
    "name",
    ["blocks.3.hook_resid_pre", "blocks.3.hook_resid_post", "blocks.3.hook_mlp_out",
     "layers.3.mlp", "embed_tokens"],
)  # fmt: skip
def test_names_read_back(name: str) -> None:
    """``HookPoint.name`` is what a saedb-trained SAE records: it must parse to itself."""
    hook = parse_hook(name)
    assert parse_hook(hook.name) == hook


def test_sparsify_mlp_is_not_hook_mlp_out() -> None:
    """sparsify's ``layers.L.mlp`` is the mlp module's output; TransformerLens's hook_mlp_out
    is after Gemma 2's post-MLP norm: two points."""
    assert parse_hook("layers.3.mlp") != parse_hook("blocks.3.hook_mlp_out")
    assert parse_hook("layers.3.mlp").name == "layers.3.mlp"


@pytest.mark.parametrize(
    "name",
    [
        "blocks.3.attn.hook_z",
        "blocks.3.hook_resid_mid",
        "blocks.3.hook_attn_out",
        "blocks.3.mlp.hook_post",
        "layers.3.self_attn",
        "blocks.x.hook_resid_pre",
        "blocks.3.hook_resid_pre.extra",
        "layers.3.mlp.down_proj",
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


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("blocks.3.attn.hook_z", "inside the attention block"),
        ("blocks.3.hook_q_input", "inside the attention block"),
        ("layers.3.self_attn", "inside the attention block"),
        ("blocks.3.hook_resid_mid", "between attention and MLP"),
        ("blocks.3.mlp.hook_post", "inside the MLP block"),
        ("blocks.0.ln1.hook_normalized", "inside a layer norm"),
    ],
)
def test_refused_hooks_say_why(name: str, why: str) -> None:
    with pytest.raises(ModelError, match="cannot be honoured") as exc:
        parse_hook(name)
    assert why in str(exc.value) and "blocks.L.hook_mlp_out" in str(exc.value)


# --- capture on real (tiny, randomly initialised) HF transformers models -----------------


def tiny_model(kind: str):
    """A 3-layer model of a real HF architecture, random weights (built from its config)."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    if kind == "llama":
        model = transformers.LlamaModel(transformers.LlamaConfig(**common))
    elif kind == "gemma2":
        cfg = transformers.Gemma2Config(**common, query_pre_attn_scalar=8)
        model = transformers.Gemma2Model(cfg)
    elif kind == "gemma3":
        cfg = transformers.Gemma3TextConfig(**common, query_pre_attn_scalar=8)
        model = transformers.Gemma3TextModel(cfg)
    elif kind == "olmo2":
        model = transformers.Olmo2Model(transformers.Olmo2Config(**common, pad_token_id=0))
    else:
        cfg = transformers.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = transformers.GPT2Model(cfg)
    model.eval()
    # random norm weights, so that a wrongly applied norm cannot pass unnoticed
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


def input_of(module, model, ids):
    """The input of ``module`` in a full forward pass (our own independent hook)."""
    got = []
    handle = module.register_forward_pre_hook(
        lambda _m, args, kwargs: got.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True,
    )
    try:
        model(input_ids=ids)
    finally:
        handle.remove()
    return got[0]


def output_of(module, model, ids):
    """The output of ``module`` in a full forward pass (our own independent hook)."""
    got = []
    handle = module.register_forward_hook(lambda _m, _args, out: got.append(out))
    try:
        model(input_ids=ids)
    finally:
        handle.remove()
    return got[0]


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_capture_matches_hidden_states(kind: str) -> None:
    import torch

    from ingest.hooks import capture
    from ingest.reader import _find_layers

    model, ids = tiny_model(kind)
    layers = _find_layers(model)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        assert len(hs) == 4
        for layer in range(3):
            pre = capture(
                model, layers, parse_hook(f"blocks.{layer}.hook_resid_pre"), input_ids=ids
            )
            torch.testing.assert_close(pre, hs[layer])
        for layer in range(2):
            post = capture(model, layers, parse_hook(f"layers.{layer}"), input_ids=ids)
            torch.testing.assert_close(post, hs[layer + 1])
        # the last layer: HF's hidden_states[-1] has the final norm applied, the hook has not
        last = capture(model, layers, parse_hook("blocks.2.hook_resid_post"), input_ids=ids)
        assert not torch.allclose(last, hs[3], atol=1e-3)
        torch.testing.assert_close(model.norm(last), hs[3])


#: the norm whose input is the residual stream between attention and MLP (OLMo 2 has none
#: before its MLP: the mlp reads that stream itself)
PRE_MLP = {
    "llama": "post_attention_layernorm",
    "gemma2": "pre_feedforward_layernorm",
    "gemma3": "pre_feedforward_layernorm",
    "olmo2": "mlp",
}


@pytest.mark.parametrize("kind", list(PRE_MLP))
def test_capture_mlp_out_is_the_mlp_contribution(kind: str) -> None:
    """resid_post(L) = resid_mid(L) + mlp_out(L), with resid_mid read independently as the
    input of the norm before the MLP (of the MLP itself in OLMo 2)."""
    import torch

    from ingest.hooks import capture
    from ingest.reader import _find_layers

    model, ids = tiny_model(kind)
    layers = _find_layers(model)
    with torch.no_grad():
        for layer in range(3):
            mlp = capture(model, layers, parse_hook(f"blocks.{layer}.hook_mlp_out"), input_ids=ids)
            assert mlp.shape == (2, 7, 32)
            post = capture(model, layers, parse_hook(f"layers.{layer}"), input_ids=ids)
            mid = input_of(getattr(layers[layer], PRE_MLP[kind]), model, ids)
            torch.testing.assert_close(mid + mlp, post)


@pytest.mark.parametrize("kind", list(PRE_MLP))
def test_capture_sparsify_mlp_is_the_mlp_module_output(kind: str) -> None:
    """sparsify trains on the output of the module its hookpoint names: ``layers.L.mlp`` is
    ``layers[L].mlp``, before the post-MLP norm of Gemma 2/3 and OLMo 2."""
    import torch

    from ingest.hooks import capture
    from ingest.reader import _find_layers

    model, ids = tiny_model(kind)
    layers = _find_layers(model)
    with torch.no_grad():
        for layer in range(3):
            raw = capture(model, layers, parse_hook(f"layers.{layer}.mlp"), input_ids=ids)
            torch.testing.assert_close(raw, output_of(layers[layer].mlp, model, ids))
            tl = capture(model, layers, parse_hook(f"blocks.{layer}.hook_mlp_out"), input_ids=ids)
            norm = getattr(layers[layer], "post_feedforward_layernorm", None)
            if norm is None:  # Llama: no norm after the MLP, the two are one point
                assert raw.equal(tl)
            else:
                assert not torch.allclose(raw, tl, atol=1e-3)
                torch.testing.assert_close(norm(raw), tl)


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gemma3", "olmo2", "gpt2"])
def test_capture_embedding(kind: str) -> None:
    """``embed_tokens`` / ``wte`` / ``hook_embed`` = the embedding module's output: the token
    embeddings, times sqrt(d_model) for Gemma; GPT-2 adds position embeddings after it, so
    there it is not hidden_states[0]."""
    import torch

    from ingest.hooks import capture
    from ingest.reader import _find_layers

    model, ids = tiny_model(kind)
    layers = _find_layers(model)
    table = model.get_input_embeddings().weight
    scale = 32**0.5 if kind.startswith("gemma") else 1.0
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for name in ("embed_tokens", "wte", "hook_embed"):
            got = capture(model, layers, parse_hook(name), input_ids=ids)
            torch.testing.assert_close(got, table[ids] * scale)
        if kind == "gpt2":
            assert not torch.allclose(got, hs[0], atol=1e-3)
            torch.testing.assert_close(got + model.wpe.weight[:7], hs[0])
        else:
            torch.testing.assert_close(got, hs[0])


def test_capture_refuses_missing_layer_and_mlp() -> None:
    import torch

    from ingest.hooks import HookPoint, capture, hook_module

    model, ids = tiny_model("llama")
    layers = model.layers
    with pytest.raises(ModelError, match="layer 5 does not exist"):
        capture(model, layers, parse_hook("layers.5"), input_ids=ids)
    for kind in ("mlp_out", "mlp"):
        with pytest.raises(ModelError, match="have no 'mlp' module"):
            hook_module(torch.nn.Linear(2, 2), HookPoint(0, kind), "bert")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="has no input embedding"):
        capture(torch.nn.Linear(2, 2), layers, parse_hook("embed_tokens"), input=ids)
