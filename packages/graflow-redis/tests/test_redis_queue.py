"""RedisTaskQueue against a real redis-server: the testkit queue and broker suites, plus Redis specifics."""

from __future__ import annotations

import time
from typing import Any

import pytest

from graflow.exceptions import ConfigError
from graflow_redis import signing
from graflow_redis.queue import RedisTaskQueue
from graflow_testkit.queues import BrokerConformance, TaskQueueConformance


class TestRedisTaskQueueConformance(TaskQueueConformance):
    @pytest.fixture
    def queue(self, redis_url: str, key_prefix: str) -> Any:
        q = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix, session_id="conformance")
        yield q
        q.close()


class RedisProducer:
    """The producer side the broker suite drives: one reply list per message."""

    def __init__(self, queue: RedisTaskQueue) -> None:
        self.queue = queue
        self.reply_keys: dict[str, str] = {}

    def send(self, payload: bytes, queue: str) -> str:
        reply_key = self.queue.new_reply_key("conformance")
        (message_id,) = self.queue.send([(queue, payload, None)], reply_key)
        self.reply_keys[message_id] = reply_key
        return message_id

    def reply(self, message_id: str, timeout: float) -> Any:
        client = self.queue.connection.client
        item = client.blpop([self.reply_keys[message_id]], timeout=timeout)
        if item is None:
            raise TimeoutError(f"no reply to {message_id}")
        reply = signing.decode_reply(self.queue.signer, item[1])
        assert reply.id == message_id
        return None if reply.status == signing.STATUS_DEAD else reply.payload


class TestRedisBrokerConformance(BrokerConformance):
    @pytest.fixture
    def broker(self, redis_url: str, key_prefix: str) -> Any:
        q = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix, max_deliveries=2)
        yield q
        q.close()

    @pytest.fixture
    def producer(self, broker: RedisTaskQueue) -> RedisProducer:
        return RedisProducer(broker)


@pytest.fixture
def queue(redis_url: str, key_prefix: str) -> Any:
    q = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix, max_deliveries=3)
    yield q
    q.close()


def test_malformed_message_is_dead_lettered_not_dropped(queue: RedisTaskQueue, redis_client: Any) -> None:
    redis_client.lpush(queue.key("q", "default"), b"garbage that is not a message")
    assert queue.fetch("default", "w1", 1.0) is None
    entries = queue.dead_letters("default")
    assert len(entries) == 1
    assert "malformed" in entries[0].reason
    assert entries[0].payload == b"garbage that is not a message"
    assert redis_client.llen(queue.key("inflight", "w1", "default")) == 0


def test_malformed_in_flight_element_is_dead_lettered_by_the_reaper(queue: RedisTaskQueue, redis_client: Any) -> None:
    queue.heartbeat("ghost", ["default"], 0.2)
    redis_client.lpush(queue.key("inflight", "ghost", "default"), b"GF1|not-hex|x")
    time.sleep(0.4)
    assert queue.reap() == 1
    (entry,) = queue.dead_letters("default")
    assert "malformed" in entry.reason and entry.worker == "ghost"


def test_redelivery_counts_and_reason_in_the_dead_letter(queue: RedisTaskQueue, redis_client: Any) -> None:
    reply_key = queue.new_reply_key("s1")
    (mid,) = queue.send([("default", b"payload", None)], reply_key)
    for attempt in range(3):
        queue.heartbeat(f"w{attempt}", ["default"], 30)
        delivery = queue.fetch("default", f"w{attempt}", 1.0)
        assert delivery is not None and delivery.id == mid
        assert delivery.deliveries == attempt + 1
        queue.reap(f"w{attempt}")
    (entry,) = queue.dead_letters("default")
    assert entry.id == mid and entry.deliveries == 3
    assert "max_deliveries is 3" in entry.reason and "worker w2" in entry.reason
    raw = redis_client.lpop(reply_key)
    dead = signing.decode_reply(queue.signer, raw)
    assert dead.status == signing.STATUS_DEAD and b"delivered 3 time(s)" in dead.payload
    assert redis_client.hget(queue.key("workers"), "w2") is None, "a reaped worker is forgotten"


def test_a_late_ack_after_redelivery_still_replies_once_per_copy(queue: RedisTaskQueue, redis_client: Any) -> None:
    reply_key = queue.new_reply_key("s1")
    (mid,) = queue.send([("default", b"slow", None)], reply_key)
    queue.heartbeat("slow", ["default"], 30)
    first = queue.fetch("default", "slow", 1.0)
    queue.reap("slow")  # taken for dead (e.g. a long GC pause), message redelivered
    second = queue.fetch("default", "fast", 1.0)
    assert second is not None and second.id == mid
    queue.ack(second, "fast", b"from fast")
    queue.ack(first, "slow", b"from slow")  # the original worker finishes too: at-least-once
    replies = [signing.decode_reply(queue.signer, r) for r in redis_client.lrange(reply_key, 0, -1)]
    assert [r.id for r in replies] == [mid, mid]
    assert redis_client.llen(queue.key("inflight", "slow", "default")) == 0
    assert redis_client.llen(queue.key("inflight", "fast", "default")) == 0


def test_reply_and_run_keys_expire(queue: RedisTaskQueue, redis_client: Any) -> None:
    reply_key = queue.new_reply_key("s1")
    queue.send([("default", b"x", None)], reply_key)
    delivery = queue.fetch("default", "w1", 1.0)
    queue.ack(delivery, "w1", b"done")
    ttl = redis_client.pttl(reply_key)
    assert 0 < ttl <= queue.result_ttl * 1000


def test_bad_names_are_refused(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="key_prefix"):
        RedisTaskQueue(None, url=redis_url, key_prefix="has space")
    with pytest.raises(ConfigError, match="queue"):
        RedisTaskQueue(None, url=redis_url, queue="a|b")
    with pytest.raises(ConfigError, match="max_deliveries"):
        RedisTaskQueue(None, url=redis_url, max_deliveries=0)
    with pytest.raises(ConfigError, match="timeout"):
        RedisTaskQueue(None, url=redis_url, timeout=-1)


def test_unreachable_redis_is_a_clear_error() -> None:
    from graflow_redis.connection import RedisConnectionError
    from graflow_testkit.services.redis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    q = RedisTaskQueue(None, url=url, retry_deadline=0.3)
    with pytest.raises(RedisConnectionError, match=r"unreachable") as info:
        q.heartbeat("w1", ["default"], 5)
    assert "127.0.0.1" in str(info.value)


def test_upstream_names_resolve_to_this_queue() -> None:
    from graflow import plugins
    from graflow.queue.distributed import DistributedTaskQueue
    from graflow.queue.redis import RedisTaskQueue as Upstream

    assert Upstream is RedisTaskQueue
    assert DistributedTaskQueue is RedisTaskQueue
    assert plugins.get_task_queue_class("redis") is RedisTaskQueue
    assert plugins.get_task_queue_class("distributed") is RedisTaskQueue
