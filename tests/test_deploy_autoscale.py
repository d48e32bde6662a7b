"""``graflow worker --autoscale MIN,MAX``: the policy (pure logic) and the loop against a real fleet.

The unit tests drive :class:`AutoscalePolicy` and :class:`Autoscaler` with a fake clock and a fake
supervisor. The integration test runs the real command against a real redis-server: a burst of
tasks grows the process count to MAX, an idle queue shrinks it back to MIN, and every task's
result is present.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from graflow.exceptions import ConfigError
from graflow.worker.autoscale import AutoscalePolicy, Autoscaler, parse_autoscale
from graflow_testkit.services.redis import start_or_skip

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "packages" / p / "src" for p in ("graflow-core", "graflow-redis", "graflow-testkit")]

# -- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("1,4", (1, 4)), (" 0 , 8 ", (0, 8)), ("3,3", (3, 3))])
def test_parse_autoscale_accepts_min_max(text: str, expected: tuple[int, int]) -> None:
    assert parse_autoscale(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("4", "MIN,MAX"),
        ("1,2,3", "MIN,MAX"),
        ("a,b", "whole numbers"),
        ("1.5,4", "whole numbers"),
        ("-1,4", "MIN must be 0 or more"),
        ("0,0", "MAX must be at least 1"),
        ("5,2", "larger than MAX"),
        (",4", "MIN,MAX"),
    ],
)
def test_parse_autoscale_rejects_bad_values_with_a_fix(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_autoscale(text)
    assert says in str(info.value)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"min_processes": 3, "max_processes": 2}, "swap them"),
        ({"min_processes": 0, "max_processes": 2, "tasks_per_process": 0}, "--concurrency"),
        ({"min_processes": 0, "max_processes": 2, "scale_down_after": -1}, "scale_down_after"),
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, float], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        AutoscalePolicy(**kwargs)  # type: ignore[arg-type]


# -- the policy ------------------------------------------------------------------------------------------


def test_needed_rounds_the_backlog_up_to_whole_processes_within_bounds() -> None:
    policy = AutoscalePolicy(min_processes=1, max_processes=5, tasks_per_process=4)
    assert policy.needed(0, 0) == 1  # never below MIN
    assert policy.needed(1, 0) == 1
    assert policy.needed(4, 0) == 1
    assert policy.needed(5, 0) == 2
    assert policy.needed(3, 3) == 2  # running tasks count too
    assert policy.needed(10_000, 0) == 5  # never above MAX
    assert policy.needed(-3, -1) == 1  # nonsense samples do not go negative


def test_grows_at_once_and_shrinks_only_after_the_quiet_window() -> None:
    policy = AutoscalePolicy(min_processes=1, max_processes=4, scale_down_after=10)
    assert policy.decide(0.0, queue_depth=0, running=0, current=1).target == 1
    # A burst: straight to MAX, no waiting.
    assert policy.decide(1.0, queue_depth=50, running=0, current=1).target == 4
    # Queue drained while tasks still run: keep the processes that work.
    assert policy.decide(2.0, queue_depth=0, running=4, current=4).target == 4
    # Idle from t=3: held for 10 s ...
    for t in (3.0, 5.0, 8.0, 12.9):
        decision = policy.decide(t, queue_depth=0, running=0, current=4)
        assert decision.target == 4, (t, decision)
        assert decision.reason.startswith("hold")
    # ... then back to MIN.
    decision = policy.decide(13.0, queue_depth=0, running=0, current=4)
    assert decision.target == 1 and decision.reason.startswith("shrink")


def test_new_work_during_the_quiet_window_restarts_it() -> None:
    policy = AutoscalePolicy(min_processes=1, max_processes=4, scale_down_after=10)
    assert policy.decide(0.0, 0, 0, current=4).target == 4  # quiet window starts
    assert policy.decide(8.0, 4, 0, current=4).target == 4  # busy again: window reset
    assert policy.decide(9.0, 0, 0, current=4).target == 4  # a new window starts here
    assert policy.decide(18.5, 0, 0, current=4).target == 4
    assert policy.decide(19.0, 0, 0, current=4).target == 1


def test_shrinks_to_the_busiest_need_seen_while_quiet() -> None:
    policy = AutoscalePolicy(min_processes=1, max_processes=8, scale_down_after=5)
    assert policy.decide(0.0, 0, 2, current=8).target == 8  # need 2
    assert policy.decide(2.0, 0, 3, current=8).target == 8  # need 3
    assert policy.decide(4.0, 0, 1, current=8).target == 8  # need 1
    assert policy.decide(5.0, 0, 0, current=8).target == 3  # the peak of the window, not the last sample


def test_brings_a_fleet_below_min_back_up_and_caps_one_above_max() -> None:
    policy = AutoscalePolicy(min_processes=2, max_processes=3, scale_down_after=100)
    assert policy.decide(0.0, 0, 0, current=0).target == 2  # e.g. processes died
    assert policy.decide(1.0, 0, 0, current=7).target == 3


def test_min_zero_scales_to_zero_and_back() -> None:
    policy = AutoscalePolicy(min_processes=0, max_processes=2, scale_down_after=1)
    assert policy.decide(0.0, 0, 0, current=1).target == 1
    assert policy.decide(1.0, 0, 0, current=1).target == 0
    assert policy.decide(2.0, 1, 0, current=0).target == 1  # the first waiting task wakes it


# -- the loop --------------------------------------------------------------------------------------------


class FakeSupervisor:
    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: list[int] = []

    def scale_to(self, n: int) -> None:
        self.calls.append(n)
        self.n = n

    def process_count(self) -> int:
        return self.n


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_autoscaler_resizes_the_supervisor_from_queue_samples() -> None:
    depth = {"waiting": 0, "running": 0}
    clock = Clock()
    supervisor = FakeSupervisor(1)
    scaler = Autoscaler(
        supervisor,
        AutoscalePolicy(min_processes=1, max_processes=3, scale_down_after=5),
        queue_depth=lambda: depth["waiting"],
        running=lambda: depth["running"],
        clock=clock,
    )
    scaler.tick()
    assert supervisor.calls == []  # steady: no resize calls at all
    depth["waiting"] = 2
    scaler.tick()
    assert supervisor.calls == [2]
    depth["waiting"] = 0
    for t in (1.0, 3.0, 5.9):
        clock.now = t
        scaler.tick()
    assert supervisor.calls == [2]
    clock.now = 6.5
    scaler.tick()
    assert supervisor.calls == [2, 1]
    assert [(frm, to) for _, frm, to in scaler.history] == [(1, 2), (2, 1)]


def test_autoscaler_keeps_the_size_when_the_queue_cannot_be_read(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = FakeSupervisor(3)

    def broken() -> int:
        raise ConnectionError("Redis at 127.0.0.1:1 refused the connection")

    scaler = Autoscaler(supervisor, AutoscalePolicy(min_processes=1, max_processes=3, scale_down_after=0), broken)
    assert scaler.tick() is None
    assert supervisor.calls == []
    assert "cannot read the queue" in caplog.text and "refused" in caplog.text


def test_autoscaler_loop_survives_a_failing_resize_and_stops() -> None:
    import threading

    resized = threading.Event()

    class Flaky(FakeSupervisor):
        def scale_to(self, n: int) -> None:
            self.calls.append(n)
            if len(self.calls) == 1:
                raise RuntimeError("could not fork")
            self.n = n
            resized.set()

    supervisor = Flaky(1)
    scaler = Autoscaler(
        supervisor, AutoscalePolicy(min_processes=1, max_processes=2), queue_depth=lambda: 5, interval=0.01
    ).start()
    try:
        assert resized.wait(10), supervisor.calls
    finally:
        scaler.stop()
    assert supervisor.calls[:2] == [2, 2]
    assert supervisor.n == 2


def test_autoscaler_rejects_a_zero_interval() -> None:
    with pytest.raises(ConfigError, match="interval"):
        Autoscaler(FakeSupervisor(1), AutoscalePolicy(1, 2), lambda: 0, interval=0)


# -- a real fleet ----------------------------------------------------------------------------------------

BURST = textwrap.dedent(
    """
    import json, os, sys, time
    import redis
    from graflow import task, workflow
    from graflow.core.context import ExecutionContext
    from graflow.core.engine import WorkflowEngine
    from graflow.queue.redis import RedisTaskQueue

    N = int(sys.argv[2])
    client = redis.Redis.from_url(sys.argv[1])
    with workflow("autoscale_burst") as wf:
        jobs = []
        for i in range(N):
            def job(i=i):
                time.sleep(0.3)
                return {"i": i, "pid": os.getpid()}
            jobs.append(task(f"job_{i}")(job))
        group = jobs[0]
        for j in jobs[1:]:
            group = group | j
        @task
        def done():
            return "done"
        group >> done
    ctx = ExecutionContext.create(wf.graph, None, channel_backend="redis",
                                  config={"redis_client": client, "key_prefix": "graflow"})
    RedisTaskQueue(ctx, redis_client=client, key_prefix="graflow")
    last = WorkflowEngine().execute(ctx)
    results = [ctx.get_result(f"job_{i}") for i in range(N)]
    print(json.dumps({"last": last, "results": results}))
    """
)


def _children(pid: int) -> list[int]:
    """Live worker processes under ``pid`` (zombies waiting to be reaped excluded)."""
    found = []
    for task_dir in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task_dir / "children").read_text().split()]
        except OSError:
            continue
    live = []
    for child in found:
        try:
            status = Path(f"/proc/{child}/status").read_text()
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if "\nState:\tZ" not in status and b"graflow.worker.main" in cmdline:
            live.append(child)
    return live


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_burst_grows_the_fleet_to_max_and_idle_shrinks_it_to_min(tmp_path: Path) -> None:
    server = start_or_skip()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in SOURCES))
    log = tmp_path / "autoscale.log"
    supervisor = None
    try:
        with open(log, "wb") as out:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "graflow.worker.main", "--redis-url", server.url, "--worker-id", "scaler",
                 "--autoscale", "1,3", "--autoscale-idle", "2", "--autoscale-interval", "0.2",
                 "--heartbeat-interval", "1", "--log-level", "INFO"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )

        def count() -> int:
            assert supervisor is not None
            if supervisor.poll() is not None:
                pytest.fail(f"the autoscaling worker exited ({supervisor.returncode}):\n{log.read_text()[-3000:]}")
            return len(_children(supervisor.pid))

        def wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, f"{what} (now {count()}):\n{log.read_text()[-3000:]}"
                time.sleep(0.05)

        wait_for(lambda: count() == 1, "MIN (1) processes never came up")
        # Idle at MIN: it stays at MIN.
        time.sleep(1.0)
        assert count() == 1

        script = tmp_path / "burst.py"
        script.write_text(BURST)
        n = 30
        producer = subprocess.Popen([sys.executable, str(script), server.url, str(n)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
        peak = 0
        try:
            while producer.poll() is None:
                peak = max(peak, count())
                time.sleep(0.05)
            out_text, err_text = producer.communicate(timeout=120)
        finally:
            if producer.poll() is None:
                producer.kill()
                producer.wait()
        assert producer.returncode == 0, err_text[-3000:]
        assert peak == 3, f"the burst grew the fleet to {peak}, not MAX=3:\n{log.read_text()[-3000:]}"

        report = json.loads(out_text.strip().splitlines()[-1])
        assert report["last"] == "done"
        results = report["results"]
        assert [r["i"] for r in results] == list(range(n)), "a task's result is missing"
        assert len({r["pid"] for r in results}) >= 2, "the work was not spread over the new processes"

        # Idle again: back to MIN once the quiet period passed, through graceful drains.
        wait_for(lambda: count() == 1, "the idle fleet never shrank back to MIN (1)", timeout=60)
        # The two surplus processes drained (finished their work, exited 0), none was killed.
        wait_for(lambda: log.read_text().count("drained and exited") == 2, "the surplus processes did not drain")
        text = log.read_text()
        assert "was killed" not in text and "exited with code" not in text
        client = server.client()
        assert client.llen("graflow:q:default") == 0
        assert client.llen("graflow:dlq:default") == 0
        assert [k for k in client.keys("graflow:inflight:*") if client.llen(k)] == []

        os.kill(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if supervisor is not None and supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        server.cleanup()


def test_autoscale_flag_errors_are_clear() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in SOURCES))
    for args, says in (
        (["--autoscale", "4,2"], "larger than MAX"),
        (["--autoscale", "two"], "MIN,MAX"),
        (["--autoscale", "1,2", "--processes", "2"], "pass only one"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "graflow.worker.main", "--redis-url", "redis://127.0.0.1:1/0", *args],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
