"""How checkpoints pickle the run state: task templates, identity, older checkpoints, GC, failures.

TaskWrappers are pickled as ``(template, task id, bound values)`` where the template (function and
options) is shared by every task made from them. These tests pin down that a task loaded that way
is the task that was built, that nothing mutable is shared by accident, and that the faster
checkpoint pickler behaves like ``cloudpickle.dumps``.
"""

from __future__ import annotations

import copyreg
import errno
import functools
import gc
import importlib
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow.checkpoint_store import LocalFileCheckpointStore
from graflow.core import checkpoint as checkpoint_module
from graflow.core.checkpoint import CheckpointManager
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.retry import RetryPolicy
from graflow.core.task import PICKLED_OPTIONS, ParallelGroup, TaskWrapper, _rebuild_task_wrapper
from graflow.core.workflow import workflow
from graflow.exceptions import CheckpointError


def add(value: int = 0, extra: int = 0) -> int:
    return value + extra + 1


async def add_async(value: int = 0) -> int:
    return value + 1


def no_name_callable() -> functools.partial[int]:
    return functools.partial(add, extra=5)  # a partial has no __name__: the task id stands in for it


def build(task_id: str, func: Callable[..., Any], **options: Any) -> TaskWrapper:
    return TaskWrapper(task_id, func, register_to_context=False, **options)


SHARED_POLICY = RetryPolicy(max_retries=2)
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "plain": (add, {}),
    "bound": (add, {"bound_kwargs": {"value": 41}}),
    "options": (
        add,
        {
            "inject_context": False,
            "resolve_keyword_args": False,
            "max_cycles": 3,
            "retry_policy": SHARED_POLICY,
            "timeout": 5.0,
            "queue": "gpu",
            "handler_type": "docker",
            "handler_kwargs": {"image": "python:3.11-slim"},
        },
    ),
    "max_retries": (add, {"max_retries": 4}),
    "async": (add_async, {}),
    "partial": (no_name_callable(), {}),
}


def checkpoint_dumps(obj: Any) -> bytes:
    return checkpoint_module._dumps(obj)


def plain_dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


DUMPERS = {"checkpoint pickler": checkpoint_dumps, "cloudpickle.dumps": plain_dumps}


# -- a loaded task is the task that was built ----------------------------------------------------------
@pytest.mark.parametrize("dumper", DUMPERS.values(), ids=DUMPERS.keys())
@pytest.mark.parametrize("case", CASES)
def test_round_trip_equals_construction(case: str, dumper: Callable[[Any], bytes]) -> None:
    func, options = CASES[case]
    original = build(f"task_{case}", func, **options)
    loaded = pickle.loads(dumper(original))
    assert type(loaded) is TaskWrapper
    # what construction makes, attribute for attribute (a fresh build: no caches filled yet)
    assert_same_state(loaded, build(f"task_{case}", func, **options))
    assert loaded.result_key == f"task_{case}.__result__"
    assert loaded.bound_kwargs == options.get("bound_kwargs", {})
    if case == "partial":
        assert loaded.__name__ == loaded.__qualname__ == "task_partial"
    if case == "async":
        assert loaded.is_async
    if loaded.handler_type is None:  # and it runs like the original (other handlers need their servers)
        ctx = ExecutionContext.create(_graph_of(loaded))
        expected = WorkflowEngine().execute(ExecutionContext.create(_graph_of(original)))
        assert WorkflowEngine().execute(ctx) == expected


def assert_same_state(loaded: TaskWrapper, built: TaskWrapper) -> None:
    functions = ("func", "__wrapped__")
    assert {k: v for k, v in vars(loaded).items() if k not in functions} == {
        k: v for k, v in vars(built).items() if k not in functions
    }
    assert vars(loaded).keys() == vars(built).keys()
    for key in functions:
        got, want = vars(loaded)[key], vars(built)[key]
        if isinstance(want, functools.partial):  # partials compare by identity; compare what they hold
            assert (got.func, got.args, got.keywords) == (want.func, want.args, want.keywords)
        else:
            assert got is want  # module-level functions travel by reference


def _graph_of(task: TaskWrapper) -> Any:
    with workflow("one") as wf:
        wf.graph.add_node(task)
    return wf.graph


def test_lambda_task_round_trips_by_value() -> None:
    offset = 7
    original = build("lam", lambda value=1: value + offset)
    loaded = pickle.loads(checkpoint_dumps(original))
    assert loaded.func is not original.func
    assert loaded.func() == 8 and loaded.func(2) == 9
    assert {k: v for k, v in vars(loaded).items() if k not in ("func", "__wrapped__")} == {
        k: v for k, v in vars(original).items() if k not in ("func", "__wrapped__")
    }


