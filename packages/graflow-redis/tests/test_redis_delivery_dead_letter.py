"""Dead-lettering a message its worker no longer holds, against a real redis-server.

A worker that was taken for dead (a long pause) had its in-flight messages redelivered by the
reaper; when it then dead-letters one of them (say its payload cannot be unpickled there), the
message is live on its queue again and another worker will answer for it. It must not also land
in the dead-letter queue, and the producer must not be told it is dead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graflow.worker.broker import MemoryBroker
from graflow_redis import signing
from graflow_redis.queue import RedisTaskQueue
from graflow_testkit.services.redis import RedisServer


@pytest.fixture
def queue(own_redis_server: RedisServer) -> Iterator[RedisTaskQueue]:
    q = RedisTaskQueue(None, url=own_redis_server.url, key_prefix=f"delivery-test:{uuid.uuid4().hex[:10]}")
    yield q
    q.close()


@pytest.fixture
def client(own_redis_server: RedisServer) -> Iterator[Any]:
    c = own_redis_server.client()
    yield c
    c.close()


def test_dead_lettering_a_message_already_redelivered_does_not_duplicate_it(queue: RedisTaskQueue, client: Any) -> None:
    reply_key = queue.new_reply_key("s1")
    (mid,) = queue.send([("default", b"payload", None)], reply_key)
    queue.heartbeat("slow", ["default"], 30)
    held = queue.fetch("default", "slow", 1.0)
    assert held is not None and held.id == mid
    queue.reap("slow")  # taken for dead: the message is back on its queue
    queue.dead_letter(held, "slow", "undecodable payload")  # the slow worker carries on
    assert queue.dead_letters("default") == [], "the message is live on its queue, not dead"
    assert client.llen(reply_key) == 0, "the producer is not told it is dead: its redelivery will answer"
    again = queue.fetch("default", "fast", 1.0)
    assert again is not None and again.id == mid and again.deliveries == 2
    assert queue.fetch("default", "fast", 0.1) is None, "exactly one live copy"


def test_dead_lettering_a_held_message_still_works(queue: RedisTaskQueue, client: Any) -> None:
    reply_key = queue.new_reply_key("s1")
    (mid,) = queue.send([("default", b"payload", None)], reply_key)
    held = queue.fetch("default", "w1", 1.0)
    queue.dead_letter(held, "w1", "undecodable payload")
    (entry,) = queue.dead_letters("default")
    assert entry.id == mid and entry.reason == "undecodable payload"
    reply = signing.decode_reply(queue.signer, client.lpop(reply_key))
    assert reply.id == mid and reply.status == signing.STATUS_DEAD
    assert client.llen(queue.key("inflight", "w1", "default")) == 0


def test_memory_broker_does_not_duplicate_either() -> None:
    broker = MemoryBroker()
    mid = broker.submit(b"payload")
    broker.heartbeat("slow", ["default"], 30)
    held = broker.fetch("default", "slow", 1.0)
    broker.reap("slow")
    broker.dead_letter(held, "slow", "undecodable payload")
    assert broker.dead_letters() == []
    again = broker.fetch("default", "fast", 1.0)
    assert again is not None and again.id == mid
