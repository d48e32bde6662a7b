"""Redis task-queue benchmark: no-op tasks through Redis with 2 worker processes, next to a raw floor and Celery.

Usage::

    python benchmarks/bench_redis.py [--quick] [--tasks N] [--workers N] [--json [PATH]] [--no-celery]

It starts its own ``redis-server`` on 127.0.0.1 (``graflow_testkit.services.redis``; installed with
apt-get when missing) and measures, in the same run and on the same server (one database each,
flushed in between):

* ``floor``: raw redis-py push / blocking-pop. The producer ``RPUSH``es N messages one call at a
  time, each stamped with its send time; N consumer processes ``BLPOP`` them (FIFO) and note the
  completion time in memory (reported when they exit). What a Redis queue cannot go below.
* ``celery``: Celery with a Redis broker (installed in ``.bench/celery-venv``, gitignored, on first
  use): ``celery worker --pool prefork --concurrency N``, N ``apply_async`` calls of a no-op task
  that records its completion with one ``RPUSH`` to a results list (no result backend).
* ``graflow``: :func:`measure_graflow` (graflow-redis queue and workers), the same no-op task
  recording its completion the same way as Celery's.

For every row, with one definition: **latency** = completion time recorded by the worker minus the
send time stamped by the producer (``time.monotonic_ns``, one clock for every process on the
machine), P50/P99 by nearest rank; **throughput** = N / (last completion - first send); the
producer sends as fast as it can, so a queue slower than its producer shows it in its P99;
**worker RSS** = the largest resident set among the worker processes after the run. The ratio
columns compare with the floor of the same run.

Targets (issue 5, for graflow): >= 2,000 tasks/s and >= 2x Celery, P50 < 2 ms, P99 < 20 ms, worker
RSS < 60 MB after 5,000 tasks. A missed target is reported, not fatal; the exit status is non-zero
only when a measurement crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sources import REPO_ROOT, use_packages

SOURCES = use_packages("graflow-core", "graflow-testkit", "graflow-redis")

from graflow_testkit.processes import descendants  # noqa: E402
from graflow_testkit.services.redis import RedisServer  # noqa: E402

CELERY_VENV = REPO_ROOT / ".bench" / "celery-venv"
CELERY_REQUIREMENT = "celery[redis]>=5.3,<6"
RESULTS_KEY = "bench:done"
READY_KEY = "bench:ready"
TASKS_PER_S_TARGET = 2000.0
CELERY_FACTOR_TARGET = 2.0
P50_MS_TARGET = 2.0
P99_MS_TARGET = 20.0
RSS_MB_TARGET = 60.0
DB_FLOOR, DB_CELERY, DB_GRAFLOW = 0, 1, 2


# -- shared helpers (measure_graflow uses them too, so every row is computed the same way) -------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def summarize(records: Sequence[tuple[int, int]], first_send_ns: int) -> dict[str, float]:
    """Throughput and latency of ``(sent_ns, done_ns)`` records (see the module docstring)."""
    if not records:
        raise ValueError("no task completed")
    latencies_ms = sorted((done - sent) / 1e6 for sent, done in records)
    last_done = max(done for _, done in records)
    seconds = (last_done - first_send_ns) / 1e9
    return {
        "tasks": len(records),
        "seconds": seconds,
        "tasks_per_s": len(records) / seconds if seconds > 0 else float("inf"),
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": latencies_ms[-1],
    }


def collect_records(client: Any, n: int, timeout: float, key: str = RESULTS_KEY) -> list[tuple[int, int]]:
    """Wait until ``key`` holds ``n`` ``b"sent,done"`` records (raise TimeoutError), then parse them."""
    deadline = time.monotonic() + timeout
    while client.llen(key) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.llen(key)} of {n} tasks completed within {timeout:g}s")
        time.sleep(0.01)
    records = []
    for raw in client.lrange(key, 0, -1):
        sent, done = raw.split(b",")
        records.append((int(sent), int(done)))
    return records


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (Linux /proc); NaN when unknown."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL the process group of ``process`` (started with ``start_new_session``)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout)


def _env_with_sources() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*SOURCES, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# -- floor: raw redis-py --------------------------------------------------------------------------------------
_FLOOR_CONSUMER = """
import os, sys, time, json
import redis
r = redis.Redis.from_url(sys.argv[1])
queue, ready = sys.argv[2], sys.argv[3]
records = []
r.rpush(ready, os.getpid())
while True:
    _, body = r.blpop(queue)
    if body == b"stop":
        break
    records.append((int(body), time.monotonic_ns()))
