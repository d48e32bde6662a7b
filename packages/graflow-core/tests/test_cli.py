"""The ``graflow`` command line: ``run``, ``graph``, ``plugins``, plugin commands, ``python -m graflow``.

Most tests call :func:`graflow.cli.main.main` in-process (fast, and plugin objects registered by the
test are visible); a few run ``python -m graflow`` in a subprocess to check exit codes, stream
separation and that no traceback leaks out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import graflow
from graflow import plugins
from graflow.cli.main import build_parser, main
from graflow.cli.progress import ProgressReporter
from graflow.cli.run_cmd import parse_inputs, split_target

CORE_SRC = Path(__file__).resolve().parents[1] / "src"
TESTKIT_SRC = Path(__file__).resolve().parents[2] / "graflow-testkit" / "src"

GOOD = """
    import time
    from graflow import task, workflow

    with workflow("demo") as wf:

        @task
        def a(n=1):
            return n

        @task
        def b(a):
            return a * 2

        @task
        def c(a):
            return a * 3

        @task
        def d(b, c, label="sum"):
            return {label: b + c}

        a >> (b | c) >> d

    if __name__ == "__main__":
        raise SystemExit("the __main__ block must not run under graflow run")
"""

FAILING = """
    from graflow import task, workflow

    attempts = {"flaky": 0}

    with workflow("bad") as wf:

        @task(max_retries=1)
        def flaky():
            attempts["flaky"] += 1
            if attempts["flaky"] == 1:
                raise RuntimeError("first attempt fails")
            return 1

        @task
        def boom(flaky):
            raise ValueError("kaput")

        flaky >> boom
"""

SEVERAL = """
    from graflow import task, workflow

    with workflow("first") as one:

        @task
        def x():
            return "one"

    with workflow("second") as two:

        @task
        def y():
            return "two"

    also_one = one  # the same workflow under a second name is listed once

    def build():
        with workflow("built") as w:

            @task
            def z():
                return "built"

        return w
