"""Resume continues exactly where the run stopped.

Each scenario runs the same workflow twice: once uninterrupted, once interrupted by a task that
fails the first time it runs after a checkpoint was taken, then resumed from that checkpoint. The
sequence of executed tasks (recorded in the channel, so the checkpoint carries the part before the
interruption) and the final channel must match. Task functions live at module level so they pickle
by reference and share the ``CRASH`` switch with the test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from graflow.core.checkpoint import CheckpointManager
from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.task import TaskWrapper, parallel
from graflow.core.workflow import workflow
from graflow.exceptions import GraflowError

#: task ids that raise once (the interruption), consumed when they fire
CRASH: set[str] = set()
#: every execution in this process, for checks the channel cannot make (it is restored on resume)
RAN: list[str] = []


def _crash_if_armed(ctx: TaskExecutionContext) -> None:
    if ctx.task_id in CRASH:
        CRASH.discard(ctx.task_id)
        raise RuntimeError(f"simulated crash in {ctx.task_id}")


def _record(ctx: TaskExecutionContext, entry: Any = None) -> None:
    RAN.append(ctx.task_id)
    ctx.get_channel().append("ran", ctx.task_id if entry is None else entry)


def plain(ctx: TaskExecutionContext) -> str:
    _crash_if_armed(ctx)
    _record(ctx)
    return ctx.task_id.upper()


def checkpointing(ctx: TaskExecutionContext) -> str:
    _crash_if_armed(ctx)
    _record(ctx)
    ctx.checkpoint(metadata={"at": ctx.task_id}, path=ctx.get_channel().get("ckpt_dir") + "/" + ctx.task_id)
    return ctx.task_id.upper()


def immediate(ctx: TaskExecutionContext) -> str:
    path, _meta = ctx.checkpoint(path=ctx.get_channel().get("ckpt_dir") + "/" + ctx.task_id, deferred=False)
    ctx.get_channel().set("immediate_path", path)
    _crash_if_armed(ctx)  # crashes after the checkpoint: resuming must run this task again
    _record(ctx)
    return ctx.task_id.upper()


def looping(ctx: TaskExecutionContext, data: Any = None) -> int:
    channel = ctx.get_channel()
    count = channel.get("count", 0)
    if count == 3:
        _crash_if_armed(ctx)
    count = channel.atomic_add("count", 1)
    _record(ctx, f"loop{count}:{data}")
    if count == 2:
        ctx.checkpoint(path=channel.get("ckpt_dir") + "/loop")
    if count < 6:
        ctx.next_iteration(data=count * 10)
    return count


def spawner(ctx: TaskExecutionContext) -> str:
    _record(ctx)
    ctx.next_task(TaskWrapper("dyn1", plain, inject_context=True, register_to_context=False))
    ctx.next_task(TaskWrapper("dyn2", spawned_chain, inject_context=True, register_to_context=False))
    ctx.checkpoint(path=ctx.get_channel().get("ckpt_dir") + "/spawn")
    return "spawned"


def spawned_chain(ctx: TaskExecutionContext) -> str:
    _crash_if_armed(ctx)
    _record(ctx)
    ctx.next_task(TaskWrapper("dyn3", plain, inject_context=True, register_to_context=False))
    return "dyn2"


def jumper(ctx: TaskExecutionContext) -> str:
    _record(ctx)
    ctx.checkpoint(path=ctx.get_channel().get("ckpt_dir") + "/goto")
    ctx.next_task(ctx.graph.get_node("d"), goto=True)
    return "jumped"


def waits_for_checkpoint(ctx: TaskExecutionContext) -> str:
    """A parallel member that starts its work only once a sibling's checkpoint exists."""
    deadline = time.monotonic() + 10
    while ctx.execution_context.last_checkpoint_path is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return plain(ctx)


def t(task_id: str, func: Any = plain) -> TaskWrapper:
    return TaskWrapper(task_id, func, inject_context=True)


