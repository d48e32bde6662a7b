"""GroupExecutor: runs one parallel group under its coordinator and applies its policy.

The engine hands it the group and a ``run_member`` callable; it picks the coordinator (the
group's own, else the context-wide default, else ``threading``), skips members that already
finished (a run resumed from a checkpoint taken inside the group), records every member's
outcome in the channel, and lets the policy decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graflow.coordination.coordinator import get_coordinator
from graflow.core.handler import TaskResult

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import ParallelGroup

DEFAULT_BACKEND = "threading"


class GroupExecutor:
    """Stateless; one instance serves every group."""

    @staticmethod
    def coordinator_for(group: ParallelGroup, context: ExecutionContext) -> tuple[str, dict[str, Any]]:
        config = group._execution_config
        if config["backend"]:
            return config["backend"], dict(config["backend_config"])
        if context.default_coordinator:
            return context.default_coordinator, {**context.default_coordinator_config, **config["backend_config"]}
        return DEFAULT_BACKEND, dict(config["backend_config"])

    def execute_parallel_group(
        self,
        group: ParallelGroup,
        context: ExecutionContext,
        run_member: Callable[[str], TaskResult],
    ) -> dict[str, Any] | None:
        """Run the group; return ``{member_id: result}`` or raise what the policy raised.

        Returns None when the workflow was terminated from inside a member.
        """
        group_id = group.task_id
        member_ids = group.member_ids
        with context.state_lock:
            progress = context.group_progress.setdefault(group_id, {})
            todo = [m for m in member_ids if not (m in progress and progress[m].success)]
            # A checkpoint taken while members run puts the unfinished ones back to these counts,
            # since the resumed run starts them again (and counts their visits again).
            counts = context.cycle_counts
            unfinished = set(todo)
            context.group_cycle_base[group_id] = {
                member_id: {node: counts.get(node, 0) for node in nodes}
                for member_id, nodes in member_branches(group)
                if member_id in unfinished
            }

        def record(member_id: str, outcome: TaskResult) -> TaskResult:
            requests = outcome.metadata.pop("checkpoint_requests", ())
            progress[member_id] = outcome
            if requests:
                # written only now, so the checkpoint already counts this member as finished
                from graflow.core.checkpoint import write_deferred_checkpoint

                for task_id, request in requests:
                    write_deferred_checkpoint(context, task_id, request)
            return outcome

        def run_and_record(member_id: str) -> TaskResult:
            return record(member_id, run_member(member_id))

        # A distributed coordinator runs members elsewhere and reports each outcome as it arrives.
        run_and_record.record = record  # type: ignore[attr-defined]

        name, backend_config = self.coordinator_for(group, context)
        started = time.perf_counter()
        with context.state_lock:
            context.active_groups.append(group_id)
        try:
            if todo:
                returned = get_coordinator(name, backend_config).run_members(group, todo, run_and_record, context)
                for member_id, outcome in (returned or {}).items():
                    if progress.get(member_id) is not outcome:
                        record(member_id, outcome)
        finally:
            with context.state_lock:
                context.active_groups.remove(group_id)
                context.group_cycle_base.pop(group_id, None)
        results = {m: progress[m] for m in member_ids if m in progress}
        context.raise_if_canceled()
        if context.terminated is not None:
            return None
        with context.state_lock:
            context.group_progress.pop(group_id, None)
        channel = context.channel
        graph_nodes = context.graph._nodes
        for member_id, outcome in results.items():
            if not outcome.success and outcome.error is not None:
                node = graph_nodes.get(outcome.metadata.get("failed_task", member_id))
                key = getattr(node, "result_key", member_id + ".__result__")
                channel.set(key, outcome.error)
        members = [graph_nodes[m] for m in member_ids if m in graph_nodes]
        from graflow import plugins

        if plugins.has_observers():
            plugins.emit(
                "group.finished",
                session_id=context.session_id,
                group_id=group_id,
                duration=time.perf_counter() - started,
                succeeded=[m for m, r in results.items() if r.success],
                failed=[m for m, r in results.items() if not r.success],
            )
        group.policy.on_group_finished(group_id, members, results, context)
        return {m: (r.result if r.success else r.error) for m, r in results.items()}


def member_branches(group: ParallelGroup) -> list[tuple[str, list[str]]]:
    """``(member id, ids of the tasks the member's branch runs)`` for each member (a chain's every task)."""
    from graflow.core.task import SequentialTask

    branches = []
    for member in group.tasks:
        if isinstance(member, SequentialTask):
            nodes = [node.task_id for node in member._nodes()]
            branches.append((nodes[0], nodes))
        else:
            branches.append((member.task_id, [member.task_id]))
    return branches


__all__ = ["GroupExecutor", "member_branches"]
