"""Conformance suites for task queues and worker brokers.

:class:`TaskQueueConformance` checks the :class:`~graflow.queue.base.TaskQueue` API (a FIFO of task
ids, what checkpoints store). Subclass it and provide a fresh, empty ``queue``::

    class TestMyQueue(TaskQueueConformance):
        @pytest.fixture
        def queue(self):
            q = MyQueue(...)
            yield q
            q.clear()

:class:`BrokerConformance` checks the worker-facing :class:`~graflow.worker.broker.Broker`
contract a distributed queue must keep for at-least-once delivery: FIFO order, in-flight until
acknowledged, hand-back to the front, redelivery of a dead worker's messages, dead-lettering
after ``max_deliveries`` with the producer told, and no loss under concurrent consumers. Provide
``broker`` (built with ``max_deliveries=2``), and ``producer``, an object with
``send(payload: bytes, queue: str) -> str`` (the message id) and ``reply(message_id, timeout)``
returning the reply bytes, ``None`` for a dead-lettered message, or raising ``TimeoutError``.
``xfail_tests`` lists tests expected to fail, with why (strict xfails).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from graflow.core.task import TaskWrapper
from graflow.queue.base import TaskQueue
from graflow.worker.broker import Broker
from graflow_testkit.expected_failures import ExpectedFailures


class TaskQueueConformance(ExpectedFailures):
    """Tests every :class:`~graflow.queue.base.TaskQueue` must pass."""

    @pytest.fixture
    def queue(self) -> TaskQueue:
        raise NotImplementedError("subclasses provide a 'queue' fixture (fresh and empty)")

    def test_is_a_task_queue_with_a_name(self, queue: TaskQueue) -> None:
        assert isinstance(queue, TaskQueue)
        assert isinstance(type(queue).name, str) and type(queue).name

    def test_starts_empty(self, queue: TaskQueue) -> None:
        assert queue.size() == 0
        assert queue.is_empty()
        assert queue.to_list() == []
        assert queue.dequeue() is None

    def test_first_in_first_out(self, queue: TaskQueue) -> None:
        for tid in ("a", "b", "c"):
            assert queue.enqueue(tid) is True
        assert queue.size() == 3
        assert not queue.is_empty()
        assert [queue.dequeue(), queue.dequeue(), queue.dequeue()] == ["a", "b", "c"]
        assert queue.dequeue() is None
        assert queue.is_empty()

    def test_to_list_is_front_first_and_does_not_consume(self, queue: TaskQueue) -> None:
        for tid in ("x", "y", "z"):
            queue.enqueue(tid)
        assert queue.to_list() == ["x", "y", "z"]
        assert queue.size() == 3
        assert queue.get_next_task() == "x"
        assert queue.to_list() == ["y", "z"]

    def test_clear_empties_it(self, queue: TaskQueue) -> None:
        for tid in ("a", "b"):
            queue.enqueue(tid)
        queue.clear()
        assert queue.size() == 0
        assert queue.dequeue() is None
        queue.enqueue("again")
        assert queue.to_list() == ["again"]

    def test_accepts_tasks_as_well_as_ids(self, queue: TaskQueue) -> None:
        queue.enqueue(TaskWrapper("from_object", lambda: None, register_to_context=False))
        assert queue.dequeue() == "from_object"

    def test_ids_round_trip_unchanged(self, queue: TaskQueue) -> None:
        odd = ["with space", "ünïcødé", "a:b|c", "x" * 300, "0"]
        for tid in odd:
            queue.enqueue(tid)
        assert queue.to_list() == odd
        assert [queue.dequeue() for _ in odd] == odd

    def test_duplicates_are_kept(self, queue: TaskQueue) -> None:
        for tid in ("a", "a", "b", "a"):
            queue.enqueue(tid)
        assert queue.to_list() == ["a", "a", "b", "a"]

    def test_interleaved_order(self, queue: TaskQueue) -> None:
        out = []
        for i in range(50):
            queue.enqueue(f"t{i}")
            if i % 3 == 2:
                out.append(queue.dequeue())
        while not queue.is_empty():
            out.append(queue.dequeue())
        assert out == [f"t{i}" for i in range(50)]

    def test_concurrent_producers_and_consumers_lose_nothing(self, queue: TaskQueue) -> None:
        producers, per_producer = 4, 200
        taken: list[str] = []
        lock = threading.Lock()
        done = threading.Event()

        def produce(p: int) -> None:
            for i in range(per_producer):
                queue.enqueue(f"p{p}-{i}")

        def consume() -> None:
            while True:
                tid = queue.dequeue()
                if tid is None:
                    if done.is_set() and queue.is_empty():
                        return
                    time.sleep(0.001)
                    continue
                with lock:
                    taken.append(tid)

        consumers = [threading.Thread(target=consume) for _ in range(3)]
        for thread in consumers:
            thread.start()
        makers = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for thread in makers:
            thread.start()
        for thread in makers:
            thread.join()
        done.set()
        for thread in consumers:
            thread.join(timeout=60)
        assert sorted(taken) == sorted(f"p{p}-{i}" for p in range(producers) for i in range(per_producer))
        # each producer's own items come out in the order it queued them
        for p in range(producers):
            mine = [t for t in taken if t.startswith(f"p{p}-")]
            assert len(mine) == per_producer

    def test_metrics_report_the_size(self, queue: TaskQueue) -> None:
        queue.enqueue("a")
        queue.enqueue("b")
        assert queue.get_metrics()["size"] == 2


class BrokerConformance(ExpectedFailures):
    """Tests every worker-facing :class:`~graflow.worker.broker.Broker` must pass (see the module docstring)."""

    #: Seconds the suite's heartbeats last; kept short so redelivery tests are quick.
    heartbeat_ttl = 0.5

    @pytest.fixture
    def broker(self) -> Broker:
        raise NotImplementedError("subclasses provide a 'broker' fixture (built with max_deliveries=2)")

    @pytest.fixture
    def producer(self) -> Any:
        raise NotImplementedError("subclasses provide a 'producer' fixture (send(payload, queue), reply(id, timeout))")

    @pytest.fixture
    def queue_name(self) -> str:
        return f"conformance-{uuid.uuid4().hex[:8]}"

    # -- helpers ------------------------------------------------------------------------------------------
    def _take(self, broker: Broker, queue: str, worker: str, timeout: float = 2.0) -> Any:
        delivery = broker.fetch(queue, worker, timeout)
        assert delivery is not None, f"no message arrived on '{queue}' within {timeout}s"
        return delivery

    # -- tests ----------------------------------------------------------------------------------------------
    def test_is_a_broker(self, broker: Broker) -> None:
        assert isinstance(broker, Broker)

    def test_fetch_times_out_empty(self, broker: Broker, queue_name: str) -> None:
        started = time.monotonic()
        assert broker.fetch(queue_name, "w1", 0.2) is None
        assert time.monotonic() - started >= 0.15

    def test_fifo_and_payload_round_trip(self, broker: Broker, producer: Any, queue_name: str) -> None:
        payloads = [b"first", b"\x00\xffbinary|with|bars\n", b"third" * 1000]
        ids = [producer.send(p, queue_name) for p in payloads]
        got = [self._take(broker, queue_name, "w1") for _ in payloads]
        assert [d.body for d in got] == payloads
        assert [d.id for d in got] == ids
        assert all(d.deliveries == 1 for d in got)
        assert all(d.queue == queue_name for d in got)

    def test_ack_sends_the_reply(self, broker: Broker, producer: Any, queue_name: str) -> None:
        mid = producer.send(b"job", queue_name)
        broker.heartbeat("w1", [queue_name], 30)
        delivery = self._take(broker, queue_name, "w1")
        broker.ack(delivery, "w1", b"the answer")
        assert producer.reply(mid, 5.0) == b"the answer"
        # acknowledged means gone: nothing to redeliver when the worker vanishes
        broker.reap("w1")
        assert broker.fetch(queue_name, "w2", 0.2) is None

    def test_batch_ack_and_fetch(self, broker: Broker, producer: Any, queue_name: str) -> None:
        ids = [producer.send(f"job{i}".encode(), queue_name) for i in range(5)]
        taken = broker.fetch_batch(queue_name, "w1", 3, 1.0)
        assert 1 <= len(taken) <= 3
        while len(taken) < 5:
            more = broker.fetch_batch(queue_name, "w1", 5 - len(taken), 1.0)
            assert more, "messages went missing"
            taken.extend(more)
        assert [d.id for d in taken] == ids
        broker.ack_batch([(d, d.body.upper()) for d in taken], "w1")
        assert [producer.reply(i, 5.0) for i in ids] == [f"JOB{i}".encode() for i in range(5)]

    def test_messages_are_routed_by_queue_name(self, broker: Broker, producer: Any, queue_name: str) -> None:
        other = queue_name + "-gpu"
        producer.send(b"cpu job", queue_name)
        producer.send(b"gpu job", other)
        assert self._take(broker, other, "gpu-worker").body == b"gpu job"
        assert self._take(broker, queue_name, "cpu-worker").body == b"cpu job"
        assert broker.fetch(other, "gpu-worker", 0.1) is None

    def test_requeue_puts_it_back_at_the_front(self, broker: Broker, producer: Any, queue_name: str) -> None:
        producer.send(b"one", queue_name)
        producer.send(b"two", queue_name)
        first = self._take(broker, queue_name, "w1")
        broker.requeue(first, "w1")
        again = self._take(broker, queue_name, "w2")
        assert again.body == b"one"
        assert again.deliveries == 1, "a hand-back is not a failed delivery"
        assert self._take(broker, queue_name, "w2").body == b"two"

    def test_a_dead_workers_messages_are_redelivered(self, broker: Broker, producer: Any, queue_name: str) -> None:
        producer.send(b"survivor", queue_name)
        broker.heartbeat("doomed", [queue_name], self.heartbeat_ttl)
        taken = self._take(broker, queue_name, "doomed")
        broker.reap()
        assert broker.fetch(queue_name, "w2", 0.05) is None, "a live worker's message must not move"
        time.sleep(self.heartbeat_ttl + 0.3)  # the heartbeat expires: the worker is dead
        assert broker.reap() >= 1
        again = self._take(broker, queue_name, "w2")
        assert again.id == taken.id and again.body == b"survivor"
        assert again.deliveries == 2

    def test_heartbeats_keep_a_slow_worker_alive(self, broker: Broker, producer: Any, queue_name: str) -> None:
        producer.send(b"long task", queue_name)
        broker.heartbeat("slow", [queue_name], self.heartbeat_ttl)
        self._take(broker, queue_name, "slow")
        for _ in range(4):
            time.sleep(self.heartbeat_ttl / 2)
            broker.heartbeat("slow", [queue_name], self.heartbeat_ttl)
            broker.reap()
        assert broker.fetch(queue_name, "thief", 0.1) is None

    def test_poison_goes_to_the_dead_letter_queue(self, broker: Broker, producer: Any, queue_name: str) -> None:
        mid = producer.send(b"poison", queue_name)
        for attempt in range(2):  # max_deliveries=2: each worker dies holding it
            worker = f"victim{attempt}"
            broker.heartbeat(worker, [queue_name], 30)
            assert self._take(broker, queue_name, worker).id == mid
            broker.reap(worker)  # the supervisor saw it die
        assert broker.fetch(queue_name, "w3", 0.2) is None, "dead-lettered, not redelivered again"
        assert producer.reply(mid, 5.0) is None, "the producer is told the message is dead"
        assert broker.depths([queue_name])[queue_name] == (0, 1)

    def test_dead_letter_by_the_worker(self, broker: Broker, producer: Any, queue_name: str) -> None:
        mid = producer.send(b"undecodable", queue_name)
        delivery = self._take(broker, queue_name, "w1")
        broker.dead_letter(delivery, "w1", "cannot unpickle")
        assert producer.reply(mid, 5.0) is None
        assert broker.depths([queue_name])[queue_name] == (0, 1)
        broker.reap("w1")
        assert broker.fetch(queue_name, "w2", 0.1) is None

    def test_depths_and_in_flight(self, broker: Broker, producer: Any, queue_name: str) -> None:
        for i in range(3):
            producer.send(b"x%d" % i, queue_name)
        assert broker.depths([queue_name])[queue_name] == (3, 0)
        broker.heartbeat("w1", [queue_name], 30)
        held = self._take(broker, queue_name, "w1")
        assert broker.depths([queue_name])[queue_name] == (2, 0)
        assert broker.in_flight() >= 1
        broker.ack(held, "w1", None)

    def test_competing_consumers_each_message_exactly_once(
        self, broker: Broker, producer: Any, queue_name: str
    ) -> None:
        n = 300
        ids = {producer.send(b"m%d" % i, queue_name) for i in range(n)}
        seen: list[str] = []
        lock = threading.Lock()

        def consume(worker: str) -> None:
            broker.heartbeat(worker, [queue_name], 30)
            while True:
                delivery = broker.fetch(queue_name, worker, 0.3)
                if delivery is None:
                    return
                with lock:
                    seen.append(delivery.id)
                broker.ack(delivery, worker, b"ok")

        threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(seen) == n and set(seen) == ids


__all__ = ["BrokerConformance", "TaskQueueConformance"]
