"""Peer benchmark: the same N-step durable agent loop, in LangGraph.

What runs
---------
A LangGraph ``StateGraph`` over ``MessagesState`` (the idiomatic agent state:
a growing list of messages) with two nodes, looping until a final answer::

    START -> agent -> tools -> agent -> tools -> ... -> agent -> END

* ``agent`` is a fake, deterministic model: no LLM, no network.  It returns an
  ``AIMessage`` with one tool call while fewer than T tool calls have been
  made, then an ``AIMessage`` with the final answer.
* ``tools`` is a no-op tool: it answers each tool call with a ``ToolMessage``
  holding the call's arguments.

The graph is compiled with the official SQLite checkpointer
(``langgraph.checkpoint.sqlite.SqliteSaver``) on a database file in a fresh
temp directory on disk, and streamed with ``durability="sync"`` so each
step's checkpoint is committed to SQLite before the next step starts (the
LangGraph default, ``"async"``, overlaps that write with the next step;
``--durability`` switches modes).  The saver's connection runs in WAL mode; the
``synchronous`` pragma it ends up with is read back and reported.

Step arithmetic (exact)
-----------------------
One *durable step* = one node execution = one model call or one tool call,
which is what agentrt journals as one step.  A run with T tool calls executes
T + 1 model calls and T tool calls, i.e. exactly 2T + 1 steps.  We take
T = N // 2, so ``steps_per_run`` = 2 * (N // 2) + 1: N when N is odd, N + 1
when N is even (``--steps 200`` -> 100 tool calls + 101 model calls = 201).
The script asserts that the stream yields exactly that many node updates.
LangGraph also checkpoints the input (step -1) and its internal ``__start__``
step, so ``checkpoints_per_run`` is ``steps_per_run + 2``; the whole state
(message history included) is re-serialized into every checkpoint, so per-step
cost grows with N (``checkpoint_bytes_per_run`` shows it).

What is timed
-------------
Each run is one fresh ``thread_id`` streamed with ``stream_mode="updates"``.
With ``sync`` durability LangGraph yields a node's update only after that
step is persisted, so the gap between consecutive updates holds exactly one
node execution plus its two committed SQLite transactions (``put_writes`` of
the node's outputs, then ``put`` of the new checkpoint).  The first step is
timed from the ``stream`` call, so it also carries the input checkpoints.
p50/p99 are over these individual steps of all measured runs (with
``async``/``exit`` the writes move off the step boundary, so use
``run_mean_per_step_us`` there).  ``run_mean_per_step_us`` is whole-run wall
time (``stream`` call to generator exhaustion) / ``steps_per_run``, averaged
over runs.

``--runs R`` measured runs per session (after ``--warmup W`` unmeasured runs);
``--sessions S`` runs S sessions concurrently in Python threads sharing the
one saver (default 1: strictly sequential), R * S runs in all;
``steps_per_s`` = all measured steps / wall time of the measured phase.

Usage:  python langgraph_loop.py --steps 200 --runs 5 [--warmup 1] [--sessions 1]
Prints one JSON object on stdout.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def build_graph(tool_calls: int, checkpointer):
    def agent(state: MessagesState):
        done = sum(isinstance(m, ToolMessage) for m in state["messages"])
        if done < tool_calls:
            call = {"name": "echo", "args": {"i": done}, "id": f"call_{done}"}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}
        return {"messages": [AIMessage(content=f"done after {done} tool calls")]}

    def tools(state: MessagesState):
        calls = state["messages"][-1].tool_calls
        return {"messages": [ToolMessage(content=json.dumps(c["args"]), tool_call_id=c["id"]) for c in calls]}

    def route(state: MessagesState):
        return "tools" if state["messages"][-1].tool_calls else END

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, ["tools", END])
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=checkpointer)


def run_once(graph, thread_id: str, steps: int, durability: str):
    """Stream one loop; return (per-step intervals in us, whole-run seconds)."""
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": steps + 10}
    marks = []
    t0 = time.perf_counter_ns()
    for _ in graph.stream({"messages": [("user", "go")]}, config, stream_mode="updates", durability=durability):
        marks.append(time.perf_counter_ns())
    t_end = time.perf_counter_ns()
    assert len(marks) == steps, f"expected {steps} node updates, got {len(marks)}"
    bounds = [t0] + marks
    return [(b - a) / 1000 for a, b in zip(bounds, bounds[1:])], (t_end - t0) / 1e9


def percentile(sorted_xs, p):
    return sorted_xs[min(len(sorted_xs) - 1, round(p / 100 * (len(sorted_xs) - 1)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, required=True, help="requested steps N per run (see step arithmetic)")
    ap.add_argument("--runs", type=int, required=True, help="measured runs per session")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs first")
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions (threads)")
    ap.add_argument("--durability", choices=["sync", "async", "exit"], default="sync")
    ap.add_argument("--dir", default=None, help="parent dir for the temp DB dir (default: system temp)")
    args = ap.parse_args()

    tool_calls = args.steps // 2
    steps = 2 * tool_calls + 1

    with tempfile.TemporaryDirectory(prefix="lg-peer-", dir=args.dir) as tmp:
        db = str(Path(tmp) / "checkpoints.sqlite")
        with SqliteSaver.from_conn_string(db) as saver:
            saver.setup()  # WAL + tables, exactly as the saver does on first use
            synchronous = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
            journal_mode = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
            graph = build_graph(tool_calls, saver)

            for w in range(args.warmup):
                run_once(graph, f"warmup-{w}", steps, args.durability)

            step_us, run_s = [], []
            lock = threading.Lock()

            def session(s):
                for r in range(args.runs):
                    iv, secs = run_once(graph, f"s{s}-r{r}", steps, args.durability)
                    with lock:
                        step_us.extend(iv)
                        run_s.append(secs)

            threads = [threading.Thread(target=session, args=(s,)) for s in range(args.sessions)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0

            total_runs = args.runs * args.sessions
            if len(run_s) != total_runs:
                raise SystemExit(f"only {len(run_s)} of {total_runs} runs finished")
            with saver.cursor(transaction=False) as cur:
                ckpts = cur.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id NOT LIKE 'warmup-%'").fetchone()[0]
                writes = cur.execute("SELECT COUNT(*) FROM writes WHERE thread_id NOT LIKE 'warmup-%'").fetchone()[0]
                ckpt_bytes = cur.execute(
                    "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints "
                    "WHERE thread_id NOT LIKE 'warmup-%'"
                ).fetchone()[0]

    step_us.sort()
    print(json.dumps({
        "peer": "langgraph",
        "langgraph_version": version("langgraph"),
        "checkpoint_sqlite_version": version("langgraph-checkpoint-sqlite"),
        "steps_requested": args.steps,
        "steps_per_run": steps,
        "model_calls_per_run": tool_calls + 1,
        "tool_calls_per_run": tool_calls,
        "runs": args.runs,
        "sessions": args.sessions,
        "total_runs": total_runs,
        "warmup": args.warmup,
        "durability": args.durability,
        "per_step_us_p50": round(percentile(step_us, 50), 1),
        "per_step_us_p99": round(percentile(step_us, 99), 1),
        "per_step_us_max": round(step_us[-1], 1),
        "run_mean_per_step_us": round(statistics.mean(run_s) / steps * 1e6, 1),
        "steps_per_s": round(len(step_us) / wall, 1),
        "sqlite_synchronous": SYNCHRONOUS.get(synchronous, synchronous),
        "journal_mode": journal_mode,
        "checkpoints_written": ckpts,
        "checkpoints_per_run": ckpts / total_runs,
        "writes_rows": writes,
        "checkpoint_bytes_per_run": round(ckpt_bytes / total_runs),
    }))


if __name__ == "__main__":
    main()
