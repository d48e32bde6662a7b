"""RedisChannel against a real redis-server: the shared channel conformance suite plus Redis specifics."""

from __future__ import annotations

import pickle
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from graflow.channels.base import SNAPSHOT_TTL, SNAPSHOT_VALUE, Channel
from graflow.exceptions import ConfigError
from graflow_redis.channel import RedisChannel, decode, encode
from graflow_testkit.channels import ROUND_TRIP_VALUES, ChannelConformance, SamplePayload, assert_same


class TestRedisChannelConformance(ChannelConformance):
    ttl_sleep = 1.2

    @pytest.fixture
    def make_channel(self, redis_url: str, key_prefix: str) -> Callable[..., Channel]:
        def factory(name: str = "conformance") -> Channel:
            channel = RedisChannel(name, url=redis_url, key_prefix=key_prefix)
            channel.clear()
            return channel

        return factory


@pytest.fixture
def channel(redis_url: str, key_prefix: str) -> Any:
    made = RedisChannel("session-1", url=redis_url, key_prefix=key_prefix)
    yield made
    made.cleanup()
    made.close()


# -- storage layout ------------------------------------------------------------------------------------
def test_keys_live_under_prefix_and_session(channel: RedisChannel, redis_client: Any, key_prefix: str) -> None:
    channel.set("a", 1)
    channel.append("b", "x")
    with channel.lock("c", timeout=5):
        raw = sorted(k.decode() for k in redis_client.scan_iter(match=key_prefix + ":*"))
        assert raw == [
            f"{key_prefix}:session-1:channel:a",
            f"{key_prefix}:session-1:channel:b",
            f"{key_prefix}:session-1:lock:c",
        ]
    assert redis_client.type(f"{key_prefix}:session-1:channel:b") == b"list"


def test_counters_are_native_redis_numbers(channel: RedisChannel, redis_client: Any, key_prefix: str) -> None:
    channel.atomic_add("hits", 5)
    channel.set("ratio", 0.5)
    assert redis_client.get(f"{key_prefix}:session-1:channel:hits") == b"5"
    assert redis_client.get(f"{key_prefix}:session-1:channel:ratio") == b"0.5"
    # Another program bumping the counter with plain INCRBY is seen, with the right type.
    redis_client.incrby(f"{key_prefix}:session-1:channel:hits", 10)
    assert_same(channel.get("hits"), 15)
    assert_same(channel.atomic_add("hits", 1), 16)


def test_other_values_are_pickled(channel: RedisChannel, redis_client: Any, key_prefix: str) -> None:
    channel.set("text", "123")
    raw = redis_client.get(f"{key_prefix}:session-1:channel:text")
    assert raw[:1] == b"\x80" and pickle.loads(raw) == "123"
    assert_same(channel.get("text"), "123")


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**5000, 0.0, -0.0, 1.0, 1e300, 5e-324, float("inf"),
     float("-inf"), True, False, "", "1.5", b"12", 1.5],
    ids=lambda v: f"{type(v).__name__}:{v!r}"[:40] if not (type(v) is int and abs(v) > 10**100) else "huge-int",
)
def test_encoding_round_trip_edges(value: Any) -> None:
    assert_same(decode(encode(value)), value)


def test_nan_round_trips(channel: RedisChannel) -> None:
    channel.set("nan", float("nan"))
    value = channel.get("nan")
    assert type(value) is float and value != value


def test_many_types_round_trip_through_one_pipeline(channel: RedisChannel) -> None:
    channel.set_many({label: value for label, value in ROUND_TRIP_VALUES.items()})
    channel.append("appended", (1, 2))
    got = channel.get_many([*ROUND_TRIP_VALUES, "appended", "missing"], default="d")
    for label, value in ROUND_TRIP_VALUES.items():
        assert_same(got[label], value, label)
    assert_same(got["appended"], [(1, 2)])
    assert got["missing"] == "d"


def test_local_class_and_lambda_round_trip(channel: RedisChannel) -> None:
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    channel.set("obj", Local(3))
    channel.set("fn", lambda y: y * 2)
    assert channel.get("obj").x == 3
    assert channel.get("fn")(21) == 42


def test_unpicklable_value_is_rejected_and_nothing_is_stored(channel: RedisChannel) -> None:
    import threading

    with pytest.raises((TypeError, pickle.PicklingError)):
        channel.set("lock", threading.Lock())
    assert not channel.exists("lock")


# -- atomic_add edges ------------------------------------------------------------------------------------
def test_atomic_add_float_matches_python_arithmetic(channel: RedisChannel) -> None:
    assert_same(channel.atomic_add("x", 0.1), 0.1)
    assert_same(channel.atomic_add("x", 0.2), 0.1 + 0.2)  # 0.30000000000000004, exactly like Python
    assert_same(channel.atomic_add("x", 0.7), 0.1 + 0.2 + 0.7)
    assert_same(channel.get("x"), 0.1 + 0.2 + 0.7)


