"""PinnedBlocks: a fixed set of host buffers the CUDA save behind reuses instead of pinning."""

import gc

import numpy as np
import pytest

from agentcore.engine.kvstore.hostmem import PinnedBlocks


def like_pinned_empty(n):
    # cuda.pinned_empty's structure: np.frombuffer over a foreign buffer, then a reshape
    return np.frombuffer(bytearray(n), np.uint8, n).reshape(n)


@pytest.mark.parametrize("alloc", [like_pinned_empty, lambda n: np.empty(n, np.uint8)])
def test_buffers_come_back_only_when_no_view_of_them_is_alive(alloc):
    pool = PinnedBlocks(alloc, 4096, 2)
    assert pool.count == pool.free == 2
    a = pool.take((4, 8, 16), np.float16)  # 1 KB of a 4 KB buffer
    b = pool.take((1024,), np.float32)
    assert a.shape == (4, 8, 16) and a.dtype == np.float16 and a.flags.c_contiguous
    assert pool.take((1,), np.uint8) is None and pool.free == 0  # both out: the caller goes pageable
    assert not np.shares_memory(a, b)
    a[...] = 1.5
    view = a[1:, ::2][0]  # a view of a view: still holds the buffer
    del a
    gc.collect()
    assert pool.free == 0 and float(view[0, 0]) == 1.5
    del view
    assert pool.free == 1
    c = pool.take((8,), np.int32)
    assert c is not None and not np.shares_memory(c, b)
    del b, c
    assert pool.free == 2


def test_a_block_that_does_not_fit_is_refused_and_an_empty_pool_hands_out_nothing():
    pool = PinnedBlocks(like_pinned_empty, 256, 1)
    assert pool.take((65,), np.float32) is None  # 260 bytes
    assert pool.free == 1
    assert PinnedBlocks(like_pinned_empty, 256, 0).take((1,), np.uint8) is None
    with pytest.raises(ValueError, match="gave"):
        PinnedBlocks(lambda n: np.empty(n // 2, np.uint8), 256, 1)


def test_the_store_keeps_a_taken_block_as_it_is_and_frees_it_on_eviction(tmp_path):
    # The save behind hands taken blocks to the store with owned=True: the RAM tier keeps the
    # array itself; once evicted (the RAM budget), the buffer is free for the next save.
    from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
    from agentcore.engine.kvstore.store import CheckpointStore

    layout = KVLayout("fp", 2, 2, 8, "float16", 16)
    full = layout.bytes_per_token() * 16
    pool = PinnedBlocks(like_pinned_empty, full, 4)
    store = CheckpointStore(layout, ram_bytes=2 * full, kv_dir=None, disk_bytes=0)
    ids = list(range(64))
    hashes = block_hashes(ids, layout)
    taken = []

    def read(start, n):
        out = pool.take(layout.block_shape(n), layout.array_dtype)
        out[...] = start
        taken.append(out.ctypes.data)
        return out

    store.save("s", ids, hashes, read, None, owned=True)
    assert len(taken) == 4
    kept = [e.data.ctypes.data for e in store.ram.values() if e.data is not None]
    assert kept and set(kept) <= set(taken)  # the arrays themselves, not copies
    del kept
    gc.collect()
    assert pool.free == 4 - len([e for e in store.ram.values() if e.data is not None])
