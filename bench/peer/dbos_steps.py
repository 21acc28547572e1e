"""Peer benchmark: an N-step durable workflow in DBOS, on the same PostgreSQL.

What runs
---------
One DBOS workflow per run whose body calls ``N`` steps in a row, alternating a
"model" step and a "tool" step (no LLM, no network: each returns a small
dict), the shape of agentrt's loop of ``--steps`` durable steps.  DBOS
checkpoints every step's output to its system database (``system_database_url``,
PostgreSQL here) before the workflow goes on, which is what agentrt's journal
does per step.

What is timed
-------------
The gap between the returns of consecutive steps inside a workflow: one step's
execution plus its committed checkpoint.  p50/p99 over every step of every
measured run (after ``--warmup`` unmeasured runs).

Usage:  python dbos_steps.py --url postgres://… --steps 201 --runs 5 [--warmup 1]
Prints one JSON object on stdout.
"""

import argparse
import json
import logging
import statistics
import time
from importlib.metadata import version

from dbos import DBOS, DBOSConfig

STAMPS: list[float] = []


@DBOS.step()
def model_step(i: int) -> dict:
    return {"tool_call": {"name": "echo", "arguments": {"i": i}}}


@DBOS.step()
def tool_step(i: int) -> dict:
    return {"result": {"i": i}}


@DBOS.workflow()
def loop(steps: int) -> int:
    for i in range(steps):
        if i % 2 == 0:
            model_step(i)
        else:
            tool_step(i)
        STAMPS.append(time.perf_counter())
    return steps


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="PostgreSQL URL of an empty database for DBOS's system tables")
    ap.add_argument("--steps", type=int, default=201)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)

    config: DBOSConfig = {"name": "agentrt-bench-peer", "system_database_url": args.url}
    DBOS(config=config)
    DBOS.launch()
    gaps: list[float] = []
    walls: list[float] = []
    for run in range(args.warmup + args.runs):
        STAMPS.clear()
        start = time.perf_counter()
        loop(args.steps)
        wall = time.perf_counter() - start
        if run < args.warmup:
            continue
        walls.append(wall)
        gaps.extend(b - a for a, b in zip(STAMPS, STAMPS[1:]))
    DBOS.destroy()
    gaps.sort()
    print(
        json.dumps(
            {
                "dbos_version": version("dbos"),
                "steps_per_run": args.steps,
                "runs": args.runs,
                "per_step_us_p50": percentile(gaps, 0.50) * 1e6,
                "per_step_us_p99": percentile(gaps, 0.99) * 1e6,
                "run_mean_per_step_us": statistics.mean(walls) / args.steps * 1e6,
            }
        )
    )


if __name__ == "__main__":
    main()
