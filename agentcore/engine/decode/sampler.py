"""Next-token choice on the host: the NumPy reference sampler.

Job: turn a logits vector into one token id (greedy or sampled). The CUDA backend samples on
the device with the same chain (``backends/cuda_sampler``); this is its referee.

Invariants:
- Sampling follows llama.cpp's chain and semantics: repetition penalty (divide positive
  logits, multiply negative ones, once per distinct recent id), then top-k, top-p, min-p
  over the untempered distribution, then temperature, then one draw. A token removed by a
  filter is never drawn; the most likely token always survives the filters.
- ``sampling is None`` or ``temperature <= 0`` is greedy; the same seed gives the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentcore.engine.base import Sampling

__all__ = ["REPEAT_WINDOW", "sample"]

# Generated tokens the repetition penalty looks back on (the CUDA sampler uses the same).
REPEAT_WINDOW = 64
# top-p sorts only the most likely tokens first and widens the window only when they do not
# reach the mass asked for: a full sort of a 150K vocabulary would cost milliseconds per token.
_TOP_P_WINDOW = 256


def sample(
    logits: np.ndarray,
    sampling: Sampling | None,
    rng: np.random.Generator,
    recent_ids: Sequence[int] = (),
) -> int:
    """One token id drawn from ``logits`` (vocab,) under ``sampling``."""
    if sampling is None:
        return int(np.argmax(logits))
    x = np.array(logits, dtype=np.float64)
    if sampling.repetition_penalty != 1.0 and len(recent_ids):
        seen = np.unique(np.asarray(recent_ids, dtype=np.int64))
        v = x[seen]
        x[seen] = np.where(v > 0, v / sampling.repetition_penalty, v * sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(np.argmax(x))
    ids = np.arange(len(x))
    if 0 < sampling.top_k < len(ids):
        ids = np.argpartition(-x, sampling.top_k - 1)[: sampling.top_k]
    if sampling.top_p < 1.0:
        ids = _top_p(x, ids, sampling.top_p)
    if sampling.min_p > 0.0:
        # p >= min_p * p_max  <=>  logit >= max_logit + log(min_p)
        ids = ids[x[ids] >= x[ids].max() + np.log(sampling.min_p)]
    z = x[ids] / sampling.temperature
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    # side="right": a token whose probability underflowed to 0 adds no width to the cdf,
    # so no draw lands on it.
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(i, len(ids) - 1)])


def _top_p(x: np.ndarray, ids: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely ``ids`` whose probability mass reaches ``top_p``."""
    z = x[ids]
    p = np.exp(z - z.max())
    p /= p.sum()
    n = _TOP_P_WINDOW
    while True:
        top = np.argpartition(-p, n - 1)[:n] if n < len(p) else np.arange(len(p))
        top = top[np.argsort(-p[top], kind="stable")]
        mass = np.cumsum(p[top])
        if mass[-1] >= top_p or n >= len(p):
            keep = int(np.searchsorted(mass, top_p)) + 1  # include the token that crosses
            return ids[top[: min(keep, len(top))]]
        n *= 4
