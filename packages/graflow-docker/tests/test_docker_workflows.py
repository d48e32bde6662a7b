"""Workflows with tasks in real containers: results, the live context, images side by side, reuse.

Everything runs against the Docker engine and the offline base image from the conftest fixtures;
every test checks (``no_leaks``) that no container of this process is left behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import pytest

from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.retry import RetryPolicy
from graflow.core.task import parallel
from graflow.core.workflow import workflow
from graflow.remote.handler import RemoteTraceback
from graflow_docker import DockerTaskHandler

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]


class InventoryError(Exception):
    """A task's own exception type, defined in this (not installed) module: it travels by value."""

    def __init__(self, sku: str, missing: int) -> None:
        super().__init__(sku, missing)  # args match __init__, so it pickles
        self.sku = sku
        self.missing = missing

    def __str__(self) -> str:
        return f"{self.missing} units of {self.sku} missing"


def _engine(**handlers: Any) -> WorkflowEngine:
    engine = WorkflowEngine()
    for name, handler in handlers.items():
        engine.register_handler(name, handler)
    return engine


def _context(wf: Any, **inputs: Any) -> ExecutionContext:
    context = ExecutionContext.create(wf.graph, None, max_steps=500)
    for key, value in inputs.items():
        context.channel.set(key, value)
    return context


def _find(error: BaseException | None, kind: type) -> BaseException:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__
    raise AssertionError(f"no {kind.__name__} in the cause chain")


@pytest.fixture
def handler(base_image):
    h = DockerTaskHandler(image=base_image)
    yield h
    h.close()


def test_task_runs_in_a_container_of_the_image(handler):
    with workflow("where") as wf:

        @task(handler="box")
        def where() -> dict[str, Any]:
            import platform

            return {
                "hostname": socket.gethostname(),
                "python": list(sys.version_info[:2]),
                "executable": sys.executable,
                "pid": os.getpid(),
                "os": platform.freedesktop_os_release().get("VERSION_CODENAME"),
            }

    context = _context(wf)
    result = _engine(box=handler).execute(context)
    # The runner is PID 1 of a Debian bookworm container whose hostname is the container's short id.
    assert result["pid"] == 1
    assert result["os"] == "bookworm"
    assert result["executable"] == "/usr/bin/python3"
    assert result["python"] == list(sys.version_info[:2])
    assert result["hostname"] != socket.gethostname()


def test_by_name_with_handler_kwargs(base_image):
    """The design card's form: no engine registration, the plugin's ``docker`` name and settings."""
    with workflow("by-name") as wf:

        @task(handler="docker", handler_kwargs={"image": base_image, "environment": {"GREETING": "hej"}})
        def greet(name: str) -> str:
            return f"{os.environ['GREETING']} {name}"

    context = _context(wf, name="docker")
    assert WorkflowEngine().execute(context) == "hej docker"


def test_exception_type_fields_and_remote_traceback(handler):
    with workflow("inventory") as wf:

        @task(handler="box")
        def check_stock() -> None:
            def reserve(sku: str) -> None:
                raise InventoryError(sku, 3)

            reserve("sku-42")

    with pytest.raises(Exception) as info:
        _engine(box=handler).execute(_context(wf))
    error = _find(info.value, InventoryError)
    assert type(error) is InventoryError
    assert (error.sku, error.missing) == ("sku-42", 3)
    remote = error.__cause__
    assert isinstance(remote, RemoteTraceback)
    # the traceback is the container's: it names the inner frame and the exception
    assert "in reserve" in remote.traceback and "InventoryError: 3 units of sku-42 missing" in remote.traceback


def test_channel_reads_are_live_and_writes_land_on_the_host(handler):
    """The task waits for a value the host sets *after* it started: reads are not a snapshot."""
    with workflow("live") as wf:

        @task(handler="box", inject_context=True)
        def waiter(ctx: TaskExecutionContext) -> str:
            channel = ctx.get_channel()
            channel.set("started", socket.gethostname())
            deadline = time.monotonic() + 60
            while channel.get("go") is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the host never said go")
                time.sleep(0.02)
            channel.set("seen", channel.get("go"))
            channel.append("trail", "container")
            return "done"

    context = _context(wf, trail=["host"])

    def release() -> None:
        deadline = time.monotonic() + 60
        while context.channel.get("started") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        context.channel.set("go", {"token": 7})

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    assert _engine(box=handler).execute(context) == "done"
    helper.join(5)
    assert context.channel.get("seen") == {"token": 7}
    assert context.channel.get("trail") == ["host", "container"]
    assert context.channel.get("started") != socket.gethostname()


