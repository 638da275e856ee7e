"""The disk tier under faults (issue 17.3): every disk OSError is "disk tier unavailable",
logged, with the RAM tier carrying on; odd files are misses; restored KV is never wrong."""

import contextlib
import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcore.engine.kvstore import blockfile, disk
from agentcore.engine.kvstore import store as store_mod
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore

LAYOUT = KVLayout("f" * 64, n_layers=2, n_kv_heads=2, head_dim=4, dtype="float32", block_size=4)


def truth(ids):
    kv = np.zeros(LAYOUT.block_shape(len(ids)), np.float32)
    for i, t in enumerate(ids):
        kv[:, :, i] = t + i / 1000 + np.arange(LAYOUT.n_layers)[:, None, None, None]
    return kv


def save(store, ids, session="s", flush=True):
    kv = truth(ids)
    out = store.save(session, ids, block_hashes(ids, LAYOUT), lambda s, n: kv[:, :, s : s + n], None)
    if flush:
        store.flush()
    return out


def restore(store, ids, live=0):
    dest = np.full(LAYOUT.block_shape(len(ids) + 4), -1.0, np.float32)
    dest[:, :, :live] = truth(ids)[:, :, :live]
    got = store.restore(ids, block_hashes(ids, LAYOUT), into=dest, live=live)
    return got, dest


def assert_never_wrong(got, dest, ids):
    np.testing.assert_array_equal(dest[:, :, : got.tokens], truth(ids)[:, :, : got.tokens])


def block_files(root):
    return sorted(p for p in root.rglob("*.kvb"))


class PatchedOS:
    """The ``os`` module as the disk tier sees it, with some functions replaced."""

    def __init__(self, **replaced):
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(os, name)


def fail_on(monkeypatch, name, err, when=lambda *a, **k: True):
    """Make ``os.<name>`` raise ``err`` inside the disk tier (when ``when`` says so)."""
    patched = disk.os if isinstance(disk.os, PatchedOS) else PatchedOS()
    real = getattr(patched, name)

    def faulty(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    setattr(patched, name, faulty)
    monkeypatch.setattr(disk, "os", patched)


def creating(path, flags, *a, **k):
    return bool(flags & os.O_CREAT)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EIO])
def test_a_write_fault_makes_the_disk_tier_unavailable_and_ram_carries_on(tmp_path, monkeypatch, caplog, err):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    fail_on(monkeypatch, "open", err, creating)  # ENOSPC here is what exhausted inodes give
    ids = list(range(10))
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        written, _, _ = save(store, ids)
        save(store, ids + [7, 7, 7, 7])
    assert written == 2
    assert caplog.text.count("kv cache disk unavailable") == 1  # logged once, not per block
    assert store.usage()["disk_available"] == 0 and store.stats.disk_faults >= 1
    got, dest = restore(store, ids)
    assert got.tokens == 10 and got.source == "ram"
    assert_never_wrong(got, dest, ids)
    assert not block_files(tmp_path)


def test_the_disk_tier_comes_back_when_the_fault_clears(tmp_path, monkeypatch):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    store.disk_io.retry_s = 0.0
    broken = {"on": True}
    fail_on(monkeypatch, "open", errno.ENOSPC, lambda p, f, *a, **k: broken["on"] and bool(f & os.O_CREAT))
    save(store, list(range(8)))
    broken["on"] = False
    save(store, list(range(12)))
    assert store.usage()["disk_available"] == 1
    assert len(block_files(tmp_path)) == 1  # the block saved after the fault cleared
    got, _dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), list(range(12)))
    assert got.tokens == 0  # its parents never reached the disk: a miss, not a wrong prefix


def test_a_read_only_kv_dir_still_restores_what_is_there(tmp_path, monkeypatch, caplog):
    ids = list(range(8))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    fail_on(monkeypatch, "open", errno.EROFS, creating)
    fail_on(monkeypatch, "unlink", errno.EROFS)
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        save(store, ids + [9, 9, 9, 9])
    got, dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens == 8 and got.source == "disk"
    assert_never_wrong(got, dest, ids)
    assert "kv cache disk unavailable" in caplog.text


def test_kv_dir_deleted_mid_run_is_recreated(tmp_path, caplog):
    kv_dir = tmp_path / "kv"
    store = CheckpointStore(LAYOUT, kv_dir=kv_dir)
    save(store, list(range(8)))
    shutil.rmtree(kv_dir)
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        got, dest = restore(CheckpointStore(LAYOUT, kv_dir=kv_dir), list(range(8)))
        assert got.tokens == 0
        save(store, list(range(8)) + [5, 5, 5, 5])
    assert (kv_dir / LAYOUT.fingerprint[:16] / "blocks").is_dir()
    assert len(block_files(kv_dir)) == 1  # the new block landed in the recreated directory
    ids = list(range(8)) + [5, 5, 5, 5]
    got, dest = restore(store, ids)
    assert got.tokens == 12 and got.source == "ram"  # the RAM tier never noticed
    assert_never_wrong(got, dest, ids)