with open(f"/proc/{os.getpid()}/status") as fh:
    rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
print(json.dumps({"rss_mb": rss, "records": records}), flush=True)
"""


def measure_floor(redis_url: str, n_tasks: int, n_workers: int) -> dict[str, Any]:
    """Raw ``RPUSH``/``BLPOP`` through Redis with ``n_workers`` consumer processes (the floor)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    queue = "bench:floor:queue"
    consumers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_FLOOR_CONSUMER), redis_url, queue, READY_KEY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(n_workers)
    ]
    records: list[tuple[int, int]] = []
    rss = []
    try:
        _wait_ready(client, n_workers, consumers)
        first_send = time.monotonic_ns()
        for _ in range(n_tasks):
            client.rpush(queue, str(time.monotonic_ns()).encode())
        for _ in consumers:  # FIFO: each consumer stops after the tasks sent before
            client.rpush(queue, b"stop")
        for consumer in consumers:
            out, err = consumer.communicate(timeout=60 + n_tasks / 100)
            if consumer.returncode != 0:
                raise RuntimeError(f"floor consumer exited {consumer.returncode}: {err.strip()[-500:]}")
            report = json.loads(out.strip().splitlines()[-1])
            rss.append(report["rss_mb"])
            records.extend((sent, done) for sent, done in report["records"])
    finally:
        for consumer in consumers:
            stop_process(consumer)
        client.close()
    if len(records) != n_tasks:
        raise RuntimeError(f"floor consumers handled {len(records)} of {n_tasks} messages")
    return {**summarize(records, first_send), "worker_rss_mb": max(rss)}


