"""cap_output: head and tail kept, one marker, the full text spilled, the cap always held."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.tools.capping import approx_tokens, atomic_write, cap_output, spill_text

MARKER = "[... lines "


def numbered(lines: int, width: int = 40) -> str:
    return "".join(f"{i:06d} " + "x" * width + "\n" for i in range(1, lines + 1))


def tiny_bpe() -> tiktoken.Encoding:
    """A real byte-level BPE built offline (named encodings would need the network)."""
    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b"in", b"ing", b"  ", b"    ", b"\n\n", b"xx", b"xxxx"):
        ranks[merge] = len(ranks)
    return tiktoken.Encoding(
        "tiny",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={},
    )


def test_approx_tokens_is_utf8_bytes_over_three_rounded_up():
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 2
    assert approx_tokens("台北") == 2  # 6 bytes


def test_text_within_the_cap_is_returned_unchanged_and_not_spilled(tmp_path):
    capped = cap_output("short", max_tokens=100, spill_dir=tmp_path / "spill")
    assert (capped.text, capped.truncated, capped.spill_path) == ("short", False, None)
    assert not (tmp_path / "spill").exists()


def test_250k_output_is_capped_with_one_marker_and_spilled_exactly(tmp_path):
    text = numbered(6000)
    assert len(text) > 250_000
    capped = cap_output(text, max_tokens=2000, spill_dir=tmp_path)
    assert capped.truncated
    assert approx_tokens(capped.text) <= 2000
    assert capped.text.count(MARKER) == 1
    assert Path(capped.spill_path).read_text() == text
    assert (capped.original_chars, capped.original_tokens) == (len(text), approx_tokens(text))


def test_head_and_tail_are_kept_in_the_given_proportion(tmp_path):
    text = numbered(6000)
    capped = cap_output(text, max_tokens=3000, spill_dir=tmp_path, head_fraction=0.75)
    head, _, tail = capped.text.partition("\n" + MARKER)
    tail = tail.split("\n", 1)[1]
    assert text.startswith(head) and text.endswith(tail)
    assert 2.5 < len(head) / len(tail) < 3.5


def test_cuts_fall_on_line_boundaries(tmp_path):
    text = numbered(6000)
    capped = cap_output(text, max_tokens=1000, spill_dir=tmp_path)
    original = set(text.splitlines())
    kept = [line for line in capped.text.splitlines() if not line.startswith(MARKER)]
    assert kept and all(line in original for line in kept)


def test_marker_names_the_omitted_lines_of_the_spill_file(tmp_path):
    text = numbered(6000)
    capped = cap_output(text, max_tokens=1000, spill_dir=tmp_path)
    lines = capped.text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    head, marker, tail = lines[:at], lines[at], lines[at + 1 : -1]
    first, last = (
        int(n.replace(",", "")) for n in marker.removeprefix(MARKER).split(" ")[0].split("-")
    )
    spilled = Path(capped.spill_path).read_text().split("\n")
    assert first == len(head) + 1
    assert spilled[first - 1 : last] + tail == spilled[len(head) : -1]


def test_character_cap_is_held(tmp_path):
    capped = cap_output(numbered(6000), max_tokens=None, max_chars=5000, spill_dir=tmp_path)
    assert capped.truncated and len(capped.text) <= 5000


def test_cap_is_held_under_an_injected_bpe_tokenizer(tmp_path):
    encoding = tiny_bpe()

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    text = "the thing is that everything    rings\n\n" * 3000
    capped = cap_output(text, max_tokens=1500, count_tokens=count, spill_dir=tmp_path)
    assert capped.truncated and count(capped.text) <= 1500
    assert capped.original_tokens == count(text)


def test_a_single_line_is_never_cut_inside_a_surrogate_pair(tmp_path):
    pair = "\ud83d\ude00"  # what a JSON "\ud83d\ude00" escape decodes to without joining
    text = ("ab" + pair) * 20_000
    for max_tokens in range(300, 330):
        capped = cap_output(text, max_tokens=max_tokens, spill_dir=tmp_path)
        head, _, rest = capped.text.partition("\n" + MARKER)
        tail = rest.split("\n", 1)[1]
        assert not head.endswith("\ud83d") and not tail.startswith("\ude00")


def test_same_content_spills_to_the_same_file(tmp_path):
    first = cap_output("a" * 3000, max_tokens=300, spill_dir=tmp_path)
    second = cap_output("a" * 3000, max_tokens=300, spill_dir=tmp_path)
    other = cap_output("b" * 3000, max_tokens=300, spill_dir=tmp_path)
    assert first.spill_path == second.spill_path != other.spill_path
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".txt") == sorted(
        {Path(first.spill_path).name, Path(other.spill_path).name}
    )


def test_spill_dir_is_git_ignored(tmp_path):
    path = spill_text("data", tmp_path / "spill")
    assert path.read_text() == "data"
    assert (tmp_path / "spill" / ".gitignore").read_text() == "*\n"


def test_spill_path_is_shown_relative_to_the_workspace(tmp_path):
    spill = tmp_path / ".agentcore" / "spill"
    capped = cap_output("z" * 5000, max_tokens=300, spill_dir=spill, relative_to=tmp_path)
    assert capped.spill_path.startswith(".agentcore/spill/")
    assert f"saved to {capped.spill_path} - use read_file" in capped.text


def test_unwritable_spill_dir_is_reported_in_the_marker(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    capped = cap_output("q" * 5000, max_tokens=300, spill_dir=blocker / "spill")
    assert capped.truncated and capped.spill_path is None
    assert "could not be saved (" in capped.text
    assert approx_tokens(capped.text) <= 300


def test_cap_smaller_than_the_marker_yields_the_marker_alone(tmp_path):
    capped = cap_output("w" * 5000, max_tokens=10, spill_dir=tmp_path)
    assert capped.text.startswith(MARKER) and "\n" not in capped.text
    assert Path(capped.spill_path).read_text() == "w" * 5000


def test_invalid_head_fraction_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head_fraction"):
        cap_output("x", max_tokens=1, spill_dir=tmp_path, head_fraction=1.5)


def test_multi_megabyte_output_counts_tokens_a_bounded_number_of_times(tmp_path):
    text = numbered(100_000)  # about 4.8 MB
    counted: list[int] = []

    def count(chunk: str) -> int:
        counted.append(len(chunk))
        return approx_tokens(chunk)

    start = time.monotonic()
    capped = cap_output(text, max_tokens=8192, count_tokens=count, spill_dir=tmp_path)
    assert capped.truncated and approx_tokens(capped.text) <= 8192
    assert time.monotonic() - start < 5
    # One full count, then only searches over text of about the kept size.
    assert sum(counted) < len(text) + 100 * 8192 * 3


def test_atomic_write_leaves_no_temporary_files_and_keeps_the_mode(tmp_path):
    target = tmp_path / "script.sh"
    target.write_text("old")
    target.chmod(0o755)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["script.sh"]


SHAPE = re.compile(r"(.*?)(\[\.\.\. lines [^\n]* \.\.\.\])(?:\n(.*))?", re.DOTALL)


# Repeated random lines: long enough to be cut at every share of its own size.
TEXTS = st.builds(
    lambda lines, repeats: "\n".join(lines) * repeats,
    st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=80), max_size=40),
    st.integers(min_value=1, max_value=200),
)


@settings(max_examples=150, deadline=None)
@given(text=TEXTS, share=st.floats(0.0, 1.0), head_fraction=st.floats(0.0, 1.0))
def test_property_output_is_a_head_a_marker_and_a_tail_within_the_cap(text, share, head_fraction):
    max_tokens = max(1, int(approx_tokens(text) * share))
    with tempfile.TemporaryDirectory() as spill:
        capped = cap_output(
            text, max_tokens=max_tokens, spill_dir=Path(spill), head_fraction=head_fraction
        )
        if not capped.truncated:
            assert capped.text == text
            return
        assert Path(capped.spill_path).read_bytes().decode() == text  # no newline translation
        head, _, tail = SHAPE.fullmatch(capped.text).groups()
        assert text.startswith((head, head.removesuffix("\n")))
        assert text.endswith(tail or "")
        if head or tail:  # only a cap too small for the marker leaves the marker alone
            assert approx_tokens(capped.text) <= max_tokens
