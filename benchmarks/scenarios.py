"""Benchmark scenarios for Graflow, run one per fresh process.

Usage::

    python benchmarks/scenarios.py NAME N

prints exactly one JSON line on stdout describing the measurements of scenario ``NAME`` at size ``N``.

The code only uses the public API that this repository's ``graflow`` shares with upstream ``graflow==0.2.0``
(``workflow``, ``TaskWrapper``, ``task``, ``>>``, ``|``, ``ParallelGroup.with_execution``, ``wf.execute`` and
``ctx.next_iteration``), so the same file can be run with either implementation's interpreter. Every timed
quantity comes with a floor measured in the same process (or, for whole-process scenarios, with the same
interpreter), so the driver can report ratios that do not depend on the speed of the machine.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import operator
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

# Number of timed repetitions for in-process scenarios; the best (minimum) one is reported.
DEFAULT_REPS = 3
# Above this many tasks a single repetition is used (rebuilding the workflow is too expensive).
SINGLE_REP_ABOVE = 20_000

CALLS = 0
# ``iterate`` stops re-running its task once CALLS reaches this value.
ITERATE_STOP = 0


def noop() -> None:
    """The unit of work of every scenario: a counting no-op, shared by the engine run and its floor."""
    global CALLS
    CALLS += 1


def quiet_logging() -> None:
    """Keep engine logging out of the measurements (upstream logs every task at INFO)."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("graflow").setLevel(logging.WARNING)


def reps_for(n: int) -> int:
    return 1 if n > SINGLE_REP_ABOVE else DEFAULT_REPS


def best_of(reps: int, func: Callable[[], float]) -> float:
    """Run ``func`` (which returns one measured duration in seconds) ``reps`` times and keep the minimum."""
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        best = min(best, func())
    return best


def plain_loop_floor(n: int, reps: int) -> float:
    """Seconds for a plain Python loop calling ``noop`` ``n`` times (best of ``reps``)."""

    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            noop()
        return time.perf_counter() - t0

    return best_of(reps, once)


def maxrss_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def expect_calls(before: int, expected: int, what: str) -> None:
    done = CALLS - before
    if done != expected:
        raise RuntimeError(f"{what}: expected {expected} task calls, engine made {done}")


def metric(
    name: str, value: float, unit: str, floor: float | None = None, ratio: float | None = None
) -> dict[str, Any]:
    """One measurement; ``ratio`` defaults to value / floor (pass it when the value is already floor-subtracted)."""
    if ratio is None and floor:
        ratio = value / floor
    return {"metric": name, "value": value, "unit": unit, "floor": floor, "ratio": ratio}


# --------------------------------------------------------------------------------------------------------------
# In-process scenarios
# --------------------------------------------------------------------------------------------------------------


def scenario_chain(n: int) -> dict[str, Any]:
    """A linear chain t0 >> t1 >> ... >> t(n-1) of no-op tasks."""
    from graflow.core.task import TaskWrapper
    from graflow.core.workflow import workflow

    reps = reps_for(n)
    floor_s = plain_loop_floor(n, reps)
    build_best = float("inf")
    exec_best = float("inf")
    rss_before = maxrss_mb()
    peak_delta = 0.0
    for _ in range(reps):
        gc.collect()
        before = CALLS
        with workflow("bench") as wf:
            t0 = time.perf_counter()
            tasks = [TaskWrapper(f"t{i}", noop) for i in range(n)]
            for a, b in itertools.pairwise(tasks):
                a >> b
            t1 = time.perf_counter()
            wf.execute(max_steps=n + 10)
            t2 = time.perf_counter()
        expect_calls(before, n, "chain")
        build_best = min(build_best, t1 - t0)
        exec_best = min(exec_best, t2 - t1)
        peak_delta = max(peak_delta, maxrss_mb() - rss_before)
        del tasks, wf
    overhead_us = (exec_best - floor_s) / n * 1e6
    return {
        "reps": reps,
        "metrics": [
            metric("build_ms", build_best * 1e3, "ms"),
            metric("execute_ms", exec_best * 1e3, "ms", floor_s * 1e3),
            metric("overhead_us_per_task", overhead_us, "us", floor_s / n * 1e6, exec_best / floor_s),
            metric("peak_rss_mb", peak_delta, "MB"),
        ],
    }


