"""The plugin system (SPEC §2): built-ins, in-process plugins, lookups, errors, entry points, env switches.

In-process plugins are registered with :func:`graflow.plugins.register` through the ``register``
fixture, which unregisters them afterwards. Every handler / policy / coordinator name used here is
unique to its test so that no test depends on another's leftovers. Behaviour that depends on entry
points (disabled plugins, broken distributions, tracing, lazy loading) runs in a subprocess whose
``sys.path`` holds a temporary ``*.dist-info`` folder, so the test process's registry stays clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
import pytest

import graflow
from graflow import plugins, task, workflow
from graflow.coordination.coordinator import Coordinator
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.handler import TaskHandler, TaskResult
from graflow.core.handlers.group_policy import GroupExecutionPolicy
from graflow.exceptions import ConfigError, ParallelGroupError, PluginNotFoundError

CORE_SRC = Path(__file__).resolve().parents[1] / "src"
TESTKIT_SRC = Path(__file__).resolve().parents[2] / "graflow-testkit" / "src"


# -- helpers ----------------------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def make_plugin(**hooks: Callable[..., Any]) -> types.SimpleNamespace:
    """A module-like plugin object whose attributes are ``@hookimpl`` functions."""
    return types.SimpleNamespace(**{name: graflow.hookimpl(fn) for name, fn in hooks.items()})


def handler_plugin(*classes: type) -> types.SimpleNamespace:
    return make_plugin(graflow_register_task_handlers=lambda: list(classes))


def recording_handler(name: str, calls: list[tuple[str, str, str]]) -> type[TaskHandler]:
    """A handler class that records (task id, thread name, tag) and runs the task in-process."""

    class RecordingHandler(TaskHandler):
        def __init__(self, tag: str = "default") -> None:
            self.tag = tag

        def execute_task(self, task_: Any, context: ExecutionContext) -> Any:
            calls.append((task_.task_id, threading.current_thread().name, self.tag))
            return task_.run_in(context)

    RecordingHandler.name = name
    RecordingHandler.__qualname__ = f"RecordingHandler[{name}]"
    return RecordingHandler


@pytest.fixture
def register() -> Iterator[Callable[..., Any]]:
    """Register plugin objects for one test; whatever was registered is unregistered afterwards."""
    added: list[object] = []

    def _register(plugin: object) -> object:
        plugins.register(plugin)
        added.append(plugin)
        return plugin

    yield _register
    for plugin in reversed(added):
        if plugins.plugin_manager.is_registered(plugin):
            plugins.unregister(plugin)


BACKENDS = {"graflow-redis", "graflow-docker", "graflow-ssh", "graflow-s3-checkpoint"}


@pytest.fixture
def without_backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry as a user with only graflow-core installed sees it (CI installs every backend):
    the backends' entry points are hidden from the scan."""
    scan = plugins._entry_points

    def core_only() -> list[Any]:
        return [ep for ep in scan() if getattr(getattr(ep, "dist", None), "name", None) not in BACKENDS]

    monkeypatch.setattr(plugins, "_entry_points", core_only)
    plugins.reset()
    yield
    monkeypatch.setattr(plugins, "_entry_points", scan)
    plugins.reset()