def test_dynamic_task_spawned_in_a_container_runs_in_its_own_container(handler):
    with workflow("spawn") as wf:

        @task(handler="box", inject_context=True)
        def planner(ctx: TaskExecutionContext) -> str:
            @task("worker", handler="box")
            def worker(planner: str) -> dict[str, str]:
                return {"planner": planner, "worker": socket.gethostname()}

            ctx.next_task(worker)
            return socket.gethostname()

        @task
        def never_forgotten() -> str:
            return "host"

        planner >> never_forgotten

    context = _context(wf)
    _engine(box=handler).execute(context)
    worker = context.get_result("worker")
    assert worker["planner"] == context.get_result("planner")
    assert worker["worker"] != worker["planner"]  # a second container
    assert {"planner", "worker", "never_forgotten"} <= set(context.completed_tasks)


def test_large_payloads_travel_both_ways(handler):
    """8 MB in and 8 MB out: payloads go over the stream, not the command line."""
    blob = os.urandom(8 * 1024 * 1024)
    with workflow("payload") as wf:

        @task(handler="box")
        def transform(blob: bytes) -> tuple[str, bytes]:
            return hashlib.sha256(blob).hexdigest(), blob[::-1]

    digest, reversed_blob = _engine(box=handler).execute(_context(wf, blob=blob))
    assert digest == hashlib.sha256(blob).hexdigest()
    assert reversed_blob == blob[::-1]


def test_container_output_streams_to_the_log_with_the_task_id(handler, caplog):
    with workflow("chatty") as wf:

        @task("chatty_task", handler="box")
        def chatty() -> int:
            print("line one from the container")
            print("line two to stderr", file=sys.stderr)
            return 2

    with caplog.at_level(logging.INFO, logger="graflow.remote"):
        assert _engine(box=handler).execute(_context(wf)) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "graflow.remote"]
    assert "[chatty_task] line one from the container" in messages
    assert "[chatty_task] line two to stderr" in messages


