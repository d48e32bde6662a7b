#!/usr/bin/env python3
"""Submit a small workflow to a Graflow worker fleet through Redis and print its result as JSON.

    docker compose run --rm submit                                   # inside the compose stack
    python deploy/compose/demo_workflow.py --redis-url redis://127.0.0.1:6379/0   # from any host

Every task of the run goes through the Redis queue to the workers (the producer here only
schedules); the output says which worker process ran each task, so a fleet of several workers shows
the work spread across them::

    extract >> (square | cube | negate) >> summarize

Exit code 0 when the result is the expected one, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid

from graflow import task, workflow
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine

NUMBERS = list(range(1, 11))
EXPECTED = {
    "square": sum(n * n for n in NUMBERS),
    "cube": sum(n**3 for n in NUMBERS),
    "negate": -sum(NUMBERS),
}


def where() -> dict[str, object]:
    """Where this task runs: the worker process and whether that is inside a container."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "uid": os.getuid() if hasattr(os, "getuid") else None,
        "container": os.path.exists("/.dockerenv"),
    }


@task
def extract() -> dict[str, object]:
    return {"numbers": NUMBERS, "ran_on": where()}


@task
def square(extract: dict[str, object]) -> dict[str, object]:
    return {"value": sum(n * n for n in extract["numbers"]), "ran_on": where()}  # type: ignore[union-attr]


@task
def cube(extract: dict[str, object]) -> dict[str, object]:
    return {"value": sum(n**3 for n in extract["numbers"]), "ran_on": where()}  # type: ignore[union-attr]


@task
def negate(extract: dict[str, object]) -> dict[str, object]:
    return {"value": -sum(extract["numbers"]), "ran_on": where()}  # type: ignore[arg-type]


@task
def summarize(
    extract: dict[str, object], square: dict[str, object], cube: dict[str, object], negate: dict[str, object]
) -> dict[str, object]:
    return {
        "values": {"square": square["value"], "cube": cube["value"], "negate": negate["value"]},
        "ran_on": {
            "extract": extract["ran_on"],
            "square": square["ran_on"],
            "cube": cube["ran_on"],
            "negate": negate["ran_on"],
            "summarize": where(),
        },
    }


def run(redis_url: str, key_prefix: str, timeout: float) -> dict[str, object]:
    import redis

    from graflow.queue.redis import RedisTaskQueue

    client = redis.Redis.from_url(redis_url, password=os.environ.get("GRAFLOW_REDIS_PASSWORD") or None)
    with workflow("graflow_fleet_demo") as wf:
        extract >> (square | cube | negate) >> summarize
    session = f"demo-{uuid.uuid4().hex[:8]}"
    context = ExecutionContext.create(
        wf.graph, "extract", channel_backend="redis",
        config={"redis_client": client, "key_prefix": key_prefix}, session_id=session,
    )
    RedisTaskQueue(context, redis_client=client, key_prefix=key_prefix)
    started = time.perf_counter()
    result = WorkflowEngine().execute(context)
    return {"session": session, "seconds": round(time.perf_counter() - started, 3), "result": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("GRAFLOW_REDIS_URL"),
        help="Redis the workers listen on (default: $GRAFLOW_REDIS_URL)",
    )
    parser.add_argument("--key-prefix", default="graflow", help="the workers' --key-prefix (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers (default: 120)")
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("no Redis URL: pass --redis-url redis://HOST:6379/0 or set GRAFLOW_REDIS_URL")
    report = run(args.redis_url, args.key_prefix, args.timeout)
    print(json.dumps(report, indent=2, sort_keys=True))
    values = report["result"]["values"] if isinstance(report["result"], dict) else None
    if values != EXPECTED:
        print(f"unexpected result: {values!r}, expected {EXPECTED!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
