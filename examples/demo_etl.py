"""The main job: an ETL-like pipeline on embedded defaults (memory channel, threads, local checkpoints).

    extract >> (clean_eu | clean_us | clean_apac) >> merge >> enrich >> refine >> load

- ``extract`` fails once with a transient error and is retried (RetryPolicy with backoff).
- the three ``clean_*`` members run side by side on the threading coordinator and share one
  channel (``atomic_add`` counts rows across members).
- ``merge`` spots outliers and adds a dynamic ``quarantine`` task with ``context.next_task``.
- ``refine`` loops with ``context.next_iteration`` until the data converges; ``load`` runs once,
  after the final iteration, and takes a local checkpoint.

Run it with ``hatch run demo:run`` (or ``python examples/demo_etl.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from graflow import RetryPolicy, hookimpl, plugins, task, workflow
from graflow.core.context import TaskExecutionContext

RAW = {
    "eu": [12.0, 15.5, None, 14.2, 980.0],
    "us": [22.1, None, 19.8, 21.0],
    "apac": [8.4, 9.1, 7.7, None, 8.8],
}

_attempts = Counter()


@task(retry_policy=RetryPolicy(max_retries=2, initial_interval=0.05, backoff_factor=2.0))
def extract() -> dict[str, list[float | None]]:
    _attempts["extract"] += 1
    if _attempts["extract"] == 1:
        raise ConnectionError("source database busy (transient)")
    return RAW


def _clean(region: str, ctx: TaskExecutionContext, extract: dict[str, list[float | None]]) -> list[float]:
    rows = [v for v in extract[region] if v is not None]
    ctx.get_channel().atomic_add("rows_cleaned", len(rows))
    return rows


@task(inject_context=True)
def clean_eu(ctx: TaskExecutionContext, extract: dict[str, list[float | None]]) -> list[float]:
    return _clean("eu", ctx, extract)


@task(inject_context=True)
def clean_us(ctx: TaskExecutionContext, extract: dict[str, list[float | None]]) -> list[float]:
    return _clean("us", ctx, extract)


@task(inject_context=True)
def clean_apac(ctx: TaskExecutionContext, extract: dict[str, list[float | None]]) -> list[float]:
    return _clean("apac", ctx, extract)


@task(inject_context=True)
def merge(
    ctx: TaskExecutionContext, clean_eu: list[float], clean_us: list[float], clean_apac: list[float]
) -> list[float]:
    values = [*clean_eu, *clean_us, *clean_apac]
    outliers = [v for v in values if v > 100]
    if outliers:

        @task("quarantine")
        def quarantine() -> list[float]:
            return outliers

        ctx.next_task(quarantine)  # a new task: merge's successors still run
    return [v for v in values if v <= 100]


@task
def enrich(merge: list[float]) -> list[float]:
    return sorted(merge)


@task(inject_context=True, max_cycles=20)
def refine(ctx: TaskExecutionContext, data: Any = None) -> list[float]:
    values = data if data is not None else ctx.get_result("enrich")
    mean = sum(values) / len(values)
    nudged = [round(v + (mean - v) * 0.5, 3) for v in values]
    spread = max(nudged) - min(nudged)
    ctx.get_channel().set("spread", spread)
    if spread > 1.0 and ctx.can_iterate():
        ctx.next_iteration(nudged)
    return nudged


@task(inject_context=True)
def load(ctx: TaskExecutionContext, refine: list[float]) -> dict[str, Any]:
    ctx.checkpoint(metadata={"stage": "loaded"})
    return {"rows": len(refine), "mean": round(sum(refine) / len(refine), 3), "spread": ctx.get_channel().get("spread")}


class _Recorder:
    """Collects engine events to print what ran (an in-process plugin)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.order: list[str] = []

    @hookimpl
    def graflow_on_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "task.succeeded":
            self.runs[payload["task_id"]] += 1
            if not self.order or self.order[-1] != payload["task_id"]:
                self.order.append(payload["task_id"])
        elif event == "task.retrying":
            self.retries[payload["task_id"]] += 1


def main() -> int:
    recorder = _Recorder()
    plugins.register(recorder, name="demo-recorder")
    checkpoint_dir = tempfile.mkdtemp(prefix="graflow-demo-")
    started = time.perf_counter()
    try:
        with workflow("etl-demo") as wf:
            (extract >> (clean_eu | clean_us | clean_apac).set_group_name("clean") >> merge >> enrich >> refine >> load)
            cwd = os.getcwd()
            os.chdir(checkpoint_dir)  # checkpoints/<session>/... lands in a scratch folder
            try:
                result, ctx = wf.execute(ret_context=True)
            finally:
                os.chdir(cwd)
    finally:
        plugins.unregister(recorder)
    elapsed = time.perf_counter() - started

    channel = ctx.get_channel()
    print("Graflow demo: etl-demo")
    print("=" * 60)
    print(f"{'task':<14}{'runs':>6}{'retries':>9}")
    for task_id in recorder.order:
        print(f"{task_id:<14}{recorder.runs[task_id]:>6}{recorder.retries[task_id]:>9}")
    print("-" * 60)
    print(f"rows cleaned (shared channel, atomic_add): {channel.get('rows_cleaned')}")
    print(f"quarantined outliers (dynamic task):      {ctx.get_result('quarantine')}")
    print(f"refine iterations (next_iteration loop):  {ctx.cycle_counts.get('refine')}")
    print(f"checkpoint written:                       {os.path.join(checkpoint_dir, ctx.last_checkpoint_path)}")
    print(f"result:                                   {result}")
    print(f"steps: {ctx.steps}, time: {elapsed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