def test_tasks_share_options_exactly_as_before_and_nothing_else() -> None:
    kwargs = {"image": "img"}
    same = [build(f"s{i}", add, handler_type="docker", handler_kwargs=kwargs, retry_policy=SHARED_POLICY)
            for i in range(50)]  # fmt: skip
    equal_copy = build("copy", add, handler_type="docker", handler_kwargs=dict(kwargs), retry_policy=SHARED_POLICY)
    bound = [add_task(f"b{i}", i) for i in range(50)]
    loaded = pickle.loads(checkpoint_dumps([*same, equal_copy, *bound]))
    l_same, l_copy, l_bound = loaded[:50], loaded[50], loaded[51:]
    # one handler_kwargs dict and one policy before, one after; the separate (equal) dict stays separate
    assert len({id(t.handler_kwargs) for t in l_same}) == 1
    assert len({id(t.retry_policy) for t in [*l_same, l_copy]}) == 1
    assert l_copy.handler_kwargs == kwargs and l_copy.handler_kwargs is not l_same[0].handler_kwargs
    assert [t.bound_kwargs for t in l_bound] == [{"value": i} for i in range(50)]
    # per-task containers (caches, pending edges, bound values) are never shared between tasks
    every = [*l_same, l_copy, *l_bound]
    for key in vars(every[0]):
        if key in PICKLED_OPTIONS:
            continue
        containers = [vars(t)[key] for t in every if isinstance(vars(t)[key], (dict, list, set))]
        assert len({id(c) for c in containers}) == len(containers), f"tasks share their {key!r}"
    # filling one task's caches leaves the others alone
    l_same[0]._plans[0] = ()
    l_same[0]._pending_edges.append(l_same[1])
    assert l_same[1]._plans == {} and l_same[1]._pending_edges == []


def add_task(task_id: str, value: int) -> TaskWrapper:
    return build(task_id, add, bound_kwargs={"value": value})


def test_per_task_size_is_id_and_bound_values_only() -> None:
    """The function and options are stored once, however many tasks use them."""

    def size(n: int) -> int:
        return len(checkpoint_dumps([build(f"task{i:06d}", add, max_cycles=3, queue="q") for i in range(n)]))

    per_task = (size(3000) - size(1000)) / 2000
    # 13 bytes for the 11-character id, the rest opcodes and memo references (22 in all with CPython
    # 3.11); a pickled option dict per task, as schema 2.0 had, costs 58
    assert per_task <= 30, per_task


def test_group_members_are_the_graph_nodes_after_resume(tmp_path: Path) -> None:
    with workflow("identity") as wf:
        members = [TaskWrapper(f"m{i}", add) for i in range(4)]
        group = ParallelGroup(members, name="g")
        TaskWrapper("start", add) >> group
    ctx = ExecutionContext.create(wf.graph)
    path, _ = CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "c"))
    restored, _ = CheckpointManager.resume_from_checkpoint(path)
    loaded_group = restored.graph.get_node("g")
    assert [m.task_id for m in loaded_group.tasks] == ["m0", "m1", "m2", "m3"]
    for member in loaded_group.tasks:
        assert member is restored.graph.get_node(member.task_id)
    assert WorkflowEngine().execute(restored) is not None
    assert restored.completed_tasks == {"start", "g", "m0", "m1", "m2", "m3"}


# -- checkpoints written before templates (schema 2.0) -------------------------------------------------
def _legacy_reduce(self: TaskWrapper) -> Any:
    """TaskWrapper.__reduce__ as graflow 0.3 wrote it into schema 2.0 checkpoints."""
    options = {name: getattr(self, name) for name in PICKLED_OPTIONS}
    options["bound_kwargs"] = self._bound_kwargs
    return (_rebuild_task_wrapper, (self._task_id, self.func, options))


def build_group_workflow() -> Any:
    with workflow("legacy") as wf:
        group = ParallelGroup([TaskWrapper("a", add), TaskWrapper("b", add, bound_kwargs={"value": 10})], name="g")
        TaskWrapper("start", add) >> group >> TaskWrapper("end", add)
    return wf.graph


def test_schema_2_checkpoint_still_loads_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = ExecutionContext.create(build_group_workflow())
    WorkflowEngine().execute(reference)

    ctx = ExecutionContext.create(build_group_workflow())
    legacy_state = ExecutionContext.__getstate__

    def without_group_base(self: ExecutionContext) -> dict[str, Any]:
        state = legacy_state(self)
        state.pop("group_cycle_base", None)  # added with schema 3.0
        return state

    with monkeypatch.context() as patch:
        patch.setattr(TaskWrapper, "__reduce__", _legacy_reduce)
        patch.setattr(ExecutionContext, "__getstate__", without_group_base)
        path, _ = CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "old"))
    blob = Path(path).read_bytes()
    assert b"_rebuild_task_wrapper" in blob and b"_task_from_template" not in blob
    meta_file = tmp_path / "old.meta.json"
    meta_file.write_text(meta_file.read_text().replace('"schema_version":"3.0"', '"schema_version":"2.0"'))
    assert CheckpointManager.read_metadata(path).schema_version == "2.0"

    restored, _ = CheckpointManager.resume_from_checkpoint(path)
    assert restored.group_cycle_base == {}
    assert vars(restored.graph.get_node("b")) == vars(build("b", add, bound_kwargs={"value": 10}))
    WorkflowEngine().execute(restored)
    assert restored.completed_tasks == reference.completed_tasks
    assert restored.cycle_counts == reference.cycle_counts
    assert restored.get_result("b") == reference.get_result("b") == 11


