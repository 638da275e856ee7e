"""Write-behind: save() returns once the KV is in RAM; flush, close, context exit and
interpreter exit make it durable; a crash loses only unflushed blocks (a miss, never wrong KV)."""

import subprocess
import sys
import threading

import numpy as np

from agentcore.engine.kvstore import disk
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore

LAYOUT = KVLayout("f" * 64, n_layers=2, n_kv_heads=2, head_dim=4, dtype="float32", block_size=4)


def kv_of(ids):
    kv = np.zeros(LAYOUT.block_shape(len(ids)), np.float32)
    for i, t in enumerate(ids):
        kv[:, :, i] = t + i / 1000
    return kv


def save(store, ids, session="s"):
    kv = kv_of(ids)
    return store.save(session, ids, block_hashes(ids, LAYOUT), lambda s, n: kv[:, :, s : s + n], None)


def restore(store, ids):
    dest = np.zeros(LAYOUT.block_shape(len(ids)), np.float32)
    got = store.restore(ids, block_hashes(ids, LAYOUT), into=dest)
    return got, dest


def files(root):
    return sorted(p for p in root.rglob("*.kv?"))


class HeldDisk:
    """Block every disk write until released, to observe the write-behind queue."""

    def __init__(self, monkeypatch):
        self.gate = threading.Event()
        real = disk.DiskTier._write

        def held(tier, sub, name, buffers):
            self.gate.wait(30)
            return real(tier, sub, name, buffers)

        monkeypatch.setattr(disk.DiskTier, "_write", held)


def test_save_returns_before_the_disk_write_and_restores_from_the_queue(tmp_path, monkeypatch):
    held = HeldDisk(monkeypatch)
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path, ram_bytes=0)  # nothing stays in RAM
    ids = list(range(10))
    written, _nbytes, tail = save(store, ids)
    assert written == 2 and tail is not None and not files(tmp_path)
    got, dest = restore(store, ids)
    assert got.tokens == 10 and got.source == "ram"  # served from the write queue
    np.testing.assert_array_equal(dest, kv_of(ids))
    held.gate.set()
    assert store.flush(timeout=30)
    assert len(files(tmp_path)) == 3


def test_flush_times_out_while_the_disk_is_stuck(tmp_path, monkeypatch):
    held = HeldDisk(monkeypatch)
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    save(store, list(range(8)))
    assert store.flush(timeout=0.2) is False
    held.gate.set()
    assert store.flush(timeout=30)


def test_the_queue_is_bounded_in_bytes(tmp_path, monkeypatch):
    held = HeldDisk(monkeypatch)
    per_block = LAYOUT.bytes_per_token() * 4
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path, max_pending_bytes=2 * per_block)
    done = threading.Event()

    def big_save():
        save(store, list(range(24)))  # 6 blocks through a queue of 2
        done.set()

    threading.Thread(target=big_save, daemon=True).start()
    assert not done.wait(0.5)
    assert store.usage()["pending_bytes"] <= 2 * per_block
    held.gate.set()
    assert done.wait(30) and store.flush(timeout=30)
    assert len(files(tmp_path)) == 6


def test_context_manager_exit_flushes(tmp_path):
    with CheckpointStore(LAYOUT, kv_dir=tmp_path) as store:
        save(store, list(range(10)))
    assert len(files(tmp_path)) == 3


def test_a_new_store_on_the_same_kv_dir_sees_what_this_process_saved(tmp_path):
    ids = list(range(10))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    got, dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens == 10 and got.source == "disk"
    np.testing.assert_array_equal(dest, kv_of(ids))


_EXIT_WITHOUT_FLUSH = """
import sys
import numpy as np
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore
layout = KVLayout("f" * 64, 2, 2, 4, "float32", 4)
ids = list(range(40))
kv = np.zeros(layout.block_shape(40), np.float32)
for i, t in enumerate(ids):
    kv[:, :, i] = t + i / 1000
store = CheckpointStore(layout, kv_dir=sys.argv[1])
store.save("s", ids, block_hashes(ids, layout), lambda s, n: kv[:, :, s:s + n], None)
if sys.argv[2] == "crash":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_interpreter_exit_flushes_the_queue(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_FLUSH, str(tmp_path), "exit"],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(files(tmp_path)) == 10
    got, _dest = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), list(range(40)))
    assert got.tokens == 40 and got.source == "disk"


def test_a_crash_before_the_flush_loses_only_cache(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_FLUSH, str(tmp_path), "crash"],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == -9
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    ids = list(range(40))
    got, dest = restore(store, ids)
    np.testing.assert_array_equal(dest[:, :, : got.tokens], kv_of(ids)[:, :, : got.tokens])
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_a_saved_block_does_not_alias_the_callers_buffer(tmp_path):
    ids = list(range(8))
    pool = np.stack([kv_of(ids)[:, :, 0:4], kv_of(ids)[:, :, 4:8]])  # contiguous views per block
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    store.save("s", ids, block_hashes(ids, LAYOUT), lambda s, n: pool[s // 4], None)
    pool[:] = -1  # the live KV moves on
    got, dest = restore(store, ids)
    assert got.tokens == 8
    np.testing.assert_array_equal(dest, kv_of(ids))


def test_interpreter_exit_merges_the_stats(tmp_path):
    subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_FLUSH, str(tmp_path), "exit"],
                   capture_output=True, timeout=120, check=True)
    stats = (tmp_path / LAYOUT.fingerprint[:16] / "stats.json").read_text()
    assert '"blocks_written": 10' in stats
