"""At-least-once delivery around a worker's graceful shutdown (SPEC §4.10), against a real redis-server.

A worker that serves several queues has one fetcher thread per queue, each blocked in ``BLMOVE``
for up to ``poll_interval``. A message that lands in one of them while the worker shuts down must
end up back on its queue, never in the in-flight list of a worker that no longer exists. The
reaper's sweep over ``<prefix>:inflight:*`` is the safety net for lists whose worker is gone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graflow.worker.worker import TaskWorker
from graflow_redis import signing
from graflow_redis.queue import RedisTaskQueue
from graflow_testkit.services.redis import RedisServer

#: How long the hooked fetch's BLMOVE keeps blocking after the worker was told to stop (when nothing
#: unregisters the worker first). Far longer than an unjoined shutdown takes, far shorter than the
#: time a shutdown gives its fetchers to finish.
_STILL_BLOCKING = 1.0


@pytest.fixture
def server(own_redis_server: RedisServer) -> RedisServer:
    return own_redis_server


@pytest.fixture
def prefix() -> str:
    return f"delivery-test:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    c = server.client()
    yield c
    c.close()


class _LateFetchBroker(RedisTaskQueue):
    """A broker whose blocking fetch on queue ``b`` is in progress when the worker is told to stop, and
    takes a message at its very end (a producer pushed it meanwhile).

    If the worker unregisters before that fetch returned, the process would be exiting by the time
    the message arrives: the fetcher (a daemon thread) dies with it and the delivery never reaches
    the worker. The hook models that by never returning (until the test releases it).
    """

    def __init__(self, *args: Any, late_message: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late_message = late_message
        self.fetching = threading.Event()
        self.stop_requested = threading.Event()
        self.unregistered = threading.Event()
        self.landed_after_unregister = False
        self.finished = threading.Event()
        self.release = threading.Event()
        self._armed = True
        self._arm_lock = threading.Lock()

    def fetch(self, queue: str, worker_id: str, timeout: float) -> Any:
        with self._arm_lock:
            hooked = queue == "b" and self._armed
            self._armed = self._armed and not hooked
        if not hooked:
            return super().fetch(queue, worker_id, timeout)
        self.fetching.set()
        self.stop_requested.wait()
        self.unregistered.wait(_STILL_BLOCKING)  # BLMOVE still blocking, unless the worker is gone already
        self.connection.client.lpush(self.key("q", "b"), self.late_message)
        delivery = super().fetch(queue, worker_id, timeout)
        if self.unregistered.is_set():
            self.landed_after_unregister = True
            self.finished.set()
            self.release.wait()  # the process exited: this thread never runs again
            return None
        self.finished.set()
        return delivery

    def unregister(self, worker_id: str) -> None:
        super().unregister(worker_id)
        self.unregistered.set()


def _message(queue: RedisTaskQueue, body: bytes = b"late job") -> tuple[str, bytes]:
    return signing.encode_message(queue.signer, body, "", queue.max_deliveries)


def _inflight_lists(client: Any, prefix: str) -> dict[bytes, list[bytes]]:
    return {k: client.lrange(k, 0, -1) for k in client.scan_iter(match=f"{prefix}:inflight:*") if client.llen(k)}


def test_a_message_a_fetcher_takes_during_shutdown_goes_back_to_its_queue(
    server: RedisServer, client: Any, prefix: str
) -> None:
    plain = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    message_id, raw = _message(plain)
    broker = _LateFetchBroker(None, url=server.url, key_prefix=prefix, late_message=raw)
    worker = TaskWorker(broker, worker_id="multi", queues=["a", "b"], poll_interval=0.05, heartbeat_interval=0.5)
    try:
        worker.start()
        assert broker.fetching.wait(10), "the fetcher of queue 'b' never asked for work"
        worker.request_stop("test")
        broker.stop_requested.set()
        worker.stop(timeout=5)
        assert broker.finished.wait(10), "the hooked fetch never completed"
        assert not broker.landed_after_unregister, (
            "the worker unregistered while its fetcher of queue 'b' was still blocked in BLMOVE"
        )
        assert client.lrange(f"{prefix}:q:b", 0, -1) == [raw], "the late message is back on its queue"
        assert _inflight_lists(client, prefix) == {}
        assert client.hget(f"{prefix}:workers", "multi") is None
    finally:
        broker.release.set()
        broker.stop_requested.set()
        worker.stop(timeout=1)
        broker.close()
        plain.close()
    taker = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        again = taker.fetch("b", "next", 1.0)
        assert again is not None and again.id == message_id and again.deliveries == 1, "a hand-back, not a failure"
    finally:
        taker.close()


# -- the safety net: the reaper's sweep over in-flight lists ------------------------------------------------
def _park(client: Any, prefix: str, worker: str, queue: str, raw: bytes) -> str:
    """Put ``raw`` in ``worker``'s in-flight list for ``queue``, as a BLMOVE would have."""
    key = f"{prefix}:inflight:{worker}:{queue}"
    client.lpush(key, raw)
    return key