def test_kv_dir_deleted_between_save_and_write_behind(tmp_path):
    kv_dir = tmp_path / "kv"
    store = CheckpointStore(LAYOUT, kv_dir=kv_dir)
    shutil.rmtree(kv_dir)
    save(store, list(range(8)))
    assert len(block_files(kv_dir)) == 2


def test_a_fifo_in_place_of_a_block_is_a_miss_and_never_hangs(tmp_path, caplog):
    ids = list(range(8))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    victim = next(p for p in block_files(tmp_path) if not p.name.endswith("0" * 32 + ".kvb"))
    victim.unlink()
    os.mkfifo(victim)
    result = {}

    def run():
        with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
            result["got"] = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "a restore blocked on a FIFO"
    got, dest = result["got"]
    assert got.tokens == 4
    assert_never_wrong(got, dest, ids)
    assert "not a regular file" in caplog.text


def test_a_directory_in_place_of_a_block_is_a_miss_and_does_not_stop_saves(tmp_path):
    ids = list(range(12))
    hashes = block_hashes(ids, LAYOUT)
    blocks = tmp_path / LAYOUT.fingerprint[:16] / "blocks"
    blocks.mkdir(parents=True)
    (blocks / f"{hashes[1]}.{hashes[0]}.kvb").mkdir()
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    save(store, ids)
    assert store.usage()["disk_available"] == 1
    assert len(block_files(tmp_path)) == 3  # the directory and the two real block files
    got, dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens == 4
    assert_never_wrong(got, dest, ids)


def _swap_in(tmp_path, ids_a, ids_b, index):
    """Copy a valid block file of ``ids_a`` over the name of block ``index`` of ``ids_b``."""
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    save(store, ids_a)
    save(store, ids_b)
    ha, hb = block_hashes(ids_a, LAYOUT), block_hashes(ids_b, LAYOUT)
    d = tmp_path / LAYOUT.fingerprint[:16] / "blocks"
    parent_a = ha[index - 1] if index else "0" * 32
    parent_b = hb[index - 1] if index else "0" * 32
    shutil.copy(d / f"{ha[index]}.{parent_a}.kvb", d / f"{hb[index]}.{parent_b}.kvb")


def test_a_valid_header_of_another_block_is_a_miss(tmp_path, caplog):
    a, b = list(range(8)), list(range(100, 108))
    _swap_in(tmp_path, a, b, 1)
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        got, dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), b)
    assert got.tokens == 4
    assert_never_wrong(got, dest, b)
    assert "header names another block" in caplog.text


def _rewrite_header(path, **changes):
    data = bytearray(path.read_bytes())
    fields = list(blockfile.HEADER.unpack_from(data))
    names = ["magic", "version", "flags", "tag", "key", "parent", "n_tokens", "dtype", "offset", "length", "checksum"]
    for k, v in changes.items():
        fields[names.index(k)] = v
    data[: blockfile.HEADER.size] = blockfile.HEADER.pack(*fields)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "change, detail",
    [({"version": 1}, "format version"), ({"tag": b"x" * 16}, "foreign"), ({"dtype": b"float16"}, "foreign"),
     ({"n_tokens": 3}, "header shape"), ({"length": 64}, "header shape"), ({"flags": 1}, "another block"),
     ({"checksum": 12345}, "checksum")],
)
def test_a_header_that_is_well_formed_but_not_ours_is_a_miss(tmp_path, caplog, change, detail):
    ids = list(range(8))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    victim = next(p for p in block_files(tmp_path) if p.name.endswith("0" * 32 + ".kvb"))
    _rewrite_header(victim, **change)
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        got, _ = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens == 0 and got.source == "none"
    assert detail in caplog.text


def test_a_version_1_json_block_file_is_a_miss(tmp_path):
    ids = list(range(4))
    h = block_hashes(ids, LAYOUT)[0]
    d = tmp_path / LAYOUT.fingerprint[:16] / "blocks"
    d.mkdir(parents=True)
    (d / f"{h}.{'0' * 32}.kvb").write_bytes(b"ACKV\x01\x00\x02\x00\x00\x00{}" + bytes(512))
    got, _ = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens == 0


def test_temp_files_of_a_killed_writer_are_reaped_and_live_ones_counted(tmp_path):
    d = tmp_path / LAYOUT.fingerprint[:16] / "blocks"
    d.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    (d / f".tmp-{dead.stdout.strip()}-abc").write_bytes(bytes(1000))
    (d / f".tmp-{os.getppid()}-def").write_bytes(bytes(700))  # a live writer's file
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    assert not (d / f".tmp-{dead.stdout.strip()}-abc").exists()
    assert (d / f".tmp-{os.getppid()}-def").exists()
    assert store.usage()["disk_bytes"] == 700


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from agentcore.engine.kvstore import disk
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore
layout = KVLayout("f" * 64, 2, 2, 4, "float32", 4)
real_write = os.write
def write_then_die(fd, data):
    real_write(fd, bytes(data)[:100])
    os.kill(os.getpid(), signal.SIGKILL)