def _wait_ready(client: Any, n: int, processes: Sequence[subprocess.Popen[Any]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.llen(READY_KEY) < n:
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                raise RuntimeError(f"a worker exited during start-up ({process.returncode}): {err.strip()[-800:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready within {timeout:g}s")
        time.sleep(0.02)


# -- Celery with a Redis broker ---------------------------------------------------------------------------------
_CELERY_APP = """
import os, time
import redis
from celery import Celery
from celery.signals import worker_ready

app = Celery("bench_celery_app", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_results = None


@app.task(name="bench.noop")
def noop(sent_ns):
    global _results
    done = time.monotonic_ns()
    if _results is None:
        _results = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    _results.rpush(os.environ["BENCH_RESULTS_KEY"], f"{sent_ns},{done}")


@worker_ready.connect
def _ready(**_):
    redis.Redis.from_url(os.environ["BENCH_BROKER_URL"]).rpush(os.environ["BENCH_READY_KEY"], os.getpid())
"""

_CELERY_PRODUCER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from bench_celery_app import noop
n = int(sys.argv[2])
noop.apply_async(args=(time.monotonic_ns(),))  # connect the producer before timing
first = time.monotonic_ns()
for _ in range(n):
    noop.apply_async(args=(time.monotonic_ns(),))
print(json.dumps({"first_send_ns": first}), flush=True)
"""


def ensure_celery_venv() -> Path:
    """The Python of ``.bench/celery-venv``, creating it (``pip install celery[redis]``) on first use."""
    python = CELERY_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import celery, redis"], capture_output=True, check=False)
        if check.returncode == 0:
            return python
    CELERY_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True, capture_output=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CELERY_REQUIREMENT],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if install.returncode != 0:
        raise RuntimeError(f"pip install {CELERY_REQUIREMENT} failed: {install.stderr.strip()[-800:]}")
    return python


def measure_celery(redis_url: str, n_tasks: int, n_workers: int) -> dict[str, Any]:
    """Celery (prefork pool, ``--concurrency n_workers``) with the Redis broker at ``redis_url``."""
    import redis

    python = ensure_celery_venv()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="graflow-bench-celery-"))
    (workdir / "bench_celery_app.py").write_text(textwrap.dedent(_CELERY_APP))
    env = dict(os.environ)
    env.update(
        BENCH_BROKER_URL=redis_url,
        BENCH_RESULTS_KEY=RESULTS_KEY,
        BENCH_READY_KEY=READY_KEY,
        PYTHONPATH=str(workdir),
    )
    worker = subprocess.Popen(
        [str(python), "-m", "celery", "-A", "bench_celery_app", "worker", "--pool", "prefork",
         "--concurrency", str(n_workers), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_ready(client, 1, [worker])
        producer = subprocess.run(
            [str(python), "-c", textwrap.dedent(_CELERY_PRODUCER), str(workdir), str(n_tasks)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if producer.returncode != 0:
            raise RuntimeError(f"celery producer failed: {producer.stderr.strip()[-800:]}")
        first_send = json.loads(producer.stdout.strip().splitlines()[-1])["first_send_ns"]
        records = collect_records(client, n_tasks + 1, timeout=120 + n_tasks / 50)
        pool = descendants(worker.pid)
        rss = {pid: rss_mb(pid) for pid in pool}
        main_rss = rss_mb(worker.pid)
    finally:
        stop_process(worker)
        client.close()
    # The warm-up task was sent before timing started; leave it out.
    timed = sorted(records)[1:]
    result = summarize(timed, first_send)
    result["worker_rss_mb"] = max([*rss.values(), main_rss])
    result["worker_processes"] = 1 + len(pool)
    return result


# -- graflow ------------------------------------------------------------------------------------------------------
_GRAFLOW_TASKS = """
import os, time
import redis

_results = None


def noop(sent):
    global _results
    done = time.monotonic_ns()
    if _results is None:
        _results = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    _results.rpush(os.environ["BENCH_RESULTS_KEY"], f"{sent},{done}")
"""

#: Producer backpressure for the graflow row: ``submit`` waits while more than this many tasks wait
#: in the queue (``RedisTaskQueue(max_queue_depth=...)``), so the producer never runs ahead of the
#: workers and latency measures the path, not a backlog the producer built on purpose.
GRAFLOW_MAX_QUEUE_DEPTH = 8


def measure_graflow(redis_url: str, n_tasks: int, n_workers: int) -> dict[str, Any]:
    """graflow-redis: ``n_workers`` ``python -m graflow.worker.main`` processes, the producer calling
    ``RedisTaskQueue.submit(noop, sent=...)`` once per task (fire-and-forget, at-least-once delivery:
    each message is in flight until acknowledged, heartbeats and the reaper on).

    The no-op task records ``sent,done`` with one ``RPUSH``, as in the Celery row. The producer uses
    ``max_queue_depth`` backpressure (:data:`GRAFLOW_MAX_QUEUE_DEPTH`); workers run one task at a
    time (``--concurrency 1``) and take up to their prefetch when tasks are short.
    """
    import redis

    from graflow_redis.queue import RedisTaskQueue

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="graflow-bench-graflow-"))
    (workdir / "bench_graflow_tasks.py").write_text(textwrap.dedent(_GRAFLOW_TASKS))
    env = _env_with_sources()
    env.update(
        BENCH_BROKER_URL=redis_url,
        BENCH_RESULTS_KEY=RESULTS_KEY,
        PYTHONPATH=os.pathsep.join([str(workdir), env["PYTHONPATH"]]),
    )
    os.environ["BENCH_BROKER_URL"] = redis_url
    os.environ["BENCH_RESULTS_KEY"] = RESULTS_KEY
    sys.path.insert(0, str(workdir))
    prefix = "bench"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "graflow.worker.main", "--redis-url", redis_url, "--key-prefix", prefix,
             "--worker-id", f"bench-{i}", "--concurrency", "1", "--log-level", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(n_workers)
    ]
    queue = None
    try:
        deadline = time.monotonic() + 120
        while sum(client.exists(f"{prefix}:hb:bench-{i}") for i in range(n_workers)) < n_workers:
            for worker in workers:
                if worker.poll() is not None:
                    _, err = worker.communicate()
                    raise RuntimeError(f"a graflow worker exited during start-up ({worker.returncode}): {err[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("graflow workers not ready within 120s")
            time.sleep(0.02)
        import bench_graflow_tasks

        queue = RedisTaskQueue(None, url=redis_url, key_prefix=prefix, max_queue_depth=GRAFLOW_MAX_QUEUE_DEPTH)
        for _ in range(2 * n_workers):  # warm-up: connections, imports, scripts (left out of the timing)
            queue.result(queue.submit(bench_graflow_tasks.noop, sent=time.monotonic_ns()), timeout=60)
        collect_records(client, 2 * n_workers, timeout=30)
        client.delete(RESULTS_KEY)
        submit = queue.submit
        noop = bench_graflow_tasks.noop
        first_send = time.monotonic_ns()
        for _ in range(n_tasks):
            submit(noop, reply=False, sent=time.monotonic_ns())
        records = collect_records(client, n_tasks, timeout=120 + n_tasks / 50)
        rss = [rss_mb(w.pid) for w in workers]
        in_flight = queue.in_flight()
    finally:
        if queue is not None:
            queue.close()
        for worker in workers:
            stop_process(worker)
        client.close()
    if len(records) != n_tasks or in_flight:
        raise RuntimeError(f"{len(records)} of {n_tasks} tasks recorded, {in_flight} still in flight")
    result = summarize(records, first_send)
    result["worker_rss_mb"] = max(rss)
    result["max_queue_depth"] = GRAFLOW_MAX_QUEUE_DEPTH
    return result


# -- the run ---------------------------------------------------------------------------------------------------------
def _run_row(label: str, measure: Callable[[str, int, int], dict[str, Any]], url: str, n: int, workers: int,
             rows: dict[str, Any]) -> bool:
    """Measure one row; record the result, a skip or the crash. Returns False when it crashed."""
    print(f"measuring {label} ({n} tasks, {workers} workers) ...", file=sys.stderr, flush=True)
    try:
        rows[label] = measure(url, n, workers)
    except NotImplementedError as exc:
        rows[label] = {"skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 -- reported in the table and the exit status, never hidden
        rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
        return False
    return True


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, (int, float)) and value == value:
        return format(value, spec)
    return "-"


def render(rows: dict[str, Any]) -> str:
    floor = rows.get("floor", {})
    lines = [
        f"{'implementation':<15}{'tasks/s':>10}{'P50 ms':>10}{'P99 ms':>10}{'worker RSS MB':>15}"
        f"{'tput/floor':>12}{'P50/floor':>11}"
    ]
    for label, row in rows.items():
        if "tasks_per_s" not in row:
            lines.append(f"{label:<15}{row.get('skipped') or row.get('error')}")
            continue
        tput_ratio = row["tasks_per_s"] / floor["tasks_per_s"] if "tasks_per_s" in floor else float("nan")
        p50_ratio = row["p50_ms"] / floor["p50_ms"] if floor.get("p50_ms") else float("nan")
        lines.append(
            f"{label:<15}{_fmt(row['tasks_per_s'], ',.0f'):>10}{_fmt(row['p50_ms'], '.2f'):>10}"
            f"{_fmt(row['p99_ms'], '.2f'):>10}{_fmt(row.get('worker_rss_mb'), '.1f'):>15}"
            f"{_fmt(tput_ratio, '.2f') + 'x':>12}{_fmt(p50_ratio, '.1f') + 'x':>11}"
        )
    graflow, celery = rows.get("graflow", {}), rows.get("celery", {})
    if "tasks_per_s" in graflow:
        checks = [
            (f"graflow >= {TASKS_PER_S_TARGET:,.0f} tasks/s", graflow["tasks_per_s"] >= TASKS_PER_S_TARGET),
            (f"graflow P50 < {P50_MS_TARGET} ms", graflow["p50_ms"] < P50_MS_TARGET),
            (f"graflow P99 < {P99_MS_TARGET} ms", graflow["p99_ms"] < P99_MS_TARGET),
            (f"graflow worker RSS < {RSS_MB_TARGET:.0f} MB", graflow.get("worker_rss_mb", 1e9) < RSS_MB_TARGET),
        ]
        if "tasks_per_s" in celery:
            factor = graflow["tasks_per_s"] / celery["tasks_per_s"]
            checks.append((f"graflow >= {CELERY_FACTOR_TARGET}x Celery throughput ({factor:.2f}x)",
                           factor >= CELERY_FACTOR_TARGET))
        lines.append("")
        lines.extend(f"  {'OK  ' if ok else 'MISS'} {text}" for text, ok in checks)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="500 tasks (a smoke test of every row)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per row (default 5000; 500 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per row (default 2)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the numbers as JSON to PATH (no PATH: JSON on stdout, table on stderr)")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery row (no venv, no network)")
    args = parser.parse_args(argv)
    n = args.tasks if args.tasks is not None else (500 if args.quick else 5000)
    if n < 1 or args.workers < 1:
        parser.error("--tasks and --workers must be >= 1")

    rows: dict[str, Any] = {}
    ok = True
    with RedisServer() as server:
        base = f"redis://127.0.0.1:{server.port}"
        ok &= _run_row("floor", measure_floor, f"{base}/{DB_FLOOR}", n, args.workers, rows)
        if args.no_celery:
            rows["celery"] = {"skipped": "--no-celery"}
        else:
            ok &= _run_row("celery", measure_celery, f"{base}/{DB_CELERY}", n, args.workers, rows)
        ok &= _run_row("graflow", measure_graflow, f"{base}/{DB_GRAFLOW}", n, args.workers, rows)
        redis_version = server.client().info("server").get("redis_version")

    report = {
        "tasks": n,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "redis": redis_version,
        "rows": rows,
    }
    table = render(rows)
    if args.json == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
