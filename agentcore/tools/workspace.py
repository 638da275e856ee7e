"""Opening paths inside a workspace root without ever following a way out of it.

Check-then-use (resolve a path, check it, then open it) loses a race against a symlink
swapped in between. Here a path is walked one component at a time from an fd of the root:
each directory is opened with ``O_NOFOLLOW`` relative to the fd of its parent, and a
symlink met on the way is read (``readlink``) and its target walked the same way, so the
object finally opened is the one the walk checked. ``..`` pops back to the parent's fd and
never above the root.

Invariants:
- A path that leads outside the root, through ``..``, an absolute path or a symlink,
  raises ``WorkspaceEscape``; a symlink that stays inside is followed.
- ``protected`` names (``.git``, ``.agentcore``) are refused wherever they occur in the
  resolved path, also when reached through a symlink, before any folder is created.

Out of reach of any path check: a directory *renamed* out of the workspace while a call
holds its fd (the fd follows it), and anything ``run_shell`` does (a shell is not confined).
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentcore.errors import ProtectedPath, WorkspaceEscape

__all__ = ["Resolved", "open_beneath", "parent_beneath", "resolve_in_workspace"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40  # as Linux allows in one path


@dataclass
class Resolved:
    """Where a path landed: an open fd and the path relative to the root (for messages).

    ``fd`` is the object itself (``open_beneath``) or its parent folder (``parent_beneath``,
    with ``name`` the final component). The caller closes ``fd``.
    """

    fd: int
    parts: tuple[str, ...]
    name: str | None = None

    @property
    def shown(self) -> str:
        return "/".join(self.parts) or "."


def open_beneath(root: Path, path: str, flags: int, *, mode: int = 0o666) -> Resolved:
    """Open ``path`` (relative to ``root``, or absolute inside it) with ``flags``."""
    return _Walk(root, path).run(final_flags=flags, mode=mode)


def parent_beneath(
    root: Path, path: str, *, create_parents: bool = False, protected: Iterable[str] = ()
) -> Resolved:
    """The folder that holds ``path``, open, and the final name (symlinks in it followed).

    A rename into that folder (``os.replace(..., dst_dir_fd=fd)``) replaces the entry
    itself, so a symlink swapped in after the walk is replaced, never written through.
    """
    walk = _Walk(root, path, protected={p.casefold() for p in protected})
    return walk.run(create_parents=create_parents)


def resolve_in_workspace(root: Path, path: str) -> Path:
    """The absolute path ``path`` resolves to inside ``root`` (for display; opens nothing).

    Raises WorkspaceEscape like the tools do. Do not open the result: use ``open_beneath``.
    """
    resolved = parent_beneath(root, path)
    os.close(resolved.fd)
    return root.joinpath(*resolved.parts)


class _Walk:
    def __init__(self, root: Path, path: str, *, protected: set[str] | None = None) -> None:
        self.root = root
        self.path = path
        self.protected = protected or set()
        self.fds: list[int] = []
        self.names: list[str] = []
        self.via_link: str | None = None

    def run(
        self, *, final_flags: int | None = None, mode: int = 0o666, create_parents: bool = False
    ) -> Resolved:
        pending = deque(self._relative_parts())
        for comp in pending:  # refuse before any folder is created on the way
            self._check_protected(comp)
        self.fds = [os.open(self.root, _DIR_FLAGS)]
        links = 0
        try:
            while True:
                while pending and pending[0] in ("", "."):
                    pending.popleft()
                if not pending:
                    return self._at_root_or_dir(final_flags)
                comp = pending.popleft()
                if comp == "..":
                    if len(self.fds) == 1:
                        raise self._escape()
                    os.close(self.fds.pop())
                    self.names.pop()
                    continue
                last = all(c in ("", ".") for c in pending)
                self._check_protected(comp)
                target = self._step(comp, last, final_flags, mode, create_parents, pending)
                if isinstance(target, Resolved):
                    return target
                if target is None:
                    continue
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"{self.path!r}: too many levels of symlinks")
                self.via_link = target
                if os.path.isabs(target):
                    inside = _parts_inside(self.root, target)
                    if inside is None:
                        raise self._escape()
                    for fd in self.fds[1:]:
                        os.close(fd)
                    del self.fds[1:]
                    self.names.clear()
                    pending.extendleft(reversed(inside))
                else:
                    pending.extendleft(reversed(target.split("/")))
        except BaseException:
            for fd in self.fds:
                os.close(fd)
            raise

    def _step(
        self,
        comp: str,
        last: bool,
        final_flags: int | None,
        mode: int,
        create_parents: bool,
        pending: deque[str],
    ) -> Resolved | str | None:
        """Go one component further: a Resolved at the end, a symlink's target, or None."""
        top = self.fds[-1]
        if last and final_flags is None:
            target = _readlink(top, comp)
            if target is None:
                return Resolved(self.fds.pop(), (*self.names, comp), comp)
            return target
        flags = _DIR_FLAGS if not last else final_flags | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(comp, flags, mode, dir_fd=top)
        except FileNotFoundError:
            if last or not create_parents:
                raise FileNotFoundError(
                    errno.ENOENT, f"{'/'.join((*self.names, comp))!r} does not exist"
                ) from None
            try:
                os.mkdir(comp, dir_fd=top)
            except FileExistsError:
                pass  # made meanwhile; open it on the next round
            pending.appendleft(comp)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise
            target = _readlink(top, comp)
            if target is None:
                raise
            return target
        if last:
            return Resolved(fd, (*self.names, comp))
        self.fds.append(fd)
        self.names.append(comp)
        return None

    def _at_root_or_dir(self, final_flags: int | None) -> Resolved:
        """The path ended on a folder (the root, or after ``..``/``.``)."""
        if final_flags is None:
            if not self.names:
                raise IsADirectoryError(f"{self.path!r} is the workspace root, not a file")
            os.close(self.fds.pop())
            name = self.names.pop()
            return Resolved(self.fds.pop(), (*self.names, name), name)
        fd = os.open(".", final_flags | os.O_CLOEXEC, dir_fd=self.fds[-1])
        for extra in self.fds:
            os.close(extra)
        self.fds = []
        return Resolved(fd, tuple(self.names))

    def _check_protected(self, comp: str) -> None:
        if comp.casefold() in self.protected:
            shown = "/".join((*self.names, comp))
            raise ProtectedPath(
                f"{self.path!r} is inside {shown}/, which write_file does not change: a "
                "file there could make a later git or agentcore run do something else. "
                "Write the file somewhere else in the workspace."
            )

    def _relative_parts(self) -> list[str]:
        if not os.path.isabs(self.path):
            return self.path.split("/")
        inside = _parts_inside(self.root, self.path)
        if inside is None:
            inside = _parts_inside(self.root, os.path.realpath(self.path))
        if inside is None:
            raise self._escape()
        return inside

    def _escape(self) -> WorkspaceEscape:
        if self.via_link is not None:
            how = f"a symlink inside it points to {self.via_link}"
        else:
            lexical = os.path.normpath(os.path.join(self.root, self.path))
            how = f"it resolves to {lexical}"
        return WorkspaceEscape(
            f"{self.path!r} is outside the workspace {self.root} ({how}). Only paths inside "
            "the workspace can be used: give a path relative to it, like 'src/main.py'."
        )


def _parts_inside(root: Path, absolute: str) -> list[str] | None:
    """The components of ``absolute`` below ``root``, or None when it is not below it."""
    parts = Path(absolute).parts
    if parts[: len(root.parts)] != root.parts:
        return None
    return list(parts[len(root.parts) :])


def _readlink(dir_fd: int, name: str) -> str | None:
    """The target of the symlink ``name``, or None when it is not a symlink (or absent)."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise
