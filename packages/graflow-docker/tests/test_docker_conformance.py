"""The testkit's task-handler suite, run against real containers (cold and warm)."""

from __future__ import annotations

import pytest

from graflow_docker import DockerTaskHandler
from graflow_testkit.handlers import TaskHandlerConformance

pytestmark = pytest.mark.docker


class TestDockerHandlerConformance(TaskHandlerConformance):
    """A fresh container per task."""

    stops_timed_out_tasks = True

    @pytest.fixture
    def handler(self, base_image, no_leaks):
        h = DockerTaskHandler(image=base_image)
        yield h
        h.close()


class TestWarmDockerHandlerConformance(TaskHandlerConformance):
    """Warm containers: one runner per container serves task after task."""

    stops_timed_out_tasks = True

    @pytest.fixture
    def handler(self, base_image, no_leaks):
        h = DockerTaskHandler(image=base_image, reuse=True, pool_size=2)
        yield h
        h.close()