# -- the checkpoint pickler is cloudpickle -------------------------------------------------------------
class Registered:
    """A class whose reduction is registered with copyreg after graflow was imported."""

    def __init__(self, value: int) -> None:
        self.value = value


REDUCED: list[int] = []


def _reduce_registered(obj: Registered) -> Any:
    REDUCED.append(obj.value)
    return (Registered, (obj.value * 2,))


@pytest.fixture
def registered() -> Iterator[None]:
    copyreg.pickle(Registered, _reduce_registered)
    REDUCED.clear()
    try:
        yield
    finally:
        copyreg.dispatch_table.pop(Registered, None)


def test_copyreg_registrations_are_honoured(tmp_path: Path, registered: None) -> None:
    ctx = ExecutionContext.create(build_group_workflow())
    ctx.channel.set("custom", Registered(21))
    path, _ = CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "c"))
    assert REDUCED == [21]
    restored, _ = CheckpointManager.resume_from_checkpoint(path)
    assert restored.channel.get("custom").value == 42  # went through the registered reducer


def test_unpicklable_task_option_names_the_cause(tmp_path: Path) -> None:
    with workflow("bad") as wf:
        TaskWrapper("t", add, handler_type="docker", handler_kwargs={"lock": threading.Lock()})
    ctx = ExecutionContext.create(wf.graph)
    with pytest.raises(CheckpointError, match=rf"session {ctx.session_id}.*lock.*must be picklable"):
        CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "c"))
    assert CheckpointManager.list_checkpoints(str(tmp_path)) == []


# -- the garbage collector ----------------------------------------------------------------------------
MODULE_SOURCE = "def vanishing(value=0):\n    return value + 1\n"


def test_resume_leaves_gc_as_it_found_it(tmp_path: Path) -> None:
    path, _ = CheckpointManager.create_checkpoint(
        ExecutionContext.create(build_group_workflow()), path=str(tmp_path / "c")
    )
    assert gc.isenabled()
    CheckpointManager.resume_from_checkpoint(path)
    assert gc.isenabled()
    gc.disable()
    try:
        CheckpointManager.resume_from_checkpoint(path)
        assert not gc.isenabled(), "resume turned on a collector the caller had turned off"
    finally:
        gc.enable()


def test_unloadable_checkpoint_is_a_clear_error_and_gc_comes_back(tmp_path: Path) -> None:
    """The module defining a task is gone when resuming: the error says so; GC is back on."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "graflow_vanishing_tasks.py").write_text(MODULE_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("graflow_vanishing_tasks")
        with workflow("vanishing") as wf:
            TaskWrapper("v", module.vanishing)
        path, _ = CheckpointManager.create_checkpoint(ExecutionContext.create(wf.graph), path=str(tmp_path / "c"))
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("graflow_vanishing_tasks", None)
    (folder / "graflow_vanishing_tasks.py").unlink()
    with pytest.raises(CheckpointError, match=r"cannot unpickle .*c\.pkl.*graflow_vanishing_tasks.*must be importable"):
        CheckpointManager.resume_from_checkpoint(path)
    assert gc.isenabled()


# -- failures while writing -------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", [".pkl", ".state.json"])
def test_failed_part_write_is_named_and_nothing_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    original = LocalFileCheckpointStore.write_part

    def write_part(self: LocalFileCheckpointStore, base: str, suffix: str, data: bytes) -> None:
        if suffix == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, base, suffix, data)

    monkeypatch.setattr(LocalFileCheckpointStore, "write_part", write_part)
    ctx = ExecutionContext.create(build_group_workflow())
    with pytest.raises(CheckpointError, match=rf"Could not write checkpoint part .*c{failing}: .*No space left"):
        CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "c"))
    assert not (tmp_path / "c.meta.json").exists()
    assert CheckpointManager.list_checkpoints(str(tmp_path)) == []
    assert ctx.last_checkpoint_path is None


def test_unexpected_store_error_propagates_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors that are not OSError (a store's own exception types) reach the caller as they are."""

    class StoreDown(RuntimeError):
        pass

    def write_part(self: LocalFileCheckpointStore, base: str, suffix: str, data: bytes) -> None:
        raise StoreDown("backend unavailable")

    monkeypatch.setattr(LocalFileCheckpointStore, "write_part", write_part)
    with pytest.raises(StoreDown, match="backend unavailable"):
        CheckpointManager.create_checkpoint(ExecutionContext.create(build_group_workflow()), path=str(tmp_path / "c"))