def test_the_reaper_redelivers_in_flight_lists_of_workers_that_are_gone(
    server: RedisServer, client: Any, prefix: str
) -> None:
    queue = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        mid, raw = _message(queue, b"stranded")
        key = _park(client, prefix, "gone", "b", raw)
        _live_mid, live_raw = _message(queue, b"held by a live worker")
        queue.heartbeat("alive", ["b"], 30)
        live_key = _park(client, prefix, "alive", "b", live_raw)
        # registered, not heartbeating: the ordinary reaper's business, not the sweep's
        queue.heartbeat("dying", ["b"], 30)
        client.delete(f"{prefix}:hb:dying")
        _dying_mid, dying_raw = _message(queue, b"held by a dead worker")
        dying_key = _park(client, prefix, "dying", "b", dying_raw)
        # heartbeating but no longer in the workers hash (reaped during a pause; re-registers at its next beat)
        queue.heartbeat("paused", ["b"], 30)
        client.hdel(f"{prefix}:workers", "paused")
        _paused_mid, paused_raw = _message(queue, b"held by a paused worker")
        paused_key = _park(client, prefix, "paused", "b", paused_raw)

        assert queue.reap_orphans(min_idle=0) == 1
        assert client.llen(key) == 0
        assert client.lrange(live_key, 0, -1) == [live_raw]
        assert client.lrange(dying_key, 0, -1) == [dying_raw]
        assert client.lrange(paused_key, 0, -1) == [paused_raw]
        (back,) = client.lrange(f"{prefix}:q:b", 0, -1)
        delivery = queue.fetch("b", "next", 1.0)
        assert delivery is not None and delivery.id == mid and delivery.body == b"stranded"
        assert delivery.deliveries == 2, "the stranded delivery counts as failed, like any reaped one"
        assert back != raw
    finally:
        queue.close()


def test_the_sweep_leaves_lists_that_were_just_written_and_runs_from_reap(
    server: RedisServer, client: Any, prefix: str
) -> None:
    queue = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        mid, raw = _message(queue)
        key = _park(client, prefix, "gone", "default", raw)
        assert queue.reap_orphans(min_idle=60) == 0, "a list written a moment ago may be a fetch in progress"
        assert client.lrange(key, 0, -1) == [raw]
        other = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
        other.orphan_min_idle = 0.0
        try:
            assert other.reap() == 1, "reap() sweeps in-flight lists of vanished workers too"
            assert other.reap() == 0
        finally:
            other.close()
        delivery = queue.fetch("default", "next", 1.0)
        assert delivery is not None and delivery.id == mid
    finally:
        queue.close()


def test_the_sweep_finds_the_queue_when_names_contain_colons(server: RedisServer, client: Any, prefix: str) -> None:
    queue = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        first_mid, first = _message(queue, b"one")
        _park(client, prefix, "gone", "gpu:large", first)
        queue.heartbeat("serves-default", ["default"], 30)
        second_mid, second = _message(queue, b"two")
        _park(client, prefix, "host:7", "default", second)
        # ... unless a registered worker with that id serves that queue: then it is not an orphan
        queue.heartbeat("busy:1", ["x:y"], 30)
        client.delete(f"{prefix}:hb:busy:1")
        _third_mid, third = _message(queue, b"three")
        third_key = _park(client, prefix, "busy:1", "x:y", third)

        assert queue.reap_orphans(min_idle=0) == 2
        assert queue.fetch("gpu:large", "next", 1.0).id == first_mid
        assert queue.fetch("default", "next", 1.0).id == second_mid
        assert client.lrange(third_key, 0, -1) == [third]
    finally:
        queue.close()


class _SlowBeatBroker(RedisTaskQueue):
    """A broker whose heartbeat is in flight (slow network) when the worker stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = threading.Event()
        self.beat_in_flight = threading.Event()

    def heartbeat(self, worker_id: str, queues: Any, timeout: float) -> None:
        if self.stopping.is_set():
            self.beat_in_flight.set()
            time.sleep(0.5)  # the HSET lands half a second after the stop began
        super().heartbeat(worker_id, queues, timeout)


def test_a_heartbeat_in_flight_at_shutdown_does_not_reregister_the_worker(
    server: RedisServer, client: Any, prefix: str
) -> None:
    broker = _SlowBeatBroker(None, url=server.url, key_prefix=prefix)
    worker = TaskWorker(broker, worker_id="ghost", queues=["a"], poll_interval=0.05, heartbeat_interval=0.05)
    try:
        worker.start()
        assert client.hget(f"{prefix}:workers", "ghost") is not None, "registered at start"
        broker.stopping.set()
        assert broker.beat_in_flight.wait(5), "no heartbeat started after the stop began"
        worker.stop(timeout=1)
        time.sleep(0.7)  # longer than the slow heartbeat: had it landed after unregistering, it is visible now
        assert client.hget(f"{prefix}:workers", "ghost") is None, "a late heartbeat re-registered a stopped worker"
    finally:
        worker.stop(timeout=1)
        broker.close()