def test_atomic_add_keeps_python_types(channel: RedisChannel) -> None:
    assert_same(channel.atomic_add("i", 2), 2)
    assert_same(channel.atomic_add("i", 0.5), 2.5)  # int + float -> float
    channel.set("f", 1.5)
    assert_same(channel.atomic_add("f", 0.5), 2.0)  # stays a float even when whole
    assert_same(channel.get("f"), 2.0)
    assert_same(channel.atomic_add("f", 1), 3.0)


def test_atomic_add_beyond_64_bits(channel: RedisChannel) -> None:
    channel.set("big", 2**63 - 2)
    assert_same(channel.atomic_add("big", 5), 2**63 + 3)  # INCRBY would overflow; Python finishes it
    assert_same(channel.get("big"), 2**63 + 3)
    assert_same(channel.atomic_add("big", -(2**64)), 2**63 + 3 - 2**64)
    assert_same(channel.atomic_add("fresh", 2**70), 2**70)


def test_atomic_add_keeps_ttl(channel: RedisChannel) -> None:
    channel.set("n", 1, ttl=100)
    channel.atomic_add("n", 1)
    channel.atomic_add("n", 0.5)
    ttl = channel.snapshot()["n"][SNAPSHOT_TTL]
    assert ttl is not None and 90 < ttl <= 100


@pytest.mark.parametrize("amount", ["1", None, True, [1]])
def test_atomic_add_rejects_non_numbers(channel: RedisChannel, amount: Any) -> None:
    with pytest.raises(TypeError, match="amount"):
        channel.atomic_add("n", amount)
    assert not channel.exists("n")


@pytest.mark.parametrize("stored", [True, (1,), "5", None])
def test_atomic_add_on_pickled_non_number(channel: RedisChannel, stored: Any) -> None:
    channel.set("v", stored)
    with pytest.raises(TypeError, match="'v'"):
        channel.atomic_add("v", 1)
    assert_same(channel.get("v", "default"), stored)


def test_atomic_add_on_list_raises(channel: RedisChannel) -> None:
    channel.append("l", 1)
    with pytest.raises(TypeError, match="list"):
        channel.atomic_add("l", 1)
    assert channel.get("l") == [1]


# -- lists ----------------------------------------------------------------------------------------------
def test_append_to_stored_empty_list(channel: RedisChannel) -> None:
    channel.set("items", [])
    assert channel.append("items", (1,)) == 1
    assert_same(channel.get("items"), [(1,)])


def test_append_to_stored_list_keeps_ttl(channel: RedisChannel) -> None:
    channel.set("items", [1], ttl=100)
    channel.append("items", 2)
    snap = channel.snapshot()["items"]
    assert snap[SNAPSHOT_VALUE] == [1, 2]
    assert 90 < snap[SNAPSHOT_TTL] <= 100


def test_append_to_counter_raises(channel: RedisChannel) -> None:
    channel.atomic_add("n", 1)
    with pytest.raises(TypeError, match="holds a int"):
        channel.append("n", 1)
    assert channel.get("n") == 1


def test_foreign_data_under_prefix_gives_clear_error(channel: RedisChannel, redis_client: Any, key_prefix: str) -> None:
    redis_client.set(f"{key_prefix}:session-1:channel:alien", b"hello")
    with pytest.raises(ValueError, match="did not write"):
        channel.get("alien")


def test_corrupted_pickle_says_which_key(channel: RedisChannel, redis_client: Any, key_prefix: str) -> None:
    redis_client.set(f"{key_prefix}:session-1:channel:broken", b"\x80\x05\x95garbage")
    with pytest.raises(Exception) as info:  # whatever pickle raises, it must name the key
        channel.get("broken")
    if sys.version_info >= (3, 11):
        assert any("'broken'" in note for note in info.value.__notes__)
    channel.set("fine", 1)  # the channel itself keeps working
    assert channel.get("fine") == 1


