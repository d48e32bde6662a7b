"""At-least-once delivery when Redis executes a command but its answer never arrives.

``RedisConnection.run`` retries a command whose connection broke. For a command that *moves* data
(the producer taking a reply off its reply list, a worker taking a message into its in-flight list)
the first execution may have happened: the retry must not leave the moved item where nobody looks.

The connection is dropped deterministically by :class:`LossyProxy`, a TCP proxy between the client
and its own redis-server that, once armed with a marker, closes the connection carrying the first
server answer that contains the marker instead of forwarding it: Redis ran the command, the
client never hears back.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graflow import task
from graflow.worker.worker import TaskWorker
from graflow_redis.queue import RedisTaskQueue
from graflow_testkit.services.redis import RedisServer


class LossyProxy:
    """Forwards TCP connections to ``host:port``; :meth:`arm` makes it lose one server answer."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dropped = threading.Event()
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    def arm(self, marker: bytes) -> None:
        """Lose the first server answer containing ``marker`` (and close that connection)."""
        with self._lock:
            self._marker = marker
            self.dropped.clear()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                if self._closed:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
            self._spawn(self._pump, downstream, upstream, False)
            self._spawn(self._pump, upstream, downstream, True)

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        tail = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers:
                    with self._lock:
                        marker = self._marker
                        hit = marker is not None and marker in tail + data
                        if hit:
                            self._marker = None
                    if hit:
                        self.dropped.set()
                        break  # the answer is lost with its connection
                    tail = (tail + data)[-64:]
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def server(own_redis_server: RedisServer) -> RedisServer:
    return own_redis_server


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[LossyProxy]:
    p = LossyProxy(server.host, server.port)
    yield p
    p.close()


@pytest.fixture
def prefix() -> str:
    return f"delivery-test:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    c = server.client()
    yield c
    c.close()


@task
def double(x: int) -> int:
    return 2 * x


def _inflight(client: Any, prefix: str, worker: str, queue: str = "default") -> list[bytes]:
    return client.lrange(f"{prefix}:inflight:{worker}:{queue}", 0, -1)


# -- a worker's BLMOVE whose answer is lost ------------------------------------------------------------------
def test_a_fetch_whose_answer_is_lost_does_not_strand_the_message(
    server: RedisServer, proxy: LossyProxy, client: Any, prefix: str
) -> None:
    producer = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    broker = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix)
    try:
        broker.heartbeat("w1", ["default"], 30)
        reply_key = producer.new_reply_key("s")
        (mid,) = producer.send([("default", b"job", None)], reply_key)
        proxy.arm(b"GF1|" + mid.encode())
        first = broker.fetch("default", "w1", 0.2)
        assert proxy.dropped.is_set(), "the BLMOVE's answer was lost"
        delivery = first or broker.fetch("default", "w1", 1.0)
        assert delivery is not None and delivery.id == mid, "the message moved by the lost BLMOVE is delivered"
        assert delivery.deliveries == 1
        assert _inflight(client, prefix, "w1") == [delivery.raw], "exactly one copy, held by the worker"
        broker.ack(delivery, "w1", b"done")
        assert _inflight(client, prefix, "w1") == []
        assert client.llen(f"{prefix}:q:default") == 0
        assert client.llen(reply_key) == 1
    finally:
        broker.close()
        producer.close()


class _SlowHandOver(RedisTaskQueue):
    """Holds a fetch between Redis moving a message with ``hold`` in it and the fetch returning it."""

    def __init__(self, *args: Any, hold: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    def _delivery(self, raw: bytes, queue: str, worker_id: str) -> Any:
        if self.hold in raw:
            self.holding.set()
            self.release.wait(30)
        return super()._delivery(raw, queue, worker_id)


def test_reconciling_leaves_messages_other_fetches_are_still_returning(
    server: RedisServer, proxy: LossyProxy, client: Any, prefix: str
) -> None:
    producer = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    broker = _SlowHandOver(None, url=proxy.url, key_prefix=prefix, hold=b"in transit")
    box: dict[str, Any] = {}
    other = threading.Thread(target=lambda: box.update(got=broker.fetch("default", "w1", 5.0)), daemon=True)
    try:
        broker.heartbeat("w1", ["default"], 30)
        (transit_id,) = producer.send([("default", b"in transit", None)], producer.new_reply_key("s"))
        other.start()  # another executor thread of the same worker: Redis moved it, the fetch has not returned
        assert broker.holding.wait(10)
        (lost_id,) = producer.send([("default", b"lost", None)], producer.new_reply_key("s"))
        proxy.arm(b"GF1|" + lost_id.encode())
        assert broker.fetch("default", "w1", 0.2) is None
        assert proxy.dropped.is_set()
        assert len(_inflight(client, prefix, "w1")) == 2, "nothing is handed back while a fetch is under way"
        assert client.llen(f"{prefix}:q:default") == 0
        broker.release.set()
        other.join(10)
        assert box["got"].id == transit_id
        assert _inflight(client, prefix, "w1") == [box["got"].raw], "the other fetch keeps what it took"
        again = broker.fetch("default", "w1", 1.0)
        assert again is not None and again.id == lost_id and again.deliveries == 1
    finally:
        broker.release.set()
        other.join(10)
        broker.close()
        producer.close()


def test_a_fetch_that_gave_up_is_reconciled_by_the_next_one(
    server: RedisServer, proxy: LossyProxy, client: Any, prefix: str
) -> None:
    from graflow_redis.connection import RedisConnectionError

    producer = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    broker = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix, retry_deadline=0)  # no retry: it fails
    try:
        broker.heartbeat("w1", ["default"], 30)
        (mid,) = producer.send([("default", b"job", None)], producer.new_reply_key("s"))
        proxy.arm(b"GF1|" + mid.encode())
        with pytest.raises(RedisConnectionError):
            broker.fetch("default", "w1", 0.2)
        assert len(_inflight(client, prefix, "w1")) == 1, "Redis moved it; the worker never heard"
        delivery = broker.fetch("default", "w1", 0.2) or broker.fetch("default", "w1", 1.0)
        assert delivery is not None and delivery.id == mid
        assert _inflight(client, prefix, "w1") == [delivery.raw]
    finally:
        broker.close()
        producer.close()


