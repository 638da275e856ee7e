"""Shared fixtures. Async tests run under both asyncio and trio."""

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


from engine_fixtures import (  # noqa: F401  (fixtures shared by the engine tests)
    reference_smollm2,
    smollm2_model,
    smollm2_path,
    smollm2_tokenizer,
)
from tool_fixtures import registry, workspace  # noqa: F401  (fixtures of the tool tests)
