"""The interface every channel backend implements.

A channel is the key/value store that the tasks of one workflow run share: tasks publish results
and read their inputs through it, parallel branches append to shared lists, counters are bumped
atomically and checkpoints capture it with :meth:`Channel.snapshot`. Backends (the in-process
:class:`~graflow.channels.memory_channel.MemoryChannel`, the Redis channel of ``graflow-redis``, ...)
are plugins: each registers its class under its class attribute ``name`` through the
``graflow_register_channels`` hook, and ``ChannelFactory.create_channel(backend, name, **options)``
builds one as ``cls(name, **options)``.

Two things are called ``name`` here, on purpose and for upstream compatibility:

* ``Channel.name`` on the *class* is the registry name of the backend (``"memory"``);
* ``channel.name`` on an *instance* is the channel's own name, normally the run's session id.

The instance attribute shadows the class attribute on instances only; the plugin registry reads the
class, so both keep working.

Snapshot format (shared by every backend so that checkpoint code never needs to know the backend)::

    {key: {"value": <the stored value>, "ttl": <remaining seconds as float, or None>}, ...}

It holds only live keys, uses plain dicts, and is picklable whenever the values are.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from graflow.exceptions import ConfigError

#: Keys of one snapshot entry (see the module docstring).
SNAPSHOT_VALUE = "value"
SNAPSHOT_TTL = "ttl"


class Channel(ABC):
    """Abstract key/value channel shared by the tasks of one workflow run.

    Semantics every backend must honour (the ``graflow_testkit.channels.ChannelConformance`` suite
    checks them):

    * any picklable value round-trips unchanged (tuples stay tuples, sets stay sets, objects stay
      objects);
    * ``set`` without ``ttl`` clears an earlier ttl, like Redis ``SET``; an expired key is invisible
      to ``get``, ``exists``, ``keys`` and ``snapshot``;
    * ``append``/``prepend`` on a missing key create a list and ``get`` returns that list;
    * ``atomic_add`` is atomic across threads (and processes, for shared backends);
    * ``lock(key)`` is a mutual-exclusion lock, separate from the data (it never shows up in
      ``keys()``), and raises :class:`TimeoutError` when it cannot be taken in time.
    """

    #: Registry name of the backend; subclasses must override it (e.g. ``"memory"``).
    name: ClassVar[str] = ""
    #: Constructor keyword options the backend accepts besides ``name`` (used in error messages).
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str = "default", **kwargs: Any) -> None:
        """Store the channel's own name and reject options nobody consumed.

        Subclasses take their own options out of ``kwargs`` before calling this, so whatever is
        left here is a typo or an option meant for another backend, and the user should hear
        about it instead of having it silently ignored.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A channel name must be a non-empty string, got {name!r}")
        if kwargs:
            unknown = ", ".join(repr(k) for k in sorted(kwargs))
            valid = ", ".join(("name", *self.options))
            backend = type(self).name or type(self).__name__
            raise ConfigError(
                f"{type(self).__name__} (channel backend '{backend}') got unknown option(s) {unknown}. "
                f"Valid options: {valid}."
            )
        # The instance name (session id) shadows the class-level registry name on purpose.
        self.name = name  # type: ignore[misc]

    # -- plain key/value -------------------------------------------------------------------------
    @abstractmethod
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; ``ttl`` (seconds, > 0) makes it expire, ``None`` clears any ttl."""

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when it is missing or expired."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True when a live key was removed."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when ``key`` holds a live (unexpired) value, even ``None``."""

    @abstractmethod
    def keys(self) -> list[str]:
        """Every live key."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every key of this channel (and only of this channel)."""

    # -- lists -----------------------------------------------------------------------------------
    @abstractmethod
    def append(self, key: str, value: Any, ttl: float | None = None) -> int:
        """Add ``value`` at the end of the list under ``key`` (created when missing); return its new length.

        Raises :class:`TypeError` when the key holds something other than a list. ``ttl`` refreshes
        the key's expiry; ``None`` leaves an existing expiry alone (like Redis ``RPUSH``).
        """

    @abstractmethod
    def prepend(self, key: str, value: Any, ttl: float | None = None) -> int:
        """Like :meth:`append` but inserts at the front."""

    # -- counters and locks ------------------------------------------------------------------------
    @abstractmethod
    def atomic_add(self, key: str, amount: int | float = 1) -> int | float:
        """Atomically add ``amount`` to the number under ``key`` (missing counts as 0); return the new value."""

    @abstractmethod
    def lock(self, key: str, timeout: float | None = 10.0) -> AbstractContextManager[Any]:
        """A context manager holding the mutual-exclusion lock named ``key``.

        Waits at most ``timeout`` seconds (``None``: forever) and raises :class:`TimeoutError`
        saying which lock could not be taken.
        """

    # -- checkpoints -------------------------------------------------------------------------------
    @abstractmethod
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every live key with its value and remaining ttl, in the format of the module docstring."""

    @abstractmethod
    def restore(self, snapshot: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the whole content of the channel with exactly ``snapshot`` (ttls included)."""

    # -- conveniences (backends may override with batched versions) -------------------------------
    def get_many(self, keys: Iterable[str], default: Any = None) -> dict[str, Any]:
        """``{key: get(key, default)}`` for each key; backends can batch it into one round trip."""
        return {key: self.get(key, default) for key in keys}

    def set_many(self, items: Mapping[str, Any], ttl: float | None = None) -> None:
        """``set`` every item of ``items`` with the same ``ttl``."""
        for key, value in items.items():
            self.set(key, value, ttl)

    def close(self) -> None:
        """Release connections or other resources; a no-op for in-process backends."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def snapshot_entries(snapshot: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, Any, float | None]]:
    """``(key, value, ttl)`` of every live entry of a snapshot, for ``restore`` implementations.

    Entries whose ttl ran out are left out; a malformed entry raises ValueError naming its key.
    """
    for key, entry in snapshot.items():
        if not isinstance(entry, Mapping) or SNAPSHOT_VALUE not in entry:
            raise ValueError(
                f"Malformed channel snapshot entry for key {key!r}: expected {{'value': ..., 'ttl': ...}}, "
                f"got {type(entry).__name__}. Pass what Channel.snapshot() returned."
            )
        ttl = entry.get(SNAPSHOT_TTL)
        if ttl is not None and ttl <= 0:
            continue
        yield key, entry[SNAPSHOT_VALUE], ttl


def check_ttl(ttl: float | None) -> float | None:
    """Validate a ttl argument so every backend rejects the same bad values the same way.

    Redis refuses ``SET ... EX 0`` and negative expiries; accepting them in-process would make code
    that works on the memory channel fail in production, so both backends raise here.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, got {type(ttl).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a finite number of seconds > 0 (or None for no expiry), got {ttl!r}")
    return float(ttl)


__all__ = ["SNAPSHOT_TTL", "SNAPSHOT_VALUE", "Channel", "check_ttl", "snapshot_entries"]
