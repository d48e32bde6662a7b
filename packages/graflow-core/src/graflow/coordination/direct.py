"""The ``direct`` coordinator: members one after another in the calling thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from graflow.coordination.coordinator import Coordinator
from graflow.core.handler import TaskResult


class DirectCoordinator(Coordinator):
    """Deterministic and single-threaded; it touches nothing but the group's own members."""

    name = "direct"

    def run_members(
        self, group: Any, member_ids: Sequence[str], run_member: Callable[[str], TaskResult], context: Any
    ) -> dict[str, TaskResult]:
        return {member_id: run_member(member_id) for member_id in member_ids}


__all__ = ["DirectCoordinator"]
