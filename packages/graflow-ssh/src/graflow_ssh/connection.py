"""SSH connections: opening them (host key checked, then key / agent / password auth) and pooling them.

One authenticated connection per (host, port, user) serves every task sent there: each task gets
an SSH channel of its own on it, so several tasks run at once over one TCP connection. A
connection sends keep-alives, and one found dead (server restarted, network dropped) is replaced
transparently the next time a channel is needed. When a server refuses more channels on one
connection (OpenSSH's ``MaxSessions``, 10 by default), the pool opens a second connection for the
overflow rather than failing the task.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paramiko

from graflow.exceptions import ConfigError
from graflow_ssh.errors import SSHAuthenticationError, SSHConnectionError, SSHHostKeyError
from graflow_ssh.host_keys import AcceptUnknownHost, RefuseUnknownHost, changed_host_error, load_known_hosts
from graflow_ssh.target import SSHTarget

logger = logging.getLogger("graflow_ssh")

T = TypeVar("T")

#: Per-process key for the password digests in pool keys (a password is never kept, only this HMAC of it).
_POOL_KEY_SALT = secrets.token_bytes(32)
PoolKey = tuple[object, ...]

#: Errors paramiko raises when a connection or channel fails under our feet.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (paramiko.SSHException, EOFError, OSError)


class ChannelRefused(Exception):
    """The server refused a new channel on a connection that is still up (too many open: MaxSessions)."""


@dataclass(frozen=True)
class Credentials:
    """How to log in. The password itself is never stored: only the name of the variable holding it."""

    password_env: str | None = None
    allow_agent: bool = True
    allow_unknown_hosts: bool = False
    connect_timeout: float = 10.0
    keepalive: float = 30.0

    def password(self) -> str | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"ssh handler: password_env names the environment variable {self.password_env!r}, but it is not set. "
                f"Export it before running (export {self.password_env}=...) or log in with a key instead."
            )
        return value

    def pool_key(self, target: SSHTarget) -> PoolKey:
        """Connections are shared per (host, port, user) among handlers that log in and verify alike.

        A handler with other keys, another known_hosts or another password never borrows a
        connection that someone else's credentials opened.
        """
        password = self.password()
        digest = hmac.new(_POOL_KEY_SALT, password.encode(), hashlib.sha256).hexdigest() if password else None
        return (
            *target.key,
            target.key_filenames,
            target.known_hosts,
            self.allow_unknown_hosts,
            self.allow_agent,
            self.password_env,
            digest,
        )


class SSHConnection:
    """One authenticated SSH connection (a paramiko transport) and what is known about its host."""

    def __init__(self, target: SSHTarget, client: paramiko.SSHClient, pool_key: PoolKey = ()) -> None:
        self.target = target
        self.pool_key = pool_key
        self.client = client
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self.lock = threading.Lock()
        #: held while the runner bundle is checked / uploaded (the first task on a connection)
        self.ship_lock = threading.Lock()
        self.channels = 0
        #: the most channels open at once on this connection (for tests and diagnostics)
        self.peak_channels = 0
        #: how many channels the server allows on one connection, once it has refused one
        self.channel_limit: int | None = None
        #: remote home folder and the bundle digests known to be in place (filled by graflow_ssh.shipping)
        self.home: str | None = None
        self.shipped: set[str] = set()
        self.closed = False
        #: no new channels; closed once the channels still open on it are done
        self.retired = False

    @property
    def alive(self) -> bool:
        return not self.closed and self.transport.is_active()

    def has_room(self) -> bool:
        return not self.retired and (self.channel_limit is None or self.channels < self.channel_limit)

    def open_session(self, timeout: float) -> paramiko.Channel:
        """A new session channel (counted until :meth:`channel_closed`).

        Raises :class:`ChannelRefused` when the server says no but the connection stays up. (With
        several threads opening channels at once, paramiko may report such a refusal as a bare
        "Unable to open channel" SSHException, so any failure on a live transport counts.)
        """
        try:
            channel = self.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError) as exc:
            if self.transport.is_active() and not isinstance(exc, EOFError):
                raise ChannelRefused(str(exc) or type(exc).__name__) from exc
            raise
        with self.lock:
            self.channels += 1
            self.peak_channels = max(self.peak_channels, self.channels)
        return channel

    def channel_closed(self) -> None:
        with self.lock:
            self.channels = max(0, self.channels - 1)
            done = self.retired and self.channels == 0
        if done:
            self.close()

    def retire(self) -> None:
        """Take no new channels; close as soon as the open ones are closed (now, if there are none)."""
        with self.lock:
            self.retired = True
            done = self.channels == 0
        if done:
            self.close()

    def run(self, command: str, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
        """Run a short shell command on its own channel; return (exit status, stdout, stderr)."""
        channel = self.open_session(timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
            out = bytearray()
            err = bytearray()
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out += chunk
            while True:
                chunk = channel.recv_stderr(65536)
                if not chunk:
                    break
                err += chunk
            if not channel.status_event.wait(timeout):
                raise TimeoutError(f"no exit status within {timeout:g}s")
            return channel.exit_status, bytes(out), bytes(err)
        finally:
            channel.close()
            self.channel_closed()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.client.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "closed"
        return f"SSHConnection({self.target.describe()}, {state}, {self.channels} channel(s))"


def connect(target: SSHTarget, credentials: Credentials) -> SSHConnection:
    """Open and authenticate a connection; map every failure to an error saying what to do."""
    client = paramiko.SSHClient()
    loaded = load_known_hosts(client, target)
    if credentials.allow_unknown_hosts:
        client.set_missing_host_key_policy(AcceptUnknownHost(target))
    else:
        client.set_missing_host_key_policy(RefuseUnknownHost(target, loaded))
    password = credentials.password()
    timeout = credentials.connect_timeout
    where = target.describe()
    try:
        client.connect(
            target.hostname,
            port=target.port,
            username=target.user,
            key_filename=list(target.key_filenames) or None,
            password=password,
            allow_agent=credentials.allow_agent,
            look_for_keys=not target.key_filenames,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except SSHHostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise changed_host_error(target, exc.key, exc.expected_key) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        tried = []
        if target.key_filenames:
            tried.append("key file(s) " + ", ".join(target.key_filenames))
        else:
            tried.append("the default key files (~/.ssh/id_*)")
        if credentials.allow_agent:
            tried.append("the SSH agent" + ("" if os.environ.get("SSH_AUTH_SOCK") else " (none running)"))
        if credentials.password_env:
            tried.append(f"the password in ${credentials.password_env}")
        raise SSHAuthenticationError(
            f"SSH login as '{target.user}' on {where} was refused ({type(exc).__name__}: {exc}). Tried: "
            f"{'; '.join(tried)}. Check the user name, that the public key is in the remote ~/.ssh/authorized_keys, "
            f"or set key_filename / password_env.",
            target.hostname,
            target.port,
            target.user,
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError:
        client.close()
        raise SSHConnectionError(
            f"Cannot connect to SSH server {target.address} ({where}): connection refused. Check that sshd runs "
            f"there and listens on port {target.port}, and the host/port settings (or the HostName/Port of the "
            f"~/.ssh/config entry).",
            target.hostname,
            target.port,
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise SSHConnectionError(
            f"Cannot connect to SSH server {target.address}: the host name '{target.hostname}' does not resolve "
            f"({exc.strerror or exc}). Check the host setting (or the HostName of the ~/.ssh/config entry).",
            target.hostname,
            target.port,
        ) from None
    except TimeoutError:
        client.close()
        raise SSHConnectionError(
            f"Cannot connect to SSH server {target.address} ({where}): no answer within {timeout:g}s "
            f"(connect_timeout). Check that the host is up and reachable (firewall, VPN) on port {target.port}.",
            target.hostname,
            target.port,
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        client.close()
        raise SSHConnectionError(
            f"Cannot connect to SSH server {target.address} ({where}): {type(exc).__name__}: {exc}",
            target.hostname,
            target.port,
        ) from None
    finally:
        password = None
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        client.close()
        raise SSHConnectionError(
            f"The SSH connection to {target.address} closed right after login", target.hostname, target.port
        )
    if credentials.keepalive > 0:
        transport.set_keepalive(max(1, int(credentials.keepalive)))
    logger.debug("ssh: connected to %s", where)
    return SSHConnection(target, client, credentials.pool_key(target))


class SSHConnectionPool:
    """Connections shared per (host, port, user) by every ``ssh`` handler in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[PoolKey, list[SSHConnection]] = {}
        self._connect_locks: dict[PoolKey, threading.Lock] = {}
        self._owners: dict[PoolKey, set[int]] = {}

    def connections(self, target: SSHTarget, credentials: Credentials) -> list[SSHConnection]:
        """The live pooled connections to ``target`` opened with ``credentials``."""
        with self._lock:
            return [c for c in self._connections.get(credentials.pool_key(target), []) if c.alive]

    def _connection(self, target: SSHTarget, credentials: Credentials, owner: object) -> SSHConnection:
        key = credentials.pool_key(target)
        with self._lock:
            self._owners.setdefault(key, set()).add(id(owner))
            connect_lock = self._connect_locks.setdefault(key, threading.Lock())
        # One connect at a time per key: eight tasks starting together share the first connection.
        with connect_lock:
            with self._lock:
                pooled = self._connections.setdefault(key, [])
                for dead in [c for c in pooled if not c.alive]:
                    pooled.remove(dead)
                    dead.close()
                for connection in pooled:
                    if connection.has_room():
                        return connection
            connection = connect(target, credentials)
            connection.pool_key = key
            with self._lock:
                self._connections.setdefault(key, []).append(connection)
            return connection

    def discard(self, connection: SSHConnection) -> None:
        """Drop a connection that failed (the next request opens a new one).

        A connection that is still up is only retired: tasks running on it keep their channels.
        """
        with self._lock:
            pooled = self._connections.get(connection.pool_key, [])
            if connection in pooled:
                pooled.remove(connection)
        if connection.alive:
            connection.retire()
        else:
            connection.close()

    def use(
        self,
        target: SSHTarget,
        credentials: Credentials,
        owner: object,
        work: Callable[[SSHConnection], T],
        what: str,
    ) -> T:
        """Run ``work(connection)`` on a live pooled connection, replacing a dead one once.

        ``work`` may open channels; a channel refusal marks the connection full and moves on to
        another connection. Connection failures end in :class:`SSHConnectionError`.
        """
        last: BaseException | None = None
        failures = 0
        refusals = 0
        idle_refusals = 0
        while True:
            connection = self._connection(target, credentials, owner)
            try:
                return work(connection)
            except ChannelRefused as exc:
                # The server refused a channel on a connection that is up: OpenSSH does this when
                # MaxSessions channels are open already (code 2, "Connect failed"; others use 1 or 4).
                with connection.lock:
                    open_now = connection.channels
                if connection.alive and open_now > 0 and refusals < 256:
                    refusals += 1
                    with connection.lock:
                        if connection.channel_limit is None or open_now < connection.channel_limit:
                            connection.channel_limit = open_now
                    logger.info(
                        "ssh: %s refused channel %d on one connection (%s); using another connection for %s",
                        target.describe(),
                        open_now + 1,
                        exc,
                        what,
                    )
                    continue
                if connection.alive and idle_refusals < 8:
                    # None of ours is open, yet refused: the server may still be tearing down channels
                    # we closed a moment ago (the runner bundle's SFTP session, say). Give it a moment.
                    idle_refusals += 1
                    time.sleep(0.05 * idle_refusals)
                    continue
                if connection.alive:
                    raise SSHConnectionError(
                        f"{target.describe()} refused to open an SSH session channel while {what} ({exc}). The "
                        f"server may forbid command execution for this user (ForceCommand, restricted shell, "
                        f"no-pty/command= options in authorized_keys).",
                        target.hostname,
                        target.port,
                    ) from exc
                last = exc
            except (SSHHostKeyError, SSHAuthenticationError, ConfigError, SSHConnectionError):
                raise
            except TRANSPORT_ERRORS as exc:
                last = exc
            failures += 1
            alive = connection.alive
            self.discard(connection)
            if failures >= 2:
                state = "dropped" if not alive else "failed"
                raise SSHConnectionError(
                    f"The SSH connection to {target.describe()} {state} while {what}: {type(last).__name__}: {last}. "
                    f"It was re-opened once and failed again; check the server and the network.",
                    target.hostname,
                    target.port,
                ) from last
            logger.info("ssh: connection to %s lost while %s (%r); reconnecting", target.describe(), what, last)

    def release(self, owner: object) -> None:
        """``owner`` (a handler) is closed: close the connections no other handler uses."""
        to_close: list[SSHConnection] = []
        with self._lock:
            for key, owners in list(self._owners.items()):
                owners.discard(id(owner))
                if not owners:
                    del self._owners[key]
                    to_close.extend(self._connections.pop(key, []))
        for connection in to_close:
            connection.close()

    def close_all(self) -> None:
        with self._lock:
            everything = [c for pooled in self._connections.values() for c in pooled]
            self._connections.clear()
            self._owners.clear()
        for connection in everything:
            connection.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats: dict[str, list[int]] = {}
            for pooled in self._connections.values():
                for connection in pooled:
                    if connection.alive:
                        stats.setdefault(connection.target.describe(), []).append(connection.channels)
            return stats


#: The process-wide pool every ``ssh`` handler uses.
POOL = SSHConnectionPool()
atexit.register(POOL.close_all)

__all__ = ["POOL", "Credentials", "SSHConnection", "SSHConnectionPool", "connect"]
