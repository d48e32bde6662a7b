"""Connecting to Redis: one place that turns user options into a client, and survives restarts.

Every part of graflow-redis (channel, queue, coordinator, checkpoint store, worker) connects
through :class:`RedisSettings` and :class:`RedisConnection`, so they all accept the same options
and fail the same way:

* **Where**: ``url`` (``redis://[[user]:password@]host:port/db``, ``rediss://`` for TLS,
  ``unix:///path/redis.sock?db=0``), or ``host``/``port``/``db``, or an existing redis-py client
  (``redis_client=``); with none of them, the ``GRAFLOW_REDIS_URL`` environment variable, then
  ``redis://localhost:6379/0``.
* **Credentials**: ``password=`` (and ``username=``), else the password in the URL, else the
  password this process already used for the same server, else the ``GRAFLOW_REDIS_PASSWORD``
  environment variable. ``tls=True`` (or ``GRAFLOW_REDIS_TLS=1``)
  switches a ``redis://`` URL to TLS; ``ssl_ca_certs=`` and the other redis-py ``ssl_*`` options
  pass through.
* **Outages**: :meth:`RedisConnection.run` retries an operation that failed because the server is
  unreachable (restart, fail-over, network blip) with exponential backoff, until ``retry_deadline``
  seconds (default 30, or ``GRAFLOW_REDIS_RETRY_DEADLINE``) have passed since the first failure; then it raises
  :class:`RedisConnectionError`, which names the server and says what to check. A wrong password is
  not retried: it is reported at once.

Passwords never travel in pickles. Pickling a channel or a context (checkpoints, payloads shipped
to workers) keeps the address but not the password; the unpickling process takes the password
from a client it already built for the same server, else from ``GRAFLOW_REDIS_PASSWORD``.

Retries and idempotency: an operation is retried when the connection failed, which may be after
the server executed it (e.g. ``INCRBY`` whose reply was lost). Graflow's at-least-once delivery
already allows for that; a server restarted without persistence has lost its data anyway.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from graflow.exceptions import ConfigError, GraflowRuntimeError

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENV_URL = "GRAFLOW_REDIS_URL"
ENV_PASSWORD = "GRAFLOW_REDIS_PASSWORD"
ENV_TLS = "GRAFLOW_REDIS_TLS"
ENV_RETRY_DEADLINE = "GRAFLOW_REDIS_RETRY_DEADLINE"
DEFAULT_URL = "redis://localhost:6379/0"
#: How long an operation keeps retrying while Redis is unreachable, unless configured otherwise.
DEFAULT_RETRY_DEADLINE = 30.0
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_SCHEMES = ("redis", "rediss", "unix")

# Passwords of servers this process has connected to, so that an object unpickled here (whose pickle
# carries no password) can reach the same server. Keyed by (host or socket path, port, username).
_known_passwords: dict[tuple[str, int, str | None], str] = {}
_known_lock = threading.Lock()


class RedisConnectionError(GraflowRuntimeError, ConnectionError):
    """Redis could not be reached (or refused our credentials); ``url`` is the server, password masked."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisSettings:
    """Where and how to connect; built by :meth:`from_options`, turned into clients by :meth:`new_client`.

    ``url`` never contains the password (it is in ``password``), so ``str()``/``repr()`` and error
    messages are safe to log.
    """

    __slots__ = ("client_options", "password", "retry_deadline", "url")

    def __init__(
        self,
        url: str,
        password: str | None = None,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.password = password
        self.retry_deadline = retry_deadline
        self.client_options = dict(client_options or {})

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def from_options(
        cls,
        url: str | None = None,
        *,
        redis_client: Any = None,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool | None = None,
        retry_deadline: float | None = None,
        **client_options: Any,
    ) -> RedisSettings:
        """Resolve user options (see the module docstring) into settings.

        ``client_options`` are passed to ``redis.Redis`` (``socket_timeout``, ``ssl_ca_certs``,
        ``max_connections``, ...). Raises :class:`~graflow.exceptions.ConfigError` for a malformed
        URL or option.
        """
        if retry_deadline is None:
            retry_deadline = _env_retry_deadline()
        if isinstance(retry_deadline, bool) or not isinstance(retry_deadline, (int, float)) or retry_deadline < 0:
            raise ConfigError(f"retry_deadline must be a number of seconds >= 0, got {retry_deadline!r}")
        if redis_client is not None:
            if url is not None or host is not None:
                raise ConfigError(
                    "Pass either redis_client= or url=/host= to connect to Redis, not both: the client already "
                    "says where the server is."
                )
            url, client_password = _url_of_client(redis_client)
            if password is None:
                password = client_password
        elif url is None and host is None:
            url = os.environ.get(ENV_URL) or DEFAULT_URL
        if url is None:
            url = _url_from_parts(host or "localhost", port or 6379, db or 0)
        elif port is not None or db is not None:
            # host= alone builds the URL above; port=/db= may refine a URL too.
            url = _replace_port_db(url, port, db)
        if not isinstance(url, str):
            raise ConfigError(f"The Redis url must be a string such as {DEFAULT_URL!r}, got {type(url).__name__}")
        parts = _split(url)
        if tls is None:
            tls = _truthy(os.environ.get(ENV_TLS)) and redis_client is None
        if tls and parts.scheme == "redis":
            parts = parts._replace(scheme="rediss")
        url_password = unquote(parts.password) if parts.password is not None else None
        url_username = unquote(parts.username) if parts.username else None
        if username is None:
            username = url_username
        if password is None:
            password = url_password
        # Strip credentials from the URL: the password lives in its own field, never in a message.
        host_part = parts.hostname or ""
        if ":" in host_part:
            host_part = f"[{host_part}]"
        netloc = (quote(username, safe="") + "@" if username else "") + host_part
        if parts.port is not None:
            netloc += f":{parts.port}"
        clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        if password is None:
            password = _remembered_password(clean) or os.environ.get(ENV_PASSWORD) or None
        return cls(clean, password, float(retry_deadline), client_options)

    # -- use ------------------------------------------------------------------------------------------
    def new_client(self) -> redis.Redis:
        """A new redis-py client (with its own connection pool) for these settings.

        redis-py's own retries are turned off: :meth:`RedisConnection.run` owns retrying, with one
        deadline for the whole operation.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_keepalive": True}
        options.update(self.client_options)
        options.setdefault("retry", Retry(NoBackoff(), 0))
        options["decode_responses"] = False
        if self.password is not None:
            options["password"] = self.password
        try:
            return redis.Redis.from_url(self.url, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Cannot build a Redis client for {self.url}: {exc}") from exc

    def portable(self) -> dict[str, Any]:
        """Options for :meth:`from_options` that rebuild these settings elsewhere, without the password."""
        options: dict[str, Any] = {"url": self.url, "retry_deadline": self.retry_deadline}
        options.update({k: v for k, v in self.client_options.items() if k not in ("password", "connection_pool")})
        return options

    def __repr__(self) -> str:
        auth = ", password=***" if self.password is not None else ""
        return f"RedisSettings({self.url!r}{auth}, retry_deadline={self.retry_deadline:g})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RedisSettings)
            and (self.url, self.password, self.retry_deadline, self.client_options)
            == (other.url, other.password, other.retry_deadline, other.client_options)
        )

    __hash__ = None  # type: ignore[assignment]


class RedisConnection:
    """A lazily created client plus the retry loop; shared by the objects that use one server.

    Thread-safe (redis-py clients are). Pickles as its settings without the password; the copy
    connects on first use. ``client`` may be a caller's redis-py client, which is then used as-is
    (its retry options included) and never closed by :meth:`close`.
    """

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._password_checked = settings.password is None

    @classmethod
    def from_options(cls, url: str | None = None, *, redis_client: Any = None, **options: Any) -> RedisConnection:
        """``RedisConnection(RedisSettings.from_options(url, redis_client=..., **options), redis_client)``."""
        if redis_client is not None and not hasattr(redis_client, "execute_command"):
            raise ConfigError(
                f"redis_client must be a redis-py client (redis.Redis), got {type(redis_client).__name__}"
            )
        settings = RedisSettings.from_options(url, redis_client=redis_client, **options)
        if redis_client is not None and _decodes_responses(redis_client):
            # Graflow stores binary (pickled) values; a client that decodes replies to str would
            # corrupt them, so talk to the same server through a client of our own.
            redis_client = None
        return cls(settings, redis_client)

    @property
    def url(self) -> str:
        """The server's URL (no password): use it in messages."""
        return self.settings.url

    @property
    def client(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = self.settings.new_client()
        return client

    def run(self, operation: Callable[[redis.Redis], T], what: str = "") -> T:
        """``operation(client)``, retried with backoff while the server is unreachable.

        Raises :class:`RedisConnectionError` once ``retry_deadline`` seconds have passed since the
        first failure, or at once for rejected credentials. Other Redis errors (wrong type, script
        errors) propagate unchanged.
        """
        from redis.exceptions import AuthenticationError, AuthorizationError
        from redis.exceptions import ConnectionError as RedisPyConnectionError
        from redis.exceptions import TimeoutError as RedisPyTimeoutError

        deadline: float | None = None
        attempt = 0
        while True:
            try:
                result = operation(self.client)
                if not self._password_checked:
                    # The server accepted the password: objects unpickled in this process may reuse it.
                    self._password_checked = True
                    _remember_password(self.url, self.settings.password or "")
                return result
            except (AuthenticationError, AuthorizationError) as exc:
                _forget_password(self.url, self.settings.password)
                raise RedisConnectionError(
                    f"Redis at {self.url} refused the credentials{_for(what)}: {exc}. Check the password "
                    f"(password=, the URL, or {ENV_PASSWORD}) and the username.",
                    self.url,
                ) from exc
            except (RedisPyConnectionError, RedisPyTimeoutError, ConnectionError) as exc:
                if isinstance(exc, RedisConnectionError):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.retry_deadline
                    logger.warning("Redis at %s unreachable%s (%s); retrying", self.url, _for(what), exc)
                if now >= deadline:
                    raise RedisConnectionError(
                        f"Redis at {self.url} is unreachable{_for(what)}: still failing after "
                        f"{self.settings.retry_deadline:g}s of retries ({type(exc).__name__}: {exc}). Check that "
                        f"the server is running and reachable at that address (url=, {ENV_URL}), or allow "
                        f"longer outages with retry_deadline=.",
                        self.url,
                    ) from exc
                attempt += 1
                backoff = min(_MAX_BACKOFF, _FIRST_BACKOFF * (2 ** min(attempt - 1, 10)))
                time.sleep(min(backoff * (0.5 + random.random() / 2), max(0.0, deadline - now)))

    def ping(self) -> bool:
        """True when the server answers (retrying up to the deadline); raises RedisConnectionError otherwise."""
        return bool(self.run(lambda r: r.ping(), "PING"))

    def close(self) -> None:
        """Disconnect a client this object created (a caller's client is left alone)."""
        with self._lock:
            client, self._client = self._client, None
            owned = self._owns_client
            self._owns_client = True
        if client is not None and owned:
            try:
                client.close()
            except Exception:  # closing a broken connection must not raise
                logger.debug("closing the Redis client for %s failed", self.url, exc_info=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings.portable()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(RedisSettings.from_options(**state["settings"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"RedisConnection({self.url!r})"


def connect(url: str | None = None, *, redis_client: Any = None, **options: Any) -> RedisConnection:
    """Shortcut for :meth:`RedisConnection.from_options`."""
    return RedisConnection.from_options(url, redis_client=redis_client, **options)


# -- helpers ----------------------------------------------------------------------------------------------
def _env_retry_deadline() -> float:
    text = os.environ.get(ENV_RETRY_DEADLINE, "").strip()
    if not text:
        return DEFAULT_RETRY_DEADLINE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"{ENV_RETRY_DEADLINE} must be a number of seconds >= 0, got {text!r}")
    return value


def _for(what: str) -> str:
    return f" (during {what})" if what else ""


def _split(url: str) -> Any:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port validates it
    except ValueError as exc:
        raise ConfigError(f"Malformed Redis URL {mask_url(url)!r}: {exc}. Expected e.g. {DEFAULT_URL!r}") from exc
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"Redis URL {mask_url(url)!r} has scheme {parts.scheme!r}; use redis:// (plain), rediss:// (TLS) or "
            f"unix:// (socket), e.g. {DEFAULT_URL!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"Redis URL {mask_url(url)!r} names no host; expected e.g. {DEFAULT_URL!r}")
    return parts


def _url_from_parts(host: str, port: int, db: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"redis://{host}:{int(port)}/{int(db)}"


def _replace_port_db(url: str, port: int | None, db: int | None) -> str:
    parts = _split(url)
    netloc = parts.netloc
    if port is not None:
        netloc = netloc.rsplit(":", 1)[0] if parts.port is not None else netloc
        netloc = f"{netloc}:{int(port)}"
    path = f"/{int(db)}" if db is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def _url_of_client(client: Any) -> tuple[str, str | None]:
    """The address (as a URL without password) and the password of a redis-py client."""
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = dict(getattr(pool, "connection_kwargs", {}) or {})
    password = kwargs.get("password")
    username = kwargs.get("username")
    db = int(kwargs.get("db", 0) or 0)
    user = quote(username, safe="") + "@" if username else ""
    path = kwargs.get("path")
    if path:
        return f"unix://{user}{path}?db={db}", password
    connection_class = getattr(pool, "connection_class", None)
    scheme = "rediss" if connection_class is not None and "SSL" in connection_class.__name__ else "redis"
    host = str(kwargs.get("host", "localhost"))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{user}{host}:{int(kwargs.get('port', 6379))}/{db}", password


def _decodes_responses(client: Any) -> bool:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    return bool(kwargs.get("decode_responses"))


def _address_key(url: str) -> tuple[str, int, str | None]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return (parts.path, 0, parts.username)
    return (parts.hostname or "", parts.port or 6379, unquote(parts.username) if parts.username else None)


def _remember_password(url: str, password: str) -> None:
    with _known_lock:
        _known_passwords[_address_key(url)] = password


def _forget_password(url: str, password: str | None) -> None:
    with _known_lock:
        if password is not None and _known_passwords.get(_address_key(url)) == password:
            del _known_passwords[_address_key(url)]


def _remembered_password(url: str) -> str | None:
    with _known_lock:
        return _known_passwords.get(_address_key(url))


__all__ = [
    "DEFAULT_RETRY_DEADLINE",
    "DEFAULT_URL",
    "ENV_PASSWORD",
    "ENV_RETRY_DEADLINE",
    "ENV_TLS",
    "ENV_URL",
    "RedisConnection",
    "RedisConnectionError",
    "RedisSettings",
    "connect",
    "mask_url",
]
