"""Core's in-process queue and broker pass the graflow-testkit queue suites."""

from __future__ import annotations

from typing import Any

import pytest

from graflow.queue.local import LocalTaskQueue
from graflow.worker.broker import MemoryBroker
from graflow_testkit.queues import BrokerConformance, TaskQueueConformance


class TestLocalTaskQueueConformance(TaskQueueConformance):
    @pytest.fixture
    def queue(self) -> LocalTaskQueue:
        return LocalTaskQueue()


class _Producer:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def send(self, payload: bytes, queue: str) -> str:
        return self.broker.submit(payload, queue)

    def reply(self, message_id: str, timeout: float) -> Any:
        return self.broker.wait_reply(message_id, timeout)


class TestMemoryBrokerConformance(BrokerConformance):
    @pytest.fixture
    def broker(self) -> MemoryBroker:
        return MemoryBroker(max_deliveries=2)

    @pytest.fixture
    def producer(self, broker: MemoryBroker) -> _Producer:
        return _Producer(broker)
