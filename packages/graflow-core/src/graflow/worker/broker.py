"""What a :class:`~graflow.worker.worker.TaskWorker` needs from a queue backend.

A broker moves opaque job payloads between producers and workers with at-least-once delivery: a
payload a worker took stays *in flight* (owned by that worker) until the worker acknowledges it
with the reply, hands it back, or dead-letters it; if the worker stops heartbeating, any live
party's :meth:`Broker.reap` puts its in-flight payloads back on their queue. graflow-redis's
``RedisTaskQueue`` is the production broker; :class:`MemoryBroker` is an in-process one with the
same contract, for unit tests and single-process experiments.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Deliveries after which a payload whose workers keep dying goes to the dead-letter queue.
DEFAULT_MAX_DELIVERIES = 5


@dataclass
class Delivery:
    """One payload handed to one worker.

    ``deliveries`` counts this delivery too (1 the first time); ``raw`` is whatever the broker
    needs to acknowledge exactly this copy.
    """

    id: str
    queue: str
    body: bytes
    reply_to: str = ""
    deliveries: int = 1
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    raw: Any = None
    received_at: float = field(default_factory=time.time)


@dataclass
class DeadLetter:
    """A payload in a dead-letter queue, with why it is there."""

    id: str
    queue: str
    reason: str
    failed_at: float
    deliveries: int
    worker: str = ""
    payload: bytes = b""
    raw: Any = None


class Broker(ABC):
    """The worker-facing side of a queue backend (see the module docstring)."""

    #: Short name shown in logs and metrics (``"redis"``, ``"memory"``).
    broker_name = "broker"

    @abstractmethod
    def fetch(self, queue: str, worker_id: str, timeout: float) -> Delivery | None:
        """Block up to ``timeout`` seconds for the next payload of ``queue``; it is then in flight.

        Payloads that cannot be parsed or verified go to the dead-letter queue here and are not
        returned.
        """

    def fetch_batch(self, queue: str, worker_id: str, count: int, timeout: float) -> list[Delivery]:
        """Up to ``count`` payloads (all in flight); blocks up to ``timeout`` only while there is none."""
        delivery = self.fetch(queue, worker_id, timeout)
        return [delivery] if delivery is not None else []

    @abstractmethod
    def ack(self, delivery: Delivery, worker_id: str, reply: bytes | None) -> None:
        """Done: drop the in-flight copy and, atomically with it, send ``reply`` to the producer."""

    def ack_batch(self, items: Sequence[tuple[Delivery, bytes | None]], worker_id: str) -> None:
        """:meth:`ack` several deliveries (in one round trip where the backend can)."""
        for delivery, reply in items:
            self.ack(delivery, worker_id, reply)

    @abstractmethod
    def requeue(self, delivery: Delivery, worker_id: str) -> None:
        """Hand an unfinished payload back to the front of its queue (graceful shutdown)."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, worker_id: str, reason: str) -> None:
        """Move an in-flight payload to its queue's dead-letter queue and tell its producer why.

        Nothing happens when ``worker_id`` no longer holds it: it was redelivered meanwhile (the
        worker was taken for dead) and is live again; that delivery answers for it.
        """

    @abstractmethod
    def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        """Say this worker is alive for the next ``ttl`` seconds (registering it if needed)."""

    @abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly (its in-flight payloads are redelivered first)."""

    @abstractmethod
    def reap(self, worker_id: str | None = None) -> int:
        """Redeliver the in-flight payloads of workers that stopped heartbeating; return how many.

        With ``worker_id``, treat that worker as dead whatever its heartbeat says (a supervisor
        that saw the process die).
        """

    def cancel_requests(self, keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """Which of ``keys`` (cancel keys of running group members) a producer set, as
        ``{key: (message, id of the task that canceled)}``; a backend without them has none."""
        return {}

    def load_blob(self, key: str) -> bytes | None:
        """Shared data a job refers to by key (a workflow graph), or None when it is gone."""
        return None

    def depths(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (waiting payloads, dead letters)}``."""
        return {q: (0, 0) for q in queues}

    def in_flight(self) -> int:
        """How many payloads all workers hold right now."""
        return 0

    def close(self) -> None:
        """Release connections."""


@dataclass
class _Registered:
    queues: tuple[str, ...]
    alive_until: float


