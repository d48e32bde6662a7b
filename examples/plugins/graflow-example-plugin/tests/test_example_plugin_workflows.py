"""The example plugin seen through Graflow itself: registry lookups and real workflow runs."""

from __future__ import annotations

import pytest

from graflow import plugins, task, workflow
from graflow.exceptions import ParallelGroupError
from graflow_example_plugin import QuorumGroupPolicy, ShoutTaskHandler
from graflow_example_plugin.__about__ import __version__


def test_registry_finds_the_entry_point_plugin() -> None:
    assert plugins.lookup("task_handler", "shout") is ShoutTaskHandler
    assert plugins.lookup("group_policy", "quorum") is QuorumGroupPolicy
    assert "shout" in plugins.names("task_handler")
    assert "quorum" in plugins.names("group_policy")


def test_describe_lists_the_plugin() -> None:
    info = {p.name: p for p in plugins.describe()}["example"]
    assert info.distribution == "graflow-example-plugin"
    assert info.version == __version__
    assert info.error is None
    assert info.registers == {"task_handler": ["shout"], "group_policy": ["quorum"]}
    assert set(info.hooks) == {"graflow_register_task_handlers", "graflow_register_group_policies"}


def test_shout_handler_in_a_workflow() -> None:
    with workflow("shout") as wf:

        @task(handler="shout")
        def greet() -> str:
            return "hello"

        @task(handler="shout", handler_kwargs={"suffix": "!"})
        def excite(greet: str) -> str:
            return f"{greet} there"

        greet >> excite

    assert wf.execute() == "HELLO THERE!"


def test_quorum_policy_lets_a_majority_through() -> None:
    with workflow("quorum_ok") as wf:

        @task
        def q_ok_a() -> int:
            return 1

        @task
        def q_ok_b() -> int:
            return 2

        @task
        def q_bad() -> int:
            raise RuntimeError("boom")

        @task
        def q_total(q_ok_a: int, q_ok_b: int) -> int:
            return q_ok_a + q_ok_b

        group = q_ok_a | q_ok_b | q_bad
        group.with_policy("quorum")
        group >> q_total

    assert wf.execute() == 3


def test_quorum_policy_fails_a_minority() -> None:
    ran = []
    with workflow("quorum_fail") as wf:

        @task
        def q_one() -> int:
            return 1

        @task
        def q_two() -> int:
            raise RuntimeError("two broke")

        @task
        def q_three() -> int:
            raise RuntimeError("three broke")

        @task
        def q_after() -> None:
            ran.append("after")

        group = q_one | q_two | q_three
        group.with_policy("quorum")
        group >> q_after

    with pytest.raises(ParallelGroupError, match="quorum"):
        wf.execute()
    assert ran == []


def test_shout_handler_rejects_unknown_settings() -> None:
    with workflow("shout_bad_kwargs") as wf:

        @task(handler="shout", handler_kwargs={"volume": 11})
        def loud() -> str:
            return "x"

    with pytest.raises(Exception) as info:  # the engine decides the wrapper type
        wf.execute()
    chain: list[BaseException] = []
    err: BaseException | None = info.value
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any("volume" in str(e) for e in chain), [repr(e) for e in chain]
