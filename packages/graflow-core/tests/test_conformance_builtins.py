"""Core's built-in handler and policies pass the graflow-testkit conformance suites."""

from __future__ import annotations

import pytest

from graflow.core.handlers.direct import DirectTaskHandler
from graflow.core.handlers.group_policy import (
    AtLeastNGroupPolicy,
    BestEffortGroupPolicy,
    CriticalGroupPolicy,
    StrictGroupPolicy,
)
from graflow_testkit.handlers import TaskHandlerConformance
from graflow_testkit.policies import GroupPolicyConformance


class TestDirectHandlerConformance(TaskHandlerConformance):
    @pytest.fixture
    def handler(self):
        return DirectTaskHandler()


class TestStrictPolicyConformance(GroupPolicyConformance):
    accepts = [(True, True, True)]
    rejects = [(True, False, True), (False, False, False)]

    @pytest.fixture
    def policy(self):
        return StrictGroupPolicy()


class TestBestEffortPolicyConformance(GroupPolicyConformance):
    accepts = [(True, True), (False, True), (False, False)]

    @pytest.fixture
    def policy(self):
        return BestEffortGroupPolicy()


class TestAtLeastNPolicyConformance(GroupPolicyConformance):
    accepts = [(True, True, False), (True, True, True)]
    rejects = [(True, False, False), (False, False, False)]

    @pytest.fixture
    def policy(self):
        return AtLeastNGroupPolicy(2)


class TestCriticalPolicyConformance(GroupPolicyConformance):
    accepts = [(True, False, False), (True, True, True)]
    rejects = [(False, True, True)]

    @pytest.fixture
    def policy(self):
        return CriticalGroupPolicy(["m0"])