# -- life cycle ---------------------------------------------------------------------------------------------
def test_cleanup_removes_data_and_locks_of_this_session_only(
    redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    mine = RedisChannel("run-a", url=redis_url, key_prefix=key_prefix)
    other = RedisChannel("run-b", url=redis_url, key_prefix=key_prefix)
    mine.set("k", 1)
    mine.append("l", 1)
    redis_client.set(f"{key_prefix}:run-a:lock:stale", b"token")  # a lock left by a crashed holder
    other.set("k", 2)
    assert mine.cleanup() == 3
    assert mine.keys() == []
    assert not list(redis_client.scan_iter(match=f"{key_prefix}:run-a:*"))
    assert other.get("k") == 2
    other.cleanup()


def test_expire_bounds_every_key(channel: RedisChannel) -> None:
    channel.set("forever", 1)
    channel.append("list", 1)
    channel.set("soon", 1, ttl=5)
    assert channel.expire(60) == 2  # "soon" keeps its shorter ttl
    snap = channel.snapshot()
    assert 50 < snap["forever"][SNAPSHOT_TTL] <= 60
    assert 50 < snap["list"][SNAPSHOT_TTL] <= 60
    assert snap["soon"][SNAPSHOT_TTL] <= 5


def test_default_ttl_applies_to_writes_without_ttl(redis_url: str, key_prefix: str) -> None:
    channel = RedisChannel("s", url=redis_url, key_prefix=key_prefix, default_ttl=50)
    channel.set("a", 1)
    channel.append("b", 1)
    channel.set("c", 1, ttl=10)
    snap = channel.snapshot()
    assert 40 < snap["a"][SNAPSHOT_TTL] <= 50
    assert 40 < snap["b"][SNAPSHOT_TTL] <= 50
    assert snap["c"][SNAPSHOT_TTL] <= 10
    channel.cleanup()


# -- construction ----------------------------------------------------------------------------------------
def test_built_by_factory_with_seed_config(redis_client: Any, key_prefix: str) -> None:
    from graflow.channels.factory import ChannelFactory

    channel = ChannelFactory.create_channel("redis", "sess", redis_client=redis_client, key_prefix=key_prefix)
    assert isinstance(channel, RedisChannel)
    channel.set("k", (1, 2))
    assert redis_client.exists(f"{key_prefix}:sess:channel:k")
    channel.cleanup()


def test_upstream_import_path() -> None:
    from graflow.channels.redis_channel import RedisChannel as Upstream

    assert Upstream is RedisChannel


def test_unknown_option_names_the_valid_ones(redis_url: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*'hots'.*key_prefix"):
        RedisChannel("s", url=redis_url, hots="x")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key_prefix": ""}, "key_prefix"),
        ({"default_ttl": 0}, "ttl"),
        ({"lock_lease": 0}, "lock_lease"),
        ({"url": "http://localhost:6379"}, "scheme"),
        ({"url": "redis://localhost:notaport"}, "Malformed"),
        ({"retry_deadline": -1}, "retry_deadline"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        RedisChannel("s", **options)


def test_client_with_decoded_responses_still_round_trips(redis_server: Any, key_prefix: str) -> None:
    decoding = redis_server.client(decode_responses=True)
    channel = RedisChannel("s", redis_client=decoding, key_prefix=key_prefix)
    channel.set("b", b"\xff\x00")
    channel.set("t", (1, "x"))
    assert_same(channel.get("b"), b"\xff\x00")
    assert_same(channel.get("t"), (1, "x"))
    channel.cleanup()
    decoding.close()


# -- pickling ------------------------------------------------------------------------------------------------
def test_pickle_shares_data_and_reconnects(channel: RedisChannel) -> None:
    channel.set("shared", SamplePayload("p"))
    copy = pickle.loads(pickle.dumps(channel))
    assert copy is not channel and copy.name == channel.name and copy.key_prefix == channel.key_prefix
    assert_same(copy.get("shared"), SamplePayload("p"))
    copy.atomic_add("n", 2)
    assert channel.get("n") == 2
    copy.close()


def test_pickle_of_channel_on_callers_client_carries_no_client_and_no_password(key_prefix: str) -> None:
    from graflow_testkit.services.redis import start_or_skip

    server = start_or_skip(password="s3cret-pw")
    try:
        client = server.client()
        channel = RedisChannel("s", redis_client=client, key_prefix=key_prefix)
        channel.set("k", 1)
        blob = pickle.dumps(channel)
        assert b"s3cret-pw" not in blob
        assert b"ConnectionPool" not in blob
        copy = pickle.loads(blob)  # same process: the password it used for this server is reused
        assert copy.get("k") == 1
        copy.close()
        client.close()
    finally:
        server.cleanup()


def test_channel_name_with_glob_characters_is_isolated(redis_url: str, key_prefix: str) -> None:
    star = RedisChannel("a*", url=redis_url, key_prefix=key_prefix)
    plain = RedisChannel("ab", url=redis_url, key_prefix=key_prefix)
    plain.set("k", 1)
    assert star.keys() == []
    star.set("k", 2)
    star.clear()
    assert plain.get("k") == 1
    plain.cleanup()


def test_unique_sessions_do_not_see_each_other(redis_url: str, key_prefix: str) -> None:
    first = RedisChannel(uuid.uuid4().hex, url=redis_url, key_prefix=key_prefix)
    second = RedisChannel(uuid.uuid4().hex, url=redis_url, key_prefix=key_prefix)
    first.atomic_add("n", 1)
    second.atomic_add("n", 10)
    first.restore({"x": {"value": 1, "ttl": None}})
    assert first.keys() == ["x"]
    assert second.get("n") == 10
    assert sorted(second.keys()) == ["n"]
    first.cleanup()
    second.cleanup()