def channel_values(ctx: ExecutionContext) -> dict[str, Any]:
    return {k: v["value"] for k, v in ctx.channel.snapshot().items() if k not in ("ckpt_dir", "immediate_path")}


def run(build: Any, tmp: Path, crash: set[str] = frozenset(), checkpoint: str | None = None) -> ExecutionContext:
    """Run ``build()``'s workflow; with ``crash``, interrupt it and resume from ``checkpoint`` (or the last one)."""
    CRASH.clear()
    CRASH.update(crash)
    graph = build()
    ctx = ExecutionContext.create(graph, max_steps=200)
    ctx.channel.set("ckpt_dir", str(tmp))
    if not crash:
        WorkflowEngine().execute(ctx)
        return ctx
    with pytest.raises(GraflowError, match="simulated crash"):
        WorkflowEngine().execute(ctx)
    assert not CRASH, "the interruption did not happen"
    path = str(tmp / checkpoint) if checkpoint else ctx.last_checkpoint_path
    assert path is not None
    resumed, _ = CheckpointManager.resume_from_checkpoint(path)
    resumed.result = WorkflowEngine().execute(resumed)  # type: ignore[attr-defined]
    return resumed


def assert_same_run(reference: ExecutionContext, resumed: ExecutionContext) -> None:
    assert resumed.channel.get("ran") == reference.channel.get("ran")
    assert channel_values(resumed) == channel_values(reference)
    assert resumed.completed_tasks == reference.completed_tasks
    assert resumed.cycle_counts == reference.cycle_counts
    assert resumed.steps == reference.steps


# -- linear ------------------------------------------------------------------------------------------------
def build_linear() -> Any:
    with workflow("linear") as wf:
        t("a") >> t("b", checkpointing) >> t("c") >> t("d") >> t("e")
    return wf.graph


def test_linear_resume_matches_uninterrupted(tmp_path: Path) -> None:
    reference = run(build_linear, tmp_path / "ref")
    assert reference.channel.get("ran") == ["a", "b", "c", "d", "e"]
    RAN.clear()
    resumed = run(build_linear, tmp_path / "int", crash={"d"})
    assert_same_run(reference, resumed)
    # a and b ran once in all (before the crash); c ran once before and not again; d, e after resume
    assert RAN == ["a", "b", "c", "c", "d", "e"] or RAN == ["a", "b", "c", "d", "e"]
    assert RAN.count("a") == 1 and RAN.count("b") == 1


def test_linear_resume_does_not_rerun_completed(tmp_path: Path) -> None:
    run(build_linear, tmp_path / "int", crash={"c"})  # crash right after b's checkpoint
    RAN.clear()
    CRASH.clear()
    resumed, meta = CheckpointManager.resume_from_checkpoint(str(tmp_path / "int" / "b"))
    assert meta.user_metadata == {"at": "b", "task_id": "b", "cycle_count": 1, "mode": "deferred"}
    assert resumed.task_queue.to_list() == ["c"]
    assert resumed.completed_tasks == {"a", "b"}
    WorkflowEngine().execute(resumed)
    assert RAN == ["c", "d", "e"]


def build_immediate() -> Any:
    with workflow("immediate") as wf:
        t("a") >> t("b", immediate) >> t("c")
    return wf.graph


def test_immediate_checkpoint_reruns_current_task(tmp_path: Path) -> None:
    reference = run(build_immediate, tmp_path / "ref")
    assert reference.cycle_counts == {"a": 1, "b": 1, "c": 1}
    RAN.clear()
    resumed = run(build_immediate, tmp_path / "int", crash={"b"})
    assert resumed.checkpoint_metadata["user_metadata"]["mode"] == "immediate"
    assert RAN == ["a", "b", "c"]  # b crashed before recording, then ran again after resume
    assert_same_run(reference, resumed)


