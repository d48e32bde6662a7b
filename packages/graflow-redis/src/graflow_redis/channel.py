"""``RedisChannel``: the channel of a workflow run, kept in Redis so every process of the run shares it.

Build it like any channel backend::

    ctx = ExecutionContext.create(graph, "start", channel_backend="redis",
                                  config={"redis_client": r, "key_prefix": "graflow:etl"})
    channel = RedisChannel("session-id", url="redis://localhost:6379/0")

**Keys.** A channel key ``k`` of session ``s`` lives at ``<key_prefix>:<s>:channel:<k>``; the lock
named ``k`` at ``<key_prefix>:<s>:lock:<k>`` (never visible as data). ``keys()``, ``clear()`` and
``snapshot()`` find this session's keys with ``SCAN`` (never ``KEYS``) and touch nothing else.

**Values.** Exact ``int`` values within 64 bits and ``float`` values are stored as Redis numbers
(decimal text), so ``atomic_add`` is a server-side ``INCRBY`` (or an exact double addition in a
Lua script) and other programs can read counters. Everything else, ``bool`` and ``str`` included,
is stored pickled (cloudpickle; pickles always start with the byte ``0x80``, which no number does),
so it comes back with its exact type: tuples stay tuples, objects stay objects, ``"123"`` stays a
string. ``append``/``prepend`` keep a native Redis list of such encoded items, and ``get`` of that key
returns a Python ``list``.

**Life cycle.** Keys stay until deleted, unless they were written with a ``ttl`` or the channel has
a ``default_ttl``. When a run is over, :meth:`RedisChannel.cleanup` deletes the session's keys and
:meth:`RedisChannel.expire` lets Redis drop them after a grace period.

**Outages.** Every operation goes through :class:`~graflow_redis.connection.RedisConnection`, which
reconnects with backoff after a Redis restart and raises
:class:`~graflow_redis.connection.RedisConnectionError` naming the server when it stays down past
``retry_deadline`` seconds.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import cloudpickle
from redis.exceptions import ResponseError, WatchError

from graflow.channels.base import SNAPSHOT_TTL, SNAPSHOT_VALUE, Channel, check_ttl, snapshot_entries
from graflow.exceptions import ConfigError
from graflow_redis.connection import RedisConnection

logger = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SCAN_COUNT = 1000
_BATCH = 500
_MISSING: Any = object()

#: Options passed on to the connection (``RedisSettings.from_options`` and ``redis.Redis``).
CONNECTION_OPTIONS: tuple[str, ...] = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "tls",
    "retry_deadline",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "health_check_interval",
    "max_connections",
    "client_name",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_check_hostname",
    "ssl_password",
    "ssl_min_version",
    "ssl_ciphers",
)

# atomic_add fast path. KEYS[1]: the key; ARGV[1]: the amount as text; ARGV[2]: "1" when it is a float.
# Returns {"i", text} or {"f", text} with the new value, {"slow"} when Python must do it (pickled or
# 64-bit overflowing numbers), or {"type", redis type} when the key is not a string.
_ADD_SCRIPT = """
local function fmt(x)
  local s = string.format('%.17g', x)
  if not string.find(s, '[%.eEn]') then s = s .. '.0' end
  return s
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  if ARGV[2] == '1' then
    local s = fmt(tonumber(ARGV[1]))
    redis.call('SET', KEYS[1], s)
    return {'f', s}
  end
  redis.call('SET', KEYS[1], ARGV[1])
  return {'i', ARGV[1]}
end
if t ~= 'string' then return {'type', t} end
local cur = redis.call('GET', KEYS[1])
if string.byte(cur, 1) == 128 then return {'slow'} end
if ARGV[2] ~= '1' and string.match(cur, '^%-?%d+$') then
  local r = redis.pcall('INCRBY', KEYS[1], ARGV[1])
  if type(r) == 'table' and r['err'] then return {'slow'} end
  return {'i', redis.call('GET', KEYS[1])}
