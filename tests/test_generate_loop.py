"""The one decode loop through LocalEngine.stream: what it emits, what the ledger keeps, what a
consumer that leaves early leaves behind, and what rendering a request costs."""

import anyio
import numpy as np
import pytest

from agentcore import Agent, tool
from agentcore.engine import GenerationRequest, LocalEngine, Sampling
from agentcore.engine.generate import EagerDecoder
from agentcore.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from agentcore.testing.synthetic import write_synthetic_gguf

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", arch="llama",
                                qtype="Q8_0", context_length=8192)  # fmt: skip


def engine(path, **kw):
    return LocalEngine.from_gguf(path, context_length=8192, block_size=16, **kw)


def request(text="tell me about caches", session="s", max_tokens=12, **kw):
    msgs = [SystemMessage(content="A synthetic system prompt. " * 8), UserMessage(content=text)]
    return GenerationRequest(session_id=session, messages=msgs, max_tokens=max_tokens, **kw)


async def complete(eng, req):
    deltas = []
    async for item in eng.stream(req):
        if hasattr(item, "usage"):
            return item, deltas
        deltas.append(item.text)
    raise AssertionError("no Completion")


async def test_greedy_stream_equals_the_reference_argmax_loop(tiny_gguf):
    eng = engine(tiny_gguf)
    done, deltas = await complete(eng, request(max_tokens=10))
    ids, _ = eng._prompt(request(), generation=True)
    want = []
    seq = list(ids)
    for _ in range(done.usage.completion_tokens):
        nxt = int(np.argmax(eng.logits(seq)[-1]))
        want.append(nxt)
        seq.append(nxt)
        if nxt in eng.chat.stop_ids:
            break
    assert done.token_ids == want
    assert "".join(deltas) == done.text


async def test_every_sampled_token_joins_the_ledger(tiny_gguf):
    eng = engine(tiny_gguf)
    done, _ = await complete(eng, request(max_tokens=6))
    ids, _ = eng._prompt(request(), generation=True)
    # The last sampled ids are fed after the Completion is handed over: nothing is recomputed
    # next turn.
    session = eng.sessions["s"]
    with eng._compute:  # held by the worker until they are fed
        assert session.ids == ids + done.token_ids
        assert session.kv.length == len(session.ids)


async def test_next_turn_reuses_all_that_was_reusable(tiny_gguf):
    eng = engine(tiny_gguf)
    first = request()
    done, _ = await complete(eng, first)
    nxt = first.messages + [
        AssistantMessage(content=done.text, token_ids=done.token_ids),
        UserMessage(content="and then?"),
    ]
    again, _ = await complete(eng, first.model_copy(update={"messages": nxt}))
    u = again.usage
    assert u.reusable_tokens == first_prompt_plus(eng, first, done)
    assert u.cached_tokens == u.reusable_tokens and u.reuse_of_reusable == 1.0
    assert eng.stats()["turns"][-1]["reuse_of_reusable"] == 1.0


def first_prompt_plus(eng, req, done):
    return len(eng._prompt(req, generation=True)[0]) + len(done.token_ids)


async def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_gguf):
    s = Sampling(temperature=1.5, top_k=40, seed=11)
    a, _ = await complete(engine(tiny_gguf), request(max_tokens=16, sampling=s))
    b, _ = await complete(engine(tiny_gguf), request(max_tokens=16, sampling=s))
    g, _ = await complete(engine(tiny_gguf), request(max_tokens=16))
    assert a.token_ids == b.token_ids
    assert a.token_ids != g.token_ids


async def test_leaving_the_stream_early_leaves_the_engine_usable(tiny_gguf):
    eng = engine(tiny_gguf)
    async for _ in eng.stream(request(max_tokens=200)):
        break
    done, _ = await complete(eng, request(max_tokens=3))
    assert done.usage.completion_tokens >= 1
    session = eng.sessions["s"]
    # The worker feeds the last sampled ids after posting the Completion; the compute lock
    # is held until it is done (the next request waits for it the same way).
    with eng._compute:
        assert session.kv.length == len(session.ids)


async def test_leaving_agent_stream_early_then_running_again_works(tiny_gguf):
    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return key

    eng = engine(tiny_gguf)
    agent = Agent(eng, tools=[lookup], system="tiny", max_steps=2, max_tokens=8)
    async for _ in agent.stream("first task"):
        break
    with anyio.fail_after(60):
        result = await agent.run("second task")
    assert result.usages


async def test_two_tasks_streaming_at_once_are_served_one_after_the_other(tiny_gguf):
    eng = engine(tiny_gguf)
    results = {}

    async def one(name):
        results[name], _ = await complete(eng, request(session=name, max_tokens=5))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a")
            tg.start_soon(one, "b")
    assert results["a"].token_ids == results["b"].token_ids


async def test_building_a_request_tokenizes_only_new_text(tiny_gguf, monkeypatch):
    eng = engine(tiny_gguf)
    chars = []
    real = eng.tokenizer._encode
    monkeypatch.setattr(eng.tokenizer, "_encode", lambda text: chars.append(len(text)) or real(text))
    msgs = [SystemMessage(content="system " * 200), UserMessage(content="task " * 50)]
    eng.count_tokens(GenerationRequest(session_id="s", messages=msgs))
    for turn in range(12):
        msgs += [AssistantMessage(content=f"calling {turn}"),
                 ToolMessage(call_id=f"c{turn}", name="t", content=f"result {turn} " * 300)]
        chars.clear()
        eng.count_tokens(GenerationRequest(session_id="s", messages=msgs))
        new = len(msgs[-1].content) + len(msgs[-2].content)
        # Of the message texts, only the new ones are tokenized; earlier ones come from the
        # memo (short texts, a few words of framing each, are cheaper to encode than to look up).
        long = [n for n in chars if n >= 64]
        assert sum(long) <= new + 64, (turn, long, new)


