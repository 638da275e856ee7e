"""Output caps and spill files: one tool result never floods the context window.

``cap_output`` keeps the head and the tail of a result that is over its token or character
cap and puts ONE marker line between them saying what was cut and where the full text is.

Invariants:
- Nothing is lost: the full text is written to ``<spill_dir>/<sha256-prefix>.txt`` (atomic:
  temp file + rename; the same content always maps to the same file) before it is cut. An
  existing file of that name is trusted only when its content matches. When the spill
  cannot be written the head and tail are still kept and the marker says it failed.
- The capped text, marker included, fits both caps, as measured by the counter that was
  passed in. The only exception is a cap too small to hold the marker itself: then the
  result is the marker alone.
- Cuts fall on line boundaries where that keeps at least half of the allowed text, and
  never between the halves of a surrogate pair.
- Work is O(n log n) in the kept text plus one count of the whole text: the cut points are
  found by an exponential then binary search over prefix/suffix lengths, so a multi-MB
  output is never tokenized quadratically.

Token counts come from an injected counter. tiktoken's named encodings are downloaded on
first use and this library must work offline, so the default is ``approx_tokens``.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CappedOutput", "approx_tokens", "atomic_write", "cap_output", "prepare_spill_dir", "spill_text",
]  # fmt: skip

TokenCounter = Callable[[str], int]

# Re-verification rounds when joining head + marker + tail tokenizes longer than the parts.
_FIT_ROUNDS = 8


def approx_tokens(text: str) -> int:
    """Estimate tokens as ceil(UTF-8 bytes / 3).

    BPE tokenizers average about 4 bytes per token on English and code and about 3 on
    CJK text, so this over-counts ordinary output, which is the safe side for a cap. It is
    not a bound for adversarial text (long runs of rare symbols); engines with a real
    tokenizer should inject its exact counter.
    """
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 3)


@dataclass(frozen=True, slots=True)
class CappedOutput:
    """A tool result after capping.

    ``spill_path`` is the spill file as named in the marker (relative to ``relative_to``
    when that was given), or None when nothing was cut or the spill could not be written.
    """

    text: str
    truncated: bool
    spill_path: str | None
    original_tokens: int
    original_chars: int


def cap_output(
    text: str,
    *,
    max_tokens: int | None,
    max_chars: int | None = None,
    count_tokens: TokenCounter = approx_tokens,
    spill_dir: Path,
    head_fraction: float = 0.6,
    relative_to: Path | None = None,
) -> CappedOutput:
    """Fit ``text`` into ``max_tokens`` and ``max_chars`` (None means no cap of that kind).

    ``head_fraction`` of the allowed room goes to the start of the text, the rest to the
    end. ``relative_to`` (the workspace root) shortens the spill path shown to the model
    to one its file tools accept.
    """
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be within [0, 1], got {head_fraction}")
    original_tokens = count_tokens(text)
    original_chars = len(text)

    def within(chars: int, tokens: int) -> bool:
        return (max_chars is None or chars <= max_chars) and (
            max_tokens is None or tokens <= max_tokens
        )

    if within(original_chars, original_tokens):
        return CappedOutput(text, False, None, original_tokens, original_chars)

    spill_path: str | None = None
    try:
        path = spill_text(text, spill_dir)
    except OSError as exc:
        where = f"could not be saved ({type(exc).__name__}: {exc})"
    else:
        shown = (
            path.relative_to(relative_to)
            if relative_to and path.is_relative_to(relative_to)
            else path
        )
        spill_path = shown.as_posix()
        where = f"saved to {spill_path} - use read_file with start_line/end_line to see it"
    total_lines = text.count("\n") + (0 if text.endswith("\n") else 1)

    def marker(first: int, last: int, omitted_chars: int) -> str:
        return (
            f"[... lines {first:,}-{last:,} ({last - first + 1:,} lines / {omitted_chars:,} "
            f"chars) omitted; full output ({original_chars:,} chars, {total_lines:,} lines) "
            f"{where} ...]"
        )

    def marker_between(head_end: int, tail_start: int) -> str:
        first = text.count("\n", 0, head_end) + 1
        last = first + text.count("\n", head_end, max(head_end, tail_start - 1))
        return marker(first, last, tail_start - head_end)

    # Reserve room for the marker at its widest: real line numbers and counts never exceed
    # the totals used here, so the real marker is never longer than this one.
    widest = marker(total_lines, total_lines, original_chars)
    joiners = 2  # the newlines before and after the marker
    token_room = None if max_tokens is None else max_tokens - count_tokens(widest) - joiners
    char_room = None if max_chars is None else max_chars - len(widest) - joiners

    for _ in range(_FIT_ROUNDS):
        if (token_room is not None and token_room <= 0) or (
            char_room is not None and char_room <= 0
        ):
            break
        head_end, tail_start = _cut_points(text, token_room, char_room, head_fraction, count_tokens)
        head, tail = text[:head_end], text[tail_start:]
        if head and not head.endswith("\n"):
            head += "\n"
        capped = head + marker_between(head_end, tail_start) + ("\n" + tail if tail else "")
        capped_tokens = count_tokens(capped)
        if within(len(capped), capped_tokens):
            return CappedOutput(capped, True, spill_path, original_tokens, original_chars)
        # Tokens are not additive across the joins; shrink by the overshoot and retry.
        if token_room is not None:
            token_room -= max(1, capped_tokens - max_tokens)
        if char_room is not None:
            char_room -= max(1, len(capped) - max_chars)
    alone = marker_between(0, original_chars)
    return CappedOutput(alone, True, spill_path, original_tokens, original_chars)


def _cut_points(
    text: str,
    token_room: int | None,
    char_room: int | None,
    head_fraction: float,
    count_tokens: TokenCounter,
) -> tuple[int, int]:
    """Return (head_end, tail_start) so text[:head_end] and text[tail_start:] fit the room."""
    n = len(text)

    def part_fits(tokens: int | None, chars: int | None) -> Callable[[str], bool]:
        return lambda s: (
            (chars is None or len(s) <= chars) and (tokens is None or count_tokens(s) <= tokens)
        )

    head_tokens = None if token_room is None else int(token_room * head_fraction)
    head_chars = None if char_room is None else int(char_room * head_fraction)
    head_fits = part_fits(head_tokens, head_chars)
    head_end = _longest(n, lambda k: head_fits(text[:k]))
    newline = text.rfind("\n", 0, head_end)
    if newline != -1 and newline + 1 >= head_end // 2:
        head_end = newline + 1
    elif head_end and _is_high_surrogate(text[head_end - 1]):
        head_end -= 1

    tail_fits = part_fits(
        None if token_room is None else token_room - head_tokens,
        None if char_room is None else char_room - head_chars,
    )
    tail_len = _longest(n - head_end, lambda k: tail_fits(text[n - k :]))
    tail_start = n - tail_len
    if 0 < tail_start < n and text[tail_start - 1] != "\n":
        newline = text.find("\n", tail_start)
        if newline != -1 and n - (newline + 1) >= tail_len // 2:
            tail_start = newline + 1
        elif _is_low_surrogate(text[tail_start]):
            tail_start += 1
    return head_end, max(tail_start, head_end)


def _longest(limit: int, fits: Callable[[int], bool]) -> int:
    """Largest k in [0, limit] with fits(k), for a monotone predicate (fits(0) holds).

    Grows the probe exponentially first so the cost tracks the answer, not ``limit``.
    """
    good, step = 0, 4096
    while True:
        probe = min(limit, good + step)
        if probe == good:
            return good
        if not fits(probe):
            bad = probe
            break
        good, step = probe, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _is_high_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def _is_low_surrogate(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def spill_text(text: str, spill_dir: Path) -> Path:
    """Write ``text`` to ``<spill_dir>/<sha256-prefix>.txt`` unless it is already there.

    The same content always gets the same file, so spilling twice costs nothing. A file of
    that name is reused only when it is a regular file with exactly this content (a name
    is no proof: anything in the workspace can write there). Raises OSError when the
    directory cannot be written.
    """
    # surrogatepass keeps lone surrogates (e.g. from JSON) byte-exact instead of failing.
    data = text.encode("utf-8", "surrogatepass")
    path = spill_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.txt"
    if not _holds_exactly(path, data):
        prepare_spill_dir(spill_dir)
        atomic_write(path, data)
    return path


def prepare_spill_dir(spill_dir: Path) -> None:
    """Create the spill folder with a .gitignore that keeps spill files out of commits."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    ignore = spill_dir / ".gitignore"
    if not ignore.exists():
        atomic_write(ignore, b"*\n")


def _holds_exactly(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
            return False
        view, offset = memoryview(data), 0
        while chunk := f.read(1 << 20):
            if chunk != view[offset : offset + len(chunk)]:
                return False
            offset += len(chunk)
        return offset == len(data)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, so readers never see half a file.

    A new file gets the usual 0o666-minus-umask mode; an existing file keeps its mode.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