def test_immediate_checkpoint_returns_path_and_metadata(tmp_path: Path) -> None:
    ctx = run(build_immediate, tmp_path)
    path = ctx.channel.get("immediate_path")
    assert path == str(tmp_path / "b") + ".pkl"
    restored, meta = CheckpointManager.resume_from_checkpoint(path)
    assert restored.task_queue.to_list() == ["b"]
    assert restored.cycle_counts == {"a": 1}
    assert meta.user_metadata["task_id"] == "b"


# -- loops ---------------------------------------------------------------------------------------------------
def build_loop() -> Any:
    with workflow("loop") as wf:
        t("start") >> t("loop", looping) >> t("after")
    return wf.graph


def test_next_iteration_loop_resumes_with_counters_and_data(tmp_path: Path) -> None:
    reference = run(build_loop, tmp_path / "ref")
    assert reference.channel.get("ran") == [
        "start", "loop1:None", "loop2:10", "loop3:20", "loop4:30", "loop5:40", "loop6:50", "after",
    ]  # fmt: skip
    resumed = run(build_loop, tmp_path / "int", crash={"loop"})
    assert_same_run(reference, resumed)
    assert resumed.cycle_counts["loop"] == 6


# -- dynamic tasks -------------------------------------------------------------------------------------------
def build_dynamic() -> Any:
    with workflow("dynamic") as wf:
        t("root") >> t("spawn", spawner) >> t("tail")
    return wf.graph


def test_dynamic_tasks_survive_resume(tmp_path: Path) -> None:
    reference = run(build_dynamic, tmp_path / "ref")
    assert set(reference.channel.get("ran")) == {"root", "spawn", "dyn1", "dyn2", "dyn3", "tail"}
    resumed = run(build_dynamic, tmp_path / "int", crash={"dyn2"})
    assert_same_run(reference, resumed)
    assert {"dyn1", "dyn2", "dyn3"} <= set(resumed.graph.nodes)


def test_dynamic_pending_tasks_are_in_the_checkpoint(tmp_path: Path) -> None:
    run(build_dynamic, tmp_path, crash={"dyn1"})
    restored, _ = CheckpointManager.resume_from_checkpoint(str(tmp_path / "spawn"))
    pending = restored.task_queue.to_list()
    assert {"dyn1", "dyn2", "tail"} == set(pending)
    assert restored.graph.has_node("dyn1") and restored.graph.has_node("dyn2")
    state = CheckpointManager.read_state(str(tmp_path / "spawn"))
    assert state["pending_tasks"] == pending


# -- goto ----------------------------------------------------------------------------------------------------
def build_goto() -> Any:
    with workflow("goto") as wf:
        t("a") >> t("b", jumper) >> t("c") >> t("d") >> t("e")
    return wf.graph


def test_goto_resume_skips_the_jumped_over_tasks(tmp_path: Path) -> None:
    reference = run(build_goto, tmp_path / "ref")
    assert reference.channel.get("ran") == ["a", "b", "d", "e"]
    resumed = run(build_goto, tmp_path / "int", crash={"d"})
    assert_same_run(reference, resumed)


# -- parallel groups -----------------------------------------------------------------------------------------
def build_group_direct() -> Any:
    with workflow("group-direct") as wf:
        group = (t("m1", checkpointing) | (t("m2a") >> t("m2b")) | t("m3")).with_execution(backend="direct")
        t("start") >> group >> t("end")
    return wf.graph


def test_group_checkpoint_in_member_resumes_whole_workflow(tmp_path: Path) -> None:
    reference = run(build_group_direct, tmp_path / "ref")
    assert sorted(reference.channel.get("ran")) == ["end", "m1", "m2a", "m2b", "m3", "start"]
    RAN.clear()
    resumed = run(build_group_direct, tmp_path / "int", crash={"m3"})
    assert RAN.count("m1") == 1, "a member that finished before the checkpoint ran again"
    assert RAN.count("start") == 1
    assert sorted(resumed.channel.get("ran")) == sorted(reference.channel.get("ran"))
    assert channel_values(resumed) == channel_values(reference)
    assert resumed.cycle_counts == reference.cycle_counts
    assert resumed.group_progress == {}


