"""TaskWorker, jobs and the engine's dispatcher hook, in-process (MemoryBroker; no Redis).

The dispatcher used here ships every task of a run as a TaskJob through a MemoryBroker to a real
TaskWorker running in threads, exactly as graflow-redis does through Redis; the run's channel
travels as a reference to the same in-process object.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from graflow.channels.memory_channel import MemoryChannel
from graflow.core.context import ExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.task import ParallelGroup, TaskWrapper
from graflow.core.workflow import workflow
from graflow.exceptions import (
    ConfigError,
    GraflowWorkflowCanceledError,
    RetryLimitExceededError,
    TaskError,
    TaskTimeoutError,
)
from graflow.queue.local import LocalTaskQueue
from graflow.worker.broker import MemoryBroker
from graflow.worker.jobs import TaskJob, apply_task_reply, decode_reply, dumps, loads
from graflow.worker.worker import EXIT_OK, EXIT_RECYCLE, TaskWorker

#: Quick polls and beats for the workers here, with a heartbeat timeout far beyond any pause of a loaded
#: machine: none of these tests is about reaping, and a worker that took itself for dead after a pause would
#: run its jobs twice.
_FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 60.0, "poll_interval": 0.05}

# -- an in-process stand-in for RedisTaskQueue(context) -------------------------------------------------------
_channels: dict[int, Any] = {}
_tokens = itertools.count()


def _lookup_channel(token: int) -> Any:
    return _channels[token]


class _ChannelRef:
    def __init__(self, channel: Any) -> None:
        self.token = next(_tokens)
        _channels[self.token] = channel

    def __reduce__(self) -> Any:
        return (_lookup_channel, (self.token,))


class LocalDispatcher:
    def __init__(self, broker: MemoryBroker, queue: str = "default") -> None:
        self.broker = broker
        self.queue = queue
        self.sent: list[str] = []
        self._blob: bytes | None = None
        self.finished = 0

    def execute_task(self, task_obj: Any, ctx: ExecutionContext) -> Any:
        tctx = ctx.current_task_context
        if self._blob is None:
            self._blob = dumps(_ChannelRef(ctx.channel))
        job = TaskJob(
            ctx.session_id,
            task_obj,
            self._blob,
            data=tctx.input_data,
            cycle_count=ctx.cycle_counts.get(task_obj.task_id, 1),
            retry_count=ctx.retry_counts.get(task_obj.task_id, 0),
        )
        self.sent.append(task_obj.task_id)
        mid = self.broker.submit(dumps(job), task_obj.queue or self.queue, reply_to="r")
        payload = self.broker.wait_reply(mid, 30)
        if payload is None:
            raise TaskError(f"task {task_obj.task_id} was dead-lettered", task_obj.task_id)
        return apply_task_reply(ctx, tctx, decode_reply(payload))

    def run_finished(self, ctx: ExecutionContext) -> None:
        self.finished += 1


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(max_deliveries=2)


@pytest.fixture
def worker(broker: MemoryBroker) -> Any:
    w = TaskWorker(
        broker,
        worker_id="unit",
        concurrency=2,
        **_FAST,
        shutdown_timeout=5.0,
        timeout_grace=0.3,
    )
    w.start()
    yield w
    if w.is_running:
        w.stop(timeout=2.0)


def _distributed(wf: Any, broker: MemoryBroker, **inputs: Any) -> tuple[Any, ExecutionContext, LocalDispatcher]:
    ctx = ExecutionContext.create(wf.graph, channel=MemoryChannel("run"))
    for key, value in inputs.items():
        ctx.channel.set(key, value)
    dispatcher = LocalDispatcher(broker)
    ctx.task_dispatcher = dispatcher  # type: ignore[attr-defined]
    result = WorkflowEngine().execute(ctx)
    return result, ctx, dispatcher


# -- the engine's dispatcher hook: same results and control flow as local runs ----------------------------
def _etl() -> Any:
    with workflow("etl") as wf:

        @task
        def extract(n: int) -> list[int]:
            return list(range(n))

        @task
        def double(extract: list[int]) -> list[int]:
            return [x * 2 for x in extract]

        @task(inject_context=True)
        def load(ctx: Any, double: list[int]) -> int:
            ctx.get_channel().set("loaded", len(double))
            return sum(double)

        extract >> double >> load
    return wf


def test_every_task_goes_through_the_worker_with_the_same_result(broker: MemoryBroker, worker: TaskWorker) -> None:
    local = _etl().execute(n=5)
    result, ctx, dispatcher = _distributed(_etl(), broker, n=5)
    assert result == local == 20
    assert dispatcher.sent == ["extract", "double", "load"]
    assert ctx.channel.get("loaded") == 5
    assert ctx.get_result("double") == [0, 2, 4, 6, 8]
    assert dispatcher.finished == 1
    assert worker.tasks_processed == 3 and worker.tasks_succeeded == 3


def test_dynamic_tasks_and_jumps_come_back_to_the_producer(broker: MemoryBroker, worker: TaskWorker) -> None:
    ran: list[str] = []

    with workflow("dynamic") as wf:

        @task(inject_context=True)
        def start(ctx: Any) -> str:
            extra = TaskWrapper("extra", lambda: ran.append("extra") or "extra-result", register_to_context=False)
            tail = TaskWrapper("tail", lambda extra: f"tail saw {extra}", register_to_context=False)
            extra >> tail
            ctx.next_task(extra)
            return "started"

        @task
        def after_start() -> str:
            return "after"

        start >> after_start

    _, ctx, dispatcher = _distributed(wf, broker)
    assert ctx.get_result("tail") == "tail saw extra-result"
    assert ctx.get_result("after_start") == "after"
    assert {"extra", "tail"} <= set(ctx.graph.nodes)
    assert "tail" in dispatcher.sent and "extra" in dispatcher.sent
    assert ran == [], "the worker ran the task, not this process's closure"


def test_goto_an_existing_task_skips_successors(broker: MemoryBroker, worker: TaskWorker) -> None:
    with workflow("goto") as wf:

        @task(inject_context=True)
        def decide(ctx: Any) -> str:
            ctx.next_task(ctx.graph.get_node("finish") if ctx.graph.has_node("finish") else finish_task)
            return "decided"

        @task
        def skipped() -> str:
            return "should not run"

        finish_task = TaskWrapper("finish", lambda: "finished")
        decide >> skipped

    result, ctx, dispatcher = _distributed(wf, broker)
    assert ctx.get_result("finish") == "finished"
    assert "skipped" not in dispatcher.sent
    assert result == "finished"


def test_next_iteration_runs_again_with_data_then_successors_once(broker: MemoryBroker, worker: TaskWorker) -> None:
    with workflow("loop") as wf:

        @task(inject_context=True, max_cycles=10)
        def count(ctx: Any, data: Any = None) -> int:
            n = 0 if data is None else data
            if n < 4:
                ctx.next_iteration(n + 1)
            ctx.get_channel().append("seen", n)
            return n

        @task
        def done(count: int) -> str:
            return f"done at {count}"

        count >> done

    result, ctx, dispatcher = _distributed(wf, broker)
    assert ctx.channel.get("seen") == [0, 1, 2, 3, 4]
    assert result == "done at 4"
    assert dispatcher.sent.count("done") == 1
    assert ctx.cycle_counts["count"] == 5


def test_terminate_and_cancel_from_a_worker(broker: MemoryBroker, worker: TaskWorker) -> None:
    with workflow("stop") as wf:

        @task(inject_context=True)
        def first(ctx: Any) -> str:
            ctx.terminate_workflow("enough")
            return "first"

        @task
        def never() -> str:
            return "never"

        first >> never

    result, ctx, dispatcher = _distributed(wf, broker)
    assert result == "first" and ctx.terminated == "enough"
    assert dispatcher.sent == ["first"]

    with workflow("cancel") as wf2:

        @task(inject_context=True)
        def abort(ctx: Any) -> None:
            ctx.cancel_workflow("bad input")

        @task
        def later() -> None:
            return None

        abort >> later

    with pytest.raises(GraflowWorkflowCanceledError, match="bad input"):
        _distributed(wf2, broker)


def test_worker_errors_keep_type_and_traceback_and_retries_run_again(broker: MemoryBroker, worker: TaskWorker) -> None:
    attempts = MemoryChannel("attempts")
    token = _ChannelRef(attempts).token

    class Flaky(RuntimeError):
        pass

    with workflow("retry") as wf:

        @task(max_retries=2)
        def flaky() -> str:
            n = _lookup_channel(token).atomic_add("n", 1)
            if n < 3:
                raise Flaky(f"attempt {n}")
            return f"ok after {n}"

    result, _, dispatcher = _distributed(wf, broker)
    assert result == "ok after 3"
    assert dispatcher.sent == ["flaky"] * 3
    assert worker.get_metrics()["tasks_retried"] == 2

    with workflow("fails") as wf2:

        @task(max_retries=1)
        def always() -> None:
            raise ValueError("always wrong")

    with pytest.raises(RetryLimitExceededError) as info:
        _distributed(wf2, broker)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "always wrong"
    assert "always wrong" in str(cause.__cause__) and "Traceback" in str(cause.__cause__)


def test_unpicklable_result_and_exception_become_clear_errors(broker: MemoryBroker, worker: TaskWorker) -> None:
    with workflow("bad-result") as wf:

        @task
        def lock_maker() -> Any:
            return threading.Lock()

    with pytest.raises(TaskError, match=r"return value of task 'lock_maker' \(lock\) cannot be pickled"):
        _distributed(wf, broker)

    class Weird(Exception):
        def __init__(self) -> None:
            super().__init__("weird")
            self.lock = threading.Lock()

    with workflow("bad-error") as wf2:

        @task
        def raiser() -> None:
            raise Weird()

    with pytest.raises(TaskError, match=r"raised .*Weird: weird"):
        _distributed(wf2, broker)
    assert worker.is_running


def test_immediate_checkpoint_on_a_worker_is_refused_clearly(broker: MemoryBroker, worker: TaskWorker) -> None:
    with workflow("ckpt") as wf:

        @task(inject_context=True)
        def snap(ctx: Any) -> None:
            ctx.checkpoint(deferred=False)

    with pytest.raises(ConfigError, match=r"deferred=False\) on a worker"):
        _distributed(wf, broker)


def test_deferred_checkpoint_request_is_written_by_the_producer(
    broker: MemoryBroker, worker: TaskWorker, tmp_path: Any
) -> None:
    from graflow.core.checkpoint import CheckpointManager

    with workflow("ckpt2") as wf:

        @task(inject_context=True)
        def snap(ctx: Any) -> str:
            ctx.checkpoint(metadata={"from": "worker"}, path=str(tmp_path) + "/")
            return "snapped"

        @task
        def then() -> str:
            return "then"

        snap >> then

    result, _, _ = _distributed(wf, broker)
    assert result == "then"
    (meta,) = CheckpointManager.list_checkpoints(str(tmp_path))
    assert meta.user_metadata["from"] == "worker" and meta.user_metadata["task_id"] == "snap"
    resumed, _ = CheckpointManager.resume_from_checkpoint(meta.path)
    assert resumed.task_queue.to_list() == ["then"]


# -- the worker itself ---------------------------------------------------------------------------------------
def _submit_task(broker: MemoryBroker, fn: Any, task_id: str = "t", **options: Any) -> str:
    job = TaskJob(
        "s", TaskWrapper(task_id, fn, register_to_context=False, **options), dumps(_ChannelRef(MemoryChannel("c")))
    )
    return broker.submit(dumps(job), "default", reply_to="r")


def _reply(broker: MemoryBroker, mid: str, timeout: float = 30.0) -> Any:
    payload = broker.wait_reply(mid, timeout)
    return None if payload is None else decode_reply(payload)


def _wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)


# Tasks that stay in their job until the test opens the gate: module-level functions (pickled by
# reference) blocked in C code (a lock wait), which a timeout interrupt cannot break into.
_gates: dict[str, threading.Event] = {}


def _held_until_opened() -> str:
    assert _gates["held"].wait(60), "the test never opened the gate"
    return "finished"


def _stuck_in_c() -> str:
    _gates["stuck"].wait(60)
    return "unstuck"


def test_python_code_past_its_timeout_is_interrupted(broker: MemoryBroker, worker: TaskWorker) -> None:
    def spin() -> None:
        while True:
            sum(range(100))

    mid = _submit_task(broker, spin, "spinner", timeout=0.3)
    reply = _reply(broker, mid)
    assert not reply.ok
    assert isinstance(reply.error, TaskTimeoutError) and "spinner" in str(reply.error)
    # the worker goes on serving
    ok = _reply(broker, _submit_task(broker, lambda: "still here"))
    assert ok.ok and ok.result == "still here"
    assert worker.is_running


def test_code_stuck_outside_python_is_answered_for_and_the_worker_recycles(broker: MemoryBroker) -> None:
    w = TaskWorker(broker, worker_id="stuck", **_FAST, timeout_grace=0.2, shutdown_timeout=1.0)
    codes: list[int] = []
    _gates["stuck"] = threading.Event()  # opened only once the answer came: the task is stuck until then
    runner = threading.Thread(target=lambda: codes.append(w.run()))
    runner.start()
    try:
        mid = _submit_task(broker, _stuck_in_c, "sleeper", timeout=0.2)
        reply = _reply(broker, mid)
        assert not reply.ok and isinstance(reply.error, TaskTimeoutError), "answered while the task was still stuck"
        runner.join(timeout=30)
        assert codes == [EXIT_RECYCLE]
        assert "could not be stopped" in w.exit_reason
    finally:
        _gates["stuck"].set()
        runner.join(timeout=30)


def test_graceful_stop_finishes_running_tasks(broker: MemoryBroker) -> None:
    w = TaskWorker(broker, worker_id="drain", **_FAST, shutdown_timeout=5.0)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(w.run()))
    runner.start()
    _gates["held"] = threading.Event()
    try:
        mid = _submit_task(broker, _held_until_opened, "long")
        _wait_until(lambda: w.active_tasks == 1, "the long task to start")
        queued = _submit_task(broker, lambda: "queued", "queued")
        w.request_stop("test")
    finally:
        _gates["held"].set()  # the running task finishes only after the stop was requested
    runner.join(timeout=30)
    assert codes == [EXIT_OK]
    assert _reply(broker, mid).result == "finished"
    # the queued one was not started: it is still there for another worker
    assert broker.depths(["default"])["default"][0] == 1
    other = TaskWorker(broker, worker_id="other", **_FAST).start()
    try:
        assert _reply(broker, queued).result == "queued"
    finally:
        other.stop(1.0)


def test_graceful_stop_hands_back_what_does_not_finish_in_time(broker: MemoryBroker) -> None:
    w = TaskWorker(broker, worker_id="short", **_FAST, shutdown_timeout=0.2)
    w.start()
    _gates["held"] = threading.Event()  # closed until the stop returned: the task cannot finish in time
    try:
        mid = _submit_task(broker, _held_until_opened, "slow")
        _wait_until(lambda: w.active_tasks == 1, "the slow task to start")
        w.stop()
        assert broker.depths(["default"])["default"][0] == 1, "handed back to the queue"
        assert broker.in_flight() == 0
    finally:
        _gates["held"].set()  # the abandoned run ends; its result is dropped
    other = TaskWorker(broker, worker_id="other2", **_FAST).start()
    try:
        assert _reply(broker, mid).result == "finished"
    finally:
        other.stop(2.0)


def test_undecodable_payload_is_dead_lettered(broker: MemoryBroker, worker: TaskWorker) -> None:
    mid = broker.submit(b"\x80\x04not a pickle", "default", reply_to="r")
    assert broker.wait_reply(mid, 5) is None
    (dead,) = broker.dead_letters("default")
    assert "undecodable payload" in dead.reason
    mid2 = broker.submit(dumps({"not": "a job"}), "default", reply_to="r")
    assert broker.wait_reply(mid2, 5) is None
    assert "not a graflow job" in broker.dead_letters("default")[1].reason


def test_max_tasks_recycles(broker: MemoryBroker) -> None:
    w = TaskWorker(broker, worker_id="hygiene", max_tasks=3, **_FAST)
    ids = [_submit_task(broker, lambda i=i: i, f"t{i}") for i in range(5)]
    assert w.run() == EXIT_RECYCLE
    assert w.tasks_processed == 3
    assert [_reply(broker, i, 1).result for i in ids[:3]] == [0, 1, 2]
    assert broker.depths(["default"])["default"][0] == 2


_shared: dict[str, Any] = {}


def _meet() -> bool:
    return _shared["barrier"].wait() is not None


def test_concurrency_runs_tasks_side_by_side(broker: MemoryBroker, worker: TaskWorker) -> None:
    _shared["barrier"] = threading.Barrier(2, timeout=30)  # both must be running at once to pass it
    ids = [_submit_task(broker, _meet, f"b{i}") for i in range(2)]
    assert all(_reply(broker, i).ok for i in ids)


def test_queue_routing_only_serves_its_queues(broker: MemoryBroker) -> None:
    gpu = TaskWorker(broker, worker_id="gpu", queues=["gpu"], **_FAST).start()
    try:
        cpu_id = _submit_task(broker, lambda: "cpu", "c")
        job = TaskJob("s", TaskWrapper("g", lambda: "gpu", register_to_context=False), dumps(_ChannelRef(None)))
        gpu_id = broker.submit(dumps(job), "gpu", reply_to="r")
        assert _reply(broker, gpu_id).result == "gpu"
        time.sleep(0.2)
        assert broker.depths(["default"])["default"][0] == 1, "the gpu worker left the default queue alone"
        assert cpu_id
    finally:
        gpu.stop(1.0)


def test_metrics(broker: MemoryBroker, worker: TaskWorker) -> None:
    _reply(broker, _submit_task(broker, lambda: 1, "ok1"))
    _reply(broker, _submit_task(broker, lambda: 1 / 0, "bad"))
    metrics = worker.get_metrics()
    assert metrics["tasks_processed"] == 2
    assert metrics["tasks_succeeded"] == 1 and metrics["tasks_failed"] == 1
    assert metrics["active_tasks"] == 0
    assert metrics["duration_p50"] is not None and metrics["duration_p99"] >= metrics["duration_p50"]
    assert metrics["queue_depth"] == {"default": 0}
    assert metrics["last_heartbeat"] > 0


def test_prometheus_endpoint_uses_the_agreed_names(broker: MemoryBroker) -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    w = TaskWorker(broker, worker_id="prom", **_FAST, metrics_port=0, metrics_addr="127.0.0.1").start()
    try:
        _reply(broker, _submit_task(broker, lambda: 1, "p1"))
        with urllib.request.urlopen(f"http://127.0.0.1:{w.bound_metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        w.stop(1.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = (("queue", "default"), ("worker", "prom"))
    assert samples[("graflow_tasks_processed_total", labels)] == 1
    assert samples[("graflow_tasks_succeeded_total", labels)] == 1
    for name in ("graflow_tasks_failed_total", "graflow_tasks_retried_total", "graflow_tasks_redelivered_total"):
        assert samples[(name, labels)] == 0
    assert samples[("graflow_task_duration_seconds_count", labels)] == 1
    assert ("graflow_active_tasks", (("worker", "prom"),)) in samples
    assert samples[("graflow_worker_last_heartbeat_timestamp_seconds", (("worker", "prom"),))] > 0
    assert samples[("graflow_queue_depth", (("queue", "default"),))] == 0
    assert samples[("graflow_dead_letter_depth", (("queue", "default"),))] == 0


def test_metrics_port_without_prometheus_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from graflow.worker.metrics import require_prometheus

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install graflow-core\[metrics\]"):
        require_prometheus()


def test_bad_settings_are_clear_errors(broker: MemoryBroker) -> None:
    with pytest.raises(ConfigError, match="queue that workers can consume"):
        TaskWorker(LocalTaskQueue())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency"):
        TaskWorker(broker, concurrency=0)
    with pytest.raises(ConfigError, match="queue name"):
        TaskWorker(broker, queues=["bad name"])
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        TaskWorker(broker, heartbeat_interval=5, heartbeat_timeout=2)


def test_a_job_payload_survives_pickling_with_no_data() -> None:
    job = TaskJob("s", TaskWrapper("t", len, register_to_context=False), b"")
    clone = loads(dumps(job))
    assert clone.has_data is False and clone.task.task_id == "t"


# -- the command line -----------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "graflow.worker.main", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_cli_without_the_redis_plugin_says_which_package_to_install() -> None:
    result = _cli("--redis-url", "redis://127.0.0.1:1/0", env={"GRAFLOW_DISABLE_PLUGINS": "redis,graflow-redis"})
    assert result.returncode == 2
    assert "No task queue named 'redis'" in result.stderr
    assert "graflow-redis" in result.stderr


def test_cli_rejects_bad_flags_with_reasons() -> None:
    result = _cli("--concurrency", "0")
    assert result.returncode == 2 and "--concurrency must be at least 1" in result.stderr
    result = _cli("--log-level", "LOUD")
    assert result.returncode == 2 and "--log-level" in result.stderr
    result = _cli("--redis-url", "redis://x:1/0", "--redis-host", "y")
    assert result.returncode == 2 and "not both" in result.stderr


def test_graflow_worker_is_a_registered_command() -> None:
    from graflow.cli.main import build_parser

    parser = build_parser(warn=lambda message: None)
    args = parser.parse_args(["worker", "--queue", "gpu", "--queue", "io", "--concurrency", "3", "--processes", "2"])
    from graflow.worker.cli import options_from_args

    options = options_from_args(args)
    assert options.queues == ["gpu", "io"] and options.concurrency == 3 and options.processes == 2
    assert options.shutdown_timeout == 30.0 and options.key_prefix == "graflow"


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from graflow.worker.cli import options_from_args
    from graflow.worker.main import build_parser

    monkeypatch.setenv("GRAFLOW_WORKER_QUEUES", "a, b")
    monkeypatch.setenv("GRAFLOW_WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("GRAFLOW_REDIS_URL", "redis://example:6380/2")
    options = options_from_args(build_parser().parse_args([]))
    assert options.queues == ["a", "b"] and options.concurrency == 4 and options.redis_url == "redis://example:6380/2"
    monkeypatch.setenv("GRAFLOW_WORKER_CONCURRENCY", "many")
    with pytest.raises(ConfigError, match="GRAFLOW_WORKER_CONCURRENCY"):
        options_from_args(build_parser().parse_args([]))


# -- what jobs ship ------------------------------------------------------------------------------------------
@task
def shipped_by_name(x: int) -> int:
    return x * 3


def test_module_level_tasks_travel_by_name_and_share_one_function() -> None:
    bound = shipped_by_name(task_id="alias", x=2)
    blob = dumps(TaskJob("s", bound, b""))
    assert b"_make_function" not in blob, "the function's code must not be in the payload"
    clone = loads(blob).task
    assert clone.func is shipped_by_name.func
    assert clone.task_id == "alias" and clone.bound_kwargs == {"x": 2}
    assert clone.run_in(ExecutionContext.create(_etl().graph)) == 6
    closure = TaskWrapper("closure", lambda: 1, register_to_context=False)
    assert b"_make_function" in dumps(TaskJob("s", closure, b"")), "closures still travel by value"


def test_a_task_module_the_worker_cannot_import_is_a_clear_error() -> None:
    from graflow.worker.jobs import task_by_name

    with pytest.raises(ImportError, match=r"cannot import .*pickle_by_value=\['no_such_module_xyz'\]"):
        task_by_name("no_such_module_xyz", "f", "t", {})


def test_group_subgraph_ships_only_the_group() -> None:
    from graflow.worker.jobs import group_subgraph

    lock = threading.Lock()
    with workflow("parts") as wf:
        unpicklable = TaskWrapper("local_only", lambda: lock.acquire(False))
        inner = ParallelGroup([TaskWrapper("i1", lambda: 1), TaskWrapper("i2", lambda: 2)]).set_group_name("inner")
        head = TaskWrapper("head", lambda: 0)
        tail_task = TaskWrapper("tail", lambda head: head)
        outer = ParallelGroup([head >> tail_task, inner]).set_group_name("outer")
        unpicklable >> outer
    sub = group_subgraph(wf.graph, "outer")
    assert set(sub.nodes) == {"outer", "head", "tail", "inner", "i1", "i2"}
    assert sub.successors("head") == ["tail"]
    assert sub.owner_of["i1"] == "inner" and sub.owner_of["head"] == "outer"
    clone = loads(dumps(sub))  # the lock in the rest of the workflow is not shipped
    group = clone.get_node("outer")
    assert group._graph is clone and group.member_ids == ["head", "inner"]
    assert clone.get_node("inner")._graph is clone
    assert wf.graph.get_node("outer")._graph is wf.graph, "the producer's group is untouched"
