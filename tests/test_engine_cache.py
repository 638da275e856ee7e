"""LocalEngine's token ledger and checkpoint store on a synthetic tiny model (Engine II)."""

import logging
import re

import numpy as np
import pytest

from agentcore import Agent, tool
from agentcore.dsml import render_tool_calls
from agentcore.engine.base import GenerationRequest
from agentcore.engine.kvstore.blocks import block_hashes
from agentcore.engine.local import LocalEngine
from agentcore.errors import CacheError, UnknownSession
from agentcore.messages import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage
from agentcore.testing.synthetic import write_synthetic_gguf

pytestmark = pytest.mark.anyio

SYSTEM = "You are a tiny synthetic model used to test the KV cache. " * 6


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", arch="llama", qtype="Q8_0",
                                context_length=16384)


def engine(path, kv_dir=None, **kw):
    return LocalEngine.from_gguf(path, context_length=16384, kv_dir=kv_dir, block_size=16, **kw)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key} is {len(key) * 7}"


def transcript(turns):
    """A tool-calling transcript with canned assistant turns (as a remote model would give)."""
    msgs = [SystemMessage(content=SYSTEM), UserMessage(content="look things up")]
    for i in range(turns):
        call = ToolCall(id=f"c{i}", name="lookup", arguments={"key": f"k{i}"})
        msgs.append(AssistantMessage(content=f"step {i}", tool_calls=[call]))
        msgs.append(ToolMessage(call_id=f"c{i}", name="lookup", content=f"value {i * 7}"))
    return msgs


def req(msgs, session="s", max_tokens=4):
    return GenerationRequest(session_id=session, messages=msgs, tools=[lookup.spec], max_tokens=max_tokens)


async def generate(eng, request):
    async for item in eng.stream(request):
        completion = item
    return completion


async def test_thirty_turn_agent_session_reuses_99_percent_every_turn(tiny_gguf, tmp_path):
    eng = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    script = iter([f"step {i}" + render_tool_calls([ToolCall(id="x", name="lookup", arguments={"key": f"k{i}"})])
                   for i in range(30)] + ["done"])

    original = eng.stream

    async def scripted_stream(request):
        # The tiny random model cannot write DSML; replay a canned reply through the real
        # ledger by teacher-forcing its tokens (prefill + KV exactly like a generation).
        text = next(script)
        async for item in original(request.model_copy(update={"max_tokens": 1})):
            completion = item
        ids = eng.tokenize(text)
        completion.text, completion.token_ids = text, ids
        completion.finish_reason = "tool_calls" if "tool_calls>" in text else "stop"
        yield completion

    eng.stream = scripted_stream
    result = await Agent(eng, tools=[lookup], system=SYSTEM, max_steps=40, max_tokens=64).run("look up 30 keys")
    assert result.final_text == "done" and len(result.usages) == 31
    reuse = [u.cached_tokens / u.prompt_tokens for u in result.usages[1:]]
    assert min(reuse) >= 0.99, reuse
    # Measured against what was reusable, every turn after the first reuses all of it.
    assert [u.reuse_of_reusable for u in result.usages[1:]] == [1.0] * 30
    assert all(u.reusable_tokens > 0 for u in result.usages[1:])
    assert len(result.checkpoints) == 30


async def test_each_block_is_written_once_across_checkpoints(tiny_gguf, tmp_path):
    eng = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    for turns in range(1, 8):
        info = await eng.checkpoint(req(transcript(turns)))
    n_blocks = info.tokens // 16
    assert eng.store.stats.blocks_written == n_blocks
    eng.close()  # checkpoints are written behind; close makes them durable
    assert len(list((tmp_path / "kv").rglob("*.kvb"))) == n_blocks