def test_group_checkpoint_records_progress(tmp_path: Path) -> None:
    run(build_group_direct, tmp_path, crash={"m2a"})
    restored, meta = CheckpointManager.resume_from_checkpoint(str(tmp_path / "m1"))
    group_id = next(g for g in restored.graph.nodes if g not in {"start", "end", "m1", "m2a", "m2b", "m3"})
    assert restored.task_queue.to_list()[0] == group_id
    assert list(restored.group_progress[group_id]) == ["m1"]
    assert restored.cycle_counts[group_id] == 0 if group_id in restored.cycle_counts else True
    state = CheckpointManager.read_state(str(tmp_path / "m1"))
    assert state["active_groups"] == [group_id]
    assert state["group_progress"] == {group_id: ["m1"]}
    assert meta.user_metadata["task_id"] == "m1"


def build_group_threads() -> Any:
    with workflow("group-threads") as wf:
        group = t("p1", checkpointing) | t("p2", waits_for_checkpoint) | t("p3", waits_for_checkpoint)
        t("start") >> group >> t("end")
    return wf.graph


def test_threaded_group_checkpoint_while_siblings_run(tmp_path: Path) -> None:
    reference = run(build_group_threads, tmp_path / "ref")
    RAN.clear()
    resumed = run(build_group_threads, tmp_path / "int", crash={"p3"})
    assert RAN.count("p1") == 1, "the member that finished before the checkpoint ran again"
    assert sorted(resumed.channel.get("ran")) == sorted(reference.channel.get("ran"))  # threads: any order
    without_ran = [{k: v for k, v in channel_values(c).items() if k != "ran"} for c in (resumed, reference)]
    assert without_ran[0] == without_ran[1]
    # p2 and p3 may have started before the checkpoint (and been counted): they run again and are
    # counted once, as in the uninterrupted run
    assert resumed.cycle_counts == reference.cycle_counts
    assert resumed.steps == reference.steps


#: events the in-flight scenario synchronises on (reset before each run)
STARTED: dict[str, threading.Event] = {}


def _wait_for_checkpoint(ctx: TaskExecutionContext) -> None:
    deadline = time.monotonic() + 20
    while ctx.execution_context.last_checkpoint_path is None:
        assert time.monotonic() < deadline, f"{ctx.task_id}: no checkpoint was written within 20 s"
        time.sleep(0.002)


def checkpoint_after_siblings_started(ctx: TaskExecutionContext) -> str:
    """Member A: takes its (deferred) checkpoint only once both siblings are provably in flight."""
    for name in ("b2", "c"):
        assert STARTED[name].wait(20), f"sibling {name} never started"
    return checkpointing(ctx)


def quiet(ctx: TaskExecutionContext) -> str:
    """Records only in this process (not the channel): it runs again when its branch restarts."""
    RAN.append(ctx.task_id)
    return ctx.task_id.upper()


def in_flight_chain_tail(ctx: TaskExecutionContext) -> str:
    """Member B's second task: running (so counted) when A's checkpoint is written; interrupted after it."""
    STARTED["b2"].set()
    _wait_for_checkpoint(ctx)
    return plain(ctx)


def in_flight_loop(ctx: TaskExecutionContext, data: Any = None) -> int:
    """Member C: loops three times; its second iteration is running when A's checkpoint is written."""
    n = 0 if data is None else data
    if n == 1:
        STARTED["c"].set()
        _wait_for_checkpoint(ctx)
    if n < 2:
        ctx.next_iteration(n + 1)
        return n
    RAN.append(ctx.task_id)
    # the cycle count is part of the record: the resumed run must see the same counts
    ctx.get_channel().append("ran", f"c:{n}:{ctx.cycle_count}")
    return n


