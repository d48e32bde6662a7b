"""Which member jobs need the tail router, decided once per shipped group (pure logic, no broker I/O).

A worker runs one :class:`~graflow.worker.jobs.MemberJob` per member of a distributed group. Deciding
whether a member's chained tail names another queue must not look at every member of the group for
every job: a 10,000-member group would then cost 10,000 x 10,000 branch walks on its workers.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import cloudpickle

import graflow.worker.jobs as jobs
from graflow.channels.memory_channel import MemoryChannel
from graflow.core.decorators import task
from graflow.core.task import ParallelGroup
from graflow.core.workflow import workflow
from graflow.worker.jobs import MemberJob, RunState, WorkerRuntime, _TailRouter, group_subgraph


class _Broker:
    """Just enough of a broker for the router to consider forwarding (nothing is sent in these tests)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def execute_task(self, task: Any, context: Any) -> Any:
        self.sent.append(task.task_id)
        return f"forwarded {task.task_id}"

    def load_blob(self, key: str) -> bytes | None:
        return None


@task
def leaf(i: int) -> int:
    return i * 2


@task(queue="gpu")
def gpu_step(i: int) -> int:
    return i + 1


def _group(n: int, routed: set[int] = frozenset()) -> tuple[Any, ParallelGroup]:
    with workflow("router") as wf:
        members = []
        for i in range(n):
            head = leaf(task_id=f"m{i}", i=i)
            members.append(head >> gpu_step(task_id=f"g{i}", i=i) if i in routed else head)
        group = ParallelGroup(members)
    sub = group_subgraph(wf.graph, group.task_id)
    return sub, sub._nodes[group.task_id]


def test_the_members_needing_the_router_are_found_once_per_group() -> None:
    graph, group = _group(500, routed={7, 300})
    runtime = WorkerRuntime(_Broker())  # type: ignore[arg-type]
    with mock.patch.object(jobs, "member_branches", wraps=jobs.member_branches) as branches:
        routers = {f"m{i}": _TailRouter.for_member(runtime, graph, group, f"m{i}") for i in range(500)}
    assert {m for m, r in routers.items() if r is not None} == {"m7", "m300"}
    assert branches.call_count == 1, f"every member job walked the whole group ({branches.call_count} walks)"


def test_a_new_copy_of_the_group_is_looked_at_afresh() -> None:
    runtime = WorkerRuntime(_Broker())  # type: ignore[arg-type]
    graph_a, group_a = _group(5, routed={1})
    graph_b, group_b = _group(5, routed={3})  # same ids, another shipped graph: its own answer
    assert _TailRouter.for_member(runtime, graph_a, group_a, "m1") is not None
    assert _TailRouter.for_member(runtime, graph_a, group_a, "m3") is None
    assert _TailRouter.for_member(runtime, graph_b, group_b, "m1") is None
    assert _TailRouter.for_member(runtime, graph_b, group_b, "m3") is not None


def test_member_jobs_forward_only_the_tasks_naming_another_queue() -> None:
    graph, group = _group(4, routed={2})
    broker = _Broker()
    runtime = WorkerRuntime(broker)  # type: ignore[arg-type]
    runtime._graphs.put("graph-key", graph)
    blob = cloudpickle.dumps(MemoryChannel("router"))
    replies = {
        m: MemberJob("s", "graph-key", group.task_id, m, blob).execute(runtime, RunState()) for m in graph.owner_of
    }
    assert all(r.ok for r in replies.values()), {m: r.error_message for m, r in replies.items() if not r.ok}
    assert broker.sent == ["g2"]
    assert replies["m2"].result == "forwarded g2"
    assert replies["m0"].result == 0 and replies["m3"].result == 6