def run_python(code: str, *, env: dict[str, str] | None = None, path: list[Path] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the source trees (and ``path``) on PYTHONPATH."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_")}
    parts = [*map(str, path), str(CORE_SRC), str(TESTKIT_SRC)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    full_env["PYTHONPATH"] = os.pathsep.join(parts)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def fake_distribution(root: Path, dist: str, version: str, entry_points_txt: str, modules: dict[str, str] = {}) -> Path:  # noqa: B006
    """A minimal installed distribution (``<dist>-<version>.dist-info``) importlib.metadata will find."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points_txt)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


FAKE_PLUGIN_MODULE = """
    from graflow.core.handler import TaskHandler
    from graflow.hookspecs import hookimpl

    class FakeHandler(TaskHandler):
        name = "fakeh"

        def execute_task(self, task, context):
            return ("fake", task.run_in(context))

    @hookimpl
    def graflow_register_task_handlers():
        return [FakeHandler]
"""


@pytest.fixture
def fake_plugin_path(tmp_path: Path) -> Path:
    """A working third-party plugin: distribution ``fake-graflow-plugin``, entry point ``fake``."""
    return fake_distribution(
        tmp_path,
        "fake-graflow-plugin",
        "2.0",
        "[graflow]\nfake = fake_graflow_plugin\n",
        {"fake_graflow_plugin": FAKE_PLUGIN_MODULE},
    )


@pytest.fixture
def broken_plugin_path(tmp_path: Path) -> Path:
    """A distribution whose entry point cannot be imported."""
    return fake_distribution(tmp_path, "broken-plugin", "1.0", "[graflow]\nbroken = no_such_module_xyz\n")


# -- built-ins ----------------------------------------------------------------------------------------------


def test_builtins_are_registered_through_the_hooks() -> None:
    assert "direct" in plugins.names("task_handler")
    assert "memory" in plugins.names("channel")
    assert {"threading", "direct"} <= set(plugins.names("coordinator"))
    assert {"strict", "best_effort", "at_least_n", "critical_tasks", "critical"} <= set(plugins.names("group_policy"))
    assert plugins.lookup("group_policy", "critical") is plugins.lookup("group_policy", "critical_tasks")
    core = [info for info in plugins.describe() if info.name == "core"]
    assert len(core) == 1
    assert core[0].distribution == "graflow-core"
    assert core[0].version == graflow.__version__
    assert core[0].error is None
    assert "graflow_register_task_handlers" in core[0].hooks
    assert "direct" in core[0].registers["task_handler"]


def test_plugin_manager_is_the_pluggy_manager() -> None:
    assert isinstance(plugins.plugin_manager, pluggy.PluginManager)
    assert plugins.plugin_manager.project_name == "graflow"
    assert plugins.ENTRY_POINT_GROUP == "graflow"


def test_plugin_info_as_dict() -> None:
    info = plugins.describe()[0].as_dict()
    assert set(info) == {"name", "distribution", "version", "hooks", "registers", "error"}
    json.dumps(info)  # what `graflow plugins --json` prints must be JSON


# -- a registered handler is visible everywhere (upstream defect: only on its own engine) -------------------


def test_registered_handler_used_by_workflow_execute(register: Callable[..., Any]) -> None:
    name, calls = unique("rec"), []
    register(handler_plugin(recording_handler(name, calls)))
    with workflow("w") as wf:

        @task(handler=name, handler_kwargs={"tag": "from-kwargs"})
        def double(x: int) -> int:
            return 2 * x

    assert wf.execute(x=21) == 42
    assert calls == [("double", threading.current_thread().name, "from-kwargs")]


def test_registered_handler_used_by_bare_engine(register: Callable[..., Any]) -> None:
    name, calls = unique("rec"), []
    register(handler_plugin(recording_handler(name, calls)))
    with workflow("w") as wf:

        @task(handler=name)
        def first() -> int:
            return 1

        @task
        def second(first: int) -> int:
            return first + 1

        first >> second

    context = ExecutionContext.create(wf.graph, "first")
    assert WorkflowEngine().execute(context) == 2
    assert [c[0] for c in calls] == ["first"]


def test_registered_handler_used_inside_threading_group(register: Callable[..., Any]) -> None:
    name, calls = unique("rec"), []
    register(handler_plugin(recording_handler(name, calls)))
    # Both members wait for each other: the group only finishes if they really run side by side.
    barrier = threading.Barrier(2, timeout=10)
    with workflow("w") as wf:

        @task(handler=name)
        def left() -> str:
            barrier.wait()
            return "L"

        @task(handler=name)
        def right() -> str:
            barrier.wait()
            return "R"

        @task
        def join(left: str, right: str) -> str:
            return left + right

        (left | right).with_execution(backend="threading") >> join

    assert wf.execute() == "LR"
    assert sorted(c[0] for c in calls) == ["left", "right"]
    assert len({thread for _, thread, _ in calls}) == 2


def test_engine_register_handler_wins_over_plugins(register: Callable[..., Any]) -> None:
    name, plugin_calls, engine_calls = unique("rec"), [], []
    register(handler_plugin(recording_handler(name, plugin_calls)))
    with workflow("w") as wf:

        @task(handler=name)
        def only() -> str:
            return "ok"

    engine = WorkflowEngine()
    engine.register_handler(name, recording_handler(name, engine_calls)(tag="engine"))
    assert engine.execute(ExecutionContext.create(wf.graph)) == "ok"
    assert engine_calls == [("only", threading.current_thread().name, "engine")]
    assert plugin_calls == []


def test_registered_names_appear_in_describe(register: Callable[..., Any]) -> None:
    name = unique("rec")
    plugin = register(handler_plugin(recording_handler(name, [])))
    assert name in plugins.names("task_handler")
    infos = [i for i in plugins.describe() if i.name == plugins.plugin_manager.get_name(plugin)]
    assert len(infos) == 1
    assert infos[0].hooks == ["graflow_register_task_handlers"]
    assert name in infos[0].registers["task_handler"]


def test_unregister_removes_the_names() -> None:
    name = unique("rec")
    plugin = handler_plugin(recording_handler(name, []))
    plugins.register(plugin)
    assert name in plugins.names("task_handler")
    plugins.unregister(plugin)
    assert name not in plugins.names("task_handler")
    with pytest.raises(PluginNotFoundError):
        plugins.lookup("task_handler", name)


def test_unregistered_handler_is_not_used_any_more() -> None:
    name, calls = unique("rec"), []
    plugin = handler_plugin(recording_handler(name, calls))
    with workflow("w") as wf:

        @task(handler=name)
        def only() -> str:
            return "ok"

    plugins.register(plugin)
    try:
        assert wf.execute() == "ok"
    finally:
        plugins.unregister(plugin)
    with pytest.raises(PluginNotFoundError):
        wf.execute()


# -- other kinds ------------------------------------------------------------------------------------------


def test_registered_group_policy_by_name(register: Callable[..., Any]) -> None:
    name = unique("majority")

    class Majority(GroupExecutionPolicy):
        def on_group_finished(
            self, group_id: str, tasks: list[Any], results: dict[str, TaskResult], context: Any
        ) -> None:
            ok = sum(1 for r in results.values() if r.success)
            if ok * 2 <= len(results):
                raise ParallelGroupError(group_id=group_id, failed_tasks=[], successful_tasks=[])

    Majority.name = name

    with workflow("w") as wf:

        @task
        def good1() -> int:
            return 1

        @task
        def good2() -> int:
            return 2

        @task
        def bad() -> int:
            raise RuntimeError("no")

        group = good1 | good2 | bad
        register(make_plugin(graflow_register_group_policies=lambda: [Majority]))
        group.with_policy(name)

    wf.execute()  # two of three succeeded: the majority policy accepts the group


def test_unknown_group_policy_name_is_a_plugin_error() -> None:
    with workflow("w"):

        @task
        def one() -> None:
            pass

        @task
        def two() -> None:
            pass

        group = one | two
        with pytest.raises(PluginNotFoundError, match="No group policy named 'no_such_policy'"):
            group.with_policy("no_such_policy")


def test_registered_coordinator_by_name(register: Callable[..., Any]) -> None:
    name, seen = unique("coord"), []

    class Reversed(Coordinator):
        def run_members(self, group: Any, member_ids: Any, run_member: Any, context: Any) -> dict[str, TaskResult]:
            seen.extend(reversed(member_ids))
            return {m: run_member(m) for m in reversed(member_ids)}

    Reversed.name = name
    register(make_plugin(graflow_register_coordinators=lambda: [Reversed]))
    order: list[str] = []
    with workflow("w") as wf:

        @task
        def a() -> None:
            order.append("a")

        @task
        def b() -> None:
            order.append("b")

        (a | b).with_execution(backend=name)

    wf.execute()
    assert order == ["b", "a"] == seen


def test_observer_receives_engine_events(register: Callable[..., Any]) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def on_event(event: str, payload: dict[str, Any]) -> None:
        with lock:
            events.append((event, payload))

    register(make_plugin(graflow_on_event=on_event))
    with workflow("w") as wf:

        @task
        def a() -> int:
            return 1

        @task
        def b() -> int:
            return 2

        @task
        def c() -> int:
            return 3

        a >> (b | c).set_group_name("g")

    wf.execute()
    names = [e for e, _ in events]
    assert names[0] == "workflow.started"
    assert names[-1] == "workflow.finished"
    assert events[-1][1]["ok"] is True
    succeeded = {p["task_id"]: p for e, p in events if e == "task.succeeded"}
    assert set(succeeded) == {"a", "b", "c"}
    assert all(isinstance(p["duration"], float) for p in succeeded.values())
    group = [p for e, p in events if e == "group.finished"]
    assert len(group) == 1 and group[0]["group_id"] == "g"
    assert sorted(group[0]["succeeded"]) == ["b", "c"]
    assert len({p["session_id"] for _, p in events}) == 1


def test_failing_observer_does_not_fail_the_run(register: Callable[..., Any]) -> None:
    def on_event(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("observer bug")

    register(make_plugin(graflow_on_event=on_event))
    with workflow("w") as wf:

        @task
        def only() -> int:
            return 7

    assert wf.execute() == 7


# -- errors ----------------------------------------------------------------------------------------------


def test_unknown_handler_error_names_installed_and_package(without_backends: None) -> None:
    with workflow("w") as wf:

        @task(handler="docker")
        def containerised() -> None:
            pass

    with pytest.raises(PluginNotFoundError) as info:
        wf.execute()
    message = str(info.value)
    installed = plugins.names("task_handler")
    assert "docker" not in installed
    assert message.startswith("No task handler named 'docker'. Installed: ")
    assert "direct" in message.split("Installed: ", 1)[1].split(".", 1)[0]
    assert message.endswith("It is provided by the graflow-docker package: pip install graflow-docker")
    assert message == (
        f"No task handler named 'docker'. Installed: {', '.join(installed)}. "
        "It is provided by the graflow-docker package: pip install graflow-docker"
    )
    assert isinstance(info.value, ConfigError)
    assert info.value.installed == installed


def test_unknown_names_of_other_kinds(without_backends: None) -> None:
    with pytest.raises(PluginNotFoundError, match=r"No group policy named 'nope'\. Installed: .*strict"):
        plugins.lookup("group_policy", "nope")
    with pytest.raises(PluginNotFoundError, match="pip install graflow-redis"):
        plugins.lookup("channel", "redis")
    with pytest.raises(PluginNotFoundError, match="pip install graflow-s3-checkpoint"):
        plugins.get_checkpoint_store_class("s3")


def test_duplicate_name_names_both(register: Callable[..., Any]) -> None:
    name = unique("dup")
    first = recording_handler(name, [])
    second = recording_handler(name, [])
    second.__qualname__ = "SecondHandler"
    register(handler_plugin(first))
    with pytest.raises(ConfigError) as info:
        register(handler_plugin(second))
    message = str(info.value)
    assert f"task handler '{name}'" in message
    assert first.__qualname__ in message
    assert "SecondHandler" in message
    # the registry is rolled back: the first plugin still provides the name
    assert plugins.lookup("task_handler", name) is first


def test_duplicate_of_a_builtin_names_core(register: Callable[..., Any]) -> None:
    class OtherDirect(TaskHandler):
        name = "direct"

        def execute_task(self, task_: Any, context: ExecutionContext) -> Any:
            return None

    with pytest.raises(ConfigError) as info:
        register(handler_plugin(OtherDirect))
    message = str(info.value)
    assert "task handler 'direct'" in message
    assert "graflow-core" in message
    assert "OtherDirect" in message
    assert plugins.lookup("task_handler", "direct").__name__ == "DirectTaskHandler"


def test_class_without_a_name_is_rejected(register: Callable[..., Any]) -> None:
    class Nameless(TaskHandler):
        def execute_task(self, task_: Any, context: ExecutionContext) -> Any:
            return None

    with pytest.raises(ConfigError, match="must define a 'name'"):
        register(handler_plugin(Nameless))


def test_misspelt_hook_fails_at_registration() -> None:
    def graflow_register_handler() -> list[type]:
        return []

    plugin = make_plugin(graflow_register_handler=graflow_register_handler)
    try:
        with pytest.raises(pluggy.PluginValidationError, match="graflow_register_handler"):
            plugins.register(plugin)
    finally:
        if plugins.plugin_manager.is_registered(plugin):
            plugins.unregister(plugin)


def test_misspelt_hook_leaves_the_registry_usable() -> None:
    bad = make_plugin(graflow_register_handler=lambda: [])
    try:
        with pytest.raises(pluggy.PluginValidationError):
            plugins.register(bad)
        assert not plugins.plugin_manager.is_registered(bad)
    finally:
        if plugins.plugin_manager.is_registered(bad):
            plugins.unregister(bad)


def test_register_twice_is_an_error(register: Callable[..., Any]) -> None:
    plugin = register(handler_plugin(recording_handler(unique("rec"), [])))
    with pytest.raises((ConfigError, ValueError)):
        plugins.register(plugin)


def test_reset_forgets_in_process_plugins_and_reloads_builtins() -> None:
    name = unique("rec")
    plugin = handler_plugin(recording_handler(name, []))
    plugins.register(plugin)
    plugins.reset()
    assert not plugins.plugin_manager.is_registered(plugin)
    assert name not in plugins.names("task_handler")
    assert "direct" in plugins.names("task_handler")


# -- entry points, environment switches (subprocesses) -----------------------------------------------------

DESCRIBE = """
    import json
    from graflow import plugins
    print(json.dumps({
        "handlers": plugins.names("task_handler"),
        "plugins": [i.as_dict() for i in plugins.describe()],
    }))
"""


def test_entry_point_plugin_is_loaded(fake_plugin_path: Path) -> None:
    proc = run_python(DESCRIBE, path=[fake_plugin_path])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "fakeh" in data["handlers"]
    (fake,) = [p for p in data["plugins"] if p["name"] == "fake"]
    assert fake["distribution"] == "fake-graflow-plugin"
    assert fake["version"] == "2.0"
    assert fake["hooks"] == ["graflow_register_task_handlers"]
    assert fake["registers"] == {"task_handler": ["fakeh"]}
    assert fake["error"] is None


def test_entry_point_handler_runs_in_a_workflow(fake_plugin_path: Path) -> None:
    code = """
        from graflow import task, workflow
        with workflow("w") as wf:
            @task(handler="fakeh")
            def t():
                return 5
        print(repr(wf.execute()))
    """
    proc = run_python(code, path=[fake_plugin_path])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "('fake', 5)"


@pytest.mark.parametrize("blocked", ["fake", "fake-graflow-plugin", "other, fake"])
def test_disable_plugins_by_entry_point_or_distribution(fake_plugin_path: Path, blocked: str) -> None:
    proc = run_python(DESCRIBE, path=[fake_plugin_path], env={"GRAFLOW_DISABLE_PLUGINS": blocked})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "fakeh" not in data["handlers"]
    assert "direct" in data["handlers"]
    assert [p["name"] for p in data["plugins"] if p["name"] == "fake"] == []


def _example_plugin_installed() -> bool:
    return any(ep.name == "example" for ep in entry_points(group="graflow"))


def test_disable_the_example_plugin() -> None:
    """The real example distribution (examples/plugins/graflow-example-plugin) honours GRAFLOW_DISABLE_PLUGINS."""
    if not _example_plugin_installed():
        if not os.environ.get("CI"):
            pytest.skip("graflow-example-plugin is not installed (it is in CI)")
        pytest.fail("graflow-example-plugin must be installed in CI (entry point 'example' in group 'graflow')")
    code = """
        import json
        from graflow import plugins
        print(json.dumps([plugins.names("task_handler"), plugins.names("group_policy")]))
    """
    enabled = run_python(code)
    assert enabled.returncode == 0, enabled.stderr
    handlers, policies = json.loads(enabled.stdout)
    assert "shout" in handlers and "quorum" in policies
    for blocked in ("example", "graflow-example-plugin"):
        disabled = run_python(code, env={"GRAFLOW_DISABLE_PLUGINS": blocked})
        assert disabled.returncode == 0, disabled.stderr
        handlers, policies = json.loads(disabled.stdout)
        assert "shout" not in handlers and "quorum" not in policies
        assert "direct" in handlers and "strict" in policies


def test_broken_plugin_is_reported_not_raised(broken_plugin_path: Path) -> None:
    code = """
        import json
        from graflow import plugins, task, workflow
        with workflow("w") as wf:
            @task
            def fine():
                return "still works"
        result = wf.execute()
        try:
            plugins.lookup("task_handler", "mystery")
        except Exception as exc:
            lookup_error = str(exc)
        print(json.dumps({
            "result": result,
            "lookup_error": lookup_error,
            "plugins": [i.as_dict() for i in plugins.describe()],
        }))
    """
    proc = run_python(code, path=[broken_plugin_path])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["result"] == "still works"
    (broken,) = [p for p in data["plugins"] if p["name"] == "broken"]
    assert broken["distribution"] == "broken-plugin"
    assert broken["version"] == "1.0"
    assert "no_such_module_xyz" in broken["error"]
    assert "No task handler named 'mystery'" in data["lookup_error"]
    assert "broken" in data["lookup_error"] and "no_such_module_xyz" in data["lookup_error"]
    assert "failed to load" in proc.stderr  # logged as a warning, once


def test_broken_plugin_of_a_known_package_says_so(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "graflow-docker", "9.9", "[graflow]\ndocker = no_such_module_xyz\n")
    code = """
        from graflow import plugins
        try:
            plugins.lookup("task_handler", "docker")
        except Exception as exc:
            print(exc)
    """
    proc = run_python(code, path=[tmp_path])
    assert proc.returncode == 0, proc.stderr
    assert "No task handler named 'docker'" in proc.stdout
    assert "graflow-docker package, which is installed but failed to load" in proc.stdout
    assert "no_such_module_xyz" in proc.stdout


def test_broken_plugin_in_graflow_plugins_command(broken_plugin_path: Path) -> None:
    code = """
        import sys
        from graflow.cli.main import main
        sys.exit(main(["plugins", "--json"]))
    """
    proc = run_python(code, path=[broken_plugin_path])
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert "core" in listed
    assert "no_such_module_xyz" in listed["broken"]["error"]
    text = run_python(code.replace('"--json"', ""), path=[broken_plugin_path])
    assert text.returncode == 0, text.stderr
    (row,) = [line for line in text.stdout.splitlines() if line.startswith("broken ")]
    assert "broken-plugin" in row and "FAILED" in row
    assert "no_such_module_xyz" in text.stdout


def test_loading_is_lazy_and_cached(broken_plugin_path: Path) -> None:
    code = """
        import sys
        import graflow
        from graflow import task, workflow
        sys.stderr.write("IMPORTED\\n")
        sys.stderr.flush()
        graflow.plugins.names("task_handler")
        graflow.plugins.names("channel")
        graflow.plugins.lookup("task_handler", "direct")
    """
    proc = run_python(code, path=[broken_plugin_path])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.index("IMPORTED") < proc.stderr.index("failed to load")
    assert proc.stderr.count("failed to load") == 1


def test_misspelt_hook_in_an_installed_plugin_fails_loudly(tmp_path: Path) -> None:
    fake_distribution(
        tmp_path,
        "typo-plugin",
        "0.1",
        "[graflow]\ntypo = typo_plugin\n",
        {
            "typo_plugin": """
                from graflow.hookspecs import hookimpl

                @hookimpl
                def graflow_register_handler():
                    return []
            """
        },
    )
    proc = run_python("from graflow import plugins\nplugins.names('task_handler')\n", path=[tmp_path])
    assert proc.returncode != 0
    assert "graflow_register_handler" in proc.stderr


def test_trace_plugins_logs_hook_calls() -> None:
    code = """
        from graflow import plugins
        print(plugins.names("task_handler"))
    """
    proc = run_python(code, env={"GRAFLOW_TRACE_PLUGINS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "call graflow_register_task_handlers" in proc.stderr
    # only the hook of the kind looked up runs
    assert "graflow_register_channels" not in proc.stderr
    quiet = run_python(code)
    assert "graflow_register_task_handlers" not in quiet.stderr


def test_a_run_on_defaults_calls_no_registration_hook() -> None:
    code = """
        from graflow import task, workflow
        with workflow("w") as wf:
            @task
            def only():
                return 1
        print(wf.execute())
    """
    proc = run_python(code, env={"GRAFLOW_TRACE_PLUGINS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    assert "graflow_register_" not in proc.stderr


def test_a_lookup_builds_only_its_own_kind() -> None:
    code = """
        import sys
        from graflow import plugins
        plugins.lookup("channel", "memory")
        print(sorted(plugins._registry._tables))
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['channel']"