end
local a, b = tonumber(cur), tonumber(ARGV[1])
if a == nil or b == nil then return {'slow'} end
local s = fmt(a + b)
local p = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[1], s)
if p > 0 then redis.call('PEXPIRE', KEYS[1], p) end
return {'f', s}
"""

# append/prepend. KEYS[1]: the key; ARGV[1]: encoded item; ARGV[2]: "r" (append) or "l" (prepend);
# ARGV[3]: ttl in ms or "". Returns the new length, or -1 when the key holds a string (Python then
# converts a stored list or raises TypeError), or -2 for another Redis type.
_PUSH_SCRIPT = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'string' then return -1 end
if t ~= 'none' and t ~= 'list' then return -2 end
local n
if ARGV[2] == 'r' then n = redis.call('RPUSH', KEYS[1], ARGV[1]) else n = redis.call('LPUSH', KEYS[1], ARGV[1]) end
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return n
"""

# Lock acquisition, idempotent so that a retry after a lost reply does not lock us out: 1 when
# ARGV[1] (our token) holds the lock afterwards.
_LOCK_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# Lock release / renewal: only the holder's token may delete or extend the lock.
_UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Give every key an expiry of at most ARGV[1] ms (keys expiring sooner keep theirs).
_EXPIRE_SCRIPT = """
local n = 0
for _, k in ipairs(KEYS) do
  local p = redis.call('PTTL', k)
  if p == -1 or p > tonumber(ARGV[1]) then redis.call('PEXPIRE', k, ARGV[1]); n = n + 1 end
end
return n
"""


# -- value encoding ----------------------------------------------------------------------------------------
def encode(value: Any) -> bytes:
    """Bytes stored in Redis for ``value``: decimal text for 64-bit ints and floats, a pickle otherwise."""
    kind = type(value)
    if kind is int and _INT64_MIN <= value <= _INT64_MAX:
        return b"%d" % value
    if kind is float:
        # repr() always has '.', 'e', 'inf' or 'nan', which tells a float from an int on the way back.
        return repr(value).encode("ascii")
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def decode(raw: bytes, key: str = "") -> Any:
    """The value of bytes written by :func:`encode` (or by ``INCRBY``/the add script)."""
    if raw[:1] == b"\x80":
        try:
            return pickle.loads(raw)
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(
                    f"while unpickling channel key {key!r}: the data is damaged, or the module defining the "
                    f"value is not importable in this process"
                )
            raise
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise ValueError(
            f"Channel key {key!r} holds {raw[:40]!r}, which Graflow did not write (neither a pickle nor a "
            f"number). Another program may be writing under this key prefix; give the channel its own "
            f"key_prefix."
        ) from None


def _ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _is_wrongtype(exc: BaseException) -> bool:
    return "WRONGTYPE" in str(exc)


