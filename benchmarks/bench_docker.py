"""Docker handler benchmark: per-task overhead of a no-op task, cold and warm, next to a bare ``docker run``.

Usage::

    python benchmarks/bench_docker.py [--quick] [--json PATH] [--image IMAGE] [--reps N]

In one run, against the same daemon and image (``graflow-test/python:3.11`` by default, built
offline by ``graflow_testkit.services.docker`` when missing), it measures:

* ``bare``: ``docker run --rm IMAGE true`` through the Docker CLI (a subprocess per run): what a
  container costs without graflow. This is the floor.
* ``cold``: a workflow of one no-op ``@task(handler="docker")`` executed by the engine with a fresh
  container per task (``reuse=False``): create, copy the runner in, start, handshake, run, and
  hand the container to the background cleaner. Wall time of ``engine.execute`` per task.
* ``cold+cleanup``: the same plus waiting for that container's removal (what a bare ``docker run
  --rm`` also waits for); informational, to show what the background removal takes off the path.
* ``warm``: a chain of N no-op tasks on a handler with ``reuse=True`` after one warm-up task: the
  same container serves them all. Wall time per task.

Targets (issue 6): cold within 1.5x of the bare ``docker run``; warm under 100 ms per task. Runs of
bare and cold alternate so that machine noise hits both alike; medians are reported. A missed
target is reported, not fatal; the exit status is non-zero only when something crashes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sources import use_packages

use_packages("graflow-core", "graflow-testkit", "graflow-docker")

from handler_chain import seconds_per_task  # noqa: E402

from graflow_docker import DockerTaskHandler  # noqa: E402
from graflow_testkit.services.docker import BASE_IMAGE, ensure_base_image  # noqa: E402

COLD_RATIO_TARGET = 1.5
WARM_MS_TARGET = 100.0
NAME = "bench-docker"


def bare_run(image: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", image, "true"], check=True, capture_output=True)
    return time.perf_counter() - started


def run_chain(handler: DockerTaskHandler, n: int) -> float:
    return seconds_per_task(handler, n, NAME)


def measure(image: str, reps: int, warm_tasks: int) -> list[dict[str, Any]]:
    cold_handler = DockerTaskHandler(image=image)
    # Warm-ups (not timed): the daemon's image layers, the runner bundle, the SDK connection.
    bare_run(image)
    run_chain(cold_handler, 1)
    bare: list[float] = []
    cold: list[float] = []
    cold_cleanup: list[float] = []
    try:
        for _ in range(reps):
            bare.append(bare_run(image))
            started = time.perf_counter()
            cold.append(run_chain(cold_handler, 1))
            if not cold_handler.wait_for_cleanup(60):
                raise RuntimeError("container removal did not finish within 60s")
            cold_cleanup.append(time.perf_counter() - started)
    finally:
        cold_handler.close()
    warm_handler = DockerTaskHandler(image=image, reuse=True, pool_size=1)
    try:
        run_chain(warm_handler, 1)
        warm = [run_chain(warm_handler, warm_tasks) for _ in range(max(1, reps // 2))]
    finally:
        warm_handler.close()
    bare_ms = statistics.median(bare) * 1000
    cold_ms = statistics.median(cold) * 1000
    cleanup_ms = statistics.median(cold_cleanup) * 1000
    warm_ms = statistics.median(warm) * 1000
    return [
        {
            "metric": "bare_docker_run_ms",
            "value": bare_ms,
            "floor": bare_ms,
            "ratio": 1.0,
            "target": "floor",
            "ok": True,
        },
        {
            "metric": "cold_ms_per_task",
            "value": cold_ms,
            "floor": bare_ms,
            "ratio": cold_ms / bare_ms,
            "target": f"<= {COLD_RATIO_TARGET}x bare",
            "ok": cold_ms / bare_ms <= COLD_RATIO_TARGET,
        },
        {
            "metric": "cold+cleanup_ms",
            "value": cleanup_ms,
            "floor": bare_ms,
            "ratio": cleanup_ms / bare_ms,
            "target": "-",
            "ok": True,
        },
        {
            "metric": "warm_ms_per_task",
            "value": warm_ms,
            "floor": bare_ms,
            "ratio": warm_ms / bare_ms,
            "target": f"< {WARM_MS_TARGET:.0f} ms",
            "ok": warm_ms < WARM_MS_TARGET,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke test)")
    parser.add_argument(
        "--json", metavar="PATH", nargs="?", const="-", help="also write the rows as JSON (to PATH, or stdout)"
    )
    parser.add_argument("--image", default=None, help=f"image to run (default {BASE_IMAGE}, built offline if missing)")
    parser.add_argument("--reps", type=int, default=None, help="bare/cold repetitions (default 15; 3 with --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    image = args.image or ensure_base_image()
    reps = args.reps or (3 if args.quick else 15)
    warm_tasks = 10 if args.quick else 50
    rows = measure(image, reps, warm_tasks)
    header = f"{'metric':<20} {'value':>10} {'floor':>10} {'ratio':>7}  target"
    print(
        f"graflow-docker, image {image}, {reps} cold/bare runs, {warm_tasks} warm tasks per chain, "
        f"{os.cpu_count()} CPUs"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = "" if row["target"] in ("floor", "-") else ("OK" if row["ok"] else "MISS")
        print(
            f"{row['metric']:<20} {row['value']:>7.1f} ms {row['floor']:>7.1f} ms {row['ratio']:>6.2f}x  "
            f"{row['target']} {verdict}".rstrip()
        )
    if args.json:
        payload = json.dumps({"image": image, "reps": reps, "warm_tasks": warm_tasks, "rows": rows}, indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
