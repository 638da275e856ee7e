"""Write tests/data/reference_dense.json: llama.cpp's logits on synthetic llama, qwen2 and qwen3 files.

The referee for the dense architectures of model/transformer.py beyond the real SmolLM2
(tests/data/reference_smollm2.json): GQA, tied and untied heads, qwen2's QKV biases, qwen3's
per-head Q/K norms, a head_dim that is not n_embd / n_heads, NORM and NEOX RoPE, RoPE scaling
(a ``rope_freqs.weight`` tensor of per-frequency divisors, as converters write Llama 3.1's;
linear; YaRN, as long-context Qwen files carry it), and the weight types read in place. Each
preset's keyword arguments for ``write_synthetic_gguf`` are recorded with the sha256 of the
file they give (the test rewrites it and checks it is the file the referee ran). llama.cpp runs on the CPU via llama-cpp-python with an F32 KV cache and flash
attention off. Run it with an interpreter that has llama-cpp-python and the repository on
its path:

    PYTHONPATH=. python scripts/make_reference_dense.py [--out tests/data/reference_dense.json]

JSON schema (version 1):
{
  "schema": 1,
  "llama_cpp_python": "0.3.36",
  "files": [
    {
      "preset": "qwen3-hd24",              # a name
      "kwargs": {...},                     # write_synthetic_gguf's keyword arguments
      "sha256": "<hex>",                   # of the file they write
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

from agentcore.testing.synthetic import write_synthetic_gguf

PRESETS: dict[str, dict] = {
    "llama-gqa": {"arch": "llama", "qtype": "F32", "n_layers": 3, "n_heads": 8, "n_kv_heads": 2},
    "llama-tied": {"arch": "llama", "qtype": "F32", "tied": True, "rope_base": 500000.0},
    "llama-mha-hd32": {"arch": "llama", "qtype": "F32", "n_embd": 96, "n_heads": 3, "n_kv_heads": 3,
                       "head_dim": 32},
    "qwen2-bias": {"arch": "qwen2", "qtype": "F32", "n_layers": 3, "rope_base": 1000000.0},
    "qwen3-norms": {"arch": "qwen3", "qtype": "F32", "n_heads": 4, "n_kv_heads": 2, "head_dim": 32},
    "qwen3-hd24": {"arch": "qwen3", "qtype": "F32", "n_heads": 4, "n_kv_heads": 1, "head_dim": 24},
    "llama-rope-freqs": {"arch": "llama", "qtype": "F32", "rope_freq_factors": True, "rope_base": 500000.0},
    "qwen2-rope-linear": {"arch": "qwen2", "qtype": "F32", "rope_scaling": 4.0},
    "qwen2-yarn": {"arch": "qwen2", "qtype": "F32", "context_length": 8192,
                   "rope_scaling": {"type": "yarn", "factor": 4.0, "original_context_length": 2048}},
    "qwen3-yarn": {"arch": "qwen3", "qtype": "F32", "head_dim": 32, "rope_base": 1000000.0,
                   "rope_scaling": {"type": "yarn", "factor": 8.0, "original_context_length": 256}},
    "llama-yarn": {"arch": "llama", "qtype": "F32",
                   "rope_scaling": {"type": "yarn", "factor": 2.0, "original_context_length": 1024}},
    "llama-q8_0": {"arch": "llama", "qtype": "Q8_0", "n_embd": 256, "n_ff": 512, "n_heads": 4, "n_kv_heads": 2},
    "llama-q4_k": {"arch": "llama", "qtype": "Q4_K", "n_embd": 256, "n_ff": 512, "n_heads": 4, "n_kv_heads": 2},
    "qwen2-q6_k": {"arch": "qwen2", "qtype": "Q6_K", "n_embd": 256, "n_ff": 512, "n_heads": 4, "n_kv_heads": 2},
    "qwen3-q5_0": {"arch": "qwen3", "qtype": "Q5_0", "n_embd": 256, "n_ff": 512, "n_heads": 4, "n_kv_heads": 2,
                   "head_dim": 64},
    "llama-q4_1": {"arch": "llama", "qtype": "Q4_1", "n_embd": 256, "n_ff": 512, "n_heads": 4, "n_kv_heads": 2},
}  # fmt: skip
TOP_K = 8
GREEDY_TOKENS = 16
PROMPT_LENGTHS = (1, 7, 33, 96)
GGML_TYPE_F32 = 0


def prompt_ids(preset: str, length: int, vocab: int) -> list[int]:
    """Deterministic token ids over the whole vocabulary."""
    seed = int.from_bytes(hashlib.sha256(f"dense/{preset}/{length}".encode()).digest()[:4], "little")
    return np.random.default_rng(seed).integers(0, vocab, length).tolist()


def run_prompt(llm: llama_cpp.Llama, ids: list[int]) -> dict:
    return {"ids": ids, **llama_answers(llm, ids, top_k=TOP_K, greedy_tokens=GREEDY_TOKENS, decimals=5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference_dense.json"))
    args = parser.parse_args()
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, kwargs in PRESETS.items():
            path = write_synthetic_gguf(Path(tmp) / f"{preset}.gguf", **kwargs)
            llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                                  type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False,
                                  verbose=False)  # fmt: skip
            prompts = [run_prompt(llm, prompt_ids(preset, n, llm.n_vocab())) for n in PROMPT_LENGTHS]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files.append({"preset": preset, "kwargs": kwargs, "sha256": digest, "prompts": prompts})
            del llm
            print(f"{preset}: {len(prompts)} prompts")
    out = {"schema": 1, "llama_cpp_python": llama_cpp.__version__, "files": files}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
