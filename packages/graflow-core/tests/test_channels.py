"""MemoryChannel against the shared conformance suite, plus what is specific to it and the factory."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pytest

from graflow import plugins
from graflow.channels import Channel, ChannelFactory, MemoryChannel, TypedChannel
from graflow.channels.factory import create_channel
from graflow.exceptions import ConfigError, PluginNotFoundError
from graflow.hookspecs import hookimpl
from graflow_testkit.channels import ChannelConformance

pytest_plugins = ["pytester"]


# -- conformance ----------------------------------------------------------------------------------


class TestMemoryChannelConformance(ChannelConformance):
    """The full suite, with the factory form so the two-channel tests run too."""

    preserves_identity = True

    @pytest.fixture
    def make_channel(self) -> Callable[..., Channel]:
        def factory(name: str = "conformance") -> Channel:
            return MemoryChannel(name)

        return factory


class TestMemoryChannelConformancePlainFixture(ChannelConformance):
    """The channel form of ``make_channel`` (ttl tests are covered above, so skip their sleeps here)."""

    preserves_identity = True
    supports_ttl = False

    @pytest.fixture
    def make_channel(self) -> Iterator[Channel]:
        channel = MemoryChannel("plain")
        yield channel
        channel.close()


_XFAIL_SUITE = '''
import pytest
from graflow_testkit.channels import ChannelConformance
from graflow.channels import MemoryChannel


class ListifyingChannel(MemoryChannel):
    """Reproduces upstream's Redis defect: tuples come back as lists."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return list(value) if isinstance(value, tuple) else value


class TestListifying(ChannelConformance):
    xfail_tests = {
        "test_set_overwrites": "tuples come back as lists",
        "test_exists": "listed although it passes: strict xfail must report it",
    }

    @pytest.fixture
    def make_channel(self):
        return ListifyingChannel("x")


class TestMisspelt(ChannelConformance):
    xfail_tests = {"test_no_such_test": "typo"}

    @pytest.fixture
    def make_channel(self):
        return MemoryChannel("y")
