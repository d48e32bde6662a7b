"""Conformance suite for channel backends.

Every backend must behave the same way, or a workflow that passes its tests on the memory channel
breaks in production on Redis. Plugin authors subclass :class:`ChannelConformance` in a test module
and provide a ``make_channel`` fixture::

    import pytest
    from graflow_testkit.channels import ChannelConformance
    from my_plugin import MyChannel

    class TestMyChannel(ChannelConformance):
        xfail_tests = {"test_lock_timeout": "locks are advisory in this backend"}

        @pytest.fixture
        def make_channel(self):
            channel = MyChannel("conformance")
            channel.clear()
            yield channel
            channel.clear()
            channel.close()

``make_channel`` yields a fresh, empty channel. It may instead yield a factory (any callable that is
not itself a channel) accepting an optional ``name`` keyword and returning a fresh channel; the
suite then also runs the tests that need two channels (restore into a new channel, isolation of
two names, close), which are skipped otherwise. Channels a factory made are closed by the suite.

Capability flags (class attributes): ``supports_ttl``, ``supports_threads`` (contention tests),
``preserves_identity`` (in-process backends return the very object stored) and ``ttl_sleep``.
``xfail_tests`` maps test names to the reason they are expected to fail; they run as strict
xfails, so a test that starts passing is reported and the entry can go.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from graflow.channels.base import SNAPSHOT_TTL, SNAPSHOT_VALUE, Channel
from graflow_testkit.expected_failures import ExpectedFailures


@dataclass
class SamplePayload:
    """A module-level dataclass, so backends that pickle values can round-trip it by reference."""

    name: str
    scores: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class SampleSlots:
    """A plain class with ``__eq__``: stored objects must come back as objects, not strings."""

    __slots__ = ("a", "b")

    def __init__(self, a: Any, b: Any) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: object) -> bool:
        return type(other) is SampleSlots and (self.a, self.b) == (other.a, other.b)

    def __hash__(self) -> int:
        return hash((self.a, self.b))

    def __getstate__(self) -> tuple[Any, Any]:
        return (self.a, self.b)

    def __setstate__(self, state: tuple[Any, Any]) -> None:
        self.a, self.b = state


ROUND_TRIP_VALUES: dict[str, Any] = {
    "int": 42,
    "negative_int": -7,
    "big_int": 2**100 + 1,
    "float": 3.25,
    "negative_float": -0.5,
    "bool_true": True,
    "bool_false": False,
    "none": None,
    "str": "hello",
    "unicode_str": "héllo wörld ✓ 日本",
    "empty_str": "",
    "numeric_str": "123",
    "bytes": b"\x00\x01binary\xff",
    "empty_bytes": b"",
    "tuple": (1, "two", 3.0),
    "nested_tuple": ((1, 2), (3, (4, 5))),
    "empty_tuple": (),
    "list": [1, "a", None],
    "empty_list": [],
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "empty_set": set(),
    "dict": {"a": 1, "b": [1, 2], "c": {"d": (1, 2)}},
    "dict_non_str_keys": {1: "one", (2, 3): "tuple key", None: "none"},
    "empty_dict": {},
    "dataclass": SamplePayload("x", [1.5, 2.5], {"k": (1, 2)}),
    "object": SampleSlots(1, (2, 3)),
    "datetime": _dt.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=_dt.timezone.utc),
    "date": _dt.date(2024, 2, 29),
    "decimal": decimal.Decimal("1.10"),
    "complex": 1 + 2j,
    "list_of_dicts": [{"id": 1, "tags": ("a",)}, {"id": 2, "tags": ()}],
}


def assert_same(actual: Any, expected: Any, path: str = "value") -> None:
    """Equal *and* of the same type at every level (``[1]`` is not ``(1,)``, ``1.0`` is not ``1``)."""
    assert type(actual) is type(expected), f"{path}: expected {type(expected).__name__}, got {type(actual).__name__}"
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{path}[{index}]")
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), (
            f"{path}: keys {sorted(map(repr, actual))} != {sorted(map(repr, expected))}"
        )
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


class ChannelConformance(ExpectedFailures):
    """Tests every method of :class:`graflow.channels.base.Channel`; subclass it and add ``make_channel``."""

    #: Whether the backend implements ttl expiry.
    supports_ttl: ClassVar[bool] = True
    #: Whether the channel may be used from several threads at once (contention tests).
    supports_threads: ClassVar[bool] = True
    #: Whether ``get`` returns the very object passed to ``set`` (in-process backends).
    preserves_identity: ClassVar[bool] = False
    #: How long ttl tests sleep after a 1-second ttl.
    ttl_sleep: ClassVar[float] = 1.1

    # -- fixtures --------------------------------------------------------------------------------
    @pytest.fixture
    def make_channel(self) -> Any:
        """Subclasses override this with a fixture yielding a fresh, empty channel (or a factory)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a 'make_channel' fixture returning a fresh, empty channel"
        )


    @pytest.fixture
    def channel_factory(self, make_channel: Any) -> Iterator[Callable[..., Channel] | None]:
        """The factory form of ``make_channel`` (None when it gave a channel); closes what it made."""
        if isinstance(make_channel, Channel) or not callable(make_channel):
            yield None
            return
        made: list[Channel] = []

        def factory(**kwargs: Any) -> Channel:
            new_channel = make_channel(**kwargs)
            made.append(new_channel)
            return new_channel

        yield factory
        for made_channel in made:
            try:
                made_channel.clear()
            except Exception:  # noqa: BLE001 -- a test may have closed it already; close() must still run
                pass
            made_channel.close()

    @pytest.fixture
    def channel(self, make_channel: Any, channel_factory: Callable[..., Channel] | None) -> Channel:
        """The channel under test, whichever form ``make_channel`` took."""
        result = channel_factory() if channel_factory is not None else make_channel
        assert isinstance(result, Channel), f"make_channel must give a Channel, got {type(result).__name__}"
        return result

    @staticmethod
    def _need_factory(channel_factory: Callable[..., Channel] | None) -> Callable[..., Channel]:
        if channel_factory is None:
            pytest.skip("needs make_channel to yield a factory (a callable taking an optional name=)")
        return channel_factory

    def _need_ttl(self) -> None:
        if not self.supports_ttl:
            pytest.skip("backend does not support ttl")

    def _need_threads(self) -> None:
        if not self.supports_threads:
            pytest.skip("backend is not used from several threads")

    # -- identity ----------------------------------------------------------------------------------
    def test_names(self, channel: Channel) -> None:
        assert isinstance(type(channel).name, str) and type(channel).name, "the class needs a registry 'name'"
        assert isinstance(channel.name, str) and channel.name

    def test_new_channel_is_empty(self, channel: Channel) -> None:
        assert channel.keys() == []
        assert channel.get("missing") is None
        assert not channel.exists("missing")
        assert channel.snapshot() == {}

    # -- set / get ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("label", sorted(ROUND_TRIP_VALUES))
    def test_round_trip(self, channel: Channel, label: str) -> None:
        value = ROUND_TRIP_VALUES[label]
        channel.set("value", value)
        assert_same(channel.get("value"), value)

    def test_round_trip_many_keys(self, channel: Channel) -> None:
        for label, value in ROUND_TRIP_VALUES.items():
            channel.set(f"k:{label}", value)
        for label, value in ROUND_TRIP_VALUES.items():
            assert_same(channel.get(f"k:{label}"), value, label)

    def test_identity_preserved(self, channel: Channel) -> None:
        if not self.preserves_identity:
            pytest.skip("backend copies values")
        value = SamplePayload("same")
        channel.set("obj", value)
        assert channel.get("obj") is value

    def test_get_default(self, channel: Channel) -> None:
        marker = object()
        assert channel.get("missing", marker) is marker
        assert channel.get("missing", 5) == 5

    def test_stored_none_is_not_missing(self, channel: Channel) -> None:
        channel.set("nothing", None)
        assert channel.exists("nothing")
        assert channel.get("nothing", "default") is None
        assert channel.keys() == ["nothing"]

    def test_set_overwrites(self, channel: Channel) -> None:
        channel.set("k", 1)
        channel.set("k", (2, 3))
        assert_same(channel.get("k"), (2, 3))
        assert channel.keys() == ["k"]

    def test_unusual_keys(self, channel: Channel) -> None:
        keys = ["a:b", "with space", "ünïcode", "slash/key", "*", "[x]", "q?", "dot.key", "0"]
        for index, key in enumerate(keys):
            channel.set(key, index)
        assert sorted(channel.keys()) == sorted(keys)
        for index, key in enumerate(keys):
            assert channel.get(key) == index
            assert channel.exists(key)
        assert channel.delete("*")
        assert sorted(channel.keys()) == sorted(k for k in keys if k != "*")

    def test_get_many_set_many(self, channel: Channel) -> None:
        channel.set_many({"a": 1, "b": (2,)})
        assert channel.get_many(["a", "b", "c"], default="none") == {"a": 1, "b": (2,), "c": "none"}

    # -- exists / delete / keys / clear ------------------------------------------------------------
    def test_exists(self, channel: Channel) -> None:
        assert not channel.exists("k")
        channel.set("k", 0)
        assert channel.exists("k")
        assert "k" in channel

    def test_delete(self, channel: Channel) -> None:
        channel.set("k", "v")
        assert channel.delete("k") is True
        assert not channel.exists("k")
        assert channel.get("k") is None
        assert channel.delete("k") is False
        assert channel.delete("never-set") is False

    def test_keys(self, channel: Channel) -> None:
        channel.set("a", 1)
        channel.set("b", 2)
        channel.append("c", 3)
        assert sorted(channel.keys()) == ["a", "b", "c"]
        channel.delete("b")
        assert sorted(channel.keys()) == ["a", "c"]

    def test_clear(self, channel: Channel) -> None:
        channel.set("a", 1)
        channel.append("b", 2)
        channel.atomic_add("c", 3)
        channel.clear()
        assert channel.keys() == []
        assert channel.get("a") is None
        channel.set("after", 1)
        assert channel.keys() == ["after"]

    # -- lists -------------------------------------------------------------------------------------
    def test_append_creates_list(self, channel: Channel) -> None:
        assert channel.append("items", "a") == 1
        assert channel.append("items", "b") == 2
        assert channel.append("items", ("c", 1)) == 3
        assert_same(channel.get("items"), ["a", "b", ("c", 1)])

    def test_prepend(self, channel: Channel) -> None:
        assert channel.prepend("items", 1) == 1
        assert channel.prepend("items", 2) == 2
        assert channel.append("items", 3) == 3
        assert channel.get("items") == [2, 1, 3]

    def test_append_keeps_item_types(self, channel: Channel) -> None:
        items = [ROUND_TRIP_VALUES[label] for label in ("tuple", "set", "dataclass", "bytes", "none", "dict")]
        for item in items:
            channel.append("items", item)
        assert_same(channel.get("items"), items)

    def test_append_to_list_set_with_set(self, channel: Channel) -> None:
        channel.set("items", [1, 2])
        assert channel.append("items", 3) == 3
        assert channel.prepend("items", 0) == 4
        assert channel.get("items") == [0, 1, 2, 3]

    @pytest.mark.parametrize("operation", ["append", "prepend"])
    def test_append_to_non_list_raises(self, channel: Channel, operation: str) -> None:
        channel.set("scalar", "text")
        with pytest.raises(TypeError):
            getattr(channel, operation)("scalar", 1)
        assert channel.get("scalar") == "text"

    def test_set_replaces_list(self, channel: Channel) -> None:
        channel.append("items", 1)
        channel.set("items", "now a string")
        assert channel.get("items") == "now a string"
        channel.delete("items")
        assert channel.append("items", 2) == 1

    # -- atomic_add --------------------------------------------------------------------------------
    def test_atomic_add(self, channel: Channel) -> None:
        assert channel.atomic_add("n") == 1
        assert channel.atomic_add("n", 5) == 6
        assert channel.atomic_add("n", -2) == 4
        assert channel.get("n") == 4
        assert channel.atomic_add("other", 10) == 10

    def test_atomic_add_float(self, channel: Channel) -> None:
        assert channel.atomic_add("x", 0.5) == pytest.approx(0.5)
        assert channel.atomic_add("x", 0.25) == pytest.approx(0.75)
        assert channel.get("x") == pytest.approx(0.75)

    def test_atomic_add_on_existing_number(self, channel: Channel) -> None:
        channel.set("n", 10)
        assert channel.atomic_add("n", 1) == 11
        assert_same(channel.get("n"), 11)

    def test_atomic_add_on_non_number_raises(self, channel: Channel) -> None:
        channel.set("s", "text")
        with pytest.raises(TypeError):
            channel.atomic_add("s", 1)
        assert channel.get("s") == "text"

    def test_atomic_add_contention(self, channel: Channel) -> None:
        self._need_threads()
        threads_count, per_thread = 8, 1000
        barrier = threading.Barrier(threads_count)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                barrier.wait()
                for _ in range(per_thread):
                    channel.atomic_add("counter", 1)
            except BaseException as exc:  # noqa: BLE001 -- a worker thread's error is surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert channel.get("counter") == threads_count * per_thread

    def test_append_contention(self, channel: Channel) -> None:
        self._need_threads()
        threads_count, per_thread = 8, 200
        barrier = threading.Barrier(threads_count)

        def worker(thread_index: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                channel.append("log", (thread_index, i))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log = channel.get("log")
        assert len(log) == threads_count * per_thread
        assert sorted(log) == sorted((t, i) for t in range(threads_count) for i in range(per_thread))
        for t in range(threads_count):  # each thread's items keep their order
            assert [i for (tt, i) in log if tt == t] == list(range(per_thread))

    # -- locks -------------------------------------------------------------------------------------
    def test_lock_mutual_exclusion(self, channel: Channel) -> None:
        self._need_threads()
        state = {"value": 0, "inside": 0, "max_inside": 0}
        threads_count, per_thread = 4, 50

        def worker() -> None:
            for _ in range(per_thread):
                with channel.lock("resource", timeout=30):
                    state["inside"] += 1
                    state["max_inside"] = max(state["max_inside"], state["inside"])
                    current = state["value"]
                    time.sleep(0)  # invite a thread switch inside the critical section
                    state["value"] = current + 1
                    state["inside"] -= 1

        threads = [threading.Thread(target=worker) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert state["value"] == threads_count * per_thread
        assert state["max_inside"] == 1

    def test_lock_timeout(self, channel: Channel) -> None:
        self._need_threads()
        held = threading.Event()
        release = threading.Event()

        def holder() -> None:
            with channel.lock("busy", timeout=5):
                held.set()
                release.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert held.wait(10)
            started = time.monotonic()
            with pytest.raises(TimeoutError) as info, channel.lock("busy", timeout=0.3):
                pass
            elapsed = time.monotonic() - started
            assert 0.2 <= elapsed < 5, elapsed
            assert "busy" in str(info.value)
        finally:
            release.set()
            thread.join()
        with channel.lock("busy", timeout=5):  # free again once the holder is done
            pass

    def test_lock_released_on_exception(self, channel: Channel) -> None:
        with pytest.raises(RuntimeError), channel.lock("k", timeout=5):
            raise RuntimeError("boom")
        with channel.lock("k", timeout=1):
            pass

    def test_locks_are_per_key(self, channel: Channel) -> None:
        with channel.lock("one", timeout=5), channel.lock("two", timeout=1):
            pass

    def test_lock_is_not_data(self, channel: Channel) -> None:
        channel.set("data", 1)
        with channel.lock("data", timeout=5):
            assert channel.keys() == ["data"]
            assert channel.get("data") == 1
        with channel.lock("other", timeout=5):
            assert channel.keys() == ["data"]
        assert channel.keys() == ["data"]
        assert set(channel.snapshot()) == {"data"}

    # -- ttl ---------------------------------------------------------------------------------------
    def test_ttl_expiry(self, channel: Channel) -> None:
        self._need_ttl()
        channel.set("short", "v", ttl=1)
        channel.append("short_list", 1, ttl=1)
        channel.set("keep", "v")
        assert channel.get("short") == "v"
        assert channel.exists("short")
        time.sleep(self.ttl_sleep)
        assert channel.get("short") is None
        assert channel.get("short", "gone") == "gone"
        assert not channel.exists("short")
        assert not channel.exists("short_list")
        assert sorted(channel.keys()) == ["keep"]
        assert set(channel.snapshot()) == {"keep"}
        assert channel.delete("short") is False
        assert channel.append("short_list", 2) == 1  # an expired list starts afresh

    def test_set_without_ttl_clears_ttl(self, channel: Channel) -> None:
        self._need_ttl()
        channel.set("k", 1, ttl=1)
        channel.set("k", 2)
        channel.set("other", 1, ttl=1)
        channel.set("other", 2, ttl=100)  # a new ttl replaces the old one
        time.sleep(self.ttl_sleep)
        assert channel.get("k") == 2
        assert channel.get("other") == 2
        assert channel.snapshot()["k"][SNAPSHOT_TTL] is None

    def test_ttl_pending_key_is_visible(self, channel: Channel) -> None:
        self._need_ttl()
        channel.set("k", (1, 2), ttl=100)
        assert_same(channel.get("k"), (1, 2))
        assert channel.keys() == ["k"]
        ttl = channel.snapshot()["k"][SNAPSHOT_TTL]
        assert ttl is not None and 90 < ttl <= 100

    @pytest.mark.parametrize("ttl", [0, -1])
    def test_non_positive_ttl_rejected(self, channel: Channel, ttl: float) -> None:
        self._need_ttl()
        with pytest.raises(ValueError):
            channel.set("k", 1, ttl=ttl)
        assert not channel.exists("k")

    # -- snapshot / restore ------------------------------------------------------------------------
    def _fill(self, channel: Channel) -> None:
        channel.set("tuple", (1, 2))
        channel.set("obj", SamplePayload("p", [1.0]))
        channel.set("none", None)
        channel.append("list", "a")
        channel.append("list", ("b",))
        channel.atomic_add("count", 3)
        if self.supports_ttl:
            channel.set("ttl_key", "expiring", ttl=100)

    def test_snapshot_format(self, channel: Channel) -> None:
        self._fill(channel)
        snap = channel.snapshot()
        assert type(snap) is dict
        for key, entry in snap.items():
            assert isinstance(key, str)
            assert type(entry) is dict and set(entry) == {SNAPSHOT_VALUE, SNAPSHOT_TTL}, entry
        assert_same(snap["tuple"][SNAPSHOT_VALUE], (1, 2))
        assert_same(snap["list"][SNAPSHOT_VALUE], ["a", ("b",)])
        assert snap["tuple"][SNAPSHOT_TTL] is None
        if self.supports_ttl:
            assert 0 < snap["ttl_key"][SNAPSHOT_TTL] <= 100
        assert_same(pickle.loads(pickle.dumps(snap)), snap)

    def test_snapshot_restore_round_trip(self, channel: Channel) -> None:
        self._fill(channel)
        snap = pickle.loads(pickle.dumps(channel.snapshot()))
        expected_keys = sorted(snap)
        # Change everything: new key, deleted key, changed value, longer list.
        channel.set("extra", 1)
        channel.delete("tuple")
        channel.set("obj", "replaced")
        channel.append("list", "c")
        channel.restore(snap)
        assert sorted(channel.keys()) == expected_keys
        assert_same(channel.get("tuple"), (1, 2))
        assert_same(channel.get("obj"), SamplePayload("p", [1.0]))
        assert_same(channel.get("list"), ["a", ("b",)])
        assert channel.get("extra") is None
        assert channel.exists("none") and channel.get("none", "d") is None
        assert channel.atomic_add("count", 1) == 4
        assert channel.append("list", "c") == 3
        if self.supports_ttl:
            ttl = channel.snapshot()["ttl_key"][SNAPSHOT_TTL]
            assert ttl is not None and 0 < ttl <= 100, "restore must keep the ttl"

    def test_snapshot_does_not_change_later(self, channel: Channel) -> None:
        channel.append("list", 1)
        channel.set("n", 1)
        snap = channel.snapshot()
        channel.append("list", 2)
        channel.set("n", 2)
        assert snap["list"][SNAPSHOT_VALUE] == [1]
        assert snap["n"][SNAPSHOT_VALUE] == 1
        channel.restore(snap)
        channel.append("list", 3)
        assert snap["list"][SNAPSHOT_VALUE] == [1], "restore must not alias the snapshot's lists"

    def test_restore_empty_snapshot_clears(self, channel: Channel) -> None:
        self._fill(channel)
        channel.restore({})
        assert channel.keys() == []

    def test_restore_into_fresh_channel(self, channel: Channel, channel_factory: Callable[..., Channel] | None) -> None:
        factory = self._need_factory(channel_factory)
        self._fill(channel)
        snap = channel.snapshot()
        other = factory(name="conformance-restored")
        other.restore(snap)
        assert sorted(other.keys()) == sorted(snap)
        assert_same(other.get("list"), ["a", ("b",)])

    # -- several channels --------------------------------------------------------------------------
    def test_names_are_isolated(self, channel_factory: Callable[..., Channel] | None) -> None:
        factory = self._need_factory(channel_factory)
        first = factory(name="conformance-a")
        second = factory(name="conformance-b")
        first.set("shared", "a")
        first.append("items", 1)
        assert second.get("shared") is None
        assert second.keys() == []
        second.set("shared", "b")
        second.clear()
        assert first.get("shared") == "a"
        assert first.get("items") == [1]

    def test_close_twice(self, channel_factory: Callable[..., Channel] | None) -> None:
        factory = self._need_factory(channel_factory)
        extra = factory(name="conformance-close")
        extra.set("k", 1)
        extra.close()
        extra.close()


__all__ = ["ROUND_TRIP_VALUES", "ChannelConformance", "SamplePayload", "SampleSlots", "assert_same"]
