"""What the llama.cpp referee scripts ask llama.cpp for one prompt (make_reference.py,
make_reference_deepseek2.py, make_reference_dense.py): the top logits at every position and
the greedy continuation decoded one token at a time. Needs llama-cpp-python."""

from __future__ import annotations

from typing import Any

import numpy as np


def llama_answers(llm: Any, ids: list[int], *, top_k: int, greedy_tokens: int, decimals: int) -> dict:
    """``{"top_ids", "top_logits", "greedy"}`` for ``ids`` fed to a fresh context of ``llm``
    (a ``llama_cpp.Llama`` with ``logits_all``): per position the ``top_k`` largest logits'
    ids (descending, ties by id) and values rounded to ``decimals``; then ``greedy_tokens``
    argmax tokens, each fed before the next is read."""
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    greedy = []
    for _ in range(greedy_tokens):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    values = np.round(np.take_along_axis(scores, top, axis=1), decimals)
    return {"top_ids": top.tolist(), "top_logits": values.tolist(), "greedy": greedy}
