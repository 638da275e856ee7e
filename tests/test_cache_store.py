"""CheckpointStore on real files: verified reads, budgets, leaf-first eviction, two processes."""

import logging
import multiprocessing as mp

import numpy as np
import pytest

from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore

LAYOUT = KVLayout("f" * 64, n_layers=2, n_kv_heads=2, head_dim=4, dtype="float32", block_size=4)
PER_BLOCK = 2 * 2 * 4 * 2 * 4 * 4  # layers * kv * block * heads * dim * 4 bytes


class FakeKV:
    """Positions -> deterministic KV values, so restored data can be checked exactly."""

    def __init__(self, ids):
        self.data = np.zeros(LAYOUT.block_shape(len(ids) + 8), np.float32)
        for i, t in enumerate(ids):
            self.data[:, :, i] = t + i / 1000

    def read(self, start, n):
        return np.ascontiguousarray(self.data[:, :, start : start + n])


def save(store, session, ids, prev_tail=None):
    """Save and wait for the write-behind queue, so the disk tier can be inspected."""
    kv = FakeKV(ids)
    out = store.save(session, ids, block_hashes(ids, LAYOUT), kv.read, prev_tail)
    store.flush()
    return out


def restore(store, ids):
    out = np.zeros(LAYOUT.block_shape(len(ids) + 8), np.float32)

    def write(start, block):
        out[:, :, start : start + block.shape[2]] = block

    got = store.restore(ids, block_hashes(ids, LAYOUT), write)
    return got, out


def test_saved_prefix_restores_exactly_from_ram_and_then_disk(tmp_path):
    ids = list(range(100, 110))  # two full blocks + a tail of 2
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    written, nbytes, tail = save(store, "s", ids)
    assert written == 2 and tail is not None and nbytes > 2 * PER_BLOCK
    got, out = restore(store, ids)
    assert got.tokens == 10 and got.source == "ram"
    np.testing.assert_array_equal(out[:, :, :10], FakeKV(ids).data[:, :, :10])
    fresh = CheckpointStore(LAYOUT, kv_dir=tmp_path)  # a new process on the same kv_dir
    got, out = restore(fresh, ids)
    assert got.tokens == 10 and got.source == "disk"
    np.testing.assert_array_equal(out[:, :, :10], FakeKV(ids).data[:, :, :10])


def test_saving_again_writes_only_new_blocks(tmp_path):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    ids = list(range(8))
    assert save(store, "s", ids)[0] == 2
    assert save(store, "s", ids + [8, 9, 10, 11])[0] == 1


def test_a_diverging_prompt_restores_only_the_shared_blocks(tmp_path):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    save(store, "s", list(range(12)))
    got, _ = restore(store, list(range(6)) + [99] * 6)
    assert got.tokens == 4


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_files_are_logged_misses_never_wrong_kv(tmp_path, damage, caplog):
    ids = list(range(8))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), "s", ids)
    files = sorted(tmp_path.rglob("*.kvb"))
    victim = files[1] if files[0].name.split(".")[1] != "0" * 32 else files[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a kv block at all")
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="agentcore.kv"):
        got, out = restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), ids)
    assert got.tokens in (0, 4)  # a miss at the damaged block, never past it
    np.testing.assert_array_equal(out[:, :, : got.tokens], FakeKV(ids).data[:, :, : got.tokens])
    assert "reason=corrupt" in caplog.text


def test_files_of_another_model_are_misses(tmp_path):
    ids = list(range(8))
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), "s", ids)
    other = KVLayout("e" * 64, 2, 2, 4, "float32", 4)
    store = CheckpointStore(other, kv_dir=tmp_path)
    out = np.zeros(other.block_shape(16), np.float32)
    got = store.restore(ids, block_hashes(ids, other), lambda s, b: None)
    assert got.tokens == 0 and not out.any()


def file_size(store):
    return max(e.nbytes for e in store.disk.values())