'''


def test_conformance_xfail_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=_XFAIL_SUITE)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-k", "test_set_overwrites or test_exists", "-rxXfE"
    )
    # Listifying: one real xfail, one strict XPASS (a failure). Misspelt: both tests error out.
    result.assert_outcomes(xfailed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(["*test_no_such_test*"])


def test_conformance_base_class_is_not_collected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_base="from graflow_testkit.channels import ChannelConformance\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes()


# -- MemoryChannel specifics ------------------------------------------------------------------------


def test_registry_name_and_instance_name() -> None:
    channel = MemoryChannel("session-123")
    assert MemoryChannel.name == "memory"
    assert type(channel).name == "memory"
    assert channel.name == "session-123"
    assert MemoryChannel().name == "default"
    assert repr(channel) == "MemoryChannel(name='session-123')"


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        MemoryChannel("s", host="localhost", port=6379)
    message = str(info.value)
    assert "'host'" in message and "'port'" in message
    assert "Valid options: name" in message


@pytest.mark.parametrize("bad", ["", None, 5])
def test_bad_name(bad: Any) -> None:
    with pytest.raises(ConfigError, match="non-empty string"):
        MemoryChannel(bad)


def test_channel_is_abstract() -> None:
    with pytest.raises(TypeError):
        Channel()  # type: ignore[abstract]

    class Incomplete(Channel):
        name = "incomplete"

        def set(self, key: str, value: Any, ttl: float | None = None) -> None:
            pass

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_values_are_not_copied() -> None:
    channel = MemoryChannel()
    payload = {"nested": [1, 2]}
    channel.set("p", payload)
    assert channel.get("p") is payload
    assert channel.get_many(["p"])["p"] is payload


def test_append_mutates_stored_list_in_place() -> None:
    channel = MemoryChannel()
    channel.append("log", 1)
    seen = channel.get("log")
    channel.append("log", 2)
    assert seen == [1, 2] and channel.get("log") is seen


def test_pickle_keeps_name_data_and_ttl() -> None:
    channel = MemoryChannel("run-7")
    channel.set("t", (1, 2))
    channel.append("l", "x")
    channel.set("ttl", "v", ttl=100)
    with channel.lock("held", timeout=1):  # a held lock must not stop pickling
        for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)):
            copy = loads(dumps(channel))
            assert isinstance(copy, MemoryChannel)
            assert copy.name == "run-7"
            assert copy.get("t") == (1, 2) and copy.get("l") == ["x"]
            ttl = copy.snapshot()["ttl"]["ttl"]
            assert ttl is not None and 90 < ttl <= 100
            with copy.lock("held", timeout=0.1):  # locks are fresh in the copy
                pass
            copy.append("l", "y")
            assert channel.get("l") == ["x"]


def test_restore_rejects_malformed_snapshot() -> None:
    channel = MemoryChannel()
    channel.set("keep", 1)
    with pytest.raises(ValueError, match="Malformed channel snapshot entry for key 'k'"):
        channel.restore({"k": 5})  # type: ignore[dict-item]
    assert channel.get("keep") == 1, "a rejected snapshot leaves the channel alone"


def test_ttl_argument_validation() -> None:
    channel = MemoryChannel()
    with pytest.raises(TypeError, match="ttl"):
        channel.set("k", 1, ttl="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        channel.append("k", 1, ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        channel.set("k", 1, ttl=float("inf"))
    assert channel.keys() == []
    channel.set("k", 1, ttl=0.5)  # fractions of a second are fine
    assert channel.get("k") == 1


def test_short_ttl_expires_and_is_swept() -> None:
    channel = MemoryChannel()
    for i in range(3000):
        channel.set(f"short{i}", i, ttl=0.01)
    time.sleep(0.05)
    assert channel.get("short0") is None
    channel.set("long", 1, ttl=100)
    assert channel.keys() == ["long"]
    # The sweep dropped the expired entries themselves, not just hid them.
    assert len(channel._data) == 1 and len(channel._expiry) == 1


def test_expired_key_then_set_without_ttl() -> None:
    channel = MemoryChannel()
    channel.set("k", 1, ttl=0.01)
    time.sleep(0.03)
    assert not channel.exists("k")
    channel.set("k", 2)
    assert channel.get("k") == 2 and channel.snapshot()["k"]["ttl"] is None


def test_atomic_add_rejects_bools() -> None:
    channel = MemoryChannel()
    with pytest.raises(TypeError, match="amount"):
        channel.atomic_add("n", True)
    channel.set("flag", True)
    with pytest.raises(TypeError, match="flag"):
        channel.atomic_add("flag", 1)


def test_atomic_add_keeps_ttl() -> None:
    channel = MemoryChannel()
    channel.set("n", 1, ttl=100)
    assert channel.atomic_add("n", 2) == 3
    assert channel.snapshot()["n"]["ttl"] is not None


def test_append_type_error_message() -> None:
    channel = MemoryChannel()
    channel.set("k", {"a": 1})
    with pytest.raises(TypeError, match=r"Cannot append to channel key 'k': it holds a dict, not a list"):
        channel.append("k", 1)


def test_lock_timeout_message_and_not_reentrant() -> None:
    channel = MemoryChannel("sess")
    with channel.lock("job", timeout=1), pytest.raises(TimeoutError) as info, channel.lock("job", timeout=0.05):
        pass
    message = str(info.value)
    assert "'job'" in message and "'sess'" in message and "0.05" in message
    assert channel._key_locks == {}, "idle per-key locks are dropped"


def test_lock_without_timeout_and_bad_timeout() -> None:
    channel = MemoryChannel()
    with channel.lock("k", timeout=None):
        pass
    with pytest.raises(ValueError, match="timeout"):
        channel.lock("k", timeout=-1)


def test_lock_zero_timeout_means_try_once() -> None:
    channel = MemoryChannel()
    with channel.lock("k", timeout=0), pytest.raises(TimeoutError), channel.lock("k", timeout=0):
        pass


def test_concurrent_readers_and_writers() -> None:
    """keys(), snapshot() and get() while other threads set and expire keys must never raise."""
    channel = MemoryChannel()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            channel.set(f"w{n}-{i % 500}", i, ttl=0.01 if i % 3 == 0 else None)
            i += 1

    def reader() -> None:
        try:
            while not stop.is_set():
                channel.keys()
                channel.snapshot()
                channel.get("w0-1")
                channel.exists("w1-2")
        except BaseException as exc:  # noqa: BLE001 -- any error in a reader thread fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_set_get_are_fast() -> None:
    """Loose guard for the hot path (target ~0.1 µs; this only catches gross regressions)."""
    channel = MemoryChannel()
    n = 200_000
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(n):
            channel.set("result", i)
            channel.get("result")
        best = min(best, time.perf_counter() - started)
    assert best / n < 2e-6, f"set+get took {best / n * 1e6:.2f} µs"


def test_contains_and_get_many() -> None:
    channel = MemoryChannel()
    channel.set_many({"a": 1, "b": 2}, ttl=100)
    assert "a" in channel and "z" not in channel and 5 not in channel
    assert channel.get_many(["a", "b", "z"]) == {"a": 1, "b": 2, "z": None}
    channel.close()  # no-op


def test_package_exports_and_light_imports() -> None:
    import graflow.channels as channels

    assert {"Channel", "MemoryChannel", "TypedChannel", "ChannelFactory"} <= set(channels.__all__)
    assert channels.TypedChannel is TypedChannel
    code = (
        "import sys, graflow; before = set(sys.modules); import graflow.channels; "
        "new = set(sys.modules) - before; "
        "heavy = sorted(m for m in new if m.split('.')[0] in ('cloudpickle', 'pluggy') or m == 'graflow.plugins'); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- factory -------------------------------------------------------------------------------------------


class _ChannelsOnly:
    """A stand-in for core's plugin that registers only the memory channel.

    Other core modules (handlers, queues, ...) are not needed to test the factory, so the tests
    below run against an isolated registry built from this plugin alone.
    """

    @hookimpl
    def graflow_register_channels(self) -> list[type]:
        return [MemoryChannel]


class _IsolatedRegistry(plugins._Registry):
    def _load(self) -> None:
        self.manager.register(_ChannelsOnly(), name="core")
        self._dists[id(self.manager.get_plugin("core"))] = ("graflow-core", "test")


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> plugins._Registry:
    registry = _IsolatedRegistry()
    monkeypatch.setattr(plugins, "_registry", registry)
    return registry


def test_factory_creates_memory_channel(isolated_registry: plugins._Registry) -> None:
    channel = ChannelFactory.create_channel("memory", "sess-1")
    assert isinstance(channel, MemoryChannel) and channel.name == "sess-1"
    default = create_channel()
    assert isinstance(default, MemoryChannel) and default.name == "default"
    assert create_channel is ChannelFactory.create_channel


def test_factory_forwards_options(isolated_registry: plugins._Registry) -> None:
    with pytest.raises(ConfigError, match="'host'"):
        create_channel("memory", "s", host="localhost")


def test_factory_unknown_backend_lists_installed(isolated_registry: plugins._Registry) -> None:
    with pytest.raises(PluginNotFoundError) as info:
        create_channel("nosuch", "s")
    assert "No channel backend named 'nosuch'" in str(info.value)
    assert "Installed: memory" in str(info.value)


def test_factory_redis_says_what_to_install(isolated_registry: plugins._Registry) -> None:
    with pytest.raises(PluginNotFoundError) as info:
        create_channel("redis", "s")
    message = str(info.value)
    assert "Installed: memory" in message
    assert "pip install graflow-redis" in message


class _UpperChannel(MemoryChannel):
    """A third-party backend with an option of its own."""

    name = "upper"
    options = ("shout",)

    def __init__(self, name: str = "default", shout: bool = False, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.shout = shout


class _UpperPlugin:
    @hookimpl
    def graflow_register_channels(self) -> list[type]:
        return [_UpperChannel]


class _NotAChannel:
    name = "bogus"

    def __init__(self, name: str) -> None:
        self.name = name


class _BogusPlugin:
    @hookimpl
    def graflow_register_channels(self) -> list[type]:
        return [_NotAChannel]


def test_factory_uses_plugins(isolated_registry: plugins._Registry) -> None:
    plugin = _UpperPlugin()
    plugins.register(plugin)
    try:
        channel = create_channel("upper", "s", shout=True)
        assert isinstance(channel, _UpperChannel) and channel.shout and channel.name == "s"
        with pytest.raises(ConfigError, match="Valid options: name, shout"):
            create_channel("upper", "s", whisper=True)
    finally:
        plugins.unregister(plugin)
    with pytest.raises(PluginNotFoundError):
        create_channel("upper", "s")


def test_factory_rejects_non_channel_class(isolated_registry: plugins._Registry) -> None:
    plugin = _BogusPlugin()
    plugins.register(plugin)
    try:
        with pytest.raises(TypeError, match="bogus"):
            create_channel("bogus", "s")
    finally:
        plugins.unregister(plugin)


def test_factory_with_real_registry() -> None:
    """Through graflow's real plugin loading (core's entry point and built-ins)."""
    try:
        plugins.names("channel")
    except ImportError as exc:  # other core modules are still being written
        pytest.skip(f"core plugin cannot load yet: {exc}")
    channel = create_channel("memory", "real")
    assert isinstance(channel, MemoryChannel)
    assert "memory" in plugins.names("channel")
    if "redis" not in plugins.names("channel"):  # graflow-redis is not installed
        with pytest.raises(PluginNotFoundError, match="pip install graflow-redis"):
            create_channel("redis", "real")
