"""deepseek2 behind LocalEngine: the decode loop, the latent KV ledger and checkpoints."""

import numpy as np
import pytest

from agentcore.engine import GenerationRequest, LocalEngine
from agentcore.engine.backends.cuda import cuda_available
from agentcore.errors import DeviceUnavailable
from agentcore.messages import SystemMessage, UserMessage
from agentcore.testing.synthetic_deepseek2 import PRESETS, write_synthetic_deepseek2

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    return write_synthetic_deepseek2(tmp_path_factory.mktemp("d") / "v3.gguf", **PRESETS["v3"])


def request(n=4, max_tokens=6):
    msgs = [SystemMessage(content="deepseek system " * 10)]
    msgs += [UserMessage(content=f"question {i} about latent caches") for i in range(n)]
    return GenerationRequest(session_id="d", messages=msgs, max_tokens=max_tokens)


async def complete(eng, req):
    async for item in eng.stream(req):
        done = item
    return done


async def test_greedy_stream_matches_the_reference_forward(ds2):
    eng = LocalEngine.from_gguf(ds2, block_size=16)
    done = await complete(eng, request())
    seq = eng._prompt(request(), generation=True)[0]
    want = []
    for _ in range(done.usage.completion_tokens):
        want.append(int(np.argmax(eng.logits(seq + want)[-1])))
        if want[-1] in eng.chat.stop_ids:
            break
    assert done.token_ids == want


async def test_latent_checkpoint_restores_in_a_new_engine(ds2, tmp_path):
    first = LocalEngine.from_gguf(ds2, block_size=16, kv_dir=tmp_path)
    info = await first.checkpoint(request(4))
    spec = first.spec
    # One latent row (kv_lora_rank + rope dims) per token and layer, float32 on the CPU.
    assert first.layout.bytes_per_token() == spec.n_layers * spec.mla.latent_dim * 4
    base = await complete(first, request(5))
    first.close()
    second = LocalEngine.from_gguf(ds2, block_size=16, kv_dir=tmp_path)
    again = await complete(second, request(5))
    assert again.usage.cache_source == "disk"
    assert again.usage.cached_tokens >= info.tokens
    assert again.token_ids == base.token_ids


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: tests/test_gpu_deepseek2.py runs it")
def test_deepseek2_on_cuda_without_a_gpu_is_a_clear_error(ds2):
    with pytest.raises(DeviceUnavailable, match="device='cpu'"):
        LocalEngine.from_gguf(ds2, device="cuda")