def test_budget_evicts_leaves_before_shared_ancestors_and_logs_it(tmp_path, caplog):
    store = CheckpointStore(LAYOUT, ram_bytes=1 << 30, kv_dir=tmp_path)
    shared = list(range(8))
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        save(store, "a", shared + [50, 51, 52, 53])
        store.disk_bytes = int(4.5 * file_size(store))  # room for the 2 shared blocks + 2 leaves
        save(store, "b", shared + [60, 61, 62, 63])
        store.release("a")
        store.release("b")
        save(store, "c", shared + [70, 71, 72, 73])
    root_hashes = block_hashes(shared, LAYOUT)
    assert all(h in store.disk for h in root_hashes), "shared ancestors must outlive leaves"
    assert len(store.disk) == 4 and store.stats.evictions["disk"] == 1
    assert "kv cache evicted reason=budget tier=disk" in caplog.text


def test_newest_checkpoint_of_a_live_session_is_spared(tmp_path):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    old = [1, 2, 3, 4, 5, 6, 7, 8]
    save(store, "old", old)
    store.release("old")
    store.disk_bytes = int(3.5 * file_size(store))
    store.ram[block_hashes(old, LAYOUT)[1]].hits = 50  # even a popular old leaf goes first
    store.disk[block_hashes(old, LAYOUT)[1]].hits = 50
    live = [9, 9, 9, 9, 8, 8, 8, 8]
    save(store, "live", live)
    assert all(h in store.disk for h in block_hashes(live, LAYOUT))
    assert block_hashes(old, LAYOUT)[1] not in store.disk


def _writer(path, offset):
    store = CheckpointStore(LAYOUT, kv_dir=path)
    for i in range(20):
        save(store, f"p{offset}", list(range(offset, offset + 4 * (i % 5 + 1))))


def test_two_processes_on_one_kv_dir_never_corrupt_each_other(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, off)) for off in (0, 0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    for off in (0, 1000):
        ids = list(range(off, off + 20))
        got, out = restore(store, ids)
        assert got.tokens >= 16
        np.testing.assert_array_equal(out[:, :, : got.tokens], FakeKV(ids).data[:, :, : got.tokens])
    assert store.stats.corrupt == 0


@pytest.mark.parametrize("path", ["callback", "into"])
def test_restore_after_a_live_prefix_leaves_the_live_positions_alone(tmp_path, path):
    ids = list(range(100, 114))  # three full blocks + a tail of 2
    save(CheckpointStore(LAYOUT, kv_dir=tmp_path), "s", ids)
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path)
    out = np.full(LAYOUT.block_shape(len(ids)), 7.0, np.float32)  # positions < 6 are "live"
    starts = []

    def write(start, block):
        starts.append(start)
        out[:, :, max(start, 6) : start + block.shape[2]] = block[:, :, max(0, 6 - start) :]

    hashes = block_hashes(ids, LAYOUT)
    got = store.restore(ids, hashes, write, live=6) if path == "callback" else store.restore(
        ids, hashes, into=out, live=6)
    assert got.tokens == 14 and got.source == "disk" and got.bytes_read == PER_BLOCK * 2 + PER_BLOCK // 2
    assert (out[:, :, :6] == 7.0).all()
    np.testing.assert_array_equal(out[:, :, 6:14], FakeKV(ids).data[:, :, 6:14])
    if path == "callback":
        assert starts == [4, 8, 12]  # block 0 lies inside the live prefix: not read


