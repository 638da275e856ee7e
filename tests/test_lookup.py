"""Prompt-lookup speculative decoding: the drafts (decode/lookup.py), the batched check on the
CPU decoder (EagerDecoder.verify / rewind), and the decode loop's promise that the output is
what sequential decoding gives: greedy replies token for token, on a synthetic model and on
the real SmolLM2, with stops, tool constraints and a repetition penalty."""

import anyio
import numpy as np
import pytest

from agentcore.engine import GenerationRequest, LocalEngine, Sampling
from agentcore.engine.decode.lookup import PromptLookup
from agentcore.engine.generate import EagerDecoder
from agentcore.messages import SystemMessage, ToolSpec, UserMessage
from agentcore.testing.synthetic import write_synthetic_gguf


def test_drafts_follow_the_latest_earlier_occurrence_of_the_longest_suffix():
    pl = PromptLookup()
    pl.extend([8, 1, 2, 30, 31, 9, 1, 2, 40, 41, 8, 1, 2])
    assert pl.propose(3) == [30, 31, 9]  # (8, 1, 2) at 0..2 beats (1, 2)'s later match at 6..7
    pl = PromptLookup()
    pl.extend([5, 1, 2, 30, 6, 1, 2, 40, 7, 1, 2])
    assert pl.propose(2) == [40, 7]  # only (1, 2) matches: its latest earlier occurrence
    pl = PromptLookup()
    pl.extend([1, 2, 3, 4])
    assert pl.propose(4) == []  # no suffix occurred before
    pl.extend([9, 3, 4])
    assert pl.propose(10) == [9, 3, 4]  # a draft stops at the newest known token
    assert PromptLookup(min_ngram=1).propose(3) == []


def test_the_newest_ngram_is_not_its_own_match_and_single_tokens_need_min_ngram_1():
    pl = PromptLookup()
    pl.extend([7, 7])
    assert pl.propose(3) == []  # (7, 7) only ends at the newest position
    pl.extend([7])
    assert pl.propose(3) == [7]  # (7, 7) at 0..1 is followed by 7
    uni = PromptLookup(min_ngram=1)
    uni.extend([4, 5, 6, 4])
    assert uni.propose(2) == [5, 6]
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=2, min_ngram=3)


def test_incremental_indexing_equals_indexing_at_once_and_truncate_forgets():
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 6, 300).tolist()
    step, whole = PromptLookup(), PromptLookup()
    whole.extend(seq)
    for i, t in enumerate(seq):
        step.extend([t])
        ref = PromptLookup()
        ref.extend(seq[: i + 1])
        assert step.propose(5) == ref.propose(5)
    assert step.propose(5) == whole.propose(5)
    step.truncate(100)
    ref = PromptLookup()
    ref.extend(seq[:100])
    assert step.tokens == seq[:100] and step.propose(4) == ref.propose(4)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", arch="llama",
                                qtype="Q8_0", context_length=8192)  # fmt: skip


def test_verify_then_rewind_leaves_the_decoder_as_sequential_steps_do(tiny_gguf):
    eng = LocalEngine.from_gguf(tiny_gguf, context_length=512)
    ids = eng.tokenize("a prompt for the decoder, a prompt for the decoder")
    kv_a, kv_b = eng.ops.new_kv(eng.spec, 64), eng.ops.new_kv(eng.spec, 64)
    a, b = EagerDecoder(eng.transformer, kv_a), EagerDecoder(eng.transformer, kv_b)
    for d in (a, b):
        d.prefill(ids)
        d.start(Sampling(temperature=0.0, repetition_penalty=1.3))
    t0 = a.sample()
    assert b.sample() == t0
    seq = [t0]  # sequential: step three times
    for _ in range(3):
        seq.append(b.step(seq[-1]))
    draft = [seq[1], seq[2], 12345 % eng.spec.vocab_size]  # two right, then a wrong one
    drawn = a.verify([t0, *draft])
    assert drawn[:3] == seq[1:4]  # the draws after t0, d1, d2 are sequential decoding's
    base = len(ids)
    a.rewind(base + 3, drawn[2])  # keep t0, d1, d2; drawn[2] is pending
    assert kv_a.length == base + 3
    # The same logits up to the rounding of a 4-row product against 1-row ones.
    np.testing.assert_allclose(a.logits(), b.logits(), rtol=1e-4, atol=1e-5)
    assert a.step(drawn[2]) == b.step(seq[3])
    with pytest.raises(ValueError, match="outside the last verify"):
        a.rewind(base + 10, 0)


READ = ToolSpec(name="read_file", description="Read a file.",
                parameters={"type": "object", "properties": {"name": {"type": "string"}}})  # fmt: skip


def _req(text, session, **kw):
    msgs = [SystemMessage(content="A synthetic system prompt that repeats. " * 6), UserMessage(content=text)]
    return GenerationRequest(session_id=session, messages=msgs, **kw)


async def _complete(eng, req):
    async for item in eng.stream(req):
        if hasattr(item, "usage"):
            return item
    raise AssertionError("no Completion")


