"""Write tests/data/reference_tokenizers.json: llama.cpp's tokenization with each byte-level
pre-tokenizer agentcore reads, on one synthetic vocabulary whose merges cross every boundary.

The real SmolLM2 referees the ``smollm`` pre-tokenizer (tests/data/reference_smollm2.json);
the others (``gpt-2``, ``llama-bpe``, ``qwen2``, ``deepseek-v3``, ``deepseek-r1-qwen``) had no
referee. A pre-tokenizer decides where BPE may merge, so its merges are learned here from a
stress corpus with no pre-split at all: merges join letters to digits, spaces to
punctuation, newlines to words, CJK to ASCII, and any difference between our split and
llama.cpp's changes the ids. The same merges go into one GGUF per pre-tokenizer name
(``write_synthetic_gguf(merges=..., pre=...)``), and llama.cpp (llama-cpp-python,
``vocab_only``) tokenizes every corpus text with ``add_bos=False, special=False``. Run it with
an interpreter that has llama-cpp-python and the repository on its path:

    PYTHONPATH=. python scripts/make_reference_tokenizers.py [--out tests/data/reference_tokenizers.json]

JSON schema (version 1):
{"schema": 1, "llama_cpp_python": "0.3.36", "merges": [[a, b], ...],
 "texts": [str, ...], "pre": {"qwen2": [[ids of text 0], ...], ...}}
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import tempfile
from pathlib import Path

import llama_cpp

from agentcore.engine.model.tokenizer import bytes_to_unicode
from agentcore.testing.synthetic import write_synthetic_gguf

PRES = ("gpt-2", "llama-bpe", "qwen2", "deepseek-v3", "deepseek-r1-qwen", "smollm")
N_MERGES = 1200

TEXTS = [
    "Hello, world! It's a test; don't panic. I'M HERE, you're there, they'll come, we've won, he'd go.",
    "Numbers: 1234567890, 3.14159, 1,000,000 and 007; 2024-12-08T10:00:00Z; x1y2z3; 12abc; abc12.",
    "    four spaces, then a tab\there, two  spaces, trailing space \nnew line\n\n\nthree newlines",
    "def f(x):\n    return x**2 + 3*x - 1  # a comment\n\nclass A(B):\n\tpass\n",
    "if (a<=b && c!=d) { a += 1; } else { b -= 2; } // done;;; ->> <<= >>= ===",
    "Ünïcödé: café, naïve, Straße, smörgåsbord, Ångström, façade, élève; ÀÉÎÕÜ.",
    "中文分词测试：你好，世界！日本語のテキスト、カタカナ。한국어 텍스트입니다.",
    "Русский текст, Ελληνικά γράμματα, عربي النص, עברית, हिन्दी पाठ, ไทย.",
    "Emoji: 🙂😀👍🏽🚀 and ✓ ✗ → ← ∑ ∞ ≈ ≠ £ € ¥ ©®™ …",
    "URLs: https://example.com/path?q=1&r=two#frag and mail@host.org, C:\\Users\\me\\file.txt",
    "MixedCase: HTTPServer iPhone XMLHttpRequest camelCaseWord snake_case_word SCREAMING_CASE",
    "Punctuation runs!!! What?! Really... (yes) [no] {maybe} \"quoted\" 'single' `tick` ~tilde~",
    "  leading spaces and\r\nCRLF lines\r\n\r\nend   ",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE: contraction starts; o'clock rock'n'roll y'all",
    "数字123和字母abc混合，English词与中文词相邻，2024年12月8日。",
    "tab\t\ttabs\t \t mixed \t\n\t\n  \n",
    "A" * 40 + " " + "ab" * 25 + " " + "1" * 30,
    "<think>not special here</think> <|im_start|> <｜DSML｜tool_calls> tags as text",
]
# The merges are learned on the texts, as given, lower-cased and upper-cased.
TRAIN = [*TEXTS, *(t.lower() for t in TEXTS), *(t.upper() for t in TEXTS)]
MAX_TOKEN = 12  # characters (of the byte-level alphabet): no merge builds a longer token


def learn_merges(texts: list[str], n: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges over ``texts``, each one sequence with no pre-split: the most
    frequent adjacent pair (of at most MAX_TOKEN characters joined) becomes a token, ties
    broken by the pair's text, ``n`` times or until no pair repeats."""
    table = bytes_to_unicode()
    seqs = [[table[b] for b in t.encode("utf-8")] for t in texts]
    merges: list[tuple[str, str]] = []
    while len(merges) < n:
        counts = collections.Counter(
            pair for seq in seqs for pair in itertools.pairwise(seq) if len(pair[0] + pair[1]) <= MAX_TOKEN
        )
        if not counts:
            break
        (a, b), count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merges.append((a, b))
        for k, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[k] = out
    return merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference_tokenizers.json"))
    args = parser.parse_args()
    merges = learn_merges(TRAIN, N_MERGES)
    out: dict = {"schema": 1, "llama_cpp_python": llama_cpp.__version__, "merges": merges, "texts": TEXTS,
                 "pre": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRES:
            path = write_synthetic_gguf(Path(tmp) / f"{pre}.gguf", n_layers=1, merges=merges, pre=pre)
            llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            out["pre"][pre] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in TEXTS]
            del llm
            print(pre, sum(len(x) for x in out["pre"][pre]), "tokens")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