def test_a_worker_keeps_going_after_a_lost_fetch_answer(server: RedisServer, proxy: LossyProxy, prefix: str) -> None:
    producer = RedisTaskQueue(None, url=server.url, key_prefix=prefix, timeout=None)
    broker = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix)
    worker = TaskWorker(broker, worker_id="w1", poll_interval=0.2, heartbeat_interval=0.5)
    proxy.arm(b"GF1|")  # the first message any fetch takes
    try:
        worker.start()
        mid = producer.submit(double, x=21)
        assert producer.result(mid, timeout=10) == 42
        assert proxy.dropped.is_set()
        assert worker.is_running
    finally:
        worker.stop(timeout=5)
        broker.close()
        producer.close()


# -- a producer's read of its reply list whose answer is lost ---------------------------------------------------
def test_a_reply_whose_answer_is_lost_is_read_again(server: RedisServer, proxy: LossyProxy, prefix: str) -> None:
    producer = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix)
    broker = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    worker = TaskWorker(broker, worker_id="w1", poll_interval=0.2, heartbeat_interval=0.5)
    try:
        worker.start()
        ids = [producer.submit(double, x=i) for i in range(3)]
        proxy.arm(b"GR1|")  # the first reply the producer reads
        assert [producer.result(mid, timeout=10) for mid in ids] == [0, 2, 4]
        assert proxy.dropped.is_set(), "a reply's answer was lost on the way"
    finally:
        worker.stop(timeout=5)
        broker.close()
        producer.close()


def test_execute_style_single_wait_survives_a_lost_reply(
    server: RedisServer, proxy: LossyProxy, client: Any, prefix: str
) -> None:
    producer = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix)
    broker = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        reply_key = producer.new_reply_key("s")
        pending = producer.send([("default", b"job", "tag")], reply_key)
        (mid,) = pending
        delivery = broker.fetch("default", "w1", 1.0)
        broker.ack(delivery, "w1", b"not a pickle")  # the answer is undecodable: a failed task, not a hang
        proxy.arm(b"GR1|" + mid.encode())
        got: dict[str, Any] = {}
        producer.collect(
            reply_key, pending, lambda sent, reply, error: got.update(tag=sent.tag, error=error), timeout=10
        )
        assert proxy.dropped.is_set()
        assert got["tag"] == "tag" and "cannot be unpickled" in got["error"]
        assert [k for k in client.scan_iter(match=f"{prefix}:reply:*")] == [], "nothing left behind"
    finally:
        broker.close()
        producer.close()


def test_a_group_wait_survives_losing_a_later_reply(
    server: RedisServer, proxy: LossyProxy, client: Any, prefix: str
) -> None:
    producer = RedisTaskQueue(None, url=proxy.url, key_prefix=prefix)
    broker = RedisTaskQueue(None, url=server.url, key_prefix=prefix)
    try:
        reply_key = producer.new_reply_key("s", "group")
        pending = producer.send([("default", b"one", "a"), ("default", b"two", "b")], reply_key)
        first, second = broker.fetch("default", "w1", 1.0), broker.fetch("default", "w1", 1.0)
        broker.ack(first, "w1", b"x")
        got: list[str] = []
        first_handled = threading.Event()

        def on_reply(sent: Any, reply: Any, error: Any) -> None:
            got.append(sent.tag)
            first_handled.set()

        waiter = threading.Thread(target=lambda: producer.collect(reply_key, pending, on_reply, timeout=10))
        waiter.start()
        assert first_handled.wait(10)
        proxy.arm(b"GR1|" + second.id.encode())  # the next wait clears what it handled and takes this one
        broker.ack(second, "w1", b"y")
        waiter.join(15)
        assert not waiter.is_alive() and proxy.dropped.is_set()
        assert got == ["a", "b"] and pending == {}
        assert list(client.scan_iter(match=f"{prefix}:reply:*")) == []
    finally:
        broker.close()
        producer.close()