disk.os.write = write_then_die
ids = list(range(8))
kv = np.ones(layout.block_shape(8), np.float32)
store = CheckpointStore(layout, kv_dir=sys.argv[1])
store.save("s", ids, block_hashes(ids, layout), lambda s, n: kv[:, :, s:s + n], None)
store.flush()
"""


def test_a_writer_killed_mid_file_leaves_a_miss_and_a_reaped_temp(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    d = tmp_path / LAYOUT.fingerprint[:16] / "blocks"
    assert any(p.name.startswith(".tmp-") for p in d.iterdir())
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    assert not any(p.name.startswith(".tmp-") for p in d.iterdir())
    got, _ = restore(store, list(range(8)))
    assert got.tokens == 0


# ---------------------------------------------------------------------------- property test

ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EACCES, errno.ENOENT, errno.EISDIR, errno.EDQUOT, errno.ENOTDIR]


class FaultyOS:
    """``os`` for the store's modules, with random faults in every file operation it makes:
    an OSError (``rate``), or a read that comes back short or with flipped bytes (``garble``)."""

    OPS = ("open", "write", "replace", "unlink", "pread", "preadv", "fstat", "scandir", "makedirs", "close")

    def __init__(self, rate: float, seed: int, garble: float = 0.3) -> None:
        self.rate = rate
        self.garble = garble
        self.rng = random.Random(seed)
        self.garbled = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.OPS:
            return real

        def op(*args, **kwargs):
            if self.rng.random() < self.rate:
                if name == "close":
                    real(*args, **kwargs)
                err = self.rng.choice(ERRNOS)
                raise OSError(err, os.strerror(err))
            out = real(*args, **kwargs)
            if name in ("pread", "preadv") and out and self.rng.random() < self.garble:
                self.garbled += 1
                if name == "pread":  # a short or flipped header
                    cut = self.rng.randrange(len(out))
                    out = out[:cut] if self.rng.random() < 0.5 else out[:cut] + bytes([out[cut] ^ 1]) + out[cut + 1 :]
                else:
                    view = args[1][0]
                    view[self.rng.randrange(min(out, view.nbytes))] ^= 0x55  # a flipped payload byte
            return out

        return op

    def map(self, fd, size):
        """``blockfile._map`` with the same faults: an OSError, or a payload byte flipped."""
        if self.rng.random() < self.rate:
            err = self.rng.choice(ERRNOS)
            raise OSError(err, os.strerror(err))
        mapped = REAL_MAP(fd, size)
        if self.rng.random() >= self.garble:
            return mapped
        with mapped:
            data = bytearray(mapped)
        self.garbled += 1
        data[self.rng.randrange(len(data))] ^= 0x55
        return contextlib.nullcontext(data)

    def patch(self, m) -> None:
        for mod in (disk, blockfile, store_mod):
            m.setattr(mod, "os", self)
        m.setattr(blockfile, "_map", self.map)


REAL_MAP = blockfile._map


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.02, 0.05, 0.15]),
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 14), st.integers(0, 14),
                             st.sampled_from(["same", "fresh", "fresh", "unflushed", "wipe"])),
                   min_size=1, max_size=10),
)
def test_random_disk_faults_never_raise_and_never_return_wrong_kv(tmp_path_factory, seed, rate, steps):
    kv_dir = tmp_path_factory.mktemp("kv")
    prompts = [list(range(100, 114)), list(range(100, 106)) + list(range(300, 308)), [7] * 14]
    faulty = FaultyOS(rate, seed)
    errors = ErrorRecords()
    logging.getLogger("agentcore.kv").addHandler(errors)

    def new_store():
        s = CheckpointStore(LAYOUT, kv_dir=kv_dir, ram_bytes=1500, disk_bytes=24000)
        s.disk_io.retry_s = 0.0
        return s

    with pytest.MonkeyPatch.context() as m:
        faulty.patch(m)
        store = new_store()
        for which, n, live, then in steps:
            ids = prompts[which][:n]
            save(store, ids, session=f"s{which}", flush=then != "unflushed")
            if then == "wipe":
                shutil.rmtree(kv_dir, ignore_errors=True)
            if then in ("fresh", "wipe"):
                store.flush()
                store = new_store()
            live = min(live, n)
            got, dest = restore(store, ids, live=live)
            assert got.tokens >= live
            assert_never_wrong(got, dest, ids)
            other = prompts[(which + 1) % 3][:n]  # a prompt sharing a prefix, or none
            got, dest = restore(store, other)
            assert_never_wrong(got, dest, other)
        store.flush()
    logging.getLogger("agentcore.kv").removeHandler(errors)
    GARBLED.append(faulty.garbled)
    assert not errors.records, "the write-behind thread raised"


GARBLED: list[int] = []


def test_the_property_test_did_garble_reads():
    assert sum(GARBLED) > 20, GARBLED


class ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)
