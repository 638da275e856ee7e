"""Write tests/data/reference_smollm2.json: llama.cpp's answers for SmolLM2-135M-Instruct Q4_1.

The only code in the project that needs llama-cpp-python; it is the referee our tokenizer
and forward pass are tested against. Run it with an interpreter that has llama-cpp-python:

    python scripts/make_reference.py [--model PATH] [--out tests/data/reference_smollm2.json]

JSON schema (version 1):
{
  "schema": 1,
  "llama_cpp_python": "0.3.36",          # llama_cpp.__version__
  "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
  "model_sha256": "<hex>",
  "tokenize": [                            # llama.cpp tokenize(add_bos=False, special=False)
    {"text": "...", "ids": [int, ...]}, ...
  ],
  "tokenize_special": [                    # same with special=True (special-token text parsed)
    {"text": "...", "ids": [int, ...]}, ...
  ],
  "prompts": [                             # forward pass, CPU, logits at every position
    {
      "name": "plain-capital",
      "text": "...",                       # chat prompts are ChatML text with special tokens
      "special": bool,                     # tokenized with special=True?
      "ids": [int, ...],                   # the prompt as fed (no BOS: add_bos_token is false)
      "top_ids": [[int x5], ...],          # per prompt position: the 5 largest logits' ids,
      "top_logits": [[float x5], ...],     #   descending, and their values (4 decimals)
      "greedy": [int x32]                  # argmax continuation of 32 tokens after the prompt
    }, ...
  ]
}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import string
from pathlib import Path

import llama_cpp
from referee import llama_answers

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GREEDY_TOKENS = 32
TOP_K = 5


def random_text(seed: int, length: int = 120) -> str:
    """Deterministic noise over letters, digits, punctuation, whitespace and unicode."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "  \n\téüß中日😀'"
    return "".join(rng.choice(alphabet) for _ in range(length))


CORPUS = [
    "Hello world",
    " Hello world",
    "hello  world   with    spaces",
    "Tabs\tand\ttabs\t\t\tend",
    "line1\nline2\n\nline4\r\nwindows\r\n",
    "    indented code\n        deeper\n\tand a tab",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    '{"name": "get_weather", "arguments": {"city": "Taipei", "unit": "celsius"}}',
    "1 12 123 1234 12345 123456789 3.14159 -42 1e10 0x1F",
    "31415926535897932384626433832795",
    "2024-05-01T12:34:56Z and 10:30pm",
    "The year 2023 saw 1,234,567 users (up 12.5%).",
    "I'm you're he's we've they'll I'd don't CAN'T It'S",
    "Café naïve résumé façade Zürich Ångström",
    "中文字符测试，你好世界。日本語のテキスト、カタカナ。한국어 텍스트",
    "🙂👍🏽🚀 family: 👨‍👩‍👧‍👦 flag: 🇹🇼",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<think>reasoning</think>",
    '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="city" string="true">Taipei</｜DSML｜parameter>',
    "∑_{i=1}^{n} x_i² ≤ √2 · π ≈ 3.14",
    "مرحبا بالعالم שלום עולם",
    "Привет, мир! Ελληνικά γράμματα",
    "नमस्ते दुनिया สวัสดีชาวโลก",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^",
    "https://example.com/path/to?q=1&r=two#frag",
    "ls -la | grep '\\.py$' && echo \"done\" > /dev/null 2>&1",
    '<div class="x">Hi &amp; bye</div>',
    "a" + " " * 20 + "b",
    "end   ",
    " \n \t \n",
    "",
    "a\x04b\x1dc",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "f'{name!r:>10}' if x else None  # λ → ∞",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Ⅻ ½ ² ③ ٣ ١٢",
    "e\u0301 n\u0303 combining marks",
    "ＡＢＣ１２３ fullwidth",
    "don't\n\n\n\nstop   \n   now",
    "$$\\frac{a}{b} + \\sqrt{x}$$",
    "CamelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case",
    "antidisestablishmentarianism pneumonoultramicroscopic floccinaucinihilipilification",
    (
        "The quick brown fox jumps over the lazy dog; meanwhile, unbelievably, the dog's owner "
        "wasn't bothered: she'd seen it all before (twice!) and simply sipped her coffee."
    ),
    *(random_text(seed) for seed in range(4)),
]

SPECIAL_CORPUS = [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more",
    "<|im_start|>system\nYou are terse.<|im_end|>",
]


def chatml(*turns: tuple[str, str], generation: bool = True) -> str:
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + ("<|im_start|>assistant\n" if generation else "")


PROMPTS = [
    (
        "plain-capital",
        (
            "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is "
            "Madrid. The capital of Germany is"
        ),
        False,
    ),
    (
        "plain-code",
        'import math\n\n\ndef add(a: int, b: int) -> int:\n    """Return a + b."""\n    return',
        False,
    ),
    ("plain-count", "1, 2, 3, 4, 5, 6, 7, 8,", False),
    (
        "plain-story",
        (
            "Once upon a time, in a small village by the sea, there lived an old fisherman who "
            "knew every wave by name. One morning he"
        ),
        False,
    ),
    ("plain-json", '{"name": "Alice", "age": 30, "city": "Paris", "hobbies": [', False),
    (
        "chat-math",
        chatml(("system", "You are a helpful math tutor."), ("user", "What is 2+2? Be brief.")),
        True,
    ),
    (
        "chat-haiku",
        chatml(("system", "You are a poet."), ("user", "Write a haiku about the sea.")),
        True,
    ),
    (
        "chat-multiturn",
        chatml(
            ("user", "My name is Ana."),
            ("assistant", "Nice to meet you, Ana!"),
            ("user", "What is my name?"),
        ),
        True,
    ),
    ("chat-translate", chatml(("user", "Translate to French: Good morning, my friend.")), True),
    (
        "chat-tool",
        chatml(
            ("system", "You can call tools. To call one, write <tool>name(args)</tool>."),
            ("user", "What's the weather in Taipei?"),
        ),
        True,
    ),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize(llm: llama_cpp.Llama, text: str, special: bool) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))


def run_prompt(llm: llama_cpp.Llama, name: str, text: str, special: bool) -> dict:
    ids = tokenize(llm, text, special)
    answers = llama_answers(llm, ids, top_k=TOP_K, greedy_tokens=GREEDY_TOKENS, decimals=4)
    return {"name": name, "text": text, "special": special, "ids": ids, **answers}


def main() -> None:
    home = Path(os.environ.get("AGENTCORE_HOME", Path.home() / ".cache" / "agentcore"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=home / "models" / MODEL_NAME)
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference_smollm2.json"))
    args = parser.parse_args()

    vocab = llama_cpp.Llama(str(args.model), vocab_only=True, verbose=False)
    llm = llama_cpp.Llama(
        str(args.model), n_ctx=512, logits_all=True, n_threads=2, n_batch=512, verbose=False
    )
    out = {
        "schema": 1,
        "llama_cpp_python": llama_cpp.__version__,
        "model": args.model.name,
        "model_sha256": sha256(args.model),
        "tokenize": [{"text": t, "ids": tokenize(vocab, t, False)} for t in CORPUS],
        "tokenize_special": [{"text": t, "ids": tokenize(vocab, t, True)} for t in SPECIAL_CORPUS],
        "prompts": [run_prompt(llm, *p) for p in PROMPTS],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