class MemoryBroker(Broker):
    """An in-process broker with the contract of :class:`Broker` (tests, notebooks).

    Producers call :meth:`submit` and :meth:`wait_reply`; workers in threads of the same process
    consume. Nothing survives the process.
    """

    broker_name = "memory"

    def __init__(self, max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> None:
        self.max_deliveries = max_deliveries
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Delivery]] = {}
        self._in_flight: dict[str, dict[str, Delivery]] = {}  # worker -> id -> delivery
        self._workers: dict[str, _Registered] = {}
        self._replies: dict[str, bytes | None] = {}
        self._dead: dict[str, list[DeadLetter]] = {}
        self.blobs: dict[str, bytes] = {}

    # -- producer side -----------------------------------------------------------------------------
    def submit(self, body: bytes, queue: str = "default", reply_to: str = "") -> str:
        delivery = Delivery(uuid.uuid4().hex, queue, body, reply_to, 0, self.max_deliveries)
        with self._cond:
            self._queues.setdefault(queue, deque()).append(delivery)
            self._cond.notify_all()
        return delivery.id

    def wait_reply(self, message_id: str, timeout: float | None = None) -> bytes | None:
        """The reply payload of ``message_id`` (raises TimeoutError when none came in time)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while message_id not in self._replies:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no reply to message {message_id} within {timeout}s")
                self._cond.wait(remaining)
            return self._replies.pop(message_id)

    def dead_letters(self, queue: str = "default") -> list[DeadLetter]:
        with self._cond:
            return list(self._dead.get(queue, ()))

    # -- worker side -------------------------------------------------------------------------------
    def fetch(self, queue: str, worker_id: str, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                pending = self._queues.get(queue)
                if pending:
                    delivery = pending.popleft()
                    delivery.deliveries += 1
                    self._in_flight.setdefault(worker_id, {})[delivery.id] = delivery
                    return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def ack(self, delivery: Delivery, worker_id: str, reply: bytes | None) -> None:
        with self._cond:
            if self._in_flight.get(worker_id, {}).pop(delivery.id, None) is None:
                return  # already redelivered elsewhere; the other copy answers
            self._replies[delivery.id] = reply
            self._cond.notify_all()

    def requeue(self, delivery: Delivery, worker_id: str) -> None:
        with self._cond:
            if self._in_flight.get(worker_id, {}).pop(delivery.id, None) is not None:
                delivery.deliveries -= 1  # handed back, not failed: it does not count
                self._queues.setdefault(delivery.queue, deque()).appendleft(delivery)
                self._cond.notify_all()

    def dead_letter(self, delivery: Delivery, worker_id: str, reason: str) -> None:
        with self._cond:
            if self._in_flight.get(worker_id, {}).pop(delivery.id, None) is None:
                return  # redelivered meanwhile (its worker was taken for dead): that delivery answers
            self._bury(delivery, reason, worker_id)

    def _bury(self, delivery: Delivery, reason: str, worker_id: str) -> None:
        self._dead.setdefault(delivery.queue, []).append(
            DeadLetter(delivery.id, delivery.queue, reason, time.time(), delivery.deliveries, worker_id, delivery.body)
        )
        self._replies[delivery.id] = None
        self._cond.notify_all()

    def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        with self._cond:
            self._workers[worker_id] = _Registered(tuple(queues), time.monotonic() + ttl)

    def unregister(self, worker_id: str) -> None:
        self.reap(worker_id)

    def reap(self, worker_id: str | None = None) -> int:
        now = time.monotonic()
        moved = 0
        with self._cond:
            dead = (
                [worker_id] if worker_id is not None else [w for w, r in self._workers.items() if r.alive_until < now]
            )
            for wid in dead:
                self._workers.pop(wid, None)
                for delivery in reversed(list(self._in_flight.pop(wid, {}).values())):
                    moved += 1
                    if delivery.deliveries >= delivery.max_deliveries:
                        self._bury(
                            delivery,
                            f"delivered {delivery.deliveries} times and its worker stopped each time (last: {wid})",
                            wid,
                        )
                    else:
                        self._queues.setdefault(delivery.queue, deque()).appendleft(delivery)
            self._cond.notify_all()
        return moved

    def load_blob(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def depths(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._cond:
            return {q: (len(self._queues.get(q, ())), len(self._dead.get(q, ()))) for q in queues}

    def in_flight(self) -> int:
        with self._cond:
            return sum(len(v) for v in self._in_flight.values())


__all__ = ["DEFAULT_MAX_DELIVERIES", "Broker", "DeadLetter", "Delivery", "MemoryBroker"]
