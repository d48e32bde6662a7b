"""S3 checkpoint benchmark: write and resume time on S3 next to bare boto3 calls moving the same bytes.

Usage::

    python benchmarks/bench_s3.py [--quick] [--json [PATH]] [--reps N]

It starts its own ``moto_server`` on 127.0.0.1 (graflow-testkit's S3 service; ``moto[server]`` is
installed with pip when missing) and stops it by PID at the end. For a chain of 1,000 tasks run to
its middle, with about 1 MB of channel data, it measures in the same process, same server and same
boto3 client:

* ``write``: ``CheckpointManager.create_checkpoint(ctx, path="s3://...")`` (pickling, checksums,
  three parts) vs the floor: three bare ``put_object`` calls of that checkpoint's exact bytes;
* ``resume``: ``CheckpointManager.resume_from_checkpoint`` (three GETs, checksum checks,
  unpickling) vs the floor: three bare ``get_object`` calls + ``read()`` of the same objects.

A second row does the same with ~20 MB of channel data, which goes up as a multipart upload (the
floor stays one ``put_object`` per part). Timings are medians of interleaved repetitions.

Target (issue 8): within 1.5x of the bare calls for the 1,000-task checkpoint. A missed target is
reported, not fatal; the exit status is non-zero only when something crashes. ``--json`` prints the
rows as JSON on stdout (or writes them to PATH).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sources import use_packages

use_packages("graflow-core", "graflow-testkit", "graflow-s3-checkpoint")

from graflow import plugins  # noqa: E402
from graflow.core.checkpoint import CheckpointManager  # noqa: E402
from graflow.core.context import ExecutionContext  # noqa: E402
from graflow.core.engine import WorkflowEngine  # noqa: E402
from graflow.core.task import TaskWrapper  # noqa: E402
from graflow.core.workflow import workflow  # noqa: E402
from graflow.exceptions import GraflowRuntimeError  # noqa: E402

RATIO_TARGET = 1.5
PARTS = (".pkl", ".state.json", ".meta.json")
BUCKET = "graflow-bench"


def step(value: int = 0) -> int:
    """Every task's function: module-level, so it pickles by reference as in user code."""
    return value + 1


