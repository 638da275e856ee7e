"""The forward pass against llama.cpp (the referee) on the real SmolLM2-135M-Instruct Q4_1.

What agreement to expect. Both sides dequantize the same Q4_1/Q8_0 blocks, but llama.cpp
rounds activations to 8 bits for its integer dot products and keeps K/V in fp16, while we
compute in float32. llama.cpp does not agree with itself beyond that noise either: fed the
same prompts one token at a time (n_batch=1) instead of in one batch, it matches its own
batched top-1 at 98.95% of positions, differs by up to 0.73 on top-5 logits, and repeats only
5 of the 10 greedy continuations. So the tests ask for what noise cannot excuse:
- the top-1 token agrees wherever llama.cpp's top-2 margin exceeds ``CONFIDENT`` (and >= 97%
  of all positions); top-5 logits are within ``TOP5_BOUND`` (median within 0.25);
- every greedy continuation step, fed llama.cpp's previous tokens, picks llama.cpp's token or
  loses it by a near-tie (llama.cpp's token is our runner-up, less than ``NEAR_TIE`` behind).
Measured on 2026-11-22: top-1 97.9% (all 6 misses at margins <= 0.2), top-5 max |d| 0.96
(median 0.15), 7/10 continuations identical, the other 3 split at gaps 0.02 / 0.06 / 0.18.
"""

import numpy as np
import pytest
from engine_fixtures import REFERENCE_SMOLLM2

from agentcore.engine.backends.cpu import DenseKV, NumpyOps
from agentcore.engine.model.transformer import Transformer

CONFIDENT = 0.5
TOP5_BOUND = 1.0
NEAR_TIE = 0.5

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        not REFERENCE_SMOLLM2.exists(),
        reason=f"{REFERENCE_SMOLLM2} is missing: run scripts/make_reference.py with llama-cpp-python",
    ),
]


@pytest.fixture(scope="module")
def runs(smollm2_model, reference_smollm2):
    """Per prompt: our logits at every prompt position, and the teacher-forced continuation."""
    transformer = Transformer(smollm2_model, NumpyOps())
    out = []
    for prompt in reference_smollm2["prompts"]:
        kv = DenseKV(smollm2_model.spec, len(prompt["ids"]) + 32)
        logits = transformer.forward(prompt["ids"], 0, kv, all_logits=True)
        steps = [logits[-1]]
        for tok in prompt["greedy"][:-1]:
            steps.append(transformer.forward([tok], kv.length, kv))
        out.append((prompt, logits, np.stack(steps)))
    return out


def test_top1_agrees_with_llama_cpp(runs):
    agree = total = 0
    for prompt, logits, _ in runs:
        ref_top = np.array(prompt["top_logits"])
        ours = logits.argmax(axis=1)
        same = ours == np.array(prompt["top_ids"])[:, 0]
        confident = ref_top[:, 0] - ref_top[:, 1] > CONFIDENT
        assert same[confident].all(), f"{prompt['name']}: positions {np.flatnonzero(~same)}"
        agree, total = agree + same.sum(), total + len(same)
    print(f"top-1 agreement with llama.cpp: {agree}/{total} = {agree / total:.2%}")
    assert agree / total >= 0.97


def test_top5_logits_are_within_the_documented_bound(runs):
    deltas = np.concatenate(
        [
            np.abs(np.take_along_axis(logits, np.array(p["top_ids"]), 1) - p["top_logits"]).ravel()
            for p, logits, _ in runs
        ]
    )
    print(f"top-5 |delta logit|: max {deltas.max():.3f}, median {np.median(deltas):.3f}")
    assert deltas.max() < TOP5_BOUND
    assert np.median(deltas) < 0.25


def test_greedy_continuations_match_or_split_at_near_ties(runs):
    identical = 0
    for prompt, _, steps in runs:
        ref = np.array(prompt["greedy"])
        ours = steps.argmax(axis=1)
        for i in np.flatnonzero(ours != ref):
            gap = steps[i, ours[i]] - steps[i, ref[i]]
            runner_up = np.sort(steps[i])[-2] == steps[i, ref[i]]
            assert runner_up and gap < NEAR_TIE, f"{prompt['name']} step {i}: gap {gap:.3f}"
        identical += bool((ours == ref).all())
    print(f"greedy continuations identical to llama.cpp: {identical}/{len(runs)}")
    assert identical >= len(runs) // 2