def test_eager_decoder_step_equals_feed_then_sample(tiny_gguf):
    eng = engine(tiny_gguf)
    ids = eng.tokenize("a short prompt for the decoder")
    kv1, kv2 = eng.ops.new_kv(eng.spec, 64), eng.ops.new_kv(eng.spec, 64)
    a, b = EagerDecoder(eng.transformer, kv1), EagerDecoder(eng.transformer, kv2)
    for d in (a, b):
        d.prefill(ids)
        d.start(None)
    t = a.sample()
    assert b.sample() == t
    assert a.step(t) == (b.feed([t]) or b.sample())
    assert kv1.length == kv2.length == len(ids) + 1


class ScriptDecoder:
    """A Decoder that 'samples' a fixed id sequence: the loop's stop logic in isolation."""

    def __init__(self, ids):
        self.ids, self.i = list(ids), 0

    def prefill(self, ids): ...
    def start(self, sampling, seed=None, *, reserve=0): ...
    def feed(self, ids): ...
    def settle(self): ...
    def logits(self): ...

    def sample(self, mask=None):
        self.i += 1
        return self.ids[self.i - 1]

    def step(self, token, mask=None):
        return self.sample(mask)


def test_a_value_quoting_the_closing_tag_does_not_end_generation(tiny_gguf):
    import threading

    from agentcore.dsml import TOOL_CALLS_END, StreamParser, render_tool_calls
    from agentcore.engine.decode.stop import StopChecker
    from agentcore.engine.generate import generate
    from agentcore.engine.session import Session
    from agentcore.messages import ToolCall, ToolSpec

    eng = engine(tiny_gguf)
    spec = ToolSpec(name="write", parameters={"type": "object", "properties": {"text": {"type": "string"}}})
    block = render_tool_calls([ToolCall(id="1", name="write", arguments={"text": f"see {TOOL_CALLS_END} here"})])
    ids = eng.tokenize("ok" + block + " trailing words that must not be generated")
    session = Session(eng.ops.new_kv(eng.spec, 8), ScriptDecoder(ids))
    res = generate(session, eng.tokenizer.token_bytes, max_tokens=len(ids), stops=StopChecker(),
                   constraint=None, blocks=StreamParser(tools=[spec]), emit=lambda _: None,
                   cancelled=threading.Event(), started=0.0)  # fmt: skip
    assert res.finish_reason == "tool_calls"
    assert res.text == "ok" + block


async def test_nan_weights_are_a_clear_error_on_the_first_request(tmp_path):
    from gguf import GGUFReader

    from agentcore.errors import ModelFormatError

    path = write_synthetic_gguf(tmp_path / "nan.gguf", arch="llama", qtype="F32", context_length=512)
    reader = GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    offset = int(t.data_offset)
    del reader
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = np.full(16, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(data))
    eng = LocalEngine.from_gguf(path)
    with pytest.raises(ModelFormatError, match="not finite"):
        await complete(eng, request(max_tokens=2))


async def test_forgetting_a_session_right_after_leaving_its_stream_never_deadlocks(tiny_gguf):
    eng = engine(tiny_gguf)
    with anyio.fail_after(30):
        async for _ in eng.stream(request(max_tokens=400)):
            break
        eng.forget("s")  # the worker may be waiting for this loop to take its text
        done, _ = await complete(eng, request(max_tokens=2))
    assert done.usage.completion_tokens >= 1


async def test_every_turn_runs_on_the_engines_one_compute_thread(tiny_gguf, monkeypatch):
    # Streams and checkpoints, across event loops, on one long-lived thread (on CUDA a
    # thread's first library call builds its own cuBLAS handle); an error in a turn reaches
    # the caller and the thread goes on; close() stops it and a later turn starts it again.
    import threading

    eng = engine(tiny_gguf)
    seen = []
    real = LocalEngine._prepare

    def spy(self, *a, **k):
        seen.append(threading.current_thread())
        return real(self, *a, **k)

    monkeypatch.setattr(LocalEngine, "_prepare", spy)
    await complete(eng, request(max_tokens=3))
    await eng.checkpoint(request(max_tokens=3))
    await complete(eng, request("another question", max_tokens=3))
    assert len(seen) == 3 and len(set(seen)) == 1
    assert seen[0].name == "agentcore-compute" and seen[0] is not threading.current_thread()

    def boom():
        raise ValueError("boom")

    # Waited for off the event loop: a turn's last step (closing its stream) runs on the loop.
    with pytest.raises(ValueError, match="boom"):
        await anyio.to_thread.run_sync(eng._worker.submit(boom).result, 30)
    assert await anyio.to_thread.run_sync(eng._worker.submit(threading.current_thread).result, 30) is seen[0]
    eng.close()
    seen[0].join(timeout=30)
    assert not seen[0].is_alive()
    done, _ = await complete(eng, request("after close", max_tokens=3))
    assert done.usage.completion_tokens >= 1 and seen[-1] is not seen[0] and seen[-1].is_alive()
