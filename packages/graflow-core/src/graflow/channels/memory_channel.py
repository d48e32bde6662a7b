"""The in-process channel: a dict with Redis-like semantics, safe to share between threads.

Why it looks the way it does:

* ``set``/``get`` sit on the engine's hot path (one ``set`` and a few ``get`` per task), so for keys
  without a ttl they are a plain dict store/lookup, which the GIL already makes atomic. No lock,
  no copy, no pickling: values are stored as-is and ``get`` returns the very same object.
* Read-modify-write operations (``append``, ``prepend``, ``atomic_add``) and all ttl bookkeeping take
  one channel-wide lock, so concurrent branches of a parallel group never lose an update.
* Expiry is lazy (checked when a key is read) plus an amortised sweep, so a channel full of
  short-lived keys does not grow without bound.

Caveat of the lock-free fast path: a plain ``set`` racing an ``append``/``atomic_add`` *on the same
key* from another thread may be overwritten by it. Serialise such mixes with ``channel.lock(key)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from graflow.channels.base import SNAPSHOT_TTL, SNAPSHOT_VALUE, Channel, check_ttl, snapshot_entries

_MISSING: Any = object()
# Sweep expired keys once the ttl table grows past this many entries (then past twice its live size).
_MIN_SWEEP_SIZE = 1024


class _KeyLock:
    """A per-key lock plus the number of threads using it, so idle entries can be dropped."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class MemoryChannel(Channel):
    """Thread-safe in-process channel; the default backend (``"memory"``).

    ``MemoryChannel(name="default")`` takes no other option: an unknown keyword raises
    :class:`~graflow.exceptions.ConfigError` naming the valid ones, because a silently ignored
    option (say ``host=`` meant for the Redis backend) hides a configuration mistake.

    Pickling a MemoryChannel (checkpoints, shipping a context to a worker) keeps its name, its data
    and the remaining ttl of every key; locks are recreated fresh.
    """

    name: ClassVar[str] = "memory"
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str = "default", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._init_state()

    def _init_state(self) -> None:
        self._data: dict[str, Any] = {}
        # key -> time.monotonic() deadline; only keys with a ttl are here.
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, _KeyLock] = {}
        self._sweep_at = _MIN_SWEEP_SIZE

    # -- hot path ----------------------------------------------------------------------------------
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` as-is. Without a ttl (and no old ttl to clear) this is one dict store."""
        if ttl is None and key not in self._expiry:
            self._data[key] = value
            # A concurrent ttl writer may have given the key a ttl meanwhile; redo it under the lock
            # so that "set without ttl clears the ttl" holds whatever the interleaving.
            if key not in self._expiry:
                return
        self._set_locked(key, value, check_ttl(ttl))

    def get(self, key: str, default: Any = None) -> Any:
        """The stored object itself (not a copy), or ``default`` when missing or expired."""
        if key in self._expiry:
            return self._get_expiring(key, default)
        return self._data.get(key, default)

    # -- slow paths of set/get ---------------------------------------------------------------------
    def _set_locked(self, key: str, value: Any, ttl: float | None) -> None:
        with self._lock:
            self._data[key] = value
            if ttl is None:
                self._expiry.pop(key, None)
            else:
                self._expiry[key] = time.monotonic() + ttl
                if len(self._expiry) >= self._sweep_at:
                    self._sweep()

    def _get_expiring(self, key: str, default: Any) -> Any:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= time.monotonic():
            with self._lock:
                self._purge_if_expired(key, time.monotonic())
        return self._data.get(key, default)

    def _purge_if_expired(self, key: str, now: float) -> bool:
        """Drop ``key`` if its ttl has passed; caller holds ``self._lock``. True when it was dropped."""
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= now:
            del self._expiry[key]
            self._data.pop(key, None)
            return True
        return False

    def _sweep(self) -> None:
        """Drop every expired key; caller holds ``self._lock``. Amortised O(1) per ttl write."""
        now = time.monotonic()
        for key in [k for k, deadline in self._expiry.items() if deadline <= now]:
            del self._expiry[key]
            self._data.pop(key, None)
        self._sweep_at = max(_MIN_SWEEP_SIZE, 2 * len(self._expiry))

    def _is_live(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        return deadline is None or deadline > time.monotonic()

    # -- plain key/value -----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        if key in self._expiry:
            return self._get_expiring(key, _MISSING) is not _MISSING
        return key in self._data

    def delete(self, key: str) -> bool:
        with self._lock:
            live = key in self._data and self._is_live(key)
            self._data.pop(key, None)
            self._expiry.pop(key, None)
            return live

    def keys(self) -> list[str]:
        if not self._expiry:
            # dict.copy() runs in C without releasing the GIL, so it is safe against concurrent sets.
            return list(self._data.copy())
        with self._lock:
            self._sweep()
            return list(self._data.copy())

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._expiry.clear()
            self._sweep_at = _MIN_SWEEP_SIZE

    # -- lists ---------------------------------------------------------------------------------------
    def append(self, key: str, value: Any, ttl: float | None = None) -> int:
        """Append in place to the stored list (O(1)); a list that ``get`` returned earlier sees it too."""
        return self._push(key, value, check_ttl(ttl), at_front=False)

    def prepend(self, key: str, value: Any, ttl: float | None = None) -> int:
        return self._push(key, value, check_ttl(ttl), at_front=True)

    def _push(self, key: str, value: Any, ttl: float | None, *, at_front: bool) -> int:
        with self._lock:
            now = time.monotonic()
            self._purge_if_expired(key, now)
            current = self._data.get(key, _MISSING)
            if current is _MISSING:
                current = self._data[key] = [value]
            elif isinstance(current, list):
                if at_front:
                    current.insert(0, value)
                else:
                    current.append(value)
            else:
                operation = "prepend" if at_front else "append"
                raise TypeError(
                    f"Cannot {operation} to channel key '{key}': it holds a {type(current).__name__}, not a list. "
                    f"Delete the key or use a different one for the list."
                )
            if ttl is not None:
                self._expiry[key] = now + ttl
            return len(current)

    # -- counters ------------------------------------------------------------------------------------
    def atomic_add(self, key: str, amount: int | float = 1) -> int | float:
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"atomic_add amount must be an int or float, got {type(amount).__name__}")
        with self._lock:
            self._purge_if_expired(key, time.monotonic())
            current = self._data.get(key, 0)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise TypeError(
                    f"Cannot atomic_add to channel key '{key}': it holds a {type(current).__name__}, not a number."
                )
            result = current + amount
            # Like Redis INCRBY, the key's ttl (if any) is kept.
            self._data[key] = result
            return result

    # -- locks ---------------------------------------------------------------------------------------
    def lock(self, key: str, timeout: float | None = 10.0) -> AbstractContextManager[None]:
        """Per-key, non-reentrant lock shared by every thread using this channel.

        Non-reentrant on purpose: the Redis backend's locks are not reentrant either, and code that
        works in-process should not deadlock in production.
        """
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ValueError(f"lock timeout must be >= 0 seconds or None, got {timeout!r}")
        return self._hold(key, timeout)

    @contextmanager
    def _hold(self, key: str, timeout: float | None) -> Iterator[None]:
        with self._lock:
            entry = self._key_locks.get(key)
            if entry is None:
                entry = self._key_locks[key] = _KeyLock()
            entry.users += 1
        try:
            acquired = entry.lock.acquire(timeout=-1 if timeout is None else timeout)
            if not acquired:
                raise TimeoutError(
                    f"Could not acquire lock '{key}' on channel '{self.name}' within {timeout} s: another "
                    f"holder has not released it. Pass a larger timeout= or keep the lock for a shorter time "
                    f"(channel locks are not reentrant)."
                )
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            with self._lock:
                entry.users -= 1
                if entry.users == 0 and self._key_locks.get(key) is entry:
                    del self._key_locks[key]

    # -- checkpoints -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Live keys with value and remaining ttl.

        Lists are copied (shallowly) because ``append`` mutates them in place and a snapshot must
        not change after it was taken; other values are shared, not copied.
        """
        with self._lock:
            now = time.monotonic()
            data = self._data.copy()
            expiry = self._expiry.copy()
        result: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            deadline = expiry.get(key)
            if deadline is not None and deadline <= now:
                continue
            if isinstance(value, list):
                value = list(value)
            result[key] = {SNAPSHOT_VALUE: value, SNAPSHOT_TTL: None if deadline is None else deadline - now}
        return result

    def restore(self, snapshot: Mapping[str, Mapping[str, Any]]) -> None:
        entries: dict[str, Any] = {}
        deadlines: dict[str, float] = {}
        now = time.monotonic()
        for key, value, ttl in snapshot_entries(snapshot):
            # Copy lists so later appends do not write through into the caller's snapshot.
            entries[key] = list(value) if isinstance(value, list) else value
            if ttl is not None:
                deadlines[key] = now + float(ttl)
        with self._lock:
            self._data.clear()
            self._expiry.clear()
            self._data.update(entries)
            self._expiry.update(deadlines)
            self._sweep_at = max(_MIN_SWEEP_SIZE, 2 * len(deadlines))

    # -- pickling ----------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "snapshot": self.snapshot()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]  # type: ignore[misc]
        self._init_state()
        self.restore(state["snapshot"])


__all__ = ["MemoryChannel"]
