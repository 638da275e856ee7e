"""Write tests/data/reference_deepseek2.json: llama.cpp's logits on synthetic deepseek2 files.

The referee for model/deepseek2.py. Each preset of agentcore.testing.synthetic_deepseek2 is
written (deterministically: the tests rewrite it and check the sha256 recorded here), run
through llama.cpp on the CPU via llama-cpp-python with an F32 KV cache and flash attention
off (so the cache adds no fp16 rounding), and its logits are recorded. Run it with an
interpreter that has llama-cpp-python and the repository on its path:

    PYTHONPATH=. python scripts/make_reference_deepseek2.py [--out tests/data/reference_deepseek2.json]

JSON schema (version 1):
{
  "schema": 1,
  "llama_cpp_python": "0.3.36",
  "files": [
    {
      "preset": "v2lite",                  # a key of synthetic_deepseek2.PRESETS
      "sha256": "<hex>",                   # of the file written with seed 0
      "prompts": [
        {
          "ids": [int, ...],               # token ids as fed (no BOS added)
          "top_ids": [[int x8], ...],      # per position: the 8 largest logits' ids, descending,
          "top_logits": [[float x8], ...], #   and their values (5 decimals)
          "greedy": [int x16]              # argmax continuation, decoded one token at a time
        }, ...
      ]
    }, ...
  ]
}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np
from referee import llama_answers

from agentcore.testing.synthetic_deepseek2 import PRESETS, write_synthetic_deepseek2

TOP_K = 8
GREEDY_TOKENS = 16
PROMPT_LENGTHS = (1, 7, 33, 96)
GGML_TYPE_F32 = 0


def prompt_ids(preset: str, length: int, vocab: int) -> list[int]:
    """Deterministic token ids over the whole vocabulary (specials included)."""
    seed = int.from_bytes(hashlib.sha256(f"{preset}/{length}".encode()).digest()[:4], "little")
    return np.random.default_rng(seed).integers(0, vocab, length).tolist()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_prompt(llm: llama_cpp.Llama, ids: list[int]) -> dict:
    return {"ids": ids, **llama_answers(llm, ids, top_k=TOP_K, greedy_tokens=GREEDY_TOKENS, decimals=5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference_deepseek2.json"))
    args = parser.parse_args()
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, kwargs in PRESETS.items():
            path = write_synthetic_deepseek2(Path(tmp) / f"{preset}.gguf", **kwargs)
            llm = llama_cpp.Llama(
                str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, verbose=False,
            )  # fmt: skip
            vocab = llm.n_vocab()
            prompts = [run_prompt(llm, prompt_ids(preset, n, vocab)) for n in PROMPT_LENGTHS]
            files.append({"preset": preset, "sha256": sha256(path), "prompts": prompts})
            del llm
            print(f"{preset}: {len(prompts)} prompts")
    out = {"schema": 1, "llama_cpp_python": llama_cpp.__version__, "files": files}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
