"""The errors the ``ssh`` handler raises on purpose.

* :class:`SSHConnectionError` (a :class:`ConnectionError`): the server could not be reached or the
  connection dropped. Retry policies retry it (``RetryPolicy(retry_on=(ConnectionError,))`` too).
* :class:`SSHHostKeyError` (a :class:`~graflow.exceptions.ConfigError`): the server's host key is
  unknown or does not match known_hosts. Retrying does not help; the message says how to trust the
  host after checking its fingerprint.
* :class:`SSHAuthenticationError` (a ConfigError): the server refused every credential offered.

No message ever contains a password or a private key.
"""

from __future__ import annotations

from graflow.exceptions import ConfigError


class SSHConnectionError(ConnectionError):
    """Connecting to ``host:port`` failed (refused, unreachable, timed out) or the connection dropped."""

    def __init__(self, message: str, host: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SSHHostKeyError(ConfigError):
    """The server's host key is not in known_hosts, or differs from the one recorded there."""

    def __init__(self, message: str, host: str = "", port: int = 0, fingerprint: str = "") -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.fingerprint = fingerprint


class SSHAuthenticationError(ConfigError):
    """The server accepted none of the credentials offered (key files, agent, password)."""

    def __init__(self, message: str, host: str = "", port: int = 0, user: str = "") -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.user = user


__all__ = ["SSHAuthenticationError", "SSHConnectionError", "SSHHostKeyError"]