async def test_new_engine_on_same_kv_dir_restores_from_disk_with_identical_logits(tiny_gguf, tmp_path, caplog):
    msgs = transcript(10)
    first = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    await first.checkpoint(req(msgs))
    restarted = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    nxt = msgs + [UserMessage(content="and now?")]
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        done = await generate(restarted, req(nxt, max_tokens=1))
    assert done.usage.cache_source == "disk"
    # Every checkpointed token comes back (full blocks and the partial tail block).
    assert done.usage.cached_tokens == first.turns[-1].prompt
    assert "kv cache hit source=disk" in caplog.text
    # The restarted session's KV (restored from disk + prefilled tail) gives the logits a
    # cold prefill of the whole prompt gives.
    ids, _ = restarted._prompt(req(nxt), generation=True)
    session = restarted.sessions["s"]
    assert session.ids[: len(ids)] == ids
    session.truncate(len(ids) - 1)
    warm = restarted.transformer.forward(ids[-1:], len(ids) - 1, session.kv)
    np.testing.assert_allclose(warm, engine(tiny_gguf).logits(ids)[-1], rtol=1e-5, atol=1e-5)


async def test_restored_kv_equals_cold_prefill_kv(tiny_gguf, tmp_path):
    msgs = transcript(6)
    first = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    await first.checkpoint(req(msgs))
    restarted = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    await restarted.checkpoint(req(msgs))
    cold = engine(tiny_gguf)
    await cold.checkpoint(req(msgs))
    n = len(cold.sessions["s"].ids)
    assert restarted.turns[-1].source == "disk" and restarted.turns[-1].common == n
    np.testing.assert_array_equal(restarted.sessions["s"].kv.data[:, :, :n], cold.sessions["s"].kv.data[:, :, :n])


async def test_interleaved_sessions_keep_their_reuse(tiny_gguf):
    eng = engine(tiny_gguf, max_live_sessions=1)  # A and B evict each other from the live slot
    a, b = transcript(4), transcript(5)
    b[1] = UserMessage(content="a different task for session B")
    for turn in range(4, 8):
        for sid, base in (("A", a), ("B", b)):
            msgs = base + [UserMessage(content=f"turn {turn}")]
            await eng.checkpoint(req(msgs, session=sid))
            done = await generate(eng, req(msgs, session=sid, max_tokens=1))
            assert done.usage.cached_tokens / done.usage.prompt_tokens >= 0.99
            base.append(UserMessage(content=f"turn {turn}"))


async def test_tiny_ram_budget_evicts_and_logs_each_eviction(tiny_gguf, caplog):
    eng = LocalEngine.from_gguf(tiny_gguf, context_length=16384, block_size=16, kv_ram_mb=0)
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        await eng.checkpoint(req(transcript(3)))
    evictions = [r for r in caplog.records if "kv cache evicted" in r.getMessage()]
    assert evictions and eng.store.stats.evictions["ram"] == len(evictions)


async def test_miss_after_divergence_names_the_first_differing_token_and_message(tiny_gguf, caplog):
    eng = engine(tiny_gguf)
    msgs = transcript(3)
    await eng.checkpoint(req(msgs))
    changed = list(msgs)
    changed[3] = ToolMessage(call_id="c0", name="lookup", content="a different result")
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        await eng.checkpoint(req(changed))
    line = next(r.getMessage() for r in caplog.records if "kv cache miss" in r.getMessage())
    assert "reason=token-mismatch" in line and "msg=3" in line
    assert eng.stats()["turns"][-1]["reason"] == "token-mismatch"


async def test_request_over_the_limit_is_refused_before_any_kv(tiny_gguf):
    eng = LocalEngine.from_gguf(tiny_gguf, context_length=64)
    with pytest.raises(Exception, match="exceeds"):
        await generate(eng, req(transcript(5), max_tokens=8))
    assert eng.turns == [] and eng.sessions == {}


