"""Eviction by reason: never a live session's anchor or the request's own chain while anything
else can go; hits=0 evictions logged and counted; write amplification and p90 miss cost."""

import json
import logging

import numpy as np

from agentcore import cli
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore

LAYOUT = KVLayout("f" * 64, n_layers=2, n_kv_heads=2, head_dim=4, dtype="float32", block_size=4)
PER_BLOCK = LAYOUT.bytes_per_token() * 4


def save(store, ids, session="s"):
    kv = np.ones(LAYOUT.block_shape(len(ids)), np.float32)
    out = store.save(session, ids, block_hashes(ids, LAYOUT), lambda s, n: kv[:, :, s : s + n], None)
    store.flush()
    return out


def restore(store, ids):
    dest = np.zeros(LAYOUT.block_shape(len(ids)), np.float32)
    return store.restore(ids, block_hashes(ids, LAYOUT), into=dest)


def test_a_pinned_anchor_outlives_newer_unpinned_leaves(tmp_path):
    store = CheckpointStore(LAYOUT, ram_bytes=4 * PER_BLOCK)
    anchor = [1, 1, 1, 1, 2, 2, 2, 2]
    save(store, anchor, "a")
    store.pin("a", block_hashes(anchor, LAYOUT))
    store.release("b")
    for k in range(6):
        save(store, [50 + k] * 4, f"x{k}")
        store.release(f"x{k}")
    assert all(h in store.ram for h in block_hashes(anchor, LAYOUT))
    store.unpin("a")
    store.release("a")
    for k in range(6):
        save(store, [90 + k] * 4, f"y{k}")
    assert not all(h in store.ram for h in block_hashes(anchor, LAYOUT))


def test_the_saved_chain_is_not_evicted_while_older_blocks_remain(tmp_path):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path, disk_bytes=int(3.5 * (PER_BLOCK + 4096)))
    old = [5] * 8
    save(store, old, "old")
    store.release("old")
    new = [6] * 12
    save(store, new, "new")
    assert all(h in store.disk for h in block_hashes(new, LAYOUT))
    assert not any(h in store.disk for h in block_hashes(old, LAYOUT))


def test_ram_drops_copies_of_durable_blocks_before_any_last_copy(tmp_path):
    store = CheckpointStore(LAYOUT, kv_dir=tmp_path, ram_bytes=2 * PER_BLOCK)
    save(store, list(range(16)))
    assert len(store.ram) <= 2 and len(store.disk) == 4
    assert store.stats.evicted_unused["ram"] == 0  # nothing left the store
    assert restore(CheckpointStore(LAYOUT, kv_dir=tmp_path), list(range(16))).tokens == 16


def test_unused_evictions_are_logged_and_counted(caplog):
    store = CheckpointStore(LAYOUT, ram_bytes=2 * PER_BLOCK)
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        save(store, [1] * 8, "a")
        store.release("a")
        restore(store, [1] * 8)  # both blocks of "a" get a hit
        save(store, [2] * 8, "b")
        store.release("b")
        save(store, [3] * 8, "c")
    lines = [r.getMessage() for r in caplog.records if "kv cache evicted" in r.getMessage()]
    assert any("reason=budget tier=ram tokens=4 hits=0" in line for line in lines)
    assert store.stats.evicted_unused["ram"] == sum("hits=0" in line for line in lines)
    assert store.stats.evicted_unused["ram"] < store.stats.evictions["ram"]


def test_write_amplification_and_miss_cost_reach_cache_stats(tmp_path, capsys):
    with CheckpointStore(LAYOUT, kv_dir=tmp_path) as store:
        save(store, list(range(8)))
        for _ in range(3):
            restore(store, list(range(8)))
        got = restore(store, list(range(8)) + [9, 9, 9, 9, 9, 9])
        store.record_miss_cost(12.5)
    assert got.tokens == 8
    assert store.stats.write_amplification == 2 * PER_BLOCK / (8 * PER_BLOCK)
    assert cli.main(["cache", "stats", "--kv-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    figures = out["stats"][LAYOUT.fingerprint[:16]]
    assert figures["write_amplification"] == 0.25
    assert figures["miss_tokens_p90"] == 6 and figures["miss_ms_p90"] == 12.5
    assert out["blocks"] == 2


def test_cache_stats_add_up_across_processes(tmp_path, capsys):
    for _ in range(2):
        with CheckpointStore(LAYOUT, kv_dir=tmp_path) as store:
            save(store, list(range(8)))
            restore(store, list(range(8)))
    cli.main(["cache", "stats", "--kv-dir", str(tmp_path), "--json"])
    figures = json.loads(capsys.readouterr().out)["stats"][LAYOUT.fingerprint[:16]]
    assert figures["bytes_written"] == 2 * PER_BLOCK  # the second process wrote nothing new
    assert figures["bytes_reused"] == 4 * PER_BLOCK