"""


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write(tmp_path, "good_flow.py", GOOD)


@pytest.fixture
def failing(tmp_path: Path) -> Path:
    return write(tmp_path, "failing_flow.py", FAILING)


@pytest.fixture
def several(tmp_path: Path) -> Path:
    return write(tmp_path, "several_flows.py", SEVERAL)


def graflow_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m graflow ARGS`` with the source trees on PYTHONPATH and stdin/stdout not a TTY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_")}
    parts = [str(CORE_SRC), str(TESTKIT_SRC)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return subprocess.run(
        [sys.executable, "-m", "graflow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def register() -> Iterator[Callable[[object], object]]:
    added: list[object] = []

    def _register(plugin: object) -> object:
        plugins.register(plugin)
        added.append(plugin)
        return plugin

    yield _register
    for plugin in reversed(added):
        if plugins.plugin_manager.is_registered(plugin):
            plugins.unregister(plugin)


def command_plugin(*classes: type) -> types.SimpleNamespace:
    return types.SimpleNamespace(graflow_register_commands=graflow.hookimpl(lambda: list(classes)))


# -- run: success ------------------------------------------------------------------------------------------


def test_run_success_subprocess(good: Path) -> None:
    proc = graflow_cli("run", str(good))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Workflow 'demo' succeeded in ")
    assert "tasks: 4 run, 4 succeeded, 0 failed, 0 retried" in proc.stdout
    assert "result: {'sum': 5}" in proc.stdout
    # not a TTY: one line per finished task (and group) on stderr, no carriage-return status line
    for tid in "abcd":
        assert f"ok     {tid} (" in proc.stderr
    assert "group  ParallelGroup_1: 2 ok, 0 failed" in proc.stderr
    assert "\r" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_in_process(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(good)]) == 0
    out = capsys.readouterr().out
    assert "Workflow 'demo' succeeded" in out
    assert "result: {'sum': 5}" in out


def test_run_inputs_are_json_decoded(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(good), "--input", "n=10", "-i", "label=total"]) == 0
    assert "result: {'total': 50}" in capsys.readouterr().out


def test_run_quiet_prints_only_the_summary(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-q", str(good)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "succeeded" in captured.out


def test_run_unregisters_its_progress_plugin(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {name for name, _ in plugins.plugin_manager.list_name_plugin()}
    assert main(["run", str(good)]) == 0
    after = {name for name, _ in plugins.plugin_manager.list_name_plugin()}
    assert after == before


def test_run_result_is_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        "long_result.py",
        """
        from graflow import task, workflow
        with workflow("long") as wf:
            @task
            def big():
                return "x" * 5000
        """,
    )
    assert main(["run", str(path)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "result:" in ln]
    assert line.endswith("...")
    assert len(line) < 300


def test_run_start_task(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(good), "--start", "b", "-i", "a=4"]) == 0
    out = capsys.readouterr().out
    assert "tasks: 1 run, 1 succeeded" in out
    assert "result: 8" in out


# -- run: failure ------------------------------------------------------------------------------------------


def test_run_failure_subprocess(failing: Path) -> None:
    proc = graflow_cli("run", str(failing))
    assert proc.returncode == 1
    assert "Workflow 'bad' FAILED" in proc.stdout
    assert "tasks: 3 run, 1 succeeded, 1 failed, 1 retried" in proc.stdout
    assert "Traceback" not in proc.stderr
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("graflow: error:")]
    assert len(error_lines) == 1
    assert "Task 'boom' failed: ValueError: kaput" in error_lines[0]
    assert "--traceback" in error_lines[0]
    assert "retry  flaky" in proc.stderr
    assert "FAILED boom" in proc.stderr


def test_run_failure_with_traceback(failing: Path) -> None:
    proc = graflow_cli("run", str(failing), "--traceback")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: kaput" in proc.stderr


def test_run_failure_in_process(failing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(failing)]) == 1
    assert "graflow: error: TaskError: Task 'boom' failed: ValueError: kaput" in capsys.readouterr().err


def test_run_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.py")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_run_file_that_fails_to_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "broken_flow.py", "import no_such_module_for_graflow_tests\n")
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Loading" in err and "ModuleNotFoundError" in err
    assert "Traceback" not in err


def test_run_file_without_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "empty_flow.py", "x = 1\n")
    assert main(["run", str(path)]) == 1
    assert "No workflow found" in capsys.readouterr().err


def test_run_bad_input(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(good), "--input", "novalue"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err


# -- picking a workflow ------------------------------------------------------------------------------------


def test_several_workflows_need_a_name(several: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(several)]) == 1
    err = capsys.readouterr().err
    assert "several workflows" in err
    assert "one (workflow 'first')" in err and "two (workflow 'second')" in err
    assert "also_one" not in err


@pytest.mark.parametrize(("name", "expected"), [("one", "'one'"), ("two", "'two'"), ("build", "'built'")])
def test_pick_workflow_by_variable_or_factory(
    several: Path, capsys: pytest.CaptureFixture[str], name: str, expected: str
) -> None:
    assert main(["run", f"{several}:{name}"]) == 0
    assert f"result: {expected}" in capsys.readouterr().out


def test_pick_workflow_by_its_own_name(several: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", f"{several}:second"]) == 0
    assert "result: 'two'" in capsys.readouterr().out


def test_unknown_workflow_name(several: Path) -> None:
    proc = graflow_cli("run", f"{several}:nope")
    assert proc.returncode == 1
    assert "No workflow named 'nope'" in proc.stderr
    assert "Available: one (workflow 'first'), two (workflow 'second')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_split_target() -> None:
    assert split_target("flows.py") == ("flows.py", None)
    assert split_target("flows.py:etl") == ("flows.py", "etl")
    assert split_target("dir/flows.py:etl") == ("dir/flows.py", "etl")


def test_parse_inputs() -> None:
    assert parse_inputs(["n=3", "xs=[1, 2]", "name=bob", "flag=true", "empty=", "eq=a=b"]) == {
        "n": 3,
        "xs": [1, 2],
        "name": "bob",
        "flag": True,
        "empty": "",
        "eq": "a=b",
    }


# -- graph -------------------------------------------------------------------------------------------------


def test_graph_ascii(good: Path) -> None:
    proc = graflow_cli("graph", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "graph demo"
    assert "[2] ParallelGroup_1 [b | c]" in proc.stdout
    assert "a --> ParallelGroup_1" in proc.stdout


def test_graph_mermaid(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", f"{good}:wf", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD\n")
    assert '    subgraph ParallelGroup_1["ParallelGroup_1"]' in out
    assert "    a --> ParallelGroup_1" in out
    assert "    ParallelGroup_1 --> d" in out


def test_graph_does_not_run_the_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = write(
        tmp_path,
        "side_effect.py",
        f"""
        from pathlib import Path
        from graflow import task, workflow
        with workflow("w") as wf:
            @task
            def touch():
                Path({str(marker)!r}).write_text("ran")
        """,
    )
    assert main(["graph", str(path), "-f", "ascii"]) == 0
    assert not marker.exists()


def test_graph_bad_format(good: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["graph", str(good), "--format", "svg"])
    assert info.value.code == 2


# -- plugins -----------------------------------------------------------------------------------------------


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list)
    core = next(p for p in listed if p["name"] == "core")
    assert core == {
        "name": "core",
        "distribution": "graflow-core",
        "version": graflow.__version__,
        "hooks": core["hooks"],
        "registers": core["registers"],
        "error": None,
    }
    assert "direct" in core["registers"]["task_handler"]
    assert "graflow_register_task_handlers" in core["hooks"]


def test_plugins_json_subprocess() -> None:
    proc = graflow_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    assert any(p["name"] == "core" for p in json.loads(proc.stdout))


def test_plugins_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    (row,) = [line for line in out.splitlines() if line.startswith("core ")]
    assert row.split() == ["core", "graflow-core", graflow.__version__, "ok"]
    assert "task_handler: direct" in out
    assert "hooks:" in out and "task_handlers" in out


# -- plugin commands -----------------------------------------------------------------------------------------


class HelloCommand:
    name = "hello-test"
    help = "say hello (test plugin command)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--who", default="world")

    def run(self, args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 3


class BrokenArgumentsCommand:
    name = "broken-test"
    help = "cannot set up its arguments"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--x")
        raise RuntimeError("argument setup exploded")

    def run(self, args: argparse.Namespace) -> int:
        return 0


class ClashingCommand:
    name = "run"
    help = "tries to replace the built-in run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        return 99


def test_plugin_command_is_added(register: Callable[[object], object], capsys: pytest.CaptureFixture[str]) -> None:
    register(command_plugin(HelloCommand))
    assert main(["hello-test", "--who", "graflow"]) == 3
    assert capsys.readouterr().out == "hello graflow\n"


def test_plugin_command_in_help(register: Callable[[object], object]) -> None:
    register(command_plugin(HelloCommand))
    assert "hello-test" in build_parser().format_help()


def test_broken_plugin_command_is_skipped(
    register: Callable[[object], object], good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(command_plugin(BrokenArgumentsCommand, HelloCommand, ClashingCommand))
    assert main(["hello-test"]) == 3
    err = capsys.readouterr().err
    assert "skipping plugin command 'broken-test'" in err and "argument setup exploded" in err
    assert "skipping plugin command 'run'" in err
    # the built-in run is untouched
    assert main(["run", "-q", str(good)]) == 0
    with pytest.raises(SystemExit):
        main(["broken-test"])


def test_command_class_that_cannot_be_built_is_skipped(
    register: Callable[[object], object], capsys: pytest.CaptureFixture[str]
) -> None:
    class NeedsArgs:
        name = "needs-args-test"
        help = "its constructor wants arguments"

        def __init__(self, required: str) -> None:
            self.required = required

    register(command_plugin(NeedsArgs))
    assert main(["plugins", "--json"]) == 0
    assert "skipping plugin command 'needs-args-test'" in capsys.readouterr().err


# -- entry points of the CLI ---------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"graflow {graflow.__version__}"


def test_python_dash_m_graflow() -> None:
    proc = graflow_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"graflow {graflow.__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: graflow" in err
    for command in ("run", "graph", "plugins"):
        assert command in err


# -- progress reporter -------------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_live_line_and_history() -> None:
    stream = FakeTTY()
    reporter = ProgressReporter(stream, live=True)
    emit = reporter.graflow_on_event
    emit("workflow.started", {"session_id": "s1"})
    emit("task.started", {"session_id": "s1", "task_id": "a"})
    emit("task.succeeded", {"session_id": "s1", "task_id": "a", "duration": 0.002})
    emit("task.started", {"session_id": "s1", "task_id": "b"})
    emit("task.retrying", {"session_id": "s1", "task_id": "b", "error": "RuntimeError('x')", "delay": 0.5})
    emit("task.started", {"session_id": "s1", "task_id": "b"})
    emit("task.failed", {"session_id": "s1", "task_id": "b", "error": "ValueError('bad')"})
    emit("task.started", {"session_id": "other", "task_id": "nested"})  # another run's event is ignored
    reporter.close()
    text = stream.getvalue()
    assert "\r\x1b[K" in text
    assert "running: a" in text
    assert "ok     a" not in text  # on a terminal successes only update the status line...
    assert "done 1, failed 0" in text
    assert "retry  b in 0.50s: RuntimeError('x')\n" in text  # ...problems stay on screen above it
    assert "FAILED b: ValueError('bad')\n" in text
    assert "nested" not in text
    assert text.endswith("\r\x1b[K") or text.endswith("\n")
    stats = reporter.stats
    assert (stats.started, stats.succeeded, stats.failed, stats.retried) == (3, 1, 1, 1)
    assert stats.failures == [("b", "ValueError('bad')")]


def test_progress_plain_lines() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(stream, live=False)
    reporter.graflow_on_event("workflow.started", {"session_id": "s"})
    reporter.graflow_on_event("task.started", {"session_id": "s", "task_id": "a"})
    reporter.graflow_on_event("task.succeeded", {"session_id": "s", "task_id": "a", "duration": 1.5})
    reporter.graflow_on_event(
        "group.finished", {"session_id": "s", "group_id": "g", "succeeded": ["x"], "failed": ["y"], "duration": 0.1}
    )
    assert stream.getvalue() == "ok     a (1.50s)\ngroup  g: 1 ok, 1 failed (100ms)\n"
