"""Unit tests of the example plugin's classes, without running a workflow."""

from __future__ import annotations

import pytest

import graflow_example_plugin
from graflow.core.handler import TaskHandler, TaskResult
from graflow.core.handlers.group_policy import GroupExecutionPolicy
from graflow.exceptions import ParallelGroupError
from graflow_example_plugin import QuorumGroupPolicy, ShoutTaskHandler
from graflow_example_plugin import plugin as plugin_module


class FakeTask:
    """Stands in for an Executable: ``run_in`` returns a fixed value and records the context."""

    def __init__(self, value: object) -> None:
        self.value = value
        self.seen_context: object = None

    def run_in(self, context: object) -> object:
        self.seen_context = context
        return self.value


def _results(*outcomes: bool) -> dict[str, TaskResult]:
    results = {}
    for i, ok in enumerate(outcomes):
        tid = f"m{i}"
        if ok:
            results[tid] = TaskResult(task_id=tid, success=True, result=i)
        else:
            err = RuntimeError(f"{tid} broke")
            results[tid] = TaskResult(task_id=tid, success=False, error=err, error_message=str(err))
    return results


def test_version_matches_about() -> None:
    from graflow_example_plugin.__about__ import __version__

    assert graflow_example_plugin.__version__ == __version__


def test_shout_uppercases_string_result_and_passes_context() -> None:
    handler = ShoutTaskHandler()
    task = FakeTask("hello world")
    context = object()
    assert handler.execute_task(task, context) == "HELLO WORLD"  # type: ignore[arg-type]
    assert task.seen_context is context


def test_shout_appends_suffix_as_given() -> None:
    handler = ShoutTaskHandler(suffix="!?x")
    assert handler.execute_task(FakeTask("hi"), object()) == "HI!?x"  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [42, None, ["a"], {"k": "v"}, b"bytes"])
def test_shout_leaves_non_string_results_alone(value: object) -> None:
    assert ShoutTaskHandler(suffix="!").execute_task(FakeTask(value), object()) == value  # type: ignore[arg-type]


def test_shout_propagates_task_errors() -> None:
    class Failing:
        def run_in(self, context: object) -> object:
            raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        ShoutTaskHandler().execute_task(Failing(), object())  # type: ignore[arg-type]


def test_shout_rejects_unknown_and_positional_arguments() -> None:
    with pytest.raises(TypeError):
        ShoutTaskHandler(loud=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ShoutTaskHandler("!")  # type: ignore[misc]
    with pytest.raises(TypeError, match="suffix"):
        ShoutTaskHandler(suffix=3)  # type: ignore[arg-type]


def test_shout_is_a_named_task_handler() -> None:
    assert issubclass(ShoutTaskHandler, TaskHandler)
    assert ShoutTaskHandler.name == "shout"
    assert ShoutTaskHandler().get_name() == "shout"


@pytest.mark.parametrize(
    "outcomes",
    [(True,), (True, True, False), (True, True, True, False), (True, False, True, False, True)],
)
def test_quorum_passes_with_strict_majority(outcomes: tuple[bool, ...]) -> None:
    QuorumGroupPolicy().on_group_finished("g", [], _results(*outcomes), object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "outcomes",
    [(), (False,), (True, False), (True, False, False), (True, True, False, False), (False, False, False)],
)
def test_quorum_fails_without_strict_majority(outcomes: tuple[bool, ...]) -> None:
    results = _results(*outcomes)
    with pytest.raises(ParallelGroupError) as info:
        QuorumGroupPolicy().on_group_finished("grp", [], results, object())  # type: ignore[arg-type]
    err = info.value
    assert err.group_id == "grp"
    assert "quorum" in str(err)
    assert sorted(err.successful_tasks) == sorted(t for t, r in results.items() if r.success)
    assert sorted(t for t, _ in err.failed_tasks) == sorted(t for t, r in results.items() if not r.success)
    if any(not ok for ok in outcomes):
        assert isinstance(err.__cause__, RuntimeError)


def test_quorum_is_a_named_group_policy() -> None:
    assert issubclass(QuorumGroupPolicy, GroupExecutionPolicy)
    assert QuorumGroupPolicy.name == "quorum"


def test_plugin_module_hooks_return_the_classes() -> None:
    assert plugin_module.graflow_register_task_handlers() == [ShoutTaskHandler]
    assert plugin_module.graflow_register_group_policies() == [QuorumGroupPolicy]


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="graflow") if ep.name == "example"]
    assert len(eps) == 1
    assert eps[0].value == "graflow_example_plugin.plugin"
    assert eps[0].load() is plugin_module
