"""Tools under hostile conditions (issue 17, item 2): stray cancellations, unprintable
exceptions, hung threads and special files never lose a result or block the interpreter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from agentcore.messages import ToolCall, ToolMessage
from agentcore.tools import ToolRegistry, tool
from agentcore.tools.builtin import builtin_tools

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]


def calls(*names: str) -> list[ToolCall]:
    return [ToolCall(id=f"c{i}", name=name, arguments={}) for i, name in enumerate(names)]


@tool
async def sibling() -> str:
    """A well-behaved tool that finishes after the misbehaving one."""
    await anyio.sleep(0.05)
    return "sibling ok"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class WorseUnprintable(Exception):
    def __str__(self) -> str:
        raise Unprintable()


class NoStr:
    def __str__(self) -> str:
        raise ValueError("no str")

    __repr__ = __str__


# ------------------------------------------------------------- stray cancellation


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_stray_cancelled_error_is_an_error_result_and_siblings_survive(kind):
    if kind == "async":

        @tool(name="stray")
        async def stray() -> str:
            """Raises a CancelledError nobody asked for."""
            raise asyncio.CancelledError()

    else:

        @tool(name="stray")
        def stray() -> str:
            """Raises a CancelledError nobody asked for, in its worker thread."""
            raise asyncio.CancelledError()

    registry = ToolRegistry([stray, sibling])
    results = await registry.run(calls("stray", "sibling", "stray"))
    assert all(isinstance(r, ToolMessage) for r in results)
    assert [r.call_id for r in results] == ["c0", "c1", "c2"]
    assert results[0].is_error and "CancelledError" in results[0].content
    assert results[1].content == "sibling ok" and not results[1].is_error


async def test_a_real_cancellation_still_propagates_out_of_the_registry():
    @tool
    async def slow() -> str:
        """Sleeps far past the deadline."""
        await anyio.sleep(30)
        return "never"

    registry = ToolRegistry([slow])
    start = time.monotonic()
    with anyio.move_on_after(0.2) as scope:
        await registry.run(calls("slow"))
    assert scope.cancelled_caught and time.monotonic() - start < 5


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_task_cancel_reaches_the_caller_even_while_a_tool_swallows_nothing():
    @tool
    async def slow() -> str:
        """Sleeps far past the deadline."""
        await asyncio.sleep(30)
        return "never"

    registry = ToolRegistry([slow])
    task = asyncio.ensure_future(registry.run(calls("slow")))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------- unprintable failures


@pytest.mark.parametrize("exc_type", [Unprintable, WorseUnprintable])
async def test_an_exception_whose_str_raises_keeps_every_result(exc_type):
    @tool(name="bad")
    async def bad() -> str:
        """Raises an exception that cannot be printed."""
        raise exc_type()

    @tool(name="bad_sync")
    def bad_sync() -> str:
        """The same from a worker thread."""
        raise exc_type()

    registry = ToolRegistry([bad, bad_sync, sibling])
    results = await registry.run(calls("bad", "sibling", "bad_sync"))
    assert [r.call_id for r in results] == ["c0", "c1", "c2"]
    for r in (results[0], results[2]):
        assert r.is_error and exc_type.__name__ in r.content
    assert results[1].content == "sibling ok"


async def test_a_result_that_cannot_be_rendered_is_an_error_and_siblings_survive():
    @tool
    async def weird() -> object:
        """Returns an object that cannot be turned into text."""
        return {"value": NoStr()}

    registry = ToolRegistry([weird, sibling])
    results = await registry.run(calls("weird", "sibling"))
    assert results[0].is_error
    assert results[1].content == "sibling ok"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_tool_raising_a_base_exception_is_an_error_result():
    class Custom(BaseException):
        pass

    @tool
    async def odd() -> str:
        """Raises a BaseException that is neither cancellation nor an interrupt."""
        raise Custom("odd")

    registry = ToolRegistry([odd, sibling])
    results = await registry.run(calls("odd", "sibling"))
    assert results[0].is_error and "Custom: odd" in results[0].content
    assert results[1].content == "sibling ok"


# ------------------------------------------------------------- the interpreter can exit


def _run_script(body: str, bound: float) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(body)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=bound + 30,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < bound, f"interpreter took {elapsed:.1f}s to exit\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_timed_out_sync_tool_does_not_keep_the_interpreter_alive(backend):
    proc = _run_script(
        f"""
        import time, anyio
        from agentcore.messages import ToolCall
        from agentcore.tools import ToolRegistry, tool

        @tool(timeout=0.2)
        def hang() -> str:
            '''Sleeps far past its timeout.'''
            time.sleep(120)
            return "never"

        async def main():
            [r] = await ToolRegistry([hang]).run([ToolCall(id="c", name="hang", arguments={{}})])
            print(r.is_error, "ToolTimeout" in r.content, flush=True)

        anyio.run(main, backend={backend!r})
        """,
        bound=20,
    )
    assert proc.stdout.strip() == "True True"


def test_a_read_file_on_a_fifo_does_not_keep_the_interpreter_alive(workspace):
    os.mkfifo(workspace / "pipe")
    proc = _run_script(
        f"""
        import anyio
        from agentcore.messages import ToolCall
        from agentcore.tools import ToolRegistry
        from agentcore.tools.builtin import builtin_tools

        async def main():
            tools = builtin_tools({str(workspace)!r})
            call = ToolCall(id="c", name="read_file", arguments={{"path": "pipe"}})
            [r] = await ToolRegistry(tools, workspace={str(workspace)!r}).run([call])
            print(r.is_error, flush=True)

        anyio.run(main)
        """,
        bound=20,
    )
    assert proc.stdout.strip() == "True"


# ------------------------------------------------------------- read_file and special files


async def read(workspace: Path, path: str) -> ToolMessage:
    registry = ToolRegistry(builtin_tools(workspace), workspace=workspace)
    with anyio.fail_after(10):
        [result] = await registry.run(
            [ToolCall(id="c", name="read_file", arguments={"path": path})]
        )
    return result


async def test_read_file_refuses_a_fifo_at_once(workspace):
    os.mkfifo(workspace / "pipe")
    start = time.monotonic()
    result = await read(workspace, "pipe")
    assert time.monotonic() - start < 3
    assert result.is_error and "not a regular file" in result.content


async def test_read_file_refuses_a_device(workspace):
    (workspace / "zero").symlink_to("/dev/zero")
    result = await read(workspace, "zero")
    assert result.is_error


async def test_read_file_refuses_a_unix_socket(workspace):
    import socket

    path = workspace / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        try:
            server.bind(str(path))
        except OSError as exc:  # path too long for sun_path on some CI machines
            pytest.skip(f"cannot bind a unix socket here: {exc}")
        result = await read(workspace, "sock")
    assert result.is_error and "not a regular file" in result.content


async def test_read_file_decides_a_huge_sparse_file_is_binary_without_reading_it(workspace):
    path = workspace / "sparse.img"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    os.ftruncate(fd, 1 << 30)
    os.close(fd)
    start = time.monotonic()
    result = await read(workspace, "sparse.img")
    assert time.monotonic() - start < 1.5
    assert "is a binary file (1,073,741,824 bytes)" in result.content


async def test_read_file_streams_a_large_text_file_for_a_line_range(workspace):
    path = workspace / "big.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1, 2_000_001)))
    registry = ToolRegistry(builtin_tools(workspace), workspace=workspace)
    [result] = await registry.run(
        [ToolCall(id="c", name="read_file", arguments={"path": "big.txt", "start_line": 1_999_999})]
    )
    assert result.content.splitlines() == [
        "1999999\tline 1999999",
        "2000000\tline 2000000",
        "[lines 1999999-2000000 of 2000000]",
    ]
