"""``RedisCheckpointStore``: checkpoints kept in Redis, addressed ``redis://host:port/<db>/<name...>``.

::

    ctx.checkpoint(path="redis://localhost:6379/0/checkpoints/etl/")      # a location: automatic name
    CheckpointManager.resume_from_checkpoint("redis://localhost:6379/0/checkpoints/etl/ckpt-...pkl")
    CheckpointManager.list_checkpoints("redis://localhost:6379/0/checkpoints/etl")

**Addresses.** ``redis://`` (or ``rediss://`` for TLS), the server, then the database number as the
first path segment (required), then a folder-like name. The password goes in the URL
(``redis://:secret@host:6379/0/...``) or, better since addresses show up in logs and checkpoint
metadata, in ``GRAFLOW_REDIS_PASSWORD``. ``GRAFLOW_REDIS_RETRY_DEADLINE`` bounds how long an
operation waits for an unreachable server (default 30 s).

**Layout.** One hash per checkpoint, ``graflow:checkpoint:<name>``, with one field per part
(``.pkl``, ``.state.json``, ``.meta.json``), and one sorted set per folder,
``graflow:checkpoint-index:<folder>``, listing the committed checkpoints directly in it (scored by
commit time). Writing a part is one ``HSET`` (readers see the old bytes or the new, never a mix).
Writing the meta part, the commit mark, sets the field and adds the checkpoint to its folder's index
in one ``MULTI``/``EXEC`` transaction, so a checkpoint is listed exactly when it is complete; a
half-written one is never offered for resume. Deleting removes the index entry and the meta field
first, in the same transaction as the other parts.

Redis holds everything in memory: checkpoints of large runs belong on disk or S3; prune old ones
with ``CheckpointManager.prune(location, keep_last=N)`` or ``graflow checkpoints prune``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from graflow.checkpoint_store import COMMIT_PART, PARTS, CheckpointStore
from graflow.exceptions import ConfigError
from graflow_redis.connection import RedisConnection, mask_url

DATA_PREFIX = "graflow:checkpoint:"
INDEX_PREFIX = "graflow:checkpoint-index:"
_EXAMPLE = "redis://localhost:6379/0/checkpoints/my-run"


class RedisCheckpointStore(CheckpointStore):
    """Checkpoint store for ``redis://`` and ``rediss://`` addresses (see the module docstring).

    Built once per process by Graflow (no arguments); keeps one connection per server and is safe to
    use from several threads.
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")

    def __init__(self) -> None:
        self._connections: dict[str, RedisConnection] = {}
        self._lock = threading.Lock()

    # -- addressing ------------------------------------------------------------------------------------------
    def _resolve(self, address: str) -> tuple[RedisConnection, str]:
        """The connection for ``address``'s server and the name path inside it (no leading/trailing ``/``)."""
        if not isinstance(address, str):
            raise ConfigError(f"A Redis checkpoint address must be a string such as {_EXAMPLE!r}, got {address!r}")
        try:
            parts = urlsplit(address)
            parts.port  # noqa: B018 -- parsing the port validates it
        except ValueError as exc:
            raise ConfigError(f"Malformed Redis checkpoint address {mask_url(address)!r}: {exc}") from exc
        if parts.scheme.lower() not in self.schemes or not parts.hostname:
            raise ConfigError(
                f"Malformed Redis checkpoint address {mask_url(address)!r}: expected "
                f"redis://host:port/<db>/<name>, e.g. {_EXAMPLE!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                f"Redis checkpoint address {mask_url(address)!r} has a '?' or '#' part, which checkpoint names "
                f"cannot hold; use only letters, digits and - _ . / in names, e.g. {_EXAMPLE!r}"
            )
        segments = parts.path.split("/")[1:]
        if not segments or not segments[0].isdigit():
            raise ConfigError(
                f"Redis checkpoint address {mask_url(address)!r} does not start its path with a database number: "
                f"expected redis://host:port/<db>/<name>, e.g. {_EXAMPLE!r}"
            )
        server = f"{parts.scheme.lower()}://{parts.netloc}/{int(segments[0])}"
        name = "/".join(unquote(s) for s in segments[1:] if s)
        return self._connection(server), name

    def _connection(self, server: str) -> RedisConnection:
        connection = self._connections.get(server)
        if connection is None:
            with self._lock:
                connection = self._connections.get(server)
                if connection is None:
                    connection = self._connections[server] = RedisConnection.from_options(server)
        return connection

    def _base(self, base: str) -> tuple[RedisConnection, str]:
        connection, name = self._resolve(base)
        if not name:
            raise ConfigError(
                f"Redis checkpoint address {mask_url(base)!r} names a database, not a checkpoint: add a name "
                f"after the database number, e.g. {_EXAMPLE!r}"
            )
        return connection, name

    @staticmethod
    def _folder_and_leaf(name: str) -> tuple[str, str]:
        folder, _, leaf = name.rpartition("/")
        return folder, leaf

    def part_address(self, base: str, suffix: str) -> str:
        return mask_url(base) + suffix

    # -- the contract ----------------------------------------------------------------------------------------
    def write_part(self, base: str, suffix: str, data: bytes) -> None:
        connection, name = self._base(base)
        key = DATA_PREFIX + name
        payload = bytes(data)
        if suffix != COMMIT_PART:
            connection.run(lambda r: r.hset(key, suffix, payload), f"writing {self.part_address(base, suffix)}")
            return
        folder, leaf = self._folder_and_leaf(name)
        index = INDEX_PREFIX + folder

        def commit(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hset(key, suffix, payload)
            pipe.zadd(index, {leaf: time.time()})
            pipe.execute()

        connection.run(commit, f"writing {self.part_address(base, suffix)}")

    def read_part(self, base: str, suffix: str) -> bytes:
        connection, name = self._base(base)
        key = DATA_PREFIX + name
        data = connection.run(lambda r: r.hget(key, suffix), f"reading {self.part_address(base, suffix)}")
        if data is None:
            raise FileNotFoundError(f"No checkpoint part {self.part_address(base, suffix)} in Redis (key {key!r})")
        return bytes(data)

    def list_bases(self, location: str) -> list[str]:
        connection, folder = self._resolve(location)
        index = INDEX_PREFIX + folder
        prefix = DATA_PREFIX + (folder + "/" if folder else "")

        def read(r: Any) -> list[tuple[str, bool]]:
            leaves = [m.decode("utf-8", "surrogateescape") for m in r.zrange(index, 0, -1)]
            if not leaves:
                return []
            pipe = r.pipeline(transaction=False)
            for leaf in leaves:
                pipe.hexists(prefix + leaf, COMMIT_PART)
            return list(zip(leaves, pipe.execute()))

        found = connection.run(read, f"listing {mask_url(location)}")
        stale = [leaf for leaf, committed in found if not committed]
        if stale:
            # Index entries whose hash was removed behind our back (e.g. by an expiry): forget them.
            connection.run(lambda r: r.zrem(index, *stale), f"listing {mask_url(location)}")
        return sorted(self.join(location, leaf) for leaf, committed in found if committed)

    def delete(self, base: str) -> None:
        connection, name = self._base(base)
        folder, leaf = self._folder_and_leaf(name)
        key = DATA_PREFIX + name

        def remove(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.zrem(INDEX_PREFIX + folder, leaf)
            pipe.hdel(key, COMMIT_PART)
            pipe.hdel(key, *[p for p in PARTS if p != COMMIT_PART])
            pipe.execute()

        connection.run(remove, f"deleting {mask_url(base)}")

    def join(self, location: str, name: str) -> str:
        return location.rstrip("/") + "/" + name

    def close(self) -> None:
        """Disconnect from every server this store talked to."""
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()


__all__ = ["DATA_PREFIX", "INDEX_PREFIX", "RedisCheckpointStore"]