class RedisChannel(Channel):
    """A channel stored in Redis; the ``redis`` channel backend. See the module docstring.

    ``RedisChannel(session_id, redis_client=None, url=None, key_prefix="graflow", *,
    default_ttl=None, lock_lease=30.0, **connection_options)``

    * ``redis_client``: a redis-py client to use (its server, password and pool); or ``url``, or
      ``host``/``port``/``db``; or ``GRAFLOW_REDIS_URL``. See :mod:`graflow_redis.connection` for
      ``password``, ``username``, ``tls``, ``retry_deadline`` and the ``ssl_*``/``socket_*`` options.
    * ``key_prefix``: first part of every key (``"graflow"``); give each application its own.
    * ``default_ttl``: seconds after its last write at which a key written without ``ttl`` expires
      (``None``: keep it until deleted). Bounds what a crashed run leaves behind.
    * ``lock_lease``: seconds a lock survives a holder that died; a live holder renews it.

    Pickling keeps the address, prefix and options but neither the client nor the password (the
    copy reconnects on first use; see :mod:`graflow_redis.connection`) nor the data, which stays in
    Redis: a copy in another process sees the same keys.
    """

    name: ClassVar[str] = "redis"
    options: ClassVar[tuple[str, ...]] = (
        "redis_client",
        "url",
        "key_prefix",
        "default_ttl",
        "lock_lease",
        *CONNECTION_OPTIONS,
    )

    def __init__(
        self,
        name: str = "default",
        redis_client: Any = None,
        url: str | None = None,
        key_prefix: str = "graflow",
        *,
        default_ttl: float | None = None,
        lock_lease: float = 30.0,
        **kwargs: Any,
    ) -> None:
        connection_options = {k: kwargs.pop(k) for k in list(kwargs) if k in CONNECTION_OPTIONS}
        super().__init__(name, **kwargs)
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ConfigError(f"key_prefix must be a non-empty string such as 'graflow', got {key_prefix!r}")
        self.default_ttl = check_ttl(default_ttl)
        if isinstance(lock_lease, bool) or not isinstance(lock_lease, (int, float)) or not lock_lease > 0:
            raise ConfigError(f"lock_lease must be a number of seconds > 0, got {lock_lease!r}")
        self.lock_lease = float(lock_lease)
        self.key_prefix = key_prefix
        self._connection = RedisConnection.from_options(url, redis_client=redis_client, **connection_options)
        self._setup()

    def _setup(self) -> None:
        base = f"{self.key_prefix}:{self.name}:"
        self._data_prefix = base + "channel:"
        self._lock_prefix = base + "lock:"
        self._data_prefix_bytes = self._data_prefix.encode()
        self._pattern = _glob_escape(self._data_prefix) + "*"
        self._lock_pattern = _glob_escape(self._lock_prefix) + "*"
        self._scripts: dict[str, Any] = {}
        self._renewer: _LockRenewer | None = None
        self._state_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------------
    @property
    def connection(self) -> RedisConnection:
        """The connection (``.url``, ``.client``, ``.run(...)``) this channel uses."""
        return self._connection

    @property
    def url(self) -> str:
        """The server's URL without the password."""
        return self._connection.url

    def redis_key(self, key: str) -> str:
        """The Redis key holding channel key ``key``."""
        if not isinstance(key, str):
            raise TypeError(f"Channel keys are strings, got {type(key).__name__} {key!r}")
        return self._data_prefix + key

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._connection.client.register_script(source)
        return script

    def _run_script(self, source: str, keys: list[str], args: list[Any], what: str) -> Any:
        script = self._script(source)
        return self._connection.run(lambda r: script(keys=keys, args=args, client=r), what)

    def ping(self) -> bool:
        """True when Redis answers (retrying up to ``retry_deadline``)."""
        return self._connection.ping()

    # -- plain key/value ---------------------------------------------------------------------------------
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        ttl = check_ttl(ttl)
        if ttl is None:
            ttl = self.default_ttl
        rkey = self.redis_key(key)
        data = encode(value)
        if ttl is None:
            self._connection.run(lambda r: r.set(rkey, data), "SET")
        else:
            px = _ms(ttl)
            self._connection.run(lambda r: r.set(rkey, data, px=px), "SET")

    def get(self, key: str, default: Any = None) -> Any:
        rkey = self.redis_key(key)

        def read(r: Any) -> Any:
            try:
                raw = r.get(rkey)
            except ResponseError as exc:
                if not _is_wrongtype(exc):
                    raise
                items = r.lrange(rkey, 0, -1)
                # Redis has no empty lists: an empty answer means the key went away meanwhile.
                return [decode(item, key) for item in items] if items else _MISSING
            return _MISSING if raw is None else decode(raw, key)

        value = self._connection.run(read, "GET")
        return default if value is _MISSING else value

    def get_many(self, keys: Any, default: Any = None) -> dict[str, Any]:
        """One round trip for any number of keys (lists take a second one)."""
        wanted = list(keys)
        rkeys = [self.redis_key(k) for k in wanted]

        def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for rkey in rkeys:
                pipe.get(rkey)
            answers = pipe.execute(raise_on_error=False)
            lists = [i for i, a in enumerate(answers) if isinstance(a, Exception) and _is_wrongtype(a)]
            if lists:
                pipe = r.pipeline(transaction=False)
                for i in lists:
                    pipe.lrange(rkeys[i], 0, -1)
                for i, items in zip(lists, pipe.execute()):
                    answers[i] = items
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            return answers

        result: dict[str, Any] = {}
        for key, answer in zip(wanted, self._connection.run(read, "GET")):
            if answer is None or answer == []:
                result[key] = default
            elif isinstance(answer, list):
                result[key] = [decode(item, key) for item in answer]
            else:
                result[key] = decode(answer, key)
        return result

    def set_many(self, items: Mapping[str, Any], ttl: float | None = None) -> None:
        """Every item in one transaction (readers see all of them or none)."""
        ttl = check_ttl(ttl)
        if ttl is None:
            ttl = self.default_ttl
        encoded = [(self.redis_key(k), encode(v)) for k, v in items.items()]
        px = None if ttl is None else _ms(ttl)

        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            for rkey, data in encoded:
                pipe.set(rkey, data, px=px)
            pipe.execute()

        if encoded:
            self._connection.run(write, "SET")

    def delete(self, key: str) -> bool:
        rkey = self.redis_key(key)
        return bool(self._connection.run(lambda r: r.delete(rkey), "DEL"))

    def exists(self, key: str) -> bool:
        rkey = self.redis_key(key)
        return bool(self._connection.run(lambda r: r.exists(rkey), "EXISTS"))

    def _scan(self, pattern: str) -> list[bytes]:
        return self._connection.run(lambda r: list(r.scan_iter(match=pattern, count=_SCAN_COUNT)), "SCAN")

    def keys(self) -> list[str]:
        cut = len(self._data_prefix_bytes)
        return [rkey[cut:].decode("utf-8", "surrogateescape") for rkey in self._scan(self._pattern)]

    def clear(self) -> None:
        """Delete this channel's data keys (locks held by others are left alone)."""
        self._unlink(self._scan(self._pattern))

    def _unlink(self, rkeys: list[bytes]) -> int:
        removed = 0
        for start in range(0, len(rkeys), _BATCH):
            chunk = rkeys[start : start + _BATCH]
            removed += int(self._connection.run(lambda r, chunk=chunk: r.unlink(*chunk), "UNLINK"))
        return removed

    # -- lists ----------------------------------------------------------------------------------------------
    def append(self, key: str, value: Any, ttl: float | None = None) -> int:
        return self._push(key, value, check_ttl(ttl), at_front=False)

    def prepend(self, key: str, value: Any, ttl: float | None = None) -> int:
        return self._push(key, value, check_ttl(ttl), at_front=True)

    def _push(self, key: str, value: Any, ttl: float | None, *, at_front: bool) -> int:
        if ttl is None:
            ttl = self.default_ttl
        rkey = self.redis_key(key)
        data = encode(value)
        px = "" if ttl is None else str(_ms(ttl))
        length = int(self._run_script(_PUSH_SCRIPT, [rkey], [data, "l" if at_front else "r", px], "push"))
        if length >= 0:
            return length
        return self._push_onto_stored_list(key, rkey, data, px, at_front=at_front)

    def _push_onto_stored_list(self, key: str, rkey: str, data: bytes, px: str, *, at_front: bool) -> int:
        """The key holds a pickled value: if it is a list, turn it into a Redis list with the new item."""
        operation = "prepend" if at_front else "append"

        def convert(r: Any) -> int:
            with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(rkey)
                        kind = pipe.type(rkey)
                        if kind == b"list":
                            pipe.unwatch()
                            return -1  # became a list meanwhile: the fast path will do
                        if kind == b"none":
                            pipe.unwatch()
                            return -1
                        raw = pipe.get(rkey) if kind == b"string" else None
                        current = decode(raw, key) if raw is not None else None
                        if type(current) is not list:
                            held = type(current).__name__ if raw is not None else f"a Redis {kind.decode()}"
                            raise TypeError(
                                f"Cannot {operation} to channel key '{key}': it holds a {held}, not a list. "
                                f"Delete the key or use a different one for the list."
                            )
                        old_ttl = pipe.pttl(rkey)
                        items = [encode(item) for item in current]
                        items = [data, *items] if at_front else [*items, data]
                        pipe.multi()
                        pipe.delete(rkey)
                        pipe.rpush(rkey, *items)
                        if px:
                            pipe.pexpire(rkey, int(px))
                        elif old_ttl > 0:
                            pipe.pexpire(rkey, old_ttl)
                        pipe.execute()
                        return len(items)
                    except WatchError:
                        continue

        length = self._connection.run(convert, operation)
        if length < 0:
            return self._push(key, decode(data), None if not px else int(px) / 1000, at_front=at_front)
        return length

    # -- counters -------------------------------------------------------------------------------------------
    def atomic_add(self, key: str, amount: int | float = 1) -> int | float:
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"atomic_add amount must be an int or float, got {type(amount).__name__}")
        rkey = self.redis_key(key)
        if type(amount) is int and not _INT64_MIN <= amount <= _INT64_MAX:
            return self._atomic_add_slow(key, rkey, amount)
        is_float = isinstance(amount, float)
        text = repr(float(amount)) if is_float else str(int(amount))
        answer = self._run_script(_ADD_SCRIPT, [rkey], [text, "1" if is_float else "0"], "atomic_add")
        kind = answer[0]
        if kind == b"i":
            return int(answer[1])
        if kind == b"f":
            return float(answer[1])
        if kind == b"type":
            raise TypeError(
                f"Cannot atomic_add to channel key '{key}': it holds a "
                f"{'list' if answer[1] == b'list' else 'Redis ' + answer[1].decode()}, not a number."
            )
        return self._atomic_add_slow(key, rkey, amount)

    def _atomic_add_slow(self, key: str, rkey: str, amount: int | float) -> int | float:
        """Read-modify-write under WATCH for values the script leaves to Python (pickled or huge numbers)."""
        def add(r: Any) -> int | float:
            with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(rkey)
                        kind = pipe.type(rkey)
                        if kind not in (b"string", b"none"):
                            raise TypeError(
                                f"Cannot atomic_add to channel key '{key}': it holds a "
                                f"{'list' if kind == b'list' else 'Redis ' + kind.decode()}, not a number."
                            )
                        raw = pipe.get(rkey)
                        current = 0 if raw is None else decode(raw, key)
                        if isinstance(current, bool) or not isinstance(current, (int, float)):
                            raise TypeError(
                                f"Cannot atomic_add to channel key '{key}': it holds a {type(current).__name__}, "
                                f"not a number."
                            )
                        result = current + amount
                        old_ttl = pipe.pttl(rkey)
                        pipe.multi()
                        pipe.set(rkey, encode(result))
                        if old_ttl > 0:
                            pipe.pexpire(rkey, old_ttl)
                        pipe.execute()
                        return result
                    except WatchError:
                        continue

        return self._connection.run(add, "atomic_add")

    # -- locks ----------------------------------------------------------------------------------------------
    def lock(self, key: str, timeout: float | None = 10.0) -> AbstractContextManager[None]:
        """A mutual-exclusion lock shared by every process using this session (not reentrant).

        Waits at most ``timeout`` seconds (``None``: forever) and raises :class:`TimeoutError`. The
        lock is a Redis key with a lease of ``lock_lease`` seconds that a background thread renews
        while the holder lives, so a crashed holder frees it after the lease.
        """
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ValueError(f"lock timeout must be >= 0 seconds or None, got {timeout!r}")
        if not isinstance(key, str):
            raise TypeError(f"Lock names are strings, got {type(key).__name__} {key!r}")
        return _RedisLock(self, key, timeout)

    def _lock_renewer(self) -> _LockRenewer:
        renewer = self._renewer
        if renewer is None or not renewer.alive or renewer.pid != os.getpid():
            with self._state_lock:
                renewer = self._renewer
                if renewer is None or not renewer.alive or renewer.pid != os.getpid():
                    renewer = self._renewer = _LockRenewer(self)
        return renewer

    # -- checkpoints ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every live key with its value and remaining ttl (read in transactions of 500 keys)."""
        cut = len(self._data_prefix_bytes)
        rkeys = self._scan(self._pattern)
        result: dict[str, dict[str, Any]] = {}
        for start in range(0, len(rkeys), _BATCH):
            chunk = rkeys[start : start + _BATCH]

            def read(r: Any, chunk: list[bytes] = chunk) -> list[Any]:
                pipe = r.pipeline(transaction=True)
                for rkey in chunk:
                    pipe.pttl(rkey)
                    pipe.get(rkey)
                    pipe.lrange(rkey, 0, -1)
                return pipe.execute(raise_on_error=False)

            answers = self._connection.run(read, "snapshot")
            for index, rkey in enumerate(chunk):
                pttl, raw, items = answers[3 * index : 3 * index + 3]
                if isinstance(pttl, Exception) or pttl == -2:
                    continue  # gone since the scan
                key = rkey[cut:].decode("utf-8", "surrogateescape")
                if isinstance(raw, bytes):
                    value = decode(raw, key)
                elif isinstance(items, list) and items:
                    value = [decode(item, key) for item in items]
                else:
                    continue
                result[key] = {SNAPSHOT_VALUE: value, SNAPSHOT_TTL: None if pttl < 0 else pttl / 1000.0}
        return result

    def restore(self, snapshot: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace this channel's keys with exactly ``snapshot``, in one transaction."""
        writes: list[tuple[str, Any, int | None]] = []
        for key, value, ttl in snapshot_entries(snapshot):
            rkey = self.redis_key(key)
            if type(value) is list and value:
                writes.append((rkey, [encode(item) for item in value], None if ttl is None else _ms(ttl)))
            else:
                writes.append((rkey, encode(value), None if ttl is None else _ms(ttl)))
        existing = self._scan(self._pattern)

        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            for start in range(0, len(existing), _BATCH):
                pipe.unlink(*existing[start : start + _BATCH])
            for rkey, data, px in writes:
                if isinstance(data, list):
                    pipe.rpush(rkey, *data)
                    if px is not None:
                        pipe.pexpire(rkey, px)
                else:
                    pipe.set(rkey, data, px=px)
            pipe.execute()

        if existing or writes:
            self._connection.run(write, "restore")

    # -- end of a run ----------------------------------------------------------------------------------------
    def cleanup(self) -> int:
        """Delete every key of this session's channel, data and locks; return how many were removed.

        Call it when a run is over and its channel is no longer needed.
        """
        return self._unlink(self._scan(self._pattern) + self._scan(self._lock_pattern))

    def expire(self, ttl: float) -> int:
        """Let Redis drop this session's data keys ``ttl`` seconds from now (keys due sooner keep theirs).

        Returns how many keys got the new expiry. Use it to keep a finished run's data readable for a
        while without leaving it behind for ever.
        """
        ttl = check_ttl(ttl)
        assert ttl is not None
        rkeys = self._scan(self._pattern)
        changed = 0
        for start in range(0, len(rkeys), _BATCH):
            chunk = [k.decode("utf-8", "surrogateescape") for k in rkeys[start : start + _BATCH]]
            changed += int(self._run_script(_EXPIRE_SCRIPT, chunk, [_ms(ttl)], "expire"))
        return changed

    def close(self) -> None:
        """Stop renewing locks and disconnect (a caller's ``redis_client`` stays open)."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.stop()
        self._connection.close()

    # -- pickling ----------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_prefix": self.key_prefix,
            "default_ttl": self.default_ttl,
            "lock_lease": self.lock_lease,
            "connection": self._connection,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]  # type: ignore[misc]
        self.key_prefix = state["key_prefix"]
        self.default_ttl = state["default_ttl"]
        self.lock_lease = state["lock_lease"]
        self._connection = state["connection"]
        self._setup()

    def portable_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` (the options that built this channel) made safe to pickle.

        ``ExecutionContext`` pickles its config for checkpoints; a live ``redis_client`` cannot be
        pickled, so it is replaced by the address it points at, and the password is dropped (the
        other side finds it as described in :mod:`graflow_redis.connection`).
        """
        portable = {
            k: v for k, v in config.items() if k not in CONNECTION_OPTIONS and k not in ("redis_client", "url")
        }
        portable.update(self._connection.settings.portable())
        return portable

    def __repr__(self) -> str:
        return f"RedisChannel(name={self.name!r}, url={self.url!r}, key_prefix={self.key_prefix!r})"


class _RedisLock:
    """One acquisition of a channel lock: ``SET NX PX`` with a random token, released by a script."""

    __slots__ = ("channel", "key", "rkey", "timeout", "token")

    def __init__(self, channel: RedisChannel, key: str, timeout: float | None) -> None:
        self.channel = channel
        self.key = key
        self.rkey = channel._lock_prefix + key
        self.timeout = timeout
        self.token = b""

    def __enter__(self) -> None:
        channel = self.channel
        token = uuid.uuid4().hex.encode()
        lease = _ms(channel.lock_lease)
        rkey = self.rkey
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = 0.001
        while True:
            if channel._run_script(_LOCK_SCRIPT, [rkey], [token, lease], "lock"):
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(
                    f"Could not acquire lock '{self.key}' on channel '{channel.name}' ({channel.url}) within "
                    f"{self.timeout} s: another holder has not released it. Pass a larger timeout= or keep the "
                    f"lock for a shorter time (channel locks are not reentrant)."
                )
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))
            pause = min(pause * 2, 0.05)
        self.token = token
        channel._lock_renewer().add(self)

    def __exit__(self, *exc: object) -> None:
        channel = self.channel
        renewer = channel._renewer
        if renewer is not None:
            renewer.discard(self)
        try:
            released = channel._run_script(_UNLOCK_SCRIPT, [self.rkey], [self.token], "unlock")
        except ConnectionError:
            logger.warning("could not release lock '%s' on %s: Redis is unreachable", self.key, channel.url)
            return
        if not released:
            logger.warning(
                "lock '%s' on channel '%s' was no longer held when released (its lease of %gs ran out or Redis "
                "restarted); another holder may have run at the same time",
                self.key,
                channel.name,
                channel.lock_lease,
            )