def test_pageable_ram_blocks_are_staged_on_the_read_threads_and_restore_exactly(tmp_path):
    # host_pinned says every RAM block is pageable: each one is copied on a read thread into
    # a scratch buffer (host_alloc's), several ahead, and that buffer is what write_block gets;
    # buffers are recycled, so the bytes restored prove each was placed before its reuse.
    ids = list(range(300, 300 + 4 * 12 + 3))  # 12 full blocks (> 2 * read_threads ahead) and a tail
    alloc, asked = [], []

    def host_alloc(shape, dtype):
        alloc.append(shape)
        return np.empty(shape, dtype)

    def host_pinned(a):
        asked.append(a.ctypes.data)
        return False

    store = CheckpointStore(LAYOUT, read_threads=2, host_alloc=host_alloc, host_pinned=host_pinned)
    kv = FakeKV(ids)
    store.save("s", ids, block_hashes(ids, LAYOUT), kv.read, None)
    ram = {e.data.ctypes.data for e in store.ram.values()}
    alloc.clear()
    seen = []
    out = np.zeros(LAYOUT.block_shape(len(ids) + 8), np.float32)

    def write(start, block):
        seen.append(block.ctypes.data)
        out[:, :, start : start + block.shape[2]] = block
        block[...] = -1  # the buffer is the store's scratch: scribbling on it harms nothing

    got = store.restore(ids, block_hashes(ids, LAYOUT), write)
    assert got.tokens == len(ids) and got.source == "ram"
    np.testing.assert_array_equal(out[:, :, : len(ids)], kv.data[:, :, : len(ids)])
    assert len(asked) == 13 and set(asked) == ram
    assert not set(seen) & ram  # write_block never got a RAM block itself
    assert 2 <= len(alloc) <= 2 * 2 + 1  # scratch buffers: the window's, not one per block
    again = store.restore(ids, block_hashes(ids, LAYOUT), lambda s, b: out.__setitem__((slice(None), slice(None),
                                                                    slice(s, s + b.shape[2])), b))  # fmt: skip
    assert again.tokens == len(ids)
    np.testing.assert_array_equal(out[:, :, : len(ids)], kv.data[:, :, : len(ids)])


def test_pinned_ram_blocks_and_dense_restores_are_not_staged(tmp_path):
    ids = list(range(500, 500 + 4 * 5))
    store = CheckpointStore(LAYOUT, host_pinned=lambda a: True)
    kv = FakeKV(ids)
    store.save("s", ids, block_hashes(ids, LAYOUT), kv.read, None)
    ram = {e.data.ctypes.data for e in store.ram.values()}
    seen = []
    got = store.restore(ids, block_hashes(ids, LAYOUT), lambda s, b: seen.append(b.ctypes.data))
    assert got.tokens == len(ids) and set(seen) == ram  # handed over as they are
    staged = CheckpointStore(LAYOUT, host_pinned=lambda a: False)
    staged.save("s", ids, block_hashes(ids, LAYOUT), kv.read, None)
    into = np.zeros(LAYOUT.block_shape(len(ids)), np.float32)
    got = staged.restore(ids, block_hashes(ids, LAYOUT), into=into)  # a host KV: copied once, in place
    assert got.tokens == len(ids)
    np.testing.assert_array_equal(into, kv.data[:, :, : len(ids)])


@pytest.mark.parametrize("with_disk", [False, True])
def test_a_restore_that_misses_allocates_no_read_buffer(tmp_path, with_disk):
    # A cold prompt: nothing stored. The restore must not take host buffers for blocks that
    # cannot be read (on CUDA each would be freshly pinned memory, whose allocation stalls
    # every thread's kernel launches: a new session's first turn paid it per block).
    asked = []

    def host_alloc(shape, dtype):
        asked.append(shape)
        return np.empty(shape, dtype)

    store = CheckpointStore(LAYOUT, kv_dir=tmp_path if with_disk else None, host_alloc=host_alloc)
    ids = list(range(40))  # 10 full blocks
    got, _ = restore(store, ids)
    assert got.tokens == 0 and got.source == "none"
    assert asked == []
    # A block another process wrote after this store's scan is still found (by its file).
    if with_disk:
        other = CheckpointStore(LAYOUT, kv_dir=tmp_path)
        save(other, "o", ids)
        got, out = restore(store, ids)
        assert got.tokens == 40 and got.source == "disk"
        np.testing.assert_array_equal(out[:, :, :40], FakeKV(ids).data[:, :, :40])
        # A chain that stops midway: blocks after the first miss are never read.
        asked.clear()
        longer = ids + list(range(1000, 1040))
        got, _ = restore(store, longer)
        assert got.tokens == 40
        assert len(asked) <= 2 * store.read_threads  # the hits' buffers only, none past the miss