def build_group_in_flight() -> Any:
    with workflow("group-in-flight") as wf:
        group = (
            t("a", checkpoint_after_siblings_started)
            | (t("b1", quiet) >> t("b2", in_flight_chain_tail))
            | t("c", in_flight_loop)
        ).with_execution(backend="threading")
        t("start") >> group >> t("end")
    return wf.graph


def run_in_flight(tmp: Path, crash: set[str] = frozenset()) -> ExecutionContext:
    STARTED.clear()
    STARTED.update(b2=threading.Event(), c=threading.Event())
    return run(build_group_in_flight, tmp, crash=crash, checkpoint="a")


def test_threaded_group_checkpoint_with_members_in_flight_resumes_exactly(tmp_path: Path) -> None:
    """Siblings that started before a member's checkpoint (and so were counted) start again on resume
    and are counted once, as in the uninterrupted run: their counters, retries and loop data go back
    to what they were when the group started."""
    reference = run_in_flight(tmp_path / "ref")
    assert reference.cycle_counts == {
        "start": 1,
        "a": 1,
        "b1": 1,
        "b2": 1,
        "c": 3,
        "end": 1,
        **{g: 1 for g in reference.graph.nodes if g.startswith("ParallelGroup")},
    }
    RAN.clear()
    resumed = run_in_flight(tmp_path / "int", crash={"b2"})
    assert RAN.count("a") == 1, "the member that finished before the checkpoint ran again"
    assert RAN.count("b1") == 2 and RAN.count("b2") == 1  # B restarts from its first task
    assert sorted(resumed.channel.get("ran")) == sorted(reference.channel.get("ran"))
    assert "c:2:3" in resumed.channel.get("ran")
    assert channel_values(resumed).keys() == channel_values(reference).keys()
    assert resumed.cycle_counts == reference.cycle_counts
    assert resumed.completed_tasks == reference.completed_tasks
    assert resumed.steps == reference.steps
    assert resumed.retry_counts == {} and resumed.iteration_data == {}


def test_in_flight_members_are_reset_in_the_checkpoint(tmp_path: Path) -> None:
    run_in_flight(tmp_path, crash={"b2"})
    restored, meta = CheckpointManager.resume_from_checkpoint(str(tmp_path / "a"))
    group_id = restored.task_queue.to_list()[0]
    assert group_id.startswith("ParallelGroup")
    # only the start task and the finished member keep their counts; the group and B, C start over
    assert restored.cycle_counts == {"start": 1, "a": 1}
    assert restored.steps == 2
    assert restored.iteration_data == {}
    assert list(restored.group_progress[group_id]) == ["a"]
    state = CheckpointManager.read_state(str(tmp_path / "a"))
    assert state["cycle_counts"] == {"start": 1, "a": 1}
    assert meta.user_metadata["cycle_count"] == 1


def retried_in_flight(ctx: TaskExecutionContext) -> str:
    """Fails its first attempt; the retry is running when the sibling's checkpoint is written."""
    if ctx.retry_count == 0:
        raise RuntimeError("first attempt fails")
    STARTED["r"].set()
    _wait_for_checkpoint(ctx)
    return plain(ctx)


def checkpoint_after_retry_started(ctx: TaskExecutionContext) -> str:
    assert STARTED["r"].wait(20), "the retried sibling never started its retry"
    return checkpointing(ctx)


def build_group_retry_in_flight() -> Any:
    with workflow("group-retry-in-flight") as wf:
        flaky = TaskWrapper("r", retried_in_flight, inject_context=True, max_retries=1)
        group = (t("a", checkpoint_after_retry_started) | flaky).with_execution(backend="threading")
        t("start") >> group >> t("end")
    return wf.graph