def scenario_fanout(n: int) -> dict[str, Any]:
    """``start >> parallel(m0, ..., m(n-1))`` on the threading coordinator vs. a bare ThreadPoolExecutor.

    ``build_ms`` builds the group with ``parallel(*members)``; ``build_pipe_ms`` separately times building the same
    group with the ``|`` operator, which is what the DSL reads like and must not be quadratic.
    """
    from graflow.coordination.coordinator import CoordinationBackend
    from graflow.core.task import TaskWrapper, parallel
    from graflow.core.workflow import workflow

    reps = reps_for(n)
    # The floor: a warm, bare thread pool (threads already started) with one worker per CPU, timed from the first
    # submit of the n no-op calls until all of them are done. The implementations' own defaults differ (upstream:
    # cpu_count threads, created per group), so the floor is fixed by the machine rather than by either engine.
    pool_size = os.cpu_count() or 4
    with ThreadPoolExecutor(max_workers=pool_size) as pool:
        wait([pool.submit(time.sleep, 0.01) for _ in range(pool_size)])

        def bare_pool() -> float:
            t0 = time.perf_counter()
            futures = [pool.submit(noop) for _ in range(n)]
            wait(futures)
            return time.perf_counter() - t0

        floor_s = best_of(reps, bare_pool)
    exec_best = float("inf")
    build_best = float("inf")
    pipe_best = float("inf")
    for _ in range(reps):
        gc.collect()
        # Building the same group with the | operator (m0 | m1 | ...), measured on its own and not executed.
        with workflow("bench-pipe"):
            members = [TaskWrapper(f"m{i}", noop) for i in range(n)]
            t0 = time.perf_counter()
            functools.reduce(operator.or_, members)
            pipe_best = min(pipe_best, time.perf_counter() - t0)
        gc.collect()
        before = CALLS
        with workflow("bench") as wf:
            t0 = time.perf_counter()
            start = TaskWrapper("start", noop)
            members = [TaskWrapper(f"m{i}", noop) for i in range(n)]
            group = parallel(*members)
            group.with_execution(backend=CoordinationBackend.THREADING)
            start >> group
            t1 = time.perf_counter()
            # Members are graph nodes without predecessors too (upstream), so name the start node.
            wf.execute(start_node="start", max_steps=n + 10)
            t2 = time.perf_counter()
        expect_calls(before, n + 1, "fanout")
        build_best = min(build_best, t1 - t0)
        exec_best = min(exec_best, t2 - t1)
        del start, members, group, wf
    return {
        "reps": reps,
        "pool_size": pool_size,
        "metrics": [
            metric("build_ms", build_best * 1e3, "ms"),
            metric("build_pipe_ms", pipe_best * 1e3, "ms"),
            metric("execute_ms", exec_best * 1e3, "ms", floor_s * 1e3),
            metric("us_per_member", exec_best / n * 1e6, "us", floor_s / n * 1e6),
        ],
    }


