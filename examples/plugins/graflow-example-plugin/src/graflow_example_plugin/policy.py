"""The ``quorum`` group policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from graflow.core.handler import TaskResult
from graflow.core.handlers.group_policy import GroupExecutionPolicy

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable


class QuorumGroupPolicy(GroupExecutionPolicy):
    """A parallel group succeeds iff strictly more than half of its members succeeded.

    With three members two must succeed; with four, three. An empty group has no majority and
    fails. Use it with ``(a | b | c).with_policy("quorum")``.
    """

    name = "quorum"

    def on_group_finished(
        self,
        group_id: str,
        tasks: Sequence[Executable],
        results: dict[str, TaskResult],
        context: ExecutionContext,
    ) -> None:
        total = len(results)
        succeeded = sum(1 for r in results.values() if r.success)
        if succeeded * 2 <= total:
            needed = total // 2 + 1
            raise self._fail(
                group_id,
                results,
                f"{succeeded} of {total} member(s) succeeded, a quorum needs at least {needed}",
            )
