"""The ``ssh`` task handler: run a task's function on another machine over SSH.

::

    @task(handler="ssh", handler_kwargs={"host": "gpu-box", "user": "me", "key_filename": "~/.ssh/id_ed25519"})
    def train(data):
        ...

The remote host needs nothing but a ``python3`` of the same minor version: the handler ships the
runner (graflow, cloudpickle and pluggy in one zip file), caches it there by content, and starts
it on an SSH exec channel per task. The task gets the same ``context`` as in-process; see
:class:`graflow.remote.handler.RemoteTaskHandler` for the protocol side.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from graflow.exceptions import ConfigError
from graflow.remote.bundle import RunnerBundle
from graflow.remote.handler import RemoteTaskHandler
from graflow.remote.process import RemoteProcess
from graflow_ssh.connection import POOL, Credentials, SSHConnection, SSHConnectionPool
from graflow_ssh.errors import SSHConnectionError
from graflow_ssh.process import PID_MARKER, SSHRemoteProcess, prepare_channel
from graflow_ssh.shipping import ensure_bundle
from graflow_ssh.target import SSHTarget, resolve_target

logger = logging.getLogger("graflow_ssh")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_env(env: Mapping[str, Any] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ConfigError(
            f"ssh handler: 'env' must be a mapping of variable names to strings, got {type(env).__name__}"
        )
    checked = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(
                f"ssh handler: env name {name!r} is not a valid environment variable name (letters, digits and _, "
                f"not starting with a digit)"
            )
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"ssh handler: env[{name!r}] must be a string, got {type(value).__name__}")
        checked[name] = str(value)
    return checked


class SSHTaskHandler(RemoteTaskHandler):
    """Runs tasks on a remote host over SSH (handler name ``ssh``).

    Settings (keyword arguments, also accepted as ``handler_kwargs``):

    - ``host``: host name, address, or ``~/.ssh/config`` alias (required).
    - ``port``, ``user``, ``key_filename``: override the config / defaults (22, local user, default keys).
    - ``known_hosts``: known_hosts file to verify the host key against (default: the user's).
    - ``allow_unknown_hosts``: accept a host key that is not in known_hosts (logged; default False).
    - ``password_env``: name of an environment variable holding the password (never logged).
    - ``allow_agent``: try keys from a running ssh-agent (default True).
    - ``python``: the remote interpreter (default ``python3``); ``env``: variables for the task.
    - ``connect_timeout``, ``keepalive`` (seconds), ``ssh_config`` (client config path).
    - ``reuse``, ``pool_size``, ``pickle_by_value``, ``startup_timeout``: see RemoteTaskHandler.
    """

    name = "ssh"

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        key_filename: str | Sequence[str] | None = None,
        known_hosts: str | None = None,
        python: str = "python3",
        env: Mapping[str, str] | None = None,
        password_env: str | None = None,
        allow_unknown_hosts: bool = False,
        allow_agent: bool = True,
        connect_timeout: float = 10.0,
        keepalive: float = 30.0,
        ssh_config: str | None = None,
        reuse: bool = False,
        pool_size: int = 4,
        pickle_by_value: Sequence[str] = (),
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(
            reuse=reuse,
            pool_size=pool_size,
            python=python,
            pickle_by_value=pickle_by_value,
            startup_timeout=startup_timeout,
        )
        if host is None:
            raise ConfigError(
                "The ssh handler needs a host: handler_kwargs={'host': 'name-or-address', 'user': ..., "
                "'key_filename': ...} (a ~/.ssh/config alias works too)"
            )
        if password_env is not None and (not isinstance(password_env, str) or not _ENV_NAME.match(password_env)):
            raise ConfigError(
                f"ssh handler: password_env must be the NAME of an environment variable holding the password "
                f"(like 'DEPLOY_SSH_PASSWORD'), not the password itself; got a {type(password_env).__name__} that "
                f"is not a valid variable name"
            )
        for setting, value in (("connect_timeout", connect_timeout), ("keepalive", keepalive)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"ssh handler: {setting} must be a number of seconds >= 0, got {value!r}")
        if connect_timeout == 0:
            raise ConfigError("ssh handler: connect_timeout must be more than 0 seconds")
        self.target: SSHTarget = resolve_target(
            host, port=port, user=user, key_filename=key_filename, known_hosts=known_hosts, ssh_config=ssh_config
        )
        self.env = _check_env(env)
        self.credentials = Credentials(
            password_env=password_env,
            allow_agent=bool(allow_agent),
            allow_unknown_hosts=bool(allow_unknown_hosts),
            connect_timeout=float(connect_timeout),
            keepalive=float(keepalive),
        )
        self.pool: SSHConnectionPool = POOL
        if allow_unknown_hosts:
            logger.warning(
                "ssh handler for %s: allow_unknown_hosts=True, so an unknown host key is accepted WITHOUT verification "
                "(a changed key is still refused). Record the host's key in known_hosts to turn this off.",
                self.target.describe(),
            )

    # -- RemoteTaskHandler ----------------------------------------------------------------------
    def describe_target(self) -> str:
        return f"ssh {self.target.describe()}"

    def command_line(self, bundle: RunnerBundle, remote_path: str) -> str:
        """The shell command run on the exec channel (env exported; PID reported, then the runner exec'd)."""
        exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in self.env.items())
        runner = " ".join(shlex.quote(part) for part in bundle.command(self.python, remote_path))
        script = f"echo {PID_MARKER}$$ >&2; {exports}exec {runner}"
        # Run under /bin/sh whatever the login shell is; the login shell exec's it, so the PID stays the same.
        return f"exec /bin/sh -c {shlex.quote(script)}"

    def start_process(self, bundle: RunnerBundle, on_output: Callable[[str], None]) -> RemoteProcess:
        timeout = self.credentials.connect_timeout

        def start(connection: SSHConnection) -> RemoteProcess:
            remote_path = ensure_bundle(connection, bundle, timeout)
            channel = connection.open_session(timeout)
            try:
                prepare_channel(channel)
                channel.exec_command(self.command_line(bundle, remote_path))
            except BaseException:
                channel.close()
                connection.channel_closed()
                raise
            return SSHRemoteProcess(
                channel, connection, on_output, self._kill_remote, self.describe_target(), self.python
            )

        return self.pool.use(self.target, self.credentials, self, start, "starting a runner")

    def _kill_remote(self, pid: int) -> None:
        """``kill -9`` the runner's process group (and the process itself) on the remote host."""
        command = f"kill -9 -{pid} 2>/dev/null; kill -9 {pid} 2>/dev/null; true"
        try:
            self.pool.use(
                self.target,
                self.credentials,
                self,
                lambda connection: connection.run(command, timeout=self.credentials.connect_timeout),
                f"killing runner PID {pid}",
            )
        except (SSHConnectionError, OSError, ConfigError) as exc:
            logger.warning(
                "ssh: could not kill the runner (PID %d) on %s: %s. It may still be running there.",
                pid,
                self.describe_target(),
                exc,
            )

    # -- life cycle -----------------------------------------------------------------------------
    def connections(self) -> list[SSHConnection]:
        """The live pooled connections to this handler's (host, port, user)."""
        return self.pool.connections(self.target, self.credentials)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.pool.release(self)

    def __repr__(self) -> str:
        return f"SSHTaskHandler({self.describe_target()}, python={self.python!r}, reuse={self.reuse})"


__all__ = ["SSHTaskHandler"]
