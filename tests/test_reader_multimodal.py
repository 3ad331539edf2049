"""A multimodal Gemma 3 reader (4b and larger): its language model's layers are found under
``language_model`` and its width and depth are read from ``text_config``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ingest.hooks import parse_hook
from ingest.reader import DEFAULT_READER, Reader, resolve_reader


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    real = resolve_reader(DEFAULT_READER).path  # borrow SmolLM2's fast tokenizer
    cfg = transformers.Gemma3Config(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=49152,
            max_position_embeddings=256,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
    )
    torch.manual_seed(0)
    where = tmp_path_factory.mktemp("gemma3") / "tiny-gemma3"
    transformers.Gemma3ForConditionalGeneration(cfg).save_pretrained(where)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (where / f).symlink_to(real / f)
    return where


def test_multimodal_gemma3_reader_reads_its_language_model(gemma3_dir: Path) -> None:
    import transformers

    reader = Reader(resolve_reader(str(gemma3_dir)), parse_hook("blocks.1.hook_resid_post"))
    assert reader.d_model == 32
    assert reader.max_positions == 256
    assert len(reader.layers) == 2  # only the layers up to the hook are loaded
    docs = reader.tokenize(["The cat sat on the mat."], [None])
    batch = reader.windows(docs)
    got = reader.forward(batch)

    full = transformers.Gemma3ForConditionalGeneration.from_pretrained(gemma3_dir).eval()
    ids = torch.from_numpy(batch[0].ids)[None]
    with torch.inference_mode():
        out = full.model.language_model(input_ids=ids, output_hidden_states=True)
    want = out.hidden_states[2][0][torch.from_numpy(batch[0].pool)]
    assert got.hidden.shape == want.shape and want.shape[0] > 3
    torch.testing.assert_close(got.hidden, want, rtol=1e-5, atol=1e-5)


def test_multimodal_gemma3_hook_past_the_last_layer_is_refused(gemma3_dir: Path) -> None:
    from saedb.errors import ModelError

    with pytest.raises(ModelError, match=r"layer 5 does not exist: .* has 3 layers"):
        Reader(resolve_reader(str(gemma3_dir)), parse_hook("blocks.5.hook_resid_post"))