def build_context(n: int, channel_bytes: int) -> ExecutionContext:
    """A chain of ``n`` tasks run to its middle, plus ``channel_bytes`` of channel data."""
    with workflow(f"bench-s3-{n}") as wf:
        tasks = [TaskWrapper(f"t{i}", step, register_to_context=False) for i in range(n)]
        for t in tasks:
            wf.graph.add_node(t)
        for a, b in itertools.pairwise(tasks):
            wf.graph.add_edge(a.task_id, b.task_id)
    ctx = ExecutionContext.create(wf.graph, start_node="t0", max_steps=n // 2)
    try:
        WorkflowEngine().execute(ctx)
    except GraflowRuntimeError:
        pass  # stopped by max_steps: the rest stays pending
    ctx.max_steps = n * 2
    records = 1000
    chunk = max(1, channel_bytes // records)
    for i in range(records):
        # random-looking text: incompressible, like real intermediate results
        ctx.channel.set(f"data.{i}", {"id": i, "payload": os.urandom(chunk // 2).hex(), "scores": [0.5, 1.5]})
    return ctx


def _median_interleaved(reps: int, funcs: dict[str, Any]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(reps):
        for name, func in funcs.items():
            gc.collect()
            t0 = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(label: str, ctx: ExecutionContext, client: Any, reps: int, tag: str) -> dict[str, Any]:
    base = f"s3://{BUCKET}/{tag}/ckpt"
    bare = f"{tag}/bare"
    CheckpointManager.create_checkpoint(ctx, path=base)  # warm-up, and the bytes the floor moves
    parts = {suffix: client.get_object(Bucket=BUCKET, Key=f"{tag}/ckpt{suffix}")["Body"].read() for suffix in PARTS}
    restored, _ = CheckpointManager.resume_from_checkpoint(base)
    if restored.task_queue.to_list() != ctx.task_queue.to_list():
        raise SystemExit(f"bench_s3: round trip of {label} lost the pending queue")

    def write() -> None:
        CheckpointManager.create_checkpoint(ctx, path=base)

    def bare_write() -> None:
        for suffix, data in parts.items():
            client.put_object(Bucket=BUCKET, Key=bare + suffix, Body=data)

    def resume() -> None:
        CheckpointManager.resume_from_checkpoint(base)

    def bare_read() -> None:
        for suffix in PARTS:
            client.get_object(Bucket=BUCKET, Key=bare + suffix)["Body"].read()

    bare_write()
    bare_read()
    timed = _median_interleaved(reps, {"write": write, "bare_write": bare_write})
    timed.update(_median_interleaved(reps, {"resume": resume, "bare_read": bare_read}))
    size = sum(len(d) for d in parts.values())
    head = client.head_object(Bucket=BUCKET, Key=f"{tag}/ckpt.pkl")
    return {
        "case": label,
        "bytes": size,
        "multipart": "-" in head["ETag"],
        "write_ms": timed["write"] * 1e3,
        "bare_write_ms": timed["bare_write"] * 1e3,
        "write_ratio": timed["write"] / timed["bare_write"],
        "resume_ms": timed["resume"] * 1e3,
        "bare_read_ms": timed["bare_read"] * 1e3,
        "resume_ratio": timed["resume"] / timed["bare_read"],
    }


def verdict(row: dict[str, Any], targeted: bool) -> str:
    if not targeted:
        return "info"
    misses = [
        f"{way} {row[f'{way}_ratio']:.2f}x > {RATIO_TARGET}x"
        for way in ("write", "resume")
        if row[f"{way}_ratio"] > RATIO_TARGET
    ]
    return "ok" if not misses else "MISS: " + "; ".join(misses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="print JSON (or write it to PATH)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (median kept)")
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 15)

    import graflow_s3_checkpoint
    import graflow_s3_checkpoint.plugin
    from graflow_s3_checkpoint.config import client_for, settings_for
    from graflow_testkit.services.s3 import S3Server

    if "s3" not in plugins.names("checkpoint_store"):
        plugins.register(graflow_s3_checkpoint.plugin, name="s3")
    server = S3Server.start()
    try:
        graflow_s3_checkpoint.configure(
            endpoint_url=server.endpoint_url,
            region_name=server.region,
            aws_access_key_id=server.access_key_id,
            aws_secret_access_key=server.secret_access_key,
        )
        client = client_for(settings_for(BUCKET))  # the store's own client: same pool, same config
        client.create_bucket(Bucket=BUCKET)
        cases = [("1,000 tasks + 1 MB", 1_000, 1_000_000, True), ("1,000 tasks + 20 MB", 1_000, 20_000_000, False)]
        rows = []
        for i, (label, n, data, targeted) in enumerate(cases):
            row = measure(label, build_context(n, data), client, reps if targeted else max(3, reps // 3), f"c{i}")
            row["verdict"] = verdict(row, targeted)
            rows.append(row)
    finally:
        server.stop()

    if args.json:
        text = json.dumps({"benchmark": "s3_checkpoint", "reps": reps, "rows": rows}, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
            return 0
        Path(args.json).write_text(text, encoding="utf-8")
    header = (
        f"{'case':<20} | {'MB':>5} {'multipart':>9} | {'write ms':>8} {'bare':>7} {'ratio':>6} | "
        f"{'resume ms':>9} {'bare':>7} {'ratio':>6} | verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['case']:<20} | {row['bytes'] / 1e6:>5.1f} {('yes' if row['multipart'] else 'no'):>9} | "
            f"{row['write_ms']:>8.1f} {row['bare_write_ms']:>7.1f} {row['write_ratio']:>5.2f}x | "
            f"{row['resume_ms']:>9.1f} {row['bare_read_ms']:>7.1f} {row['resume_ratio']:>5.2f}x | {row['verdict']}"
        )
    print(
        f"target: <= {RATIO_TARGET}x three bare put_object / get_object calls of the same bytes "
        f"(1,000-task row; median of {reps} interleaved runs against a local moto_server)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
