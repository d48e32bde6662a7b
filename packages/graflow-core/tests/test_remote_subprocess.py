"""The remote-runner protocol, end to end, through core's ``subprocess`` handler (a real child process)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.handlers.subprocess import SubprocessTaskHandler
from graflow.core.task import chain, parallel
from graflow.core.workflow import workflow
from graflow.exceptions import ConfigError, TaskError, TaskTimeoutError
from graflow.pickling import is_user_module
from graflow.remote import (
    RemoteRunnerError,
    RemoteTaskError,
    RemoteTraceback,
    RemoteVersionMismatchError,
    runner_bundle,
)
from graflow.remote.handler import version_mismatch
from graflow_testkit.handlers import TaskHandlerConformance

CORE_SRC = Path(__file__).resolve().parents[1] / "src"


class TestSubprocessHandlerConformance(TaskHandlerConformance):
    stops_timed_out_tasks = True

    @pytest.fixture
    def handler(self):
        h = SubprocessTaskHandler()
        yield h
        h.close()


class TestWarmSubprocessHandlerConformance(TaskHandlerConformance):
    stops_timed_out_tasks = True

    @pytest.fixture
    def handler(self):
        h = SubprocessTaskHandler(reuse=True, pool_size=2)
        yield h
        h.close()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class LocalOnlyError(Exception):
    def __init__(self, lock):
        super().__init__("carries a lock")
        self.lock = lock

    def __reduce__(self):
        raise TypeError("not picklable")


def _run(handler, wf, **inputs):
    context = ExecutionContext.create(wf.graph, None, max_steps=1000)
    for key, value in inputs.items():
        context.channel.set(key, value)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)
    return engine.execute(context), context


def _find(error: BaseException | None, kind: type) -> BaseException:
    """``error`` or the first of its causes that is a ``kind`` (the engine wraps task failures)."""
    seen = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__
    raise AssertionError(f"no {kind.__name__} in the cause chain of {error!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that was not reaped yet counts as gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def handler():
    h = SubprocessTaskHandler()
    yield h
    h.close()


def test_task_runs_in_another_process(handler):
    @task(handler="sub")
    def where() -> int:
        return os.getpid()

    with workflow("pid") as wf:
        chain(where)
    result, _ = _run(handler, wf)
    assert result != os.getpid()


def test_remote_traceback_is_the_cause_and_names_the_remote_frame(handler):
    @task(handler="sub")
    def divide() -> float:
        return 1 / 0

    with workflow("trace") as wf:
        chain(divide)
    with pytest.raises(TaskError) as info:
        _run(handler, wf)
    error = info.value.__cause__
    assert isinstance(error, ZeroDivisionError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "in divide" in str(error.__cause__) and "1 / 0" in str(error.__cause__)


def test_an_exception_that_cannot_be_pickled_comes_back_as_text(handler):
    @task(handler="sub")
    def raise_odd() -> None:
        import threading

        raise LocalOnlyError(threading.Lock())

    with workflow("odd-error") as wf:
        chain(raise_odd)
    with pytest.raises(TaskError) as info:
        _run(handler, wf)
    error = _find(info.value, RemoteTaskError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.remote_type.endswith("LocalOnlyError")
    assert "carries a lock" in str(error)


def test_unpicklable_return_value_is_a_clear_error_and_keeps_earlier_results(handler):
    @task
    def earlier() -> int:
        return 5

    @task(handler="sub")
    def bad_result(earlier: int) -> object:
        return Unpicklable()

    with workflow("bad-result") as wf:
        earlier >> bad_result
    context = ExecutionContext.create(wf.graph, None)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)
    with pytest.raises(TaskError) as info:
        engine.execute(context)
    assert "cannot be pickled" in str(info.value.__cause__)
    assert "bad_result" in str(info.value.__cause__)
    assert context.get_result("earlier") == 5


def test_unpicklable_argument_fails_before_any_process_starts(handler, monkeypatch):
    started = []
    original = handler.start_process
    monkeypatch.setattr(handler, "start_process", lambda *a: started.append(1) or original(*a))

    @task(handler="sub")
    def takes(thing: object) -> str:
        return "ran"

    with workflow("bad-arg") as wf:
        chain(takes)
    with pytest.raises(TaskError) as info:
        _run(handler, wf, thing=Unpicklable())
    assert "cannot be pickled" in str(info.value.__cause__) or "cannot be pickled" in str(info.value)
    assert started == []


def test_timeout_kills_the_runner_process(handler):
    @task(handler="sub", inject_context=True, timeout=1.0)
    def hang(ctx: TaskExecutionContext) -> None:
        ctx.get_channel().set("pid", os.getpid())
        time.sleep(300)

    with workflow("hang") as wf:
        chain(hang)
    context = ExecutionContext.create(wf.graph, None)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)
    with pytest.raises(TaskError) as info:
        engine.execute(context)
    timeout_error = info.value if isinstance(info.value, TaskTimeoutError) else info.value.__cause__
    assert isinstance(timeout_error, TaskTimeoutError)
    pid = context.channel.get("pid")
    assert pid and pid != os.getpid()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_runner_killed_mid_task_is_reported_with_the_signal(handler):
    @task(handler="sub")
    def suicide() -> None:
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    with workflow("suicide") as wf:
        chain(suicide)
    with pytest.raises(TaskError) as info:
        _run(handler, wf)
    error = info.value if isinstance(info.value, RemoteRunnerError) else info.value.__cause__
    assert isinstance(error, RemoteRunnerError)
    assert "killed by signal 9" in str(error)
    assert "about to die" in str(error)


def test_a_killed_runners_last_output_comes_with_the_error_when_forwarding_lags_behind():
    """The runner's death is seen on its stdout; its last lines come through the stderr forwarder,
    which may still be behind (a loaded machine). The error waits for them."""

    class LaggingForwarder(SubprocessTaskHandler):
        def start_process(self, bundle, on_output):
            def late(line: str) -> None:
                time.sleep(0.5)
                on_output(line)

            return super().start_process(bundle, late)

    @task(handler="sub")
    def suicide() -> None:
        print("last words", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    with workflow("lagging-output") as wf:
        chain(suicide)
    handler = LaggingForwarder()
    try:
        with pytest.raises(TaskError) as info:
            _run(handler, wf)
    finally:
        handler.close()
    error = info.value if isinstance(info.value, RemoteRunnerError) else info.value.__cause__
    assert isinstance(error, RemoteRunnerError)
    assert "killed by signal 9" in str(error) and "last words" in str(error)


def test_retry_after_a_runner_crash_succeeds(handler, tmp_path):
    marker = tmp_path / "crashed-once"

    @task(handler="sub", max_retries=2)
    def flaky() -> str:
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return "second attempt"

    with workflow("flaky") as wf:
        chain(flaky)
    result, _ = _run(handler, wf)
    assert result == "second attempt"


def test_output_streams_to_the_log_prefixed_with_the_task_id(handler, caplog):
    @task(handler="sub")
    def chatty() -> str:
        print("line one")
        print("line two", file=sys.stderr)
        return "done"

    with workflow("chatty") as wf:
        chain(chatty)
    with caplog.at_level(logging.INFO, logger="graflow.remote"):
        _run(handler, wf)
    messages = [r.getMessage() for r in caplog.records if r.name == "graflow.remote"]
    assert "[chatty] line one" in messages
    assert "[chatty] line two" in messages


def test_print_does_not_corrupt_the_protocol(handler):
    @task(handler="sub")
    def noisy() -> str:
        # binary garbage on the task's stdout must not reach the protocol stream
        sys.stdout.buffer.write(b"\x00\x00\x00\x05Dhello")
        sys.stdout.flush()
        os.write(1, b"\x00\x00\x00\x01X")
        return "intact"

    with workflow("noisy") as wf:
        chain(noisy)
    result, _ = _run(handler, wf)
    assert result == "intact"


def test_warm_runner_is_reused_and_a_dead_one_replaced():
    handler = SubprocessTaskHandler(reuse=True, pool_size=1)
    try:

        @task("pid_a", handler="sub")
        def pid_a() -> int:
            return os.getpid()

        @task("pid_b", handler="sub")
        def pid_b() -> int:
            return os.getpid()

        with workflow("warm") as wf:
            pid_a >> pid_b
        _, context = _run(handler, wf)
        first = context.get_result("pid_a")
        assert context.get_result("pid_b") == first
        assert handler.idle_runners() == 1
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        _, context = _run(handler, wf)
        assert context.get_result("pid_a") != first
        assert context.get_result("pid_a") == context.get_result("pid_b")
    finally:
        handler.close()
    assert handler.idle_runners() == 0


def test_parallel_members_run_in_separate_processes_at_once(handler):
    def sleeper(ctx: TaskExecutionContext) -> int:
        ctx.get_channel().atomic_add("running", 1)
        deadline = time.monotonic() + 20
        while ctx.get_channel().get("running") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.getpid()

    members = [task(f"m{i}", handler="sub", inject_context=True)(sleeper) for i in range(3)]
    with workflow("par") as wf:
        parallel(*members).with_execution("threading")
    _, context = _run(handler, wf)
    pids = {context.get_result(f"m{i}") for i in range(3)}
    assert len(pids) == 3
    assert context.channel.get("running") == 3


def test_version_mismatch_is_refused_before_the_task_runs(tmp_path):
    fake = json.dumps({"python": [3, 7, 17], "cloudpickle": "0.0.1"})
    handler = SubprocessTaskHandler(env={"GRAFLOW_RUNNER_HELLO_OVERRIDE": fake})
    marker = tmp_path / "ran"

    @task(handler="sub")
    def never_runs() -> None:
        marker.write_text("ran")

    with workflow("mismatch") as wf:
        chain(never_runs)
    try:
        with pytest.raises(Exception) as info:
            _run(handler, wf)
    finally:
        handler.close()
    error = _find(info.value, RemoteVersionMismatchError)
    here = ".".join(map(str, sys.version_info[:3]))
    assert "3.7.17" in str(error) and here in str(error)
    assert not marker.exists()


def test_cloudpickle_mismatch_names_both_versions():
    import cloudpickle

    hello = {"python": list(sys.version_info[:3]), "implementation": sys.implementation.name, "cloudpickle": "1.0.0"}
    problem = version_mismatch(hello)
    assert problem and "1.0.0" in problem and cloudpickle.__version__ in problem
    hello["cloudpickle"] = cloudpickle.__version__
    assert version_mismatch(hello) is None


def test_missing_interpreter_is_a_config_error():
    handler = SubprocessTaskHandler(python="/nonexistent/python3")

    @task(handler="sub")
    def nothing() -> None:
        return None

    with workflow("nopython") as wf:
        chain(nothing)
    with pytest.raises(Exception) as info:
        _run(handler, wf)
    assert "/nonexistent/python3" in str(_find(info.value, ConfigError))


def test_interpreter_that_is_not_python_is_reported_with_its_output():
    handler = SubprocessTaskHandler(python="/bin/false")

    @task(handler="sub")
    def nothing() -> None:
        return None

    with workflow("notpython") as wf:
        chain(nothing)
    with pytest.raises(TaskError) as info:
        _run(handler, wf)
    error = _find(info.value, RemoteRunnerError)
    assert "exited with code 1 before it started" in str(error)


def test_handler_by_name_with_settings():
    @task(handler="subprocess", handler_kwargs={"env": {"GRAFLOW_TEST_VALUE": "from-settings"}})
    def read_env() -> str:
        return os.environ["GRAFLOW_TEST_VALUE"]

    with workflow("by-name") as wf:
        chain(read_env)
    assert wf.execute() == "from-settings"


def test_unknown_setting_names_the_valid_ones():
    @task(handler="subprocess", handler_kwargs={"imagee": "x"})
    def nothing() -> None:
        return None

    with workflow("bad-setting") as wf:
        chain(nothing)
    with pytest.raises(ConfigError) as info:
        wf.execute()
    assert "imagee" in str(info.value) and "python" in str(info.value)


def test_bundle_is_deterministic_and_runnable(tmp_path):
    from graflow.remote.bundle import build_bundle

    bundle = build_bundle()
    assert build_bundle().digest == bundle.digest
    assert runner_bundle() is runner_bundle()
    assert bundle.filename.startswith("graflow-runner-") and bundle.digest[:16] in bundle.filename
    path = tmp_path / bundle.filename
    path.write_bytes(bundle.data)
    # a runner that gets no task says hello and exits when its stdin closes
    proc = subprocess.run([sys.executable, str(path)], input=b"", capture_output=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout[4:5] == b"H"
    hello = json.loads(proc.stdout[5:])
    assert hello["python"][:2] == list(sys.version_info[:2])


def test_user_modules_travel_by_value_and_installed_ones_by_reference():
    assert is_user_module(__name__)
    assert not is_user_module("json")
    assert not is_user_module("graflow.core.task")
    assert not is_user_module("pytest")


def test_module_missing_in_the_runner_gets_a_hint(tmp_path):
    package = tmp_path / "helperpkg_for_remote"
    package.mkdir()
    (package / "__init__.py").write_text("def double(x):\n    return 2 * x\n")
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, sys.argv[1])
            import helperpkg_for_remote
            from graflow import task, workflow
            from graflow.core.task import chain

            @task(handler="subprocess", handler_kwargs={"env": {"PYTHONPATH": ""}, "cwd": "/"})
            def use_helper():
                return helperpkg_for_remote.double(21)

            with workflow("hint") as wf:
                chain(use_helper)
                try:
                    wf.execute()
                except Exception as exc:
                    print("ERROR:", exc.__cause__)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(CORE_SRC)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert "ERROR:" in proc.stdout, proc.stderr
    # the task's own module (__main__) travels by value, but the helper package it uses travels by
    # reference and is not importable in the runner (no PYTHONPATH, cwd elsewhere): the error says what to do
    assert "pickle_by_value" in proc.stdout and "helperpkg_for_remote" in proc.stdout


def test_ctrl_c_kills_the_runner(tmp_path):
    script = tmp_path / "interrupt.py"
    pid_file = tmp_path / "runner.pid"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            from graflow import task, workflow
            from graflow.core.task import chain

            # Ctrl-C as at a terminal, even when the test run itself was started in the background
            # (a non-interactive shell starts background jobs with SIGINT ignored, and children inherit that)
            signal.signal(signal.SIGINT, signal.default_int_handler)

            @task(handler="subprocess")
            def sleepy():
                with open({str(pid_file) + ".tmp"!r}, "w") as f:
                    f.write(str(os.getpid()))
                os.replace({str(pid_file) + ".tmp"!r}, {str(pid_file)!r})  # never seen half-written
                time.sleep(300)

            with workflow("ctrl-c") as wf:
                chain(sleepy)
                try:
                    wf.execute()
                except KeyboardInterrupt:
                    print("interrupted")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(CORE_SRC)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), "the task never started"
        runner_pid = int(pid_file.read_text())
        assert _alive(runner_pid)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert "interrupted" in out
        deadline = time.monotonic() + 10
        while _alive(runner_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(runner_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shared_handlers_by_name_keep_warm_runners_until_closed():
    from graflow.core.engine import close_shared_handlers

    @task(handler="subprocess", handler_kwargs={"reuse": True, "env": {"GRAFLOW_TEST_WARM": "1"}})
    def warm_pid() -> int:
        return os.getpid()

    with workflow("warm-by-name") as wf:
        chain(warm_pid)
    first = wf.execute()
    assert wf.execute() == first  # the same warm child served the second run
    assert _alive(first)
    close_shared_handlers()
    deadline = time.monotonic() + 10
    while _alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(first)


def test_bundle_bytes_are_shared_by_every_process_of_a_machine(tmp_path):
    code = "from graflow.remote.bundle import runner_bundle; b = runner_bundle(); print(b.digest, len(b.data))"
    env = {**os.environ, "PYTHONPATH": str(CORE_SRC), "GRAFLOW_CACHE_DIR": str(tmp_path)}
    outputs = {
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1, outputs  # three processes, one archive
    assert len(list((tmp_path / "bundles").glob("*.pyz"))) == 1


def test_a_stored_runner_file_is_never_replaced(tmp_path):
    from graflow.remote.bundle import store_once

    first = store_once(tmp_path, "runner.pyz", b"first")
    inode = first.stat().st_ino
    again = store_once(tmp_path, "runner.pyz", b"second, longer")
    assert again == first and first.read_bytes() == b"first" and first.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["runner.pyz"]  # no temporary files left


def test_closing_the_handler_stops_a_busy_runner_once_its_task_ends(tmp_path):
    handler = SubprocessTaskHandler(reuse=True)
    release = tmp_path / "release"

    @task(handler="sub", inject_context=True)
    def busy(ctx: TaskExecutionContext) -> int:
        ctx.get_channel().set("pid", os.getpid())
        while not release.exists():
            time.sleep(0.01)
        return os.getpid()

    with workflow("close-busy") as wf:
        chain(busy)
    context = ExecutionContext.create(wf.graph, None)
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)
    import threading

    runner = threading.Thread(target=engine.execute, args=(context,))
    runner.start()
    deadline = time.monotonic() + 30
    while context.channel.get("pid") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    handler.close()  # while the task runs
    release.write_text("go")
    runner.join(30)
    pid = context.get_result("busy")
    assert pid == context.channel.get("pid")
    assert handler.idle_runners() == 0
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_bytes_before_the_greeting_are_reported_at_once(tmp_path):
    chatty_python = tmp_path / "python-with-banner"
    chatty_python.write_text(f"#!/bin/sh\necho 'Welcome to the box'\nexec {sys.executable} \"$@\"\n")
    chatty_python.chmod(0o755)
    handler = SubprocessTaskHandler(python=str(chatty_python))

    @task(handler="sub")
    def nothing() -> None:
        return None

    with workflow("banner") as wf:
        chain(nothing)
    started = time.monotonic()
    with pytest.raises(TaskError) as info:
        _run(handler, wf)
    error = _find(info.value, RemoteRunnerError)
    assert "Welc" in str(error) and "before the runner's greeting" in str(error)
    assert time.monotonic() - started < handler.startup_timeout  # not a wait for a 1.4 GB "frame"


def test_a_thread_left_by_an_earlier_task_cannot_touch_the_next_one(tmp_path):
    handler = SubprocessTaskHandler(reuse=True, pool_size=1)
    report = tmp_path / "late-call"

    @task("leaves_a_thread", handler="sub", inject_context=True)
    def leaves_a_thread(ctx: TaskExecutionContext) -> int:
        import threading

        channel = ctx.get_channel()

        def late() -> None:
            time.sleep(0.5)
            try:
                channel.set("late", "written by a finished task")
                report.write_text("no error")
            except Exception as exc:  # noqa: BLE001 - the test reads what happened
                report.write_text(f"{type(exc).__name__}: {exc}")

        threading.Thread(target=late, daemon=True).start()
        return os.getpid()

    @task("next_task_on_the_runner", handler="sub")
    def next_task_on_the_runner() -> int:
        deadline = time.monotonic() + 20
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()

    with workflow("leftover") as wf:
        leaves_a_thread >> next_task_on_the_runner
    try:
        _, context = _run(handler, wf)
    finally:
        handler.close()
    assert context.get_result("leaves_a_thread") == context.get_result("next_task_on_the_runner")
    assert context.channel.get("late") is None
    assert "RuntimeError" in report.read_text() and "earlier task" in report.read_text()
