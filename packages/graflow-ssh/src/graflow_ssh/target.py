"""Where the ``ssh`` handler connects: settings merged with the user's OpenSSH client config.

``host`` may be a host name, an address, or an alias from ``~/.ssh/config`` (or the file given as
``ssh_config``). As with the ``ssh`` command, values given explicitly win; otherwise the config's
``HostName``, ``Port``, ``User``, ``IdentityFile`` and ``UserKnownHostsFile`` apply; otherwise the
defaults (port 22, the local user name, the default key files, ``~/.ssh/known_hosts``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass

import paramiko

from graflow.exceptions import ConfigError

DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")


@dataclass(frozen=True)
class SSHTarget:
    """A resolved destination: what to connect to and how to check who answers."""

    alias: str
    hostname: str
    port: int
    user: str
    key_filenames: tuple[str, ...]
    known_hosts: tuple[str, ...]
    known_hosts_explicit: bool

    @property
    def key(self) -> tuple[str, int, str]:
        """The pool key: connections are shared per (host, port, user)."""
        return (self.hostname, self.port, self.user)

    @property
    def address(self) -> str:
        return f"{self.hostname}:{self.port}"

    def describe(self) -> str:
        where = f"{self.user}@{self.hostname}:{self.port}"
        return where if self.alias == self.hostname else f"{self.alias} ({where})"


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


def _as_paths(value: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None, setting: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    paths = []
    for item in value:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise ConfigError(f"ssh handler: {setting} must be a file path or a list of paths, got {item!r}")
        paths.append(_expand(os.fspath(item)))
    return tuple(paths)


def load_ssh_config(path: str | os.PathLike[str] | None) -> tuple[paramiko.SSHConfig | None, str]:
    """The parsed client config and its path; (None, path) when the default file does not exist."""
    explicit = path is not None
    resolved = _expand(os.fspath(path) if path is not None else DEFAULT_SSH_CONFIG)
    if not os.path.exists(resolved):
        if explicit:
            raise ConfigError(
                f"ssh handler: ssh_config file {resolved} does not exist. Give the path of an OpenSSH client "
                f"config (like ~/.ssh/config) or leave ssh_config unset."
            )
        return None, resolved
    try:
        return paramiko.SSHConfig.from_path(resolved), resolved
    except (OSError, UnicodeDecodeError, paramiko.ConfigParseError) as exc:
        raise ConfigError(f"ssh handler: cannot read the SSH client config {resolved}: {exc}") from exc


def resolve_target(
    host: str,
    *,
    port: int | None = None,
    user: str | None = None,
    key_filename: str | Sequence[str] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    ssh_config: str | os.PathLike[str] | None = None,
) -> SSHTarget:
    """Merge the explicit settings with the client config's entry for ``host``."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(
            f"ssh handler: 'host' must name the machine to run on (a host name, an address or a ~/.ssh/config "
            f"alias), got {host!r}. Example: handler_kwargs={{'host': 'gpu-box.example.org', 'user': 'me'}}"
        )
    host = host.strip()
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise ConfigError(f"ssh handler: 'port' must be a TCP port number (1-65535), got {port!r}")
    if user is not None and (not isinstance(user, str) or not user):
        raise ConfigError(f"ssh handler: 'user' must be a non-empty login name, got {user!r}")
    config, config_path = load_ssh_config(ssh_config)
    entry: dict[str, object] = dict(config.lookup(host)) if config is not None else {}

    hostname = str(entry.get("hostname") or host)
    if port is None:
        raw_port = entry.get("port")
        try:
            port = int(str(raw_port)) if raw_port is not None else 22
        except ValueError:
            raise ConfigError(
                f"ssh handler: {config_path} gives host '{host}' the port {raw_port!r}, which is not a number"
            ) from None
    if user is None:
        user = str(entry.get("user") or getpass.getuser())

    keys = _as_paths(key_filename, "key_filename")
    if not keys and entry.get("identityfile"):
        identity = entry["identityfile"]
        keys = tuple(p for p in _as_paths(identity if isinstance(identity, list) else [str(identity)], "IdentityFile"))
        keys = tuple(p for p in keys if os.path.exists(p))  # like ssh, a missing default identity is skipped
    else:
        missing = [p for p in keys if not os.path.exists(p)]
        if missing:
            raise ConfigError(
                f"ssh handler: key_filename {missing[0]} does not exist. Give the path of the private key to log in "
                f"with (for example ~/.ssh/id_ed25519), or leave key_filename unset to use the SSH agent and the "
                f"default keys."
            )

    if known_hosts is not None:
        known = _as_paths(known_hosts, "known_hosts")
        explicit = True
    else:
        from_config = entry.get("userknownhostsfile")
        if from_config:
            known = _as_paths(str(from_config).split(), "UserKnownHostsFile")
        else:
            known = tuple(_expand(p) for p in DEFAULT_KNOWN_HOSTS)
        explicit = False
    return SSHTarget(
        alias=host,
        hostname=hostname,
        port=port,
        user=user,
        key_filenames=keys,
        known_hosts=known,
        known_hosts_explicit=explicit,
    )


__all__ = ["SSHTarget", "load_ssh_config", "resolve_target"]
