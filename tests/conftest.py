"""Shared fixtures. Async tests run under both asyncio and trio."""

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
