"""Connection options, environment variables, reconnects after restarts, clear errors when Redis is down."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from graflow.exceptions import ConfigError, GraflowError
from graflow_redis.channel import RedisChannel
from graflow_redis.connection import (
    DEFAULT_RETRY_DEADLINE,
    RedisConnection,
    RedisConnectionError,
    RedisSettings,
    mask_url,
)
from graflow_testkit.services.redis import RedisServer, free_port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRAFLOW_REDIS_URL", "GRAFLOW_REDIS_PASSWORD", "GRAFLOW_REDIS_TLS", "GRAFLOW_REDIS_RETRY_DEADLINE"):
        monkeypatch.delenv(name, raising=False)


# -- resolving options (pure logic) ------------------------------------------------------------------------
def test_default_is_localhost() -> None:
    settings = RedisSettings.from_options()
    assert settings.url == "redis://localhost:6379/0"
    assert settings.password is None
    assert settings.retry_deadline == DEFAULT_RETRY_DEADLINE


def test_env_url_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_REDIS_URL", "redis://cache.internal:6380/2")
    monkeypatch.setenv("GRAFLOW_REDIS_PASSWORD", "from-env")
    settings = RedisSettings.from_options()
    assert settings.url == "redis://cache.internal:6380/2"
    assert settings.password == "from-env"


def test_password_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_REDIS_PASSWORD", "env")
    assert RedisSettings.from_options("redis://:inurl@h-prec:1/0").password == "inurl"
    assert RedisSettings.from_options("redis://:inurl@h-prec:1/0", password="arg").password == "arg"
    assert RedisSettings.from_options("redis://h-prec-other:1/0").password == "env"


def test_url_never_keeps_the_password() -> None:
    settings = RedisSettings.from_options("redis://alice:p%40ss@h-mask:7000/3")
    assert settings.url == "redis://alice@h-mask:7000/3"
    assert settings.password == "p@ss"
    assert "p@ss" not in repr(settings)
    assert "password" not in settings.portable()
    assert mask_url("redis://alice:secret@h:1/0") == "redis://alice:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_host_port_db_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RedisSettings.from_options(host="10.0.0.5", port=7001, db=4).url == "redis://10.0.0.5:7001/4"
    assert RedisSettings.from_options(host="::1", port=7001).url == "redis://[::1]:7001/0"
    assert RedisSettings.from_options("redis://h:1/0", db=5).url == "redis://h:1/5"
    assert RedisSettings.from_options("redis://h:1/0", tls=True).url.startswith("rediss://")
    monkeypatch.setenv("GRAFLOW_REDIS_TLS", "1")
    assert RedisSettings.from_options("redis://h:1/0").url.startswith("rediss://")


def test_env_retry_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_REDIS_RETRY_DEADLINE", "2.5")
    assert RedisSettings.from_options().retry_deadline == 2.5
    assert RedisSettings.from_options(retry_deadline=1).retry_deadline == 1
    monkeypatch.setenv("GRAFLOW_REDIS_RETRY_DEADLINE", "soon")
    with pytest.raises(ConfigError, match="GRAFLOW_REDIS_RETRY_DEADLINE"):
        RedisSettings.from_options()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://h:1/0"}, "scheme"),
        ({"url": "redis://h:99999/0"}, "Malformed"),
        ({"url": "redis:///0"}, "names no host"),
        ({"url": 6379}, "must be a string"),
        ({"retry_deadline": -1}, "retry_deadline"),
        ({"redis_client": object()}, "redis-py client"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisConnection.from_options(**kwargs)


def test_client_and_url_together_is_an_error() -> None:
    import redis

    with pytest.raises(ConfigError, match="either redis_client= or url="):
        RedisConnection.from_options("redis://h:1/0", redis_client=redis.Redis())


def test_settings_of_a_callers_client() -> None:
    import redis

    client = redis.Redis(host="h-client", port=7002, db=3, password="sekrit-pw", username="bob")
    connection = RedisConnection.from_options(redis_client=client)
    assert connection.url == "redis://bob@h-client:7002/3"
    assert connection.settings.password == "sekrit-pw"
    assert connection.client is client
    blob = pickle.dumps(connection)
    assert b"sekrit-pw" not in blob
    copy = pickle.loads(blob)
    assert copy.url == connection.url
    assert copy.settings.password is None  # never pickled; nothing has connected here to vouch for one
    ssl_client = redis.Redis(host="h-ssl", port=7003, ssl=True)
    assert RedisConnection.from_options(redis_client=ssl_client).url == "rediss://h-ssl:7003/0"


def test_channel_options_reach_the_client(redis_server: RedisServer) -> None:
    channel = RedisChannel(
        "opts", host="127.0.0.1", port=redis_server.port, db=1, socket_timeout=3, client_name="graflow-test"
    )
    channel.set("k", 1)
    client = channel.connection.client
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 3
    assert client.connection_pool.connection_kwargs["db"] == 1
    assert redis_server.client(db=1).exists("graflow:opts:channel:k")
    assert any(c.get("name") == "graflow-test" for c in redis_server.client().client_list())
    channel.cleanup()
    channel.close()


# -- outages against a real server ---------------------------------------------------------------------------
def test_channel_survives_a_restart(own_redis_server: RedisServer) -> None:
    channel = RedisChannel("restart", url=own_redis_server.url, retry_deadline=20)
    channel.set("before", 1)
    own_redis_server.restart()
    channel.set("after", (2, 3))  # a fresh connection, transparently
    assert channel.get("after") == (2, 3)
    assert channel.get("before") is None  # no persistence: the restarted server is empty
    assert channel.atomic_add("n", 2.5) == 2.5  # scripts are loaded again after the restart
    assert channel.append("l", 1) == 1


def test_operation_waits_for_the_server_to_come_back(own_redis_server: RedisServer) -> None:
    channel = RedisChannel("waits", url=own_redis_server.url, retry_deadline=30)
    channel.set("warm", 1)
    own_redis_server.stop()
    restarter = threading.Timer(0.8, own_redis_server.start)
    restarter.start()
    try:
        channel.set("during", "outage")  # blocks, retrying with backoff, until the server is back
    finally:
        restarter.join()
    assert channel.get("during") == "outage"


def test_server_that_stays_down_gives_a_clear_error(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = RedisChannel("down", url=own_redis_server.url, retry_deadline=0.5)
    channel.set("k", 1)
    own_redis_server.kill()
    with caplog.at_level("WARNING", logger="graflow_redis.connection"), pytest.raises(RedisConnectionError) as info:
        channel.get("k")
    assert "retrying" in caplog.text, "it must retry until the deadline before giving up"
    message = str(info.value)
    assert f"127.0.0.1:{own_redis_server.port}/0 is unreachable" in message
    assert "retry_deadline" in message and "GRAFLOW_REDIS_URL" in message
    assert info.value.url == f"redis://127.0.0.1:{own_redis_server.port}/0"
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, GraflowError)


def test_nothing_listening_gives_a_clear_error() -> None:
    port = free_port()
    channel = RedisChannel("nobody", url=f"redis://:topsecret@127.0.0.1:{port}/0", retry_deadline=0.2)
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}/0 is unreachable") as info:
        channel.set("k", 1)
    assert "topsecret" not in str(info.value)
    with pytest.raises(RedisConnectionError), channel.lock("k", timeout=1):
        pass


def test_wrong_password_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(password="correct") as server:
        channel = RedisChannel("auth", url=f"redis://:wrong@127.0.0.1:{server.port}/0", retry_deadline=300)
        with caplog.at_level("WARNING", logger="graflow_redis.connection"), pytest.raises(
            RedisConnectionError, match="refused the credentials"
        ):
            channel.set("k", 1)
        assert "retrying" not in caplog.text  # reported at once, not after the 300 s deadline
        # A rejected password is not remembered for later connections to the same server...
        assert RedisSettings.from_options(f"redis://127.0.0.1:{server.port}/0").password is None
        good = RedisChannel("auth", url=f"redis://127.0.0.1:{server.port}/0", password="correct")
        good.set("k", 1)
        assert good.get("k") == 1
        # ...an accepted one is, so a channel unpickled in this process reconnects without it.
        assert RedisSettings.from_options(f"redis://127.0.0.1:{server.port}/0").password == "correct"
        assert pickle.loads(pickle.dumps(good)).get("k") == 1


def test_redis_server_service_restart_keeps_port() -> None:
    with RedisServer() as server:
        port, pid = server.port, server.pid
        server.restart()
        assert server.port == port and server.pid != pid and server.is_running
        assert server.client().ping()
        server.kill()
        assert not server.is_running
    assert not server.is_running


def test_service_never_mistakes_another_server_for_its_own(redis_server: RedisServer) -> None:
    from graflow_testkit.services.redis import ServiceUnavailable

    taken = RedisServer(port=redis_server.port, startup_timeout=5)
    with pytest.raises(ServiceUnavailable, match="could not be started"):
        taken.start()
    taken.cleanup()
    assert redis_server.is_running and redis_server.client().ping()
    auto = RedisServer()
    auto.port = redis_server.port  # as if another process grabbed the free port first
    try:
        auto.start()
        assert auto.port != redis_server.port and auto.is_running
    finally:
        auto.cleanup()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_unavailable_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    from graflow_testkit.services.redis import unavailable

    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as info:  # pytest's outcome exceptions are BaseExceptions
        unavailable("redis-server missing")
    assert type(info.value).__name__ == outcome
    assert "redis-server missing" in str(info.value)