@pytest.mark.parametrize(
    "kw",
    [{"max_tokens": 48}, {"max_tokens": 48, "stop": ["prompt"]},
     {"max_tokens": 48, "tools": [READ]}, {"max_tokens": 7},
     {"max_tokens": 40, "sampling": Sampling(temperature=0.0, repetition_penalty=1.2)}],
    ids=["plain", "stop-string", "tools", "short", "repetition-penalty"],
)  # fmt: skip
def test_greedy_replies_are_the_same_tokens_with_and_without_drafts(tiny_gguf, kw):
    text = "repeat after me: the cache keeps the prefix, the cache keeps the prefix, the cache"
    got = {}
    for k in (0, 8):
        eng = LocalEngine.from_gguf(tiny_gguf, context_length=2048, block_size=16, draft_tokens=k)
        first = anyio.run(_complete, eng, _req(text, "s", **kw))
        session = eng.sessions["s"]
        with eng._compute:  # the ledger is the KV, token for token
            assert session.kv.length == len(session.ids)
        got[k] = first
    assert got[8].token_ids == got[0].token_ids
    assert got[8].text == got[0].text and got[8].finish_reason == got[0].finish_reason
    assert got[0].usage.draft_tokens == 0
    assert got[8].usage.accepted_draft_tokens <= got[8].usage.draft_tokens


def test_drafts_are_checked_and_kept_on_a_repetitive_synthetic_reply(tiny_gguf):
    # The random-weight model falls into a loop under greedy decoding: its own n-grams then
    # predict its next tokens, so drafts are proposed and kept.
    eng = LocalEngine.from_gguf(tiny_gguf, context_length=2048, draft_tokens=8)
    done = anyio.run(_complete, eng, _req("go on", "s", max_tokens=96))
    u = done.usage
    assert u.draft_tokens > 0 and u.accepted_draft_tokens > 0


def test_draft_tokens_must_not_be_negative(tiny_gguf):
    with pytest.raises(ValueError, match="draft_tokens"):
        LocalEngine.from_gguf(tiny_gguf, draft_tokens=-1)


@pytest.mark.real_model
def test_real_smollm2_quoting_a_tool_result_keeps_drafts_and_the_same_reply(smollm2_path):
    from agentcore.bench.lookup import READ_FILE, transcripts

    messages = dict(transcripts())["quote-file"]
    replies = {}
    for k in (0, 8):
        eng = LocalEngine.from_gguf(smollm2_path, draft_tokens=k)
        req = GenerationRequest(session_id="q", messages=messages, tools=[READ_FILE], max_tokens=48,
                                sampling=Sampling(temperature=0.0))  # fmt: skip
        replies[k] = anyio.run(_complete, eng, req)
    assert replies[8].token_ids == replies[0].token_ids
    u = replies[8].usage
    # The checklist is copied from the tool result: most drafts are the model's own tokens.
    assert u.accepted_draft_tokens >= 0.5 * u.draft_tokens > 0


class _NarrowDecoder(EagerDecoder):
    """The CPU decoder with a verify width, as the CUDA decoder has (max_verify), recording
    the size of every batch it is asked to check."""

    max_verify = 3

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.batches: list[int] = []

    def verify(self, ids):
        self.batches.append(len(ids))
        assert len(ids) <= self.max_verify
        return super().verify(ids)


class _SwitchedOff(EagerDecoder):
    verify_drafts = False  # a decoder that has verify but its switch is off (as CUDA's by default)

    def verify(self, ids):
        raise AssertionError("a decoder whose verify_drafts is off is never asked to verify")


@pytest.mark.parametrize("decoder", [_NarrowDecoder, _SwitchedOff])
def test_the_loop_keeps_to_the_decoders_verify_width_and_switch(tiny_gguf, monkeypatch, decoder):
    # The CUDA decoder checks at most max_verify tokens a batch (its decode GEMVs' width) and
    # only while its verify_drafts switch is on; the loop asks both of any decoder. The reply
    # is the same tokens as without drafts either way.
    from agentcore.engine import local
    from agentcore.engine.session import Session

    text = "repeat after me: the cache keeps the prefix, the cache keeps the prefix, the cache"
    base = LocalEngine.from_gguf(tiny_gguf, context_length=2048, draft_tokens=0)
    want = anyio.run(_complete, base, _req(text, "s", max_tokens=64))
    made: list[EagerDecoder] = []

    def new_session(self):
        kv = self.ops.new_kv(self.spec, 256)
        made.append(decoder(self.transformer, kv))
        return Session(kv, made[-1])

    monkeypatch.setattr(local.LocalEngine, "_new_session", new_session)
    eng = LocalEngine.from_gguf(tiny_gguf, context_length=2048, draft_tokens=8)
    got = anyio.run(_complete, eng, _req(text, "s", max_tokens=64))
    assert got.token_ids == want.token_ids
    if decoder is _NarrowDecoder:
        assert made[0].batches and max(made[0].batches) == 3  # drafts of 2, not 8
        assert got.usage.draft_tokens > 0
        assert eng.sessions["s"].can_verify and eng.sessions["s"].max_verify == 3
    else:
        assert got.usage.draft_tokens == 0 and not eng.sessions["s"].can_verify