def scenario_iterate(n: int) -> dict[str, Any]:
    """One task re-running itself through ``ctx.next_iteration()`` until it has run ``n`` times."""
    from graflow.core.decorators import task
    from graflow.core.workflow import workflow

    reps = reps_for(n)
    floor_s = plain_loop_floor(n, reps)
    exec_best = float("inf")
    global ITERATE_STOP
    for _ in range(reps):
        gc.collect()
        before = CALLS
        ITERATE_STOP = before + n
        with workflow("bench") as wf:

            @task(inject_context=True, max_cycles=n + 1)
            def loop(ctx: Any) -> None:
                noop()
                if CALLS < ITERATE_STOP:  # noqa: B023 - a module global, read at call time on purpose
                    ctx.next_iteration()

            t0 = time.perf_counter()
            wf.execute(max_steps=n + 10)
            t1 = time.perf_counter()
        expect_calls(before, n, "iterate")
        exec_best = min(exec_best, t1 - t0)
        del loop, wf
    overhead_us = (exec_best - floor_s) / n * 1e6
    return {
        "reps": reps,
        "metrics": [
            metric("execute_ms", exec_best * 1e3, "ms", floor_s * 1e3),
            metric("overhead_us_per_iteration", overhead_us, "us", floor_s / n * 1e6, exec_best / floor_s),
        ],
    }


# --------------------------------------------------------------------------------------------------------------
# Whole-process scenarios (the same interpreter and environment as this process)
# --------------------------------------------------------------------------------------------------------------

HELLO_SCRIPT = """
import logging
logging.getLogger().setLevel(logging.WARNING)
from graflow.core.decorators import task
from graflow.core.workflow import workflow
seen = []
with workflow("hello") as wf:
    @task
    def a():
        seen.append("a")
    @task
    def b():
        seen.append("b")
    @task
    def c():
        seen.append("c")
    a >> b >> c
    wf.execute()
assert seen == ["a", "b", "c"], seen
"""


def process_ms(code: str) -> float:
    """Wall-clock milliseconds of ``python -c code`` with this interpreter and environment."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    elapsed = (time.perf_counter() - t0) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code[:40]!r}... exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return elapsed


def median_process_ms(codes: list[str], runs: int) -> list[float]:
    """Median wall-clock ms of each ``python -c code``; runs are interleaved so that load affects all alike."""
    for code in codes:
        process_ms(code)  # warm-up: bytecode caches and the OS file cache
    samples: list[list[float]] = [[] for _ in codes]
    for _ in range(runs):
        for code, times in zip(codes, samples):
            times.append(process_ms(code))
    return [statistics.median(times) for times in samples]


def scenario_import(runs: int) -> dict[str, Any]:
    """``python -c "import graflow"`` minus ``python -c pass`` (medians of ``runs`` processes each)."""
    floor, raw = median_process_ms(["pass", "import graflow"], runs)
    return {
        "runs": runs,
        "metrics": [
            metric("import_ms", raw - floor, "ms", floor, raw / floor),
            metric("process_ms", raw, "ms", floor),
        ],
    }


def scenario_hello(runs: int) -> dict[str, Any]:
    """A whole 3-task hello-world process (define, chain, execute) vs. ``python -c pass``."""
    floor, raw = median_process_ms(["pass", HELLO_SCRIPT], runs)
    return {"runs": runs, "metrics": [metric("process_ms", raw, "ms", floor)]}


SCENARIOS: dict[str, Callable[[int], dict[str, Any]]] = {
    "chain": scenario_chain,
    "fanout": scenario_fanout,
    "iterate": scenario_iterate,
    "import": scenario_import,
    "hello": scenario_hello,
}


def graflow_version() -> str:
    import graflow

    found = getattr(graflow, "__version__", None)
    if isinstance(found, str):
        return found
    try:
        from graflow.__about__ import __version__  # type: ignore[import-not-found,unused-ignore]

        return str(__version__)
    except Exception:  # noqa: BLE001 - upstream has no __about__ module
        pass
    try:
        from importlib.metadata import version

        return version("graflow")
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SCENARIOS:
        print(f"usage: scenarios.py {{{','.join(SCENARIOS)}}} N", file=sys.stderr)
        return 2
    name, n = argv[0], int(argv[1])
    quiet_logging()
    result = SCENARIOS[name](n)
    result.update(scenario=name, size=n, python=sys.version.split()[0], pid=os.getpid())
    if name not in ("import", "hello"):
        import graflow

        result["graflow_file"] = getattr(graflow, "__file__", None)
        result["graflow_version"] = graflow_version()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
