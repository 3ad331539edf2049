"""Shared fixtures: the real reader model (from its PyPI package) with a small SAE.

The SAE here is random (seeded) but real: written in SAELens format by our own saver and
loaded back through the same path users take. It reads a shallow layer so that tests that
run the reader stay fast on a 2-core CPU; the reader itself is the real SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORTUNES = REPO / "data" / "fortunes"
TEST_HOOK = "blocks.2.hook_resid_post"


def make_sae_dir(
    path: Path,
    *,
    d_sae: int = 512,
    k: int = 16,
    seed: int = 0,
    hook: str = TEST_HOOK,
    d_in: int = 576,
    model_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
) -> Path:
    import torch

    from ingest.sae import SAE, save_saelens

    g = torch.Generator().manual_seed(seed)

    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    sae = SAE(
        architecture="topk",
        W_enc=w_dec.T.clone(),
        W_dec=w_dec,
        b_dec=torch.zeros(d_in),
        b_enc=torch.zeros(d_sae),
        k=k,
        metadata={"model_name": model_name, "hook_name": hook},
    )
    save_saelens(sae, path)
    return path


@pytest.fixture(scope="session")
def sae_dir(tmp_path_factory) -> Path:
    return make_sae_dir(tmp_path_factory.mktemp("sae") / "tiny-topk")


@pytest.fixture
def store_path(tmp_path, sae_dir) -> Path:
    """A fresh store with the builtin reader and the test SAE registered as default."""
    from ingest.pipeline import init_store

    path = tmp_path / "store.duckdb"
    init_store(path, sae=str(sae_dir), sae_name="tiny")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def fortunes(category: str, n: int) -> list[dict]:
    lines = (FORTUNES / f"{category}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines[:n]]


@pytest.fixture
def openai_server():
    """A real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py), stopped after."""
    from tests.openai_server import FakeOpenAI

    with FakeOpenAI() as server:
        yield server
