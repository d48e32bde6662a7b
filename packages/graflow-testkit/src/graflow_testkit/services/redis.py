"""A real ``redis-server`` on loopback for integration tests and benchmarks.

:class:`RedisServer` runs ``redis-server`` as a child process of the caller, bound to 127.0.0.1
on a free port, with persistence off (``--save '' --appendonly no``), so nothing outlives it.
It installs the server with apt-get when the binary is missing (as root), waits until ``PING``
answers, and can be stopped, killed and restarted on the same port for fault tests::

    from graflow_testkit.services.redis import RedisServer

    with RedisServer() as server:
        client = server.client()          # a redis-py client (import redis only here)
        server.restart()                   # same port, empty data set
        print(server.url)                  # redis://127.0.0.1:<port>/0

In a ``conftest.py``, :func:`redis_server_fixture` makes a pytest fixture (session-scoped by
default) that starts one server for the whole run and stops it by PID at the end, even when tests
fail. A server that cannot start skips the tests that need it, with the reason, except under
``CI=true``, where it fails them: CI must never go green by skipping the integration tests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from graflow_testkit.services.common import (
    ServiceUnavailable,
    free_port,
    in_ci,
    server_fixture,
    start_or_unavailable,
)
from graflow_testkit.services.common import unavailable as _unavailable

#: Where the redis-server binary is looked for besides ``PATH`` (Debian's package puts it here).
_BINARY_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
_APT_INSTALL = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "redis-server"]
_APT_UPDATE = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"]



def unavailable(reason: str) -> None:
    """Skip the current test with ``reason``, or fail it under ``CI=true``. Never returns."""
    _unavailable(reason, "redis-server")


def find_redis_server(install: bool = True) -> str:
    """Path of the ``redis-server`` binary, installing Debian's package when it is missing.

    Raises :class:`ServiceUnavailable` when it is missing and cannot be installed.
    """
    found = _installed_binary()
    if found:
        return found
    if not install:
        raise ServiceUnavailable("redis-server is not installed; install it with: apt-get install -y redis-server")
    if shutil.which("apt-get") is None:
        raise ServiceUnavailable(
            "redis-server is not installed and apt-get is not available to install it; "
            "install Redis >= 6 and put redis-server on PATH"
        )
    errors: list[str] = []
    # Try the install first; refresh the package lists only when that fails (package not known yet).
    for commands in ([_APT_INSTALL], [_APT_UPDATE, _APT_INSTALL]):
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
            if result.returncode != 0:
                errors.append(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
                break
        found = _installed_binary()
        if found:
            return found
    raise ServiceUnavailable(
        "redis-server is not installed and installing it failed (run as root: apt-get install -y redis-server): "
        + " | ".join(errors)
    )


def _installed_binary() -> str | None:
    return shutil.which("redis-server") or next((p for p in _BINARY_CANDIDATES if os.access(p, os.X_OK)), None)


def _command(host: str, port: int, password: str | None, *args: str, timeout: float = 0.5) -> bytes:
    """Send one command (after AUTH when ``password``) over plain RESP and return the raw reply bytes.

    No redis-py needed, so the testkit can start servers without it. Returns ``b""`` on any error.
    """
    def encode(*parts: str) -> bytes:
        out = b"*%d\r\n" % len(parts)
        for part in parts:
            data = part.encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
        return out

    request = (encode("AUTH", password) if password is not None else b"") + encode(*args)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            received = b""
            deadline = time.monotonic() + timeout
            expected = 2 if password is not None else 1
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if received.startswith(b"-") or _complete_replies(received) >= expected:
                    break
            return received
    except OSError:
        return b""


def _complete_replies(data: bytes) -> int:
    """How many complete top-level RESP replies (simple, error, integer or bulk) ``data`` holds."""
    count, index = 0, 0
    while index < len(data):
        end = data.find(b"\r\n", index)
        if end < 0:
            break
        if data[index : index + 1] == b"$":
            length = int(data[index + 1 : end])
            index = end + 2 + max(length, 0) + (2 if length >= 0 else 0)
            if index > len(data):
                break
        else:
            index = end + 2
        count += 1
    return count


def _ping(host: str, port: int, password: str | None, timeout: float = 0.5) -> bool:
    """True when a Redis server at host:port answers PING."""
    return b"+PONG" in _command(host, port, password, "PING", timeout=timeout)


def _server_pid(host: str, port: int, password: str | None) -> int | None:
    """The process id the Redis server at host:port reports (``INFO server``), or None."""
    reply = _command(host, port, password, "INFO", "server", timeout=2.0)
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1; see the module docstring.

    ``password`` turns on ``requirepass``; ``extra_args`` are appended to the command line
    (``["--maxmemory", "64mb"]``). The port is chosen once and kept across :meth:`restart`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        password: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        install: bool = True,
    ) -> None:
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_port(host)
        self.password = password
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.install = install
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None
        self._log_path: str | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> Any:
        """A redis-py ``Redis`` client for this server (``kwargs`` go to ``redis.Redis``)."""
        import redis

        options: dict[str, Any] = {"host": self.host, "port": self.port, "password": self.password}
        options.update(kwargs)
        return redis.Redis(**options)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; raise :class:`ServiceUnavailable` if it does not.

        When the port was picked automatically and another process takes it first, a new port is
        picked (only before the first successful start: restarts keep the port).
        """
        if self.is_running:
            return self
        binary = find_redis_server(self.install)
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="graflow-redis-")
            self._log_path = os.path.join(self._workdir, "redis-server.log")
        for _attempt in range(3):
            if self._launch(binary):
                return self
            if not (self._auto_port and "in use" in self.log_tail(500)):
                break
            self.port = free_port(self.host)
        raise ServiceUnavailable(
            f"redis-server could not be started on {self.host}:{self.port} (exit code "
            f"{self.process.returncode if self.process else None}; waited up to {self.startup_timeout:g}s for PING). "
            f"Its log ends with: "
            f"{self.log_tail()!r}"
        )

    def _launch(self, binary: str) -> bool:
        """One start attempt: True once our own process answers PING."""
        command = [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir or ".",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        command += self.extra_args
        assert self._log_path is not None
        with open(self._log_path, "ab") as log:
            # A session of its own, so a Ctrl-C aimed at pytest does not kill the server mid-test;
            # it is still our child and is stopped by PID in stop()/kill().
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            # PING alone could reach another server that holds the port; make sure it is ours.
            if _ping(self.host, self.port, self.password) and _server_pid(
                self.host, self.port, self.password
            ) == self.process.pid:
                self._auto_port = False  # from now on the port is part of the server's identity
                _running.add(self)
                return True
            time.sleep(0.02)
        self._terminate(signal.SIGKILL)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and wait until it has exited."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the server at once, like a crash."""
        self._terminate(signal.SIGKILL)

    def restart(self, downtime: float = 0.0) -> RedisServer:
        """Stop the server, stay down ``downtime`` seconds, and start it again on the same port.

        Persistence is off, so the restarted server is empty, as after a crash without a dump.
        """
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its working folder (log included)."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_path = None

    def _terminate(self, sig: int, timeout: float = 10.0) -> None:
        _running.discard(self)
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)
        # Once the process has been reaped its listening socket is closed, so the port is free again.

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        if not self._log_path or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(self._log_path) - size))
            return fh.read().decode("utf-8", "replace")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"RedisServer({self.host}:{self.port}, {state})"


# Servers still running when the interpreter exits (a test run interrupted before its fixtures' teardown)
# are stopped then, so none outlives the process that started it.
_running: set[RedisServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.kill()


def start_or_skip(**options: Any) -> RedisServer:
    """Start a :class:`RedisServer`; when that fails, skip the test (fail it under ``CI=true``)."""
    return start_or_unavailable(RedisServer(**options), "redis-server")


def redis_server_fixture(scope: str = "session", **options: Any) -> Callable[..., Iterator[RedisServer]]:
    """A pytest fixture that yields a running :class:`RedisServer` and always stops it afterwards.

    Put ``redis_server = redis_server_fixture()`` in a ``conftest.py``; ``options`` go to
    :class:`RedisServer` (``password=``, ``extra_args=``).
    """
    return server_fixture(lambda: start_or_skip(**options), scope)


__all__ = [
    "RedisServer",
    "ServiceUnavailable",
    "find_redis_server",
    "free_port",
    "in_ci",
    "redis_server_fixture",
    "start_or_skip",
    "unavailable",
]
