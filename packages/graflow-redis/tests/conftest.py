"""Fixtures shared by every graflow-redis test: a real redis-server, clients, unique key prefixes.

* ``redis_server`` (session): one ``redis-server`` on 127.0.0.1 started for the whole run
  (installed with apt-get when missing) and stopped by PID at the end. Without a server the tests
  that need it are skipped, except under ``CI=true``, where they fail.
* ``own_redis_server`` (function): a server of the test's own, for fault tests that stop, kill or
  restart it; never restart the shared one.
* ``redis_url`` / ``redis_client``: the shared server's URL and a redis-py client for it.
* ``key_prefix``: a key prefix unique to the test; its keys are deleted afterwards.

The plugin is registered in-process when it is not installed (tests run from a source checkout
with ``PYTHONPATH``); installed, its entry point does it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import graflow_redis.plugin
from graflow import plugins
from graflow_testkit.services.redis import RedisServer, redis_server_fixture, start_or_skip

_SERVER_FIXTURES = {"redis_server", "own_redis_server", "redis_url", "redis_client", "key_prefix"}

redis_server = redis_server_fixture(scope="session")


@pytest.fixture(autouse=True)
def _graflow_redis_plugin() -> Iterator[None]:
    """Make sure the ``redis`` plugin is registered (other suites may have reset the registry).

    Installed, its entry point registers it; from a source checkout this registers it for the
    test and removes it afterwards, so tests of other packages see the registry they expect.
    """
    manager = plugins.plugin_manager
    plugins.names("channel")  # loads entry points first, so an installed copy is not registered twice
    added = not manager.is_registered(graflow_redis.plugin)
    if added:
        plugins.register(graflow_redis.plugin, name="redis")
    yield
    if added and manager.is_registered(graflow_redis.plugin):
        plugins.unregister(graflow_redis.plugin)


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server for this test alone (stop, kill and restart it freely)."""
    server = start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def key_prefix(redis_server: RedisServer) -> Iterator[str]:
    """``graflow-test:<random>``; every key under it is deleted after the test."""
    prefix = f"graflow-test:{uuid.uuid4().hex[:12]}"
    yield prefix
    if redis_server.is_running:
        client = redis_server.client()
        try:
            stale = list(client.scan_iter(match=prefix + ":*", count=1000))
            for start in range(0, len(stale), 500):
                client.delete(*stale[start : start + 500])
        finally:
            client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use a real server with ``redis`` (``-m "not redis"`` runs the rest)."""
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