def test_settings_reach_the_container(base_image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from the host")
    h = DockerTaskHandler(
        image=base_image,
        environment={"STAGE": "test"},
        volumes={str(shared): {"bind": "/data", "mode": "rw"}},
        working_dir="/data",
        user="1234:1234",
        network="none",
        cpus=0.5,
        mem_limit="256m",
        labels={"team": "graflow"},
    )
    try:
        with workflow("settings") as wf:

            @task(handler="box")
            def inspect_self() -> dict[str, Any]:
                with open("input.txt") as fh:  # relative: working_dir is /data
                    text = fh.read()
                for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
                    if os.path.exists(path):  # cgroup v1, or v2
                        with open(path) as fh:
                            limit = int(fh.read())
                        break
                return {
                    "stage": os.environ.get("STAGE"),
                    "cwd": os.getcwd(),
                    "uid": os.getuid(),
                    "text": text,
                    "limit": limit,
                    "interfaces": sorted(name for _, name in socket.if_nameindex()),
                }

        result = _engine(box=h).execute(_context(wf))
    finally:
        h.close()
    assert result["stage"] == "test"
    assert result["cwd"] == "/data"
    assert result["uid"] == 1234
    assert result["text"] == "from the host"
    assert result["limit"] == 256 * 1024 * 1024
    assert result["interfaces"] == ["lo"]  # network="none"


def test_host_two_images_and_a_parallel_group(base_image, derived_image):
    """host -> image A -> image B -> parallel(A, B, A) on threads -> host, sharing one channel."""
    image_a = DockerTaskHandler(image=base_image)
    image_b = DockerTaskHandler(image=derived_image)

    def flavour() -> str:
        return os.environ.get("GRAFLOW_FLAVOUR", "a")

    def member(ctx: TaskExecutionContext) -> dict[str, Any]:
        ctx.get_channel().atomic_add("members", 1)
        with ctx.get_channel().lock("tally"):
            tally = ctx.get_channel().get("tally", [])
            ctx.get_channel().set("tally", [*tally, ctx.task_id])
        return {"flavour": flavour(), "host": socket.gethostname()}

    try:
        with workflow("mixed") as wf:

            @task
            def prepare() -> int:
                return 20

            @task(handler="py-a")
            def on_a(prepare: int) -> dict[str, Any]:
                return {"value": prepare + 1, "flavour": flavour()}

            @task(handler="py-b")
            def on_b(on_a: dict[str, Any]) -> dict[str, Any]:
                with open("/etc/graflow-flavour") as fh:
                    marker = fh.read().strip()
                return {"value": on_a["value"] * 2, "flavour": flavour(), "marker": marker}

            members = [
                task("m_a1", handler="py-a", inject_context=True)(member),
                task("m_b", handler="py-b", inject_context=True)(member),
                task("m_a2", handler="py-a", inject_context=True)(member),
            ]
            group = parallel(*members).with_execution("threading")

            @task
            def collect(on_b: dict[str, Any], m_a1: dict, m_b: dict, m_a2: dict) -> dict[str, Any]:
                return {"value": on_b["value"], "flavours": [m_a1["flavour"], m_b["flavour"], m_a2["flavour"]]}

            prepare >> on_a >> on_b >> group >> collect

        context = _context(wf)
        result = _engine(**{"py-a": image_a, "py-b": image_b}).execute(context)
    finally:
        image_a.close()
        image_b.close()
    assert context.get_result("on_a") == {"value": 21, "flavour": "a"}
    assert context.get_result("on_b") == {"value": 42, "flavour": "b", "marker": "flavour b"}
    assert result == {"value": 42, "flavours": ["a", "b", "a"]}
    hosts = {context.get_result(m)["host"] for m in ("m_a1", "m_b", "m_a2")}
    assert len(hosts) == 3  # each member in its own container
    assert context.channel.get("members") == 3
    assert sorted(context.channel.get("tally")) == ["m_a1", "m_a2", "m_b"]


def test_retry_after_a_failed_first_attempt(handler):
    with workflow("retry") as wf:

        @task(handler="box", inject_context=True, retry_policy=RetryPolicy(max_retries=2, initial_interval=0.0))
        def flaky(ctx: TaskExecutionContext) -> dict[str, Any]:
            attempt = ctx.get_channel().atomic_add("attempts", 1)
            if attempt == 1:
                raise ConnectionError("first attempt fails")
            return {"attempt": attempt, "retry_count": ctx.retry_count}

    context = _context(wf)
    assert _engine(box=handler).execute(context) == {"attempt": 2, "retry_count": 1}
    assert context.channel.get("attempts") == 2


def test_retry_after_the_container_died(handler):
    """The first attempt's container exits abruptly; the retry gets a fresh container and succeeds."""
    with workflow("retry-crash") as wf:

        @task(handler="box", inject_context=True, retry_policy=RetryPolicy(max_retries=1, initial_interval=0.0))
        def crashy(ctx: TaskExecutionContext) -> str:
            channel = ctx.get_channel()
            channel.append("hosts", socket.gethostname())
            if len(channel.get("hosts")) == 1:
                os._exit(3)
            return "second time lucky"

    context = _context(wf, hosts=[])
    assert _engine(box=handler).execute(context) == "second time lucky"
    first, second = context.channel.get("hosts")
    assert first != second


def test_warm_container_serves_successive_tasks_and_a_killed_one_is_replaced(base_image, docker_client):
    warm = DockerTaskHandler(image=base_image, reuse=True, pool_size=1)
    try:
        with workflow("warm") as wf:

            @task("first", handler="box", inject_context=True)
            def first(ctx: TaskExecutionContext) -> str:
                ctx.get_channel().set("scratch", "kept")
                with open("/tmp/scratch", "w") as fh:  # state in the container survives to the next task
                    fh.write("warm")
                return socket.gethostname()

            @task("second", handler="box")
            def second() -> tuple[str, str]:
                with open("/tmp/scratch") as fh:
                    return socket.gethostname(), fh.read()

            first >> second

        engine = _engine(box=warm)
        context = _context(wf)
        engine.execute(context)
        host = context.get_result("first")
        assert context.get_result("second") == (host, "warm")
        assert warm.idle_runners() == 1
        running = warm.containers(all=False)
        assert [c.id[:12] for c in running] == [host]

        docker_client.containers.get(host).kill()
        context = _context(wf)
        engine.execute(context)
        replacement = context.get_result("first")
        assert replacement != host
        assert context.get_result("second") == (replacement, "warm")
        assert warm.idle_runners() == 1
    finally:
        warm.close()
    assert warm.idle_runners() == 0
    assert warm.containers(all=True) == []


def test_warm_pool_in_a_parallel_group_keeps_at_most_pool_size(base_image):
    warm = DockerTaskHandler(image=base_image, reuse=True, pool_size=2)

    def member(ctx: TaskExecutionContext) -> str:
        ctx.get_channel().atomic_add("arrived", 1)
        deadline = time.monotonic() + 30
        while ctx.get_channel().get("arrived") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        return socket.gethostname()

    try:
        with workflow("pool") as wf:
            parallel(*[task(f"p{i}", handler="box", inject_context=True)(member) for i in range(3)]).with_execution(
                "threading"
            )
        context = _context(wf)
        _engine(box=warm).execute(context)
        hosts = {context.get_result(f"p{i}") for i in range(3)}
        assert len(hosts) == 3  # all three ran at once, each in a container
        assert warm.idle_runners() == 2  # the third was finished, not pooled
        assert warm.wait_for_cleanup()
        assert len(warm.containers(all=False)) == 2
    finally:
        warm.close()


def test_remote_daemon_over_tcp(base_image, docker_tcp_relay):
    """A daemon reached at a tcp:// address (a relay to the local socket): nothing is bind-mounted."""
    relay = docker_tcp_relay
    remote = DockerTaskHandler(image=base_image, docker_host=relay.url)
    try:
        with workflow("tcp") as wf:

            @task(handler="box", inject_context=True)
            def over_tcp(ctx: TaskExecutionContext, n: int) -> int:
                ctx.get_channel().set("from_container", socket.gethostname())
                return n * 3

        context = _context(wf, n=14)
        assert _engine(box=remote).execute(context) == 42
        assert "tcp://127.0.0.1" in remote.describe_target()
        assert relay.connections > 0
    finally:
        remote.close()