def test_member_retrying_at_checkpoint_starts_over_with_its_retries(tmp_path: Path) -> None:
    def go(tmp: Path, crash: set[str] = frozenset()) -> ExecutionContext:
        STARTED.clear()
        STARTED["r"] = threading.Event()
        return run(build_group_retry_in_flight, tmp, crash=crash, checkpoint="a")

    reference = go(tmp_path / "ref")
    assert reference.steps == 6  # start, group, a, r, r (retry), end
    go(tmp_path / "chk")
    restored, _ = CheckpointManager.resume_from_checkpoint(str(tmp_path / "chk" / "a"))
    assert restored.retry_counts == {} and "r" not in restored.cycle_counts
    assert restored.steps == 2  # start and a: the group and both attempts of r are done again
    RAN.clear()
    resumed = go(tmp_path / "int", crash={"r"})
    # r recorded nothing before the interruption; resumed, its first attempt fails again and its retry records
    assert RAN == ["start", "a", "r", "end"]
    assert_same_run(reference, resumed)


def inner_sibling_finished_and_in_flight(ctx: TaskExecutionContext) -> str:
    """Member of the outer group: checkpoints once x (inner group) finished and y (inner group) runs."""
    assert STARTED["y"].wait(20), "y never started"
    deadline = time.monotonic() + 20
    while "x" not in ctx.execution_context.group_progress.get("inner", {}):
        assert time.monotonic() < deadline, "x never finished"
        time.sleep(0.002)
    return checkpointing(ctx)


def inner_in_flight(ctx: TaskExecutionContext) -> str:
    STARTED["y"].set()
    _wait_for_checkpoint(ctx)
    return plain(ctx)


def build_nested_groups() -> Any:
    with workflow("nested") as wf:
        inner = parallel(t("x"), t("y", inner_in_flight), name="inner").with_execution(backend="threading")
        outer = (t("a", inner_sibling_finished_and_in_flight) | inner).with_execution(backend="threading")
        t("start") >> outer >> t("end")
    return wf.graph


def test_nested_group_checkpoint_keeps_finished_inner_members(tmp_path: Path) -> None:
    def go(tmp: Path, crash: set[str] = frozenset()) -> ExecutionContext:
        STARTED.clear()
        STARTED["y"] = threading.Event()
        return run(build_nested_groups, tmp, crash=crash, checkpoint="a")

    reference = go(tmp_path / "ref")
    RAN.clear()
    resumed = go(tmp_path / "int", crash={"y"})
    assert RAN.count("x") == 1 and RAN.count("a") == 1, "a member that had finished ran again"
    assert RAN.count("y") == 1  # its interrupted visit recorded nothing
    assert sorted(resumed.channel.get("ran")) == sorted(reference.channel.get("ran"))
    assert resumed.cycle_counts == reference.cycle_counts
    assert resumed.completed_tasks == reference.completed_tasks
    assert resumed.steps == reference.steps
    assert resumed.group_progress == {}


def build_group_immediate() -> Any:
    with workflow("group-immediate") as wf:
        group = (t("m1") | (t("m2a", immediate) >> t("m2b")) | t("m3")).with_execution(backend="direct")
        t("start") >> group >> t("end")
    return wf.graph


def test_immediate_checkpoint_inside_a_member_reruns_that_member_once(tmp_path: Path) -> None:
    reference = run(build_group_immediate, tmp_path / "ref")
    RAN.clear()
    resumed = run(build_group_immediate, tmp_path / "int", crash={"m2a"}, checkpoint="m2a")
    # interrupted: m2a crashes before recording and m3 still runs; resumed: m2a, m2b, m3 (its first run
    # came after the checkpoint) and end
    assert RAN == ["start", "m1", "m3", "m2a", "m2b", "m3", "end"]
    assert_same_run(reference, resumed)
    restored, meta = CheckpointManager.resume_from_checkpoint(str(tmp_path / "int" / "m2a"))
    assert meta.user_metadata["mode"] == "immediate" and meta.user_metadata["cycle_count"] == 1
    assert "m2a" not in restored.cycle_counts and restored.cycle_counts["m1"] == 1