async def test_checkpoint_pins_the_anchor_blocks(tiny_gguf):
    eng = engine(tiny_gguf)
    msgs = transcript(6)
    await eng.checkpoint(req(msgs))
    ids, ends = eng._prompt(req(msgs), generation=False)
    anchor = ends[1] // 16  # system + tools + the first task
    hashes = block_hashes(ids, eng.layout)
    assert anchor >= 1
    assert set(hashes[:anchor]) <= eng.store.anchors["s"]
    assert not set(hashes[anchor:]) & eng.store.anchors["s"]


async def test_cache_log_lines_have_the_design_format(tiny_gguf, caplog):
    """DESIGN.md invariant 5: ``kv cache hit source=S tokens=N load=X ms`` and ``kv cache miss
    prompt=P common=C reason=R first_diff=I msg=K`` (extra fields only after those)."""
    eng = engine(tiny_gguf)
    msgs = transcript(2)
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        await eng.checkpoint(req(msgs))
        await generate(eng, req(msgs + [UserMessage(content="more")], max_tokens=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kv cache ")]
    miss = re.compile(r"kv cache miss prompt=\d+ common=\d+ reason=(token-mismatch|cold|evicted|compaction) "
                      r"first_diff=\d+ msg=\d+( |$)")
    hit = re.compile(r"kv cache hit source=(live|ram|disk) tokens=\d+ load=\d+\.\d ms( |$)")
    assert miss.match(lines[0]), lines[0]
    assert hit.match(next(line for line in lines if "hit" in line)), lines


async def test_checkpoint_by_session_id_persists_the_kv_the_session_holds(tiny_gguf, tmp_path):
    """DESIGN.md's ``checkpoint(session_id)``: no request, nothing prefilled; a new engine on
    the same kv_dir restores those tokens."""
    first = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    msgs = transcript(3)
    done = await generate(first, req(msgs, max_tokens=3))
    info = await first.checkpoint("s")
    held = first.sessions["s"].ids
    assert info.session_id == "s" and info.tokens == len(held) and info.bytes_written > 0
    assert info.prefill_ms == 0.0
    nxt = msgs + [AssistantMessage(content=done.text), UserMessage(content="and now?")]
    restarted = engine(tiny_gguf, kv_dir=tmp_path / "kv")
    again = await generate(restarted, req(nxt, max_tokens=1))
    ids, _ = restarted._prompt(req(nxt), generation=True)
    common = next((i for i, (a, b) in enumerate(zip(held, ids, strict=False)) if a != b), min(len(held), len(ids)))
    assert again.usage.cache_source == "disk" and again.usage.cached_tokens == common
    assert common >= len(held) - 1  # the ledger: the reply renders as the tokens sampled


async def test_checkpoint_of_a_session_the_engine_never_served_is_a_typed_error(tiny_gguf):
    eng = engine(tiny_gguf)
    with pytest.raises(UnknownSession, match="no live KV for session 'nobody'") as err:
        await eng.checkpoint("nobody")
    assert isinstance(err.value, CacheError) and isinstance(err.value, KeyError)


async def test_a_compacted_transcript_misses_with_reason_compaction_and_keeps_the_anchor(tiny_gguf, caplog):
    """DESIGN.md invariants 5 and 7: after a compaction the miss says ``reason=compaction``,
    and the anchor (system, tools, first task) is still reused."""
    eng = engine(tiny_gguf)
    msgs = transcript(6)
    await eng.checkpoint(req(msgs))
    summary = UserMessage(content="Summary of earlier work: k0..k4 were looked up.", compacted=True)
    compacted = msgs[:2] + [summary] + msgs[-2:] + [UserMessage(content="and now?")]
    with caplog.at_level(logging.INFO, logger="agentcore.kv"):
        done = await generate(eng, req(compacted, max_tokens=1))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("kv cache miss"))
    assert "reason=compaction" in line and " msg=2 " in line + " "
    _, ends = eng._prompt(req(compacted), generation=True)
    assert done.usage.cached_tokens >= ends[1]  # system, tools and the first task: reused
    assert eng.stats()["turns"][-1]["reason"] == "compaction"