class _LockRenewer:
    """A daemon thread renewing the leases of the locks this channel object holds."""

    def __init__(self, channel: RedisChannel) -> None:
        self._channel_ref = weakref.ref(channel)
        self.pid = os.getpid()  # a forked child needs its own thread
        self._held: dict[int, _RedisLock] = {}
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._interval = channel.lock_lease / 3
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return not self._stop.is_set()

    def add(self, lock: _RedisLock) -> None:
        with self._mutex:
            self._held[id(lock)] = lock
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="graflow-redis-lock-renewer", daemon=True)
                self._thread.start()

    def discard(self, lock: _RedisLock) -> None:
        with self._mutex:
            self._held.pop(id(lock), None)

    def stop(self) -> None:
        self._stop.set()

    def _held_locks(self) -> Iterator[_RedisLock]:
        with self._mutex:
            return iter(list(self._held.values()))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            channel = self._channel_ref()
            if channel is None:
                return
            lease = _ms(channel.lock_lease)
            for lock in self._held_locks():
                try:
                    channel._run_script(_RENEW_SCRIPT, [lock.rkey], [lock.token, lease], "renew lock")
                except Exception:  # a failed renewal is retried at the next tick
                    logger.warning("could not renew lock '%s' on %s", lock.key, channel.url, exc_info=True)
            del channel


__all__ = ["CONNECTION_OPTIONS", "RedisChannel", "decode", "encode"]
