"""The task-handler conformance suite, run on a real sshd (one runner per task, and warm runners)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from graflow_ssh import SSHTaskHandler
from graflow_testkit.handlers import TaskHandlerConformance
from graflow_testkit.services.sshd import SSHServer

pytestmark = pytest.mark.ssh


def _handler(sshd: SSHServer, **settings: object) -> SSHTaskHandler:
    return SSHTaskHandler(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        key_filename=str(sshd.client_key),
        known_hosts=str(sshd.known_hosts),
        allow_agent=False,
        **settings,
    )


class TestSSHHandlerConformance(TaskHandlerConformance):
    stops_timed_out_tasks = True

    @pytest.fixture(scope="class")
    @classmethod
    def handler(cls, sshd: SSHServer) -> Iterator[SSHTaskHandler]:
        handler = _handler(sshd)
        yield handler
        handler.close()


class TestSSHHandlerConformanceReuse(TaskHandlerConformance):
    stops_timed_out_tasks = True

    @pytest.fixture(scope="class")
    @classmethod
    def handler(cls, sshd: SSHServer) -> Iterator[SSHTaskHandler]:
        handler = _handler(sshd, reuse=True, pool_size=2)
        yield handler
        handler.close()
