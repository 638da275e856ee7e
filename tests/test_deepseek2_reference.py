"""Our deepseek2 forward against llama.cpp's logits (tests/data/reference_deepseek2.json).

The synthetic files are rewritten from their presets and must be byte-identical to the ones
the referee ran (scripts/make_reference_deepseek2.py records their sha256).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import greedy_continuation
from gguf import GGMLQuantizationType, quants

from agentcore.engine.backends.cpu import NumpyOps
from agentcore.engine.model import build_model
from agentcore.engine.model.gguf import load_gguf
from agentcore.testing.synthetic_deepseek2 import PRESETS, write_synthetic_deepseek2

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_deepseek2.json").read_text())
FILES = {f["preset"]: f for f in REFERENCE["files"]}
F32_PRESETS = [p for p in FILES if PRESETS[p].get("qtype", "F32") == "F32"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """preset -> (path, model over NumpyOps), written once per module."""
    out = {}
    ops = NumpyOps(threads=1)
    for preset in FILES:
        path = tmp_path_factory.mktemp("ds2") / f"{preset}.gguf"
        write_synthetic_deepseek2(path, **PRESETS[preset])
        out[preset] = (path, build_model(load_gguf(path), ops))
    return out


def _compare(model, prompt) -> tuple[np.ndarray, np.ndarray]:
    """(our top-1 ids, per position max |our - llama.cpp| over llama.cpp's top ids)."""
    logits = model.logits(prompt["ids"])
    top = np.array(prompt["top_ids"])
    delta = np.abs(np.take_along_axis(logits, top, axis=1) - np.array(prompt["top_logits"]))
    return logits.argmax(axis=1) == top[:, 0], delta.max(axis=1)


@pytest.mark.parametrize("preset", list(FILES))
def test_synthetic_file_is_the_one_the_referee_ran(models, preset):
    path, _ = models[preset]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FILES[preset]["sha256"]


@pytest.mark.parametrize("preset", F32_PRESETS)
def test_f32_logits_match_llama_cpp(models, preset):
    _, model = models[preset]
    results = [_compare(model, p) for p in FILES[preset]["prompts"]]
    top1 = np.concatenate([r[0] for r in results])
    delta = np.concatenate([r[1] for r in results])
    assert top1.mean() >= 0.995
    assert delta.max() < 0.05


@pytest.mark.parametrize("preset", F32_PRESETS)
def test_f32_greedy_continuations_equal_llama_cpp(models, preset):
    _, model = models[preset]
    for prompt in FILES[preset]["prompts"]:
        assert greedy_continuation(model, prompt["ids"], len(prompt["greedy"])) == prompt["greedy"]


def test_q8_0_logits_are_close_to_llama_cpp_despite_its_8_bit_activations(models):
    # llama.cpp rounds every Q8_0 matmul's input to 8 bits; with MoE a rounding can flip an
    # expert choice, so single positions may differ by more (measured: top-1 130/137, median
    # 0.09, max 2.6). The bound is on agreement and the typical error, not the worst case.
    _, model = models["v3_q8_0"]
    results = [_compare(model, p) for p in FILES["v3_q8_0"]["prompts"]]
    top1 = np.concatenate([r[0] for r in results])
    delta = np.concatenate([r[1] for r in results])
    assert top1.mean() >= 0.9
    assert np.median(delta) < 0.15


def _q8_round(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    q8 = GGMLQuantizationType.Q8_0
    return quants.dequantize(quants.quantize(flat, q8), q8).reshape(x.shape)


class _Q8ActivationOps(NumpyOps):
    """NumpyOps that round each quantized matmul's input to Q8_0, as ggml's CPU does."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.quantized: set[int] = set()

    def prepare_linear(self, weights, biases=None):
        lin = super().prepare_linear(weights, biases)
        if all(w.qtype == GGMLQuantizationType.Q8_0 for w in weights):
            self.quantized.add(id(lin.w))
        return lin

    def matmul(self, x, lin):
        return super().matmul(_q8_round(x) if id(lin.w) in self.quantized else x, lin)

    def head_matmul(self, x, w):
        return super().head_matmul(_q8_round(x), w)

    def moe(self, x, experts, ids, weights):
        y = np.zeros((len(x), experts.down.shape[1]), np.float32)
        xq = _q8_round(x)
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            h = self.swiglu(xq[rows] @ experts.gate_up[e].T)
            y[rows] += weights[rows, slot, None] * (_q8_round(h) @ experts.down[e].T)
        return y


def test_q8_0_matches_llama_cpp_once_its_activation_rounding_is_simulated(models):
    # Evidence that the Q8_0 gap above is llama.cpp's activation rounding and nothing else:
    # with it simulated, the short prompts agree to float32 noise. (The 96-token prompt
    # still differs by ~0.1: llama.cpp takes another matmul path for larger batches.)
    path, _ = models["v3_q8_0"]
    model = build_model(load_gguf(path), _Q8ActivationOps())
    for prompt in FILES["v3_q8_0"]["prompts"]:
        if len(prompt["ids"]) <= 33:
            top1, delta = _compare(model, prompt)
            # A float32 sum in another order (the BLAS kernel differs by CPU) can still flip
            # one element's 8-bit rounding: on an AVX-512 Xeon one of the 33 positions is off
            # by 0.0038, every other by < 1e-4 (unsimulated: median 0.06, top-1 misses).
            assert top1.all() and np.median(delta) < 1e-4 and delta.max() < 1e-2
