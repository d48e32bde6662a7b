"""Conformance suite for group execution policies.

Plugin authors subclass :class:`GroupPolicyConformance`, provide a ``policy`` fixture and list
the outcomes their policy must accept and reject::

    class TestQuorum(GroupPolicyConformance):
        accepts = [(True, True, False)]       # 2 of 3 members succeeded: the group succeeds
        rejects = [(True, False, False)]      # 1 of 3: the group fails

        @pytest.fixture
        def policy(self):
            return QuorumGroupPolicy()

Each outcome is a tuple with one entry per member (True = that member succeeds). The suite checks
the policy's verdicts directly and inside real workflows on both built-in coordinators.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from graflow.core.decorators import task
from graflow.core.handler import TaskResult
from graflow.core.handlers.group_policy import GroupExecutionPolicy
from graflow.core.task import ParallelGroup
from graflow.core.workflow import workflow
from graflow.exceptions import ParallelGroupError
from graflow_testkit.expected_failures import ExpectedFailures


class MemberFailure(Exception):
    """Raised by members told to fail."""


def _results(outcome: tuple[bool, ...]) -> dict[str, TaskResult]:
    results = {}
    for i, ok in enumerate(outcome):
        tid = f"m{i}"
        error = None if ok else MemberFailure(f"{tid} failed")
        results[tid] = TaskResult(tid, ok, error, None if ok else str(error), 0.001, 0.0, i if ok else None)
    return results


def _group_workflow(outcome: tuple[bool, ...], policy: GroupExecutionPolicy, backend: str) -> Any:
    with workflow("policy-conformance") as wf:
        members = []
        for i, ok in enumerate(outcome):

            def body(_i: int = i, _ok: bool = ok) -> int:
                if not _ok:
                    raise MemberFailure(f"m{_i} failed")
                return _i

            members.append(task(f"m{i}")(body))
        group = ParallelGroup(members)
        group.with_execution(backend=backend)
        group.with_policy(policy)

        @task
        def after() -> str:
            return "after"

        group >> after
    return wf


class GroupPolicyConformance(ExpectedFailures):
    """Subclass; provide a ``policy`` fixture and the ``accepts`` / ``rejects`` outcome lists."""

    accepts: ClassVar[list[tuple[bool, ...]]] = []
    rejects: ClassVar[list[tuple[bool, ...]]] = []


    def test_is_a_group_policy(self, policy: GroupExecutionPolicy) -> None:
        assert isinstance(policy, GroupExecutionPolicy)
        assert policy.get_name()

    def test_the_subclass_lists_outcomes(self) -> None:
        assert self.accepts or self.rejects, "list at least one outcome in accepts or rejects"

    def test_accepts_listed_outcomes(self, policy: GroupExecutionPolicy) -> None:
        for outcome in self.accepts:
            results = _results(outcome)
            policy.on_group_finished("g", [], results, None)  # type: ignore[arg-type]

    def test_rejects_with_parallel_group_error(self, policy: GroupExecutionPolicy) -> None:
        for outcome in self.rejects:
            results = _results(outcome)
            with pytest.raises(ParallelGroupError) as info:
                policy.on_group_finished("g", [], results, None)  # type: ignore[arg-type]
            failed_ids = {tid for tid, _ in info.value.failed_tasks}
            expected_failed = {tid for tid, r in results.items() if not r.success}
            assert failed_ids == expected_failed
            assert info.value.group_id == "g"

    @pytest.mark.parametrize("backend", ["direct", "threading"])
    def test_verdicts_inside_workflows(self, policy: GroupExecutionPolicy, backend: str) -> None:
        for outcome in self.accepts:
            wf = _group_workflow(outcome, policy, backend)
            result, context = wf.execute(ret_context=True)
            assert result == "after"
            for i, ok in enumerate(outcome):
                value = context.get_result(f"m{i}")
                assert value == i if ok else isinstance(value, MemberFailure)
        for outcome in self.rejects:
            wf = _group_workflow(outcome, policy, backend)
            with pytest.raises(ParallelGroupError):
                wf.execute()

    def test_survives_pickling(self, policy: GroupExecutionPolicy) -> None:
        import cloudpickle

        clone = cloudpickle.loads(cloudpickle.dumps(policy))
        assert type(clone) is type(policy)
        for outcome in self.accepts:
            clone.on_group_finished("g", [], _results(outcome), None)  # type: ignore[arg-type]


__all__ = ["GroupPolicyConformance", "MemberFailure"]
