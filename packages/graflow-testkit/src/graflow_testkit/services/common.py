"""What every test service shares: the CI rule, the "unavailable" outcome and free ports."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar


class ServiceUnavailable(RuntimeError):
    """A test server could not be installed or started; the message says why and what to try."""


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``CI=true``, as CI runners set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str, what: str = "this server") -> None:
    """Skip the current test with ``reason``, or fail it under ``CI=true``. Never returns."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: tests that need {what} must not be skipped)", pytrace=False)
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Server(Protocol):
    """What :func:`start_or_unavailable` and :func:`server_fixture` need of a test server."""

    def start(self) -> Any: ...

    def cleanup(self) -> None: ...


S = TypeVar("S", bound=Server)


def start_or_unavailable(server: S, what: str) -> S:
    """Start ``server``; when that fails, clean up and skip the test (fail it under ``CI=true``)."""
    try:
        return server.start()
    except (ServiceUnavailable, OSError, subprocess.SubprocessError) as exc:
        server.cleanup()
        unavailable(f"cannot start {what}: {exc}", what)
        raise  # unreachable: unavailable() always raises


def server_fixture(start: Callable[[], S], scope: str = "session") -> Callable[..., Iterator[S]]:
    """A pytest fixture that yields ``start()``'s running server and always cleans it up afterwards."""
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[misc]
    def _fixture() -> Iterator[S]:
        server = start()
        try:
            yield server
        finally:
            server.cleanup()

    return _fixture
