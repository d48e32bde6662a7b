"""Unhappy paths against a real Docker engine: every one ends with a clear error and no container left.

Daemon-unreachable tests need no Docker at all (they point at a closed port) and carry no marker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.task import chain
from graflow.core.workflow import workflow
from graflow.exceptions import ConfigError, TaskError, TaskTimeoutError
from graflow.remote.handler import RemoteRunnerError, RemoteVersionMismatchError
from graflow_docker import (
    DockerContainerError,
    DockerDaemonUnreachableError,
    DockerImageNotFoundError,
    DockerTaskHandler,
)
from graflow_docker.container import wait_for_cleanup
from graflow_testkit.services.docker import require_base_image

PACKAGES = Path(__file__).resolve().parents[2]
NEWER_PYTHON_IMAGE = "graflow-test/python:trixie"  # Debian trixie: a real Python 3.13
OLDER_PYTHON_IMAGE = "graflow-test/python:3.11"  # Debian bookworm: a real Python 3.11


def _run(handler: DockerTaskHandler, wf: Any, **inputs: Any) -> tuple[Any, ExecutionContext]:
    context = ExecutionContext.create(wf.graph, None, max_steps=100)
    for key, value in inputs.items():
        context.channel.set(key, value)
    engine = WorkflowEngine()
    engine.register_handler("box", handler)
    return engine.execute(context), context


def _failure(handler: DockerTaskHandler, wf: Any, **inputs: Any) -> tuple[BaseException, ExecutionContext]:
    context = ExecutionContext.create(wf.graph, None, max_steps=100)
    for key, value in inputs.items():
        context.channel.set(key, value)
    engine = WorkflowEngine()
    engine.register_handler("box", handler)
    with pytest.raises(Exception) as info:
        engine.execute(context)
    return info.value, context


def _never() -> None:
    return None


def _failure_of(
    handler: DockerTaskHandler, workflow_name: str, func: Any = _never, task_id: str = "never"
) -> tuple[BaseException, ExecutionContext]:
    """Run a one-task workflow on ``handler`` that must fail; the handler is closed afterwards."""
    with workflow(workflow_name) as wf:
        task(task_id, handler="box")(func)
    try:
        return _failure(handler, wf)
    finally:
        handler.close()


def _find(error: BaseException | None, kind: type) -> Any:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__
    raise AssertionError(f"no {kind.__name__} in the cause chain")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def _labelled(docker_client: Any, token: str) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": f"graflow.test={token}"}, ignore_removed=True)


# -- no daemon needed -------------------------------------------------------------------------------


def test_unreachable_daemon_names_the_address_and_how_to_start_it():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    handler = DockerTaskHandler(image="graflow-test/python:3.11", docker_host=address)
    error, context = _failure_of(handler, "nodaemon")
    unreachable = _find(error, DockerDaemonUnreachableError)
    assert isinstance(unreachable, ConfigError)
    text = str(unreachable)
    assert address in text and "refused" in text
    assert "DOCKER_HOST" in text and "start" in text.lower()
    assert "never" not in context.completed_tasks


def test_unreachable_daemon_from_the_environment(monkeypatch):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DOCKER_HOST", address)
    handler = DockerTaskHandler(image="graflow-test/python:3.11")
    with pytest.raises(DockerDaemonUnreachableError) as info:
        handler.client()
    assert address in str(info.value)
    assert info.value.address == address


def test_missing_socket_says_no_daemon_runs_there(tmp_path):
    address = f"unix://{tmp_path}/docker.sock"
    with pytest.raises(DockerDaemonUnreachableError) as info:
        DockerTaskHandler(image="x", docker_host=address).client()
    assert address in str(info.value)
    assert "does not exist" in str(info.value)


# -- with a daemon ------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
class TestWithDaemon:
    def test_missing_image_says_pull_or_build(self, docker_info):
        image = f"graflow-test/no-such-image:{uuid.uuid4().hex[:8]}"
        error, _ = _failure_of(DockerTaskHandler(image=image), "noimage")
        missing = _find(error, DockerImageNotFoundError)
        assert f"docker pull {image}" in str(missing) and "docker build" in str(missing)

    def test_image_without_the_interpreter(self, base_image):
        error, _ = _failure_of(DockerTaskHandler(image=base_image, python="python9"), "nopython")
        refused = _find(error, DockerContainerError)
        assert "python9" in str(refused) and "'python'" in str(refused)

    def test_unknown_network_is_refused_with_a_hint(self, base_image):
        network = f"graflow-no-such-net-{uuid.uuid4().hex[:6]}"
        error, _ = _failure_of(DockerTaskHandler(image=base_image, network=network), "nonet")
        refused = _find(error, DockerContainerError)
        assert network in str(refused) and "docker network create" in str(refused)

    def test_timeout_kills_the_container(self, base_image, docker_client):
        token = uuid.uuid4().hex
        # auto_remove=False keeps the stopped container so its end can be inspected
        handler = DockerTaskHandler(image=base_image, auto_remove=False, labels={"graflow.test": token})
        with workflow("hang") as wf:

            @task(handler="box", inject_context=True, timeout=1.0)
            def hang(ctx: TaskExecutionContext) -> None:
                ctx.get_channel().set("container", socket.gethostname())
                time.sleep(300)

        try:
            error, context = _failure(handler, wf)
            handler.close()
            assert isinstance(_find(error, TaskTimeoutError), TaskTimeoutError)
            (container,) = _labelled(docker_client, token)
            assert container.id.startswith(context.channel.get("container"))
            container.reload()
            assert container.status == "exited"
            assert container.attrs["State"]["ExitCode"] == 137  # SIGKILL
            assert container.attrs["State"]["OOMKilled"] is False
        finally:
            handler.close()
            for leftover in _labelled(docker_client, token):
                leftover.remove(force=True)

    def test_oom_kill_is_explained(self, base_image):
        def hog() -> int:
            block = b"\x01" * (200 * 1024 * 1024)  # written, so it is really resident
            return len(block)

        error, _ = _failure_of(DockerTaskHandler(image=base_image, mem_limit="16m"), "oom", hog, "hog")
        died = _find(error, RemoteRunnerError)
        text = str(died)
        assert "mem_limit=16m" in text and "OOM-killed" in text and "137" in text

    def test_non_zero_exit_is_reported_with_its_code_and_output(self, base_image):
        def quit_hard() -> None:
            print("about to leave", file=sys.stderr, flush=True)
            os._exit(7)

        error, _ = _failure_of(DockerTaskHandler(image=base_image), "exit", quit_hard, "quit_hard")
        died = _find(error, RemoteRunnerError)
        assert "exited with code 7" in str(died) and "about to leave" in str(died)

    def test_container_killed_from_outside_mid_task(self, base_image, docker_client):
        handler = DockerTaskHandler(image=base_image)
        with workflow("killed") as wf:

            @task(handler="box", inject_context=True)
            def victim(ctx: TaskExecutionContext) -> None:
                ctx.get_channel().set("container", socket.gethostname())
                time.sleep(300)

        context = ExecutionContext.create(wf.graph, None)
        engine = WorkflowEngine()
        engine.register_handler("box", handler)

        def assassin() -> None:
            deadline = time.monotonic() + 60
            while context.channel.get("container") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            docker_client.containers.get(context.channel.get("container")).kill()

        thread = threading.Thread(target=assassin, daemon=True)
        thread.start()
        try:
            with pytest.raises(Exception) as info:
                engine.execute(context)
        finally:
            thread.join(10)
            handler.close()
        died = _find(info.value, RemoteRunnerError)
        assert "SIGKILL" in str(died) and "137" in str(died)

    def test_unpicklable_result_is_a_clear_error_and_the_warm_container_survives(self, base_image):
        handler = DockerTaskHandler(image=base_image, reuse=True, pool_size=1)
        with workflow("unpicklable") as wf:

            @task(handler="box")
            def bad() -> Any:
                return threading.Lock()

        with workflow("after") as wf2:

            @task(handler="box")
            def good() -> str:
                return "still fine"

        try:
            error, _ = _failure(handler, wf)
            assert "pickle" in str(error).lower()
            assert _run(handler, wf2)[0] == "still fine"
        finally:
            handler.close()

    def test_version_mismatch_is_refused_before_the_task_runs(self, docker_info):
        """An image whose python3 really is another version (Debian trixie's 3.13, or bookworm's 3.11)."""
        here = sys.version_info[:2]
        if here != (3, 13):
            image = require_base_image(NEWER_PYTHON_IMAGE, suite="trixie")
        else:
            image = require_base_image(OLDER_PYTHON_IMAGE, suite="bookworm")
        there = subprocess.run(
            ["docker", "run", "--rm", image, "python3", "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert tuple(map(int, there.split(".")[:2])) != here
        handler = DockerTaskHandler(image=image)
        with workflow("mismatch") as wf:

            @task(handler="box", inject_context=True)
            def never_runs(ctx: TaskExecutionContext) -> None:
                ctx.get_channel().set("ran", True)

        try:
            error, context = _failure(handler, wf)
        finally:
            handler.close()
        mismatch = _find(error, RemoteVersionMismatchError)
        assert isinstance(mismatch, ConfigError)
        text = str(mismatch)
        assert there in text and ".".join(map(str, sys.version_info[:3])) in text
        assert image in text
        assert context.channel.get("ran") is None

    def test_auto_remove_false_keeps_the_stopped_container(self, base_image, docker_client):
        token = uuid.uuid4().hex
        handler = DockerTaskHandler(image=base_image, auto_remove=False, labels={"graflow.test": token})
        with workflow("keep") as wf:

            @task(handler="box")
            def quick() -> str:
                return socket.gethostname()

        try:
            host, _ = _run(handler, wf)
            handler.close()
            (container,) = _labelled(docker_client, token)
            assert container.id.startswith(host)
            assert container.status == "exited"
            assert container.labels["graflow.auto-remove"] == "false"
        finally:
            for leftover in _labelled(docker_client, token):
                leftover.remove(force=True)

    def test_failures_leave_no_container(self, base_image, docker_client):
        """Raise, timeout, crash and OOM in a row on one handler: afterwards nothing of it remains."""
        handler = DockerTaskHandler(image=base_image, mem_limit="32m")

        def raises() -> None:
            raise ValueError("no")

        def hangs() -> None:
            time.sleep(300)

        def crashes() -> None:
            os._exit(1)

        def hogs() -> int:
            return len(b"\x02" * (256 * 1024 * 1024))

        try:
            for index, (func, timeout) in enumerate([(raises, None), (hangs, 1.0), (crashes, None), (hogs, None)]):
                with workflow(f"fail-{index}") as wf:
                    chain(task(f"f{index}", handler="box", timeout=timeout)(func))
                with pytest.raises(TaskError):
                    _run(handler, wf)
        finally:
            handler.close()
        assert handler.containers(all=True) == []

    def test_ctrl_c_stops_the_container(self, base_image, docker_client, tmp_path):
        token = uuid.uuid4().hex
        script = tmp_path / "interrupt.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import signal, time
                from graflow import task, workflow
                from graflow.core.task import chain

                # Ctrl-C as at a terminal, even when the test run itself was started in the background
                # (a non-interactive shell starts background jobs with SIGINT ignored, and children inherit that)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                settings = {{"image": {base_image!r}, "labels": {{"graflow.test": {token!r}}}}}

                @task(handler="docker", handler_kwargs=settings)
                def sleepy():
                    time.sleep(300)

                with workflow("ctrl-c") as wf:
                    chain(sleepy)
                    try:
                        wf.execute()
                    except KeyboardInterrupt:
                        print("interrupted", flush=True)
                """
            )
        )
        paths = [PACKAGES / name / "src" for name in ("graflow-core", "graflow-docker")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            running: list[Any] = []
            while time.monotonic() < deadline and proc.poll() is None:
                running = [c for c in _labelled(docker_client, token) if c.status == "running"]
                if running:
                    break
                time.sleep(0.1)
            assert running, "the task's container never started"
            time.sleep(0.5)  # let the task reach its sleep
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            out, _ = proc.communicate(timeout=60)
            assert "interrupted" in out
            assert _labelled(docker_client, token) == []  # killed and removed before the process ended
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for leftover in _labelled(docker_client, token):
                leftover.remove(force=True)

    def test_containers_of_a_killed_host_process_are_swept_by_the_next_handler(
        self, base_image, docker_client, tmp_path
    ):
        token = uuid.uuid4().hex
        script = tmp_path / "doomed.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import time
                from graflow import task, workflow
                from graflow.core.task import chain

                settings = {{"image": {base_image!r}, "labels": {{"graflow.test": {token!r}}}}}

                @task(handler="docker", handler_kwargs=settings)
                def long_job():
                    time.sleep(300)

                with workflow("doomed") as wf:
                    chain(long_job)
                    wf.execute()
                """
            )
        )
        paths = [PACKAGES / name / "src" for name in ("graflow-core", "graflow-docker")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
        proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            running: list[Any] = []
            while time.monotonic() < deadline and proc.poll() is None:
                running = [c for c in _labelled(docker_client, token) if c.status == "running"]
                if running:
                    break
                time.sleep(0.1)
            assert running, "the task's container never started"
            proc.kill()  # SIGKILL: no atexit, no cleanup
            proc.wait(30)
            assert [c.id for c in _labelled(docker_client, token)] == [running[0].id]  # left behind
            successor = DockerTaskHandler(image=base_image)
            successor.client()  # connecting sweeps this host's orphans
            successor.close()
            assert _labelled(docker_client, token) == []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for leftover in _labelled(docker_client, token):
                leftover.remove(force=True)


def test_cleanup_wait_returns_when_nothing_is_pending():
    assert wait_for_cleanup(0.1) is True