def test_checkpoint_under_concurrent_writers_is_consistent(tmp_path: Path) -> None:
    """Checkpoints taken while other threads mutate the run state load and hold consistent copies."""
    ctx = ExecutionContext.create(build_linear(), max_steps=10)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set() and i < 50_000:
            # the engine's order: count the visit, run, then mark completed
            ctx.cycle_counts[f"x{i}"] = 1
            ctx.channel.append("log", i)
            ctx.completed_tasks.add(f"x{i}")
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for i in range(20):
            CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / f"c{i}"))
    finally:
        stop.set()
        worker.join()
    for meta in CheckpointManager.list_checkpoints(str(tmp_path)):
        restored, _ = CheckpointManager.resume_from_checkpoint(meta.path)
        # copies are taken in a fixed order (completed before counters), each one whole
        assert restored.completed_tasks <= set(restored.cycle_counts)
        assert restored.task_queue.to_list() == ["a"]


def spawns_then_waits(ctx: TaskExecutionContext) -> str:
    """Member that spawns a dynamic task, then is still running when a sibling's checkpoint is written.

    It writes nothing to the channel: being unfinished at the checkpoint, it runs again on resume.
    """
    RAN.append(ctx.task_id)
    ctx.next_task(TaskWrapper("sp_child", plain, inject_context=True, register_to_context=False))
    STARTED["spawned"].set()
    _wait_for_checkpoint(ctx)
    return "spawner"


def checkpoint_after_spawn(ctx: TaskExecutionContext) -> str:
    assert STARTED["spawned"].wait(20), "the spawning sibling never spawned"
    return checkpointing(ctx)


def build_group_spawning_member() -> Any:
    with workflow("group-spawning-member") as wf:
        group = (t("sp", spawns_then_waits) | t("ck", checkpoint_after_spawn)).with_execution(backend="threading")
        t("start") >> group >> t("end")
    return wf.graph


def test_member_that_spawned_before_the_checkpoint_spawns_again_on_resume(tmp_path: Path) -> None:
    STARTED.clear()
    STARTED["spawned"] = threading.Event()
    reference = run(build_group_spawning_member, tmp_path / "ref")
    STARTED["spawned"] = threading.Event()
    # 'sp' had spawned 'sp_child' (now in the checkpointed graph) but not finished: on resume it runs
    # again and spawns the same task again, which must queue it, not fail as a duplicate
    resumed = run(build_group_spawning_member, tmp_path / "int", crash={"end"}, checkpoint="ck")
    assert resumed.completed_tasks == reference.completed_tasks
    assert "sp_child" in resumed.completed_tasks
    assert resumed.cycle_counts == reference.cycle_counts
    assert sorted(resumed.channel.get("ran")) == sorted(reference.channel.get("ran"))
    assert resumed.channel.get("ran").count("sp_child") == 1


def test_spawning_a_different_task_under_an_existing_dynamic_id_is_still_an_error() -> None:
    from graflow.exceptions import DuplicateTaskError

    def first(ctx: TaskExecutionContext) -> str:
        ctx.next_task(TaskWrapper("same_id", plain, inject_context=True, register_to_context=False))
        return "first"

    def second(ctx: TaskExecutionContext) -> str:
        ctx.next_task(TaskWrapper("same_id", quiet, inject_context=True, register_to_context=False))
        return "second"

    with workflow("dup-dynamic") as wf:
        t("one", first) >> t("two", second)
    with pytest.raises(GraflowError) as info:
        wf.execute()
    error = info.value
    while error is not None and not isinstance(error, DuplicateTaskError):
        error = error.__cause__
    assert isinstance(error, DuplicateTaskError)
