"""Group execution policies: decide whether a parallel group succeeded.

A policy sees every member's :class:`~graflow.core.handler.TaskResult` after all members finished
and raises :class:`~graflow.exceptions.ParallelGroupError` to fail the group. Policies are plugins:
the built-ins below are registered by :mod:`graflow.core_plugin` and a third-party package can add
its own names (``group.with_policy("quorum")``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from graflow.core.handler import TaskResult
from graflow.exceptions import ConfigError, ParallelGroupError

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable


class GroupExecutionPolicy:
    """Base class of every policy. Subclasses implement :meth:`on_group_finished`.

    :meth:`validate` is called when the policy is attached to a group, so a bad argument fails at
    build time with the group's name rather than in the middle of a run.
    """

    name: ClassVar[str] = ""

    def get_name(self) -> str:
        return self.name or type(self).__name__

    def validate(self, group_id: str, member_ids: Sequence[str]) -> None:
        """Raise :class:`ConfigError` when this policy cannot apply to a group with these members."""

    def on_group_finished(
        self,
        group_id: str,
        tasks: Sequence[Executable],
        results: dict[str, TaskResult],
        context: ExecutionContext,
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement on_group_finished()")

    # helpers for subclasses
    @staticmethod
    def _partition_group_results(
        results: Mapping[str, TaskResult],
    ) -> tuple[list[str], list[tuple[str, str]]]:
        ok = [tid for tid, r in results.items() if r.success]
        failed = [(tid, r.error_message or "unknown error") for tid, r in results.items() if not r.success]
        return ok, failed

    def _fail(self, group_id: str, results: Mapping[str, TaskResult], why: str) -> ParallelGroupError:
        ok, failed = self._partition_group_results(results)
        detail = "; ".join(f"{tid}: {msg}" for tid, msg in failed) or "no member failed"
        err = ParallelGroupError(
            f"Parallel group '{group_id}' failed ({self.get_name()} policy): {why}. Failed members: {detail}",
            group_id=group_id,
            failed_tasks=failed,
            successful_tasks=ok,
        )
        first = next((r.error for r in results.values() if not r.success and r.error is not None), None)
        if first is not None:
            err.__cause__ = first
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class StrictGroupPolicy(GroupExecutionPolicy):
    """Every member must succeed (the default)."""

    name = "strict"

    def on_group_finished(self, group_id, tasks, results, context) -> None:  # type: ignore[override]
        if any(not r.success for r in results.values()):
            raise self._fail(group_id, results, "every member must succeed")


class BestEffortGroupPolicy(GroupExecutionPolicy):
    """The group always succeeds; failed members are visible in the results and channel."""

    name = "best_effort"

    def on_group_finished(self, group_id, tasks, results, context) -> None:  # type: ignore[override]
        return None


class AtLeastNGroupPolicy(GroupExecutionPolicy):
    """At least ``n`` members must succeed."""

    name = "at_least_n"

    def __init__(self, n: int | None = None, *, min_success: int | None = None) -> None:
        value = n if n is not None else min_success
        if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"at_least_n needs a whole number n >= 0 (got {value!r}): with_policy('at_least_n', n=2)")
        self.n = value

    @property
    def min_success(self) -> int:
        return self.n

    def validate(self, group_id: str, member_ids: Sequence[str]) -> None:
        if self.n > len(member_ids):
            raise ConfigError(
                f"Parallel group '{group_id}' has {len(member_ids)} members, so at_least_n={self.n} can never be "
                f"met. Use n <= {len(member_ids)}."
            )

    def on_group_finished(self, group_id, tasks, results, context) -> None:  # type: ignore[override]
        ok = sum(1 for r in results.values() if r.success)
        if ok < self.n:
            raise self._fail(group_id, results, f"{ok} member(s) succeeded, at least {self.n} required")

    def __repr__(self) -> str:
        return f"AtLeastNGroupPolicy(n={self.n})"


class CriticalGroupPolicy(GroupExecutionPolicy):
    """The named members must succeed; the others may fail."""

    name = "critical_tasks"
    aliases: ClassVar[tuple[str, ...]] = ("critical",)

    def __init__(
        self, task_ids: Iterable[str] | None = None, *, critical_task_ids: Iterable[str] | None = None
    ) -> None:
        ids = task_ids if task_ids is not None else critical_task_ids
        if ids is None or isinstance(ids, str):
            raise ConfigError(
                "critical_tasks needs a list of task ids: with_policy('critical_tasks', task_ids=['load'])"
            )
        self.task_ids = list(ids)
        if not self.task_ids:
            raise ConfigError("critical_tasks needs at least one task id")

    @property
    def critical_task_ids(self) -> list[str]:
        return self.task_ids

    def validate(self, group_id: str, member_ids: Sequence[str]) -> None:
        unknown = [t for t in self.task_ids if t not in member_ids]
        if unknown:
            raise ConfigError(
                f"Parallel group '{group_id}' has no member(s) {unknown} named as critical. "
                f"Its members are: {', '.join(member_ids)}"
            )

    def on_group_finished(self, group_id, tasks, results, context) -> None:  # type: ignore[override]
        failed = [t for t in self.task_ids if t in results and not results[t].success]
        if failed:
            raise self._fail(group_id, results, f"critical member(s) {failed} failed")

    def __repr__(self) -> str:
        return f"CriticalGroupPolicy(task_ids={self.task_ids!r})"


class ErrorHandlingPolicy:
    """Shortcuts that build the built-in policies: ``ErrorHandlingPolicy.at_least_n(2)``.

    The attributes ``STRICT``, ``BEST_EFFORT``, ``AT_LEAST_N`` and ``CRITICAL_TASKS`` hold the
    registered names, for code that prefers constants to strings.
    """

    STRICT = "strict"
    BEST_EFFORT = "best_effort"
    AT_LEAST_N = "at_least_n"
    CRITICAL_TASKS = "critical_tasks"

    @staticmethod
    def strict() -> StrictGroupPolicy:
        return StrictGroupPolicy()

    @staticmethod
    def best_effort() -> BestEffortGroupPolicy:
        return BestEffortGroupPolicy()

    @staticmethod
    def at_least_n(n: int) -> AtLeastNGroupPolicy:
        return AtLeastNGroupPolicy(n)

    @staticmethod
    def critical_tasks(task_ids: Iterable[str]) -> CriticalGroupPolicy:
        return CriticalGroupPolicy(task_ids)

    critical = critical_tasks


def resolve_group_policy(policy: Any = None, **kwargs: Any) -> GroupExecutionPolicy:
    """Turn a name (with its keyword arguments), an instance or a class into a policy instance."""
    if policy is None:
        policy = "strict"
    if isinstance(policy, GroupExecutionPolicy):
        if kwargs:
            raise ConfigError(f"Keyword arguments {sorted(kwargs)} make no sense with a policy instance {policy!r}")
        return policy
    if isinstance(policy, type) and issubclass(policy, GroupExecutionPolicy):
        return policy(**kwargs)
    if isinstance(policy, str):
        from graflow import plugins

        cls = plugins.get_group_policy_class(policy)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"Bad arguments for group policy '{policy}': {exc}") from exc
    raise ConfigError(
        f"A group policy must be a name, a GroupExecutionPolicy instance or subclass; got {type(policy).__name__}"
    )


canonicalize_group_policy = resolve_group_policy

__all__ = [
    "AtLeastNGroupPolicy",
    "BestEffortGroupPolicy",
    "CriticalGroupPolicy",
    "ErrorHandlingPolicy",
    "GroupExecutionPolicy",
    "StrictGroupPolicy",
    "resolve_group_policy",
]
