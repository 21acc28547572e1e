"""Self-check of mcp_server.py with the official SDK's own client (for
humans, not CI): runs the server over stdio and over streamable HTTP and
checks discovery (annotations), a structured result, an error result,
tools/list_changed after add_tool, the late tool, count, slow, and
echo_header (a custom header over HTTP, "" over stdio).

    python mcp_selfcheck.py        # exits 0 when every check passes

Use the same interpreter that has tests/peers/requirements.txt installed.
"""
import asyncio
import os
import subprocess
import sys
import tempfile

import httpx
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mcp_server.py")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def text_of(result):
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def exercise(session, changed, transport, count_file):
    init = await session.initialize()
    check(init.capabilities.tools is not None and init.capabilities.tools.listChanged is True,
          f"{transport}: server advertises tools.listChanged")

    tools = {t.name: t for t in (await session.list_tools()).tools}
    check({"add", "fail", "slow", "count", "add_tool", "echo_header"} <= set(tools),
          f"{transport}: tools listed: {sorted(tools)}")
    a = tools["add"].annotations
    check(a is not None and a.readOnlyHint is True and a.idempotentHint is True, f"{transport}: add annotations {a}")
    check(tools["add"].outputSchema is not None, f"{transport}: add has an outputSchema")
    s = tools["slow"].annotations
    check(s is not None and s.idempotentHint is True, f"{transport}: slow annotations {s}")
    c = tools["count"].annotations
    check(c is not None and c.destructiveHint is True and c.idempotentHint is False, f"{transport}: count annotations {c}")
    check("late" not in tools, f"{transport}: late not listed before add_tool")

    r = await session.call_tool("add", {"a": 2, "b": 3})
    check(not r.isError and r.structuredContent == {"sum": 5},
          f"{transport}: add structuredContent {r.structuredContent}, content {text_of(r)!r}")

    r = await session.call_tool("fail", {"message": "boom"})
    check(r.isError is True and "boom" in text_of(r), f"{transport}: fail isError={r.isError} text={text_of(r)!r}")

    r = await session.call_tool("slow", {"seconds": 0.1})
    check(not r.isError and text_of(r) == "slept", f"{transport}: slow -> {text_of(r)!r}")

    r1 = await session.call_tool("count", {})
    r2 = await session.call_tool("count", {})
    check((text_of(r1), text_of(r2)) == ("1", "2"), f"{transport}: count -> {text_of(r1)!r}, {text_of(r2)!r}")
    # FastMCP wraps a primitive return value as structured output {"result": ...}.
    check(r2.structuredContent == {"result": 2}, f"{transport}: count structuredContent {r2.structuredContent}")
    check(open(count_file).read().strip() == "2", f"{transport}: count file holds 2")

    r = await session.call_tool("add_tool", {})
    check(not r.isError, f"{transport}: add_tool -> {text_of(r)!r}")
    try:
        await asyncio.wait_for(changed.wait(), 5)
    except asyncio.TimeoutError:
        pass
    check(changed.is_set(), f"{transport}: notifications/tools/list_changed received")
    tools = {t.name for t in (await session.list_tools()).tools}
    check("late" in tools, f"{transport}: late listed after add_tool")
    r = await session.call_tool("late", {"x": "hi"})
    check(not r.isError and text_of(r) == "HI" and r.structuredContent == {"result": "HI"},
          f"{transport}: late -> {text_of(r)!r}, structuredContent {r.structuredContent}")

    r = await session.call_tool("echo_header", {"name": "x-agentrt-test"})
    want = "secret-123" if transport == "http" else ""
    check(not r.isError and text_of(r) == want, f"{transport}: echo_header -> {text_of(r)!r} (want {want!r})")


def handler_for(changed):
    async def on_message(message):
        if isinstance(message, Exception):
            print(f"     transport error: {message!r}", flush=True)
        elif isinstance(message, types.ServerNotification) and isinstance(message.root, types.ToolListChangedNotification):
            changed.set()
    return on_message


async def over_stdio(tmp):
    count_file = os.path.join(tmp, "stdio-count")
    params = StdioServerParameters(command=sys.executable, args=[SERVER, "--transport", "stdio"],
                                   env={**os.environ, "MCP_COUNT_FILE": count_file})
    changed = asyncio.Event()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, message_handler=handler_for(changed)) as session:
            await exercise(session, changed, "stdio", count_file)


async def over_http(tmp):
    count_file = os.path.join(tmp, "http-count")
    proc = subprocess.Popen([sys.executable, SERVER, "--transport", "http", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "MCP_COUNT_FILE": count_file})
    try:
        line = proc.stdout.readline()
        check(line.startswith("listening "), f"http: server said {line!r}")
        port = int(line.split()[1])
        url = f"http://127.0.0.1:{port}/mcp"
        changed = asyncio.Event()
        async with httpx.AsyncClient(headers={"X-Agentrt-Test": "secret-123"}, timeout=30) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, session_id):
                async with ClientSession(read, write, message_handler=handler_for(changed)) as session:
                    await exercise(session, changed, "http", count_file)
                    check(bool(session_id()), f"http: Mcp-Session-Id {session_id()!r}")
    finally:
        proc.terminate()
        proc.wait(10)


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        await over_stdio(tmp)
        await over_http(tmp)
    print(f"{len(failures)} failed" if failures else "all checks passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
