"""An MCP server built with the official Python SDK (PyPI `mcp`, FastMCP),
used by agentrt's tests over stdio and streamable HTTP.

    python mcp_server.py --transport stdio
    python mcp_server.py --transport http --port 0   # prints `listening PORT`

Tools: add (structured, read-only), fail (isError), slow (sleeps),
count (side effect in $MCP_COUNT_FILE), add_tool (registers `late` and sends
notifications/tools/list_changed), echo_header (an HTTP request header).
"""
import argparse
import asyncio
import os
import socket
import sys
import threading
import time

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.lowlevel.server import NotificationOptions
from mcp.types import ToolAnnotations
from pydantic import BaseModel

# log_level must be given here: FastMCP configures logging in its constructor
# (INFO would put "Processing request of type ..." on stderr for every call).
mcp = FastMCP("agentrt-test", log_level="WARNING")

# FastMCP sends notifications/tools/list_changed but advertises
# capabilities.tools.listChanged = false; advertise what it does.
_init_options = mcp._mcp_server.create_initialization_options
mcp._mcp_server.create_initialization_options = lambda notification_options=None, experimental_capabilities=None: _init_options(
    NotificationOptions(tools_changed=True), experimental_capabilities
)


class Sum(BaseModel):
    sum: int


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def add(a: int, b: int) -> Sum:
    """Add two integers."""
    return Sum(sum=a + b)


@mcp.tool()
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ValueError(message)


@mcp.tool(annotations=ToolAnnotations(idempotentHint=True))
async def slow(seconds: float) -> str:
    """Sleeps, then answers. A cancelled call is noted in $MCP_CANCEL_FILE."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if os.environ.get("MCP_CANCEL_FILE"):
            with open(os.environ["MCP_CANCEL_FILE"], "a") as f:
                f.write("cancelled\n")
        raise
    return "slept"


@mcp.tool(annotations=ToolAnnotations(destructiveHint=True, idempotentHint=False))
def count() -> int:
    """Increments a counter kept in $MCP_COUNT_FILE."""
    path = os.environ["MCP_COUNT_FILE"]
    n = int(open(path).read() or 0) + 1 if os.path.exists(path) else 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


def late(x: str) -> str:
    """Upper-cases x (added at run time)."""
    return x.upper()


@mcp.tool()
async def add_tool(ctx: Context) -> str:
    """Registers the tool `late` and tells the client the tool list changed."""
    mcp.add_tool(late)
    await ctx.session.send_tool_list_changed()
    return "added"


@mcp.tool()
def echo_header(name: str, ctx: Context) -> str:
    """Returns an HTTP request header of this call ("" over stdio)."""
    request = getattr(ctx.request_context, "request", None)
    if request is None:
        return ""
    return request.headers.get(name, "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def announce_when_listening(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            print(f"listening {port}", flush=True)
            return
        except OSError:
            time.sleep(0.05)
    print("failed to listen", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["stdio", "http", "sse"], required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.transport == "stdio":
        mcp.run("stdio")
        sys.exit(0)
    port = args.port or free_port()
    mcp.settings.port = port
    threading.Thread(target=announce_when_listening, args=(port,), daemon=True).start()
    mcp.run("streamable-http" if args.transport == "http" else "sse")
