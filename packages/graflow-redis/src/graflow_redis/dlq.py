"""The dead-letter queues: inspect, re-queue and purge what workers could not (or must not) run.

Each queue ``Q`` has a dead-letter list ``<prefix>:dlq:Q``. An entry is one line of JSON (``id``,
``queue``, ``reason``, ``at``, ``deliveries``, ``worker``), a newline, then the original message
bytes, untouched, so a re-queued message is exactly what its producer sent (its failed-delivery
count is reset). Messages land there when they were delivered ``max_deliveries`` times and their
worker died each time (a poison task), when they are malformed, when a worker that requires
signatures found them unsigned or tampered with, or when their payload cannot be unpickled.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from graflow.exceptions import ConfigError
from graflow.worker.broker import DeadLetter
from graflow_redis import scripts, signing

if TYPE_CHECKING:
    from graflow_redis.queue import RedisTaskQueue


def parse_entry(raw: bytes, queue: str) -> DeadLetter:
    """One dead-letter list element as a :class:`~graflow.worker.broker.DeadLetter` (never raises)."""
    head, sep, message = raw.partition(b"\n")
    try:
        header: dict[str, Any] = json.loads(head) if sep else {}
        if not isinstance(header, dict):
            header = {}
    except ValueError:
        header = {}
    if not sep:
        message = raw
    return DeadLetter(
        id=str(header.get("id") or "?"),
        queue=str(header.get("queue") or queue),
        reason=str(header.get("reason") or "unknown (entry without a header)"),
        failed_at=float(header.get("at") or 0.0),
        deliveries=int(header.get("deliveries") or 0),
        worker=str(header.get("worker") or ""),
        payload=message,
        raw=raw,
    )


class DeadLetterQueue:
    """Dead letters of the queues behind one :class:`~graflow_redis.queue.RedisTaskQueue` (same prefix)."""

    def __init__(self, queue: RedisTaskQueue) -> None:
        self.queue = queue

    def queues(self) -> list[str]:
        """Names of the queues that have dead letters."""
        prefix = self.queue.key("dlq", "")
        names = self.queue.connection.run(
            lambda r: [k.decode() for k in r.scan_iter(match=_glob(prefix) + "*", count=1000)], "SCAN"
        )
        return sorted(name[len(prefix) :] for name in names)

    def list(self, queue: str, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        key = self.queue.key("dlq", queue)
        raws = self.queue.connection.run(lambda r: r.lrange(key, 0, -1), "LRANGE")
        entries = [parse_entry(raw, queue) for raw in reversed(raws)]
        return entries[:limit] if limit is not None else entries

    def _select(self, queue: str, ids: list[str] | None) -> list[DeadLetter]:
        entries = self.list(queue)
        if ids is None:
            return entries
        wanted = set(ids)
        chosen = [e for e in entries if e.id in wanted or any(e.id.startswith(i) for i in wanted if len(i) >= 6)]
        found = {e.id for e in chosen}
        missing = sorted(i for i in wanted if i not in found and not any(f.startswith(i) for f in found))
        if missing:
            raise ConfigError(
                f"No dead letter with id {', '.join(missing)} in queue '{queue}'. List them with: graflow dlq list "
                f"--queue {queue}"
            )
        return chosen

    def requeue(self, queue: str, ids: list[str] | None = None) -> int:
        """Put dead letters (all, or those ``ids``) back on their queue; return how many moved.

        The messages get a fresh delivery count. Malformed ones cannot run and stay (purge them).
        """
        moved = 0
        bad: list[str] = []
        for entry in self._select(queue, ids):
            try:
                message = signing.decode_message(entry.payload)
            except signing.MalformedMessage:
                bad.append(entry.id)
                continue
            fresh = (
                b"GF1|%s|%s|%d|0|%s|"
                % (
                    message.id.encode(),
                    message.reply_key.encode(),
                    message.max_deliveries,
                    message.signature,
                )
                + message.payload
            )
            moved += int(
                self.queue._eval(
                    scripts.DLQ_REQUEUE,
                    [self.queue.key("dlq", queue), self.queue.key("q", entry.queue)],
                    [entry.raw, fresh],
                    "requeue a dead letter",
                )
            )
        if bad:
            raise ConfigError(
                f"Re-queued {moved}; {len(bad)} dead letter(s) are malformed and cannot run ({', '.join(bad)}). "
                f"Remove them with: graflow dlq purge --queue {queue} {' '.join(bad)}"
            )
        return moved

    def purge(self, queue: str, ids: list[str] | None = None) -> int:
        """Delete dead letters (all, or those ``ids``); return how many were removed."""
        key = self.queue.key("dlq", queue)
        if ids is None:
            count = int(self.queue.connection.run(lambda r: r.llen(key), "LLEN"))
            self.queue.connection.run(lambda r: r.delete(key), "DEL")
            return count
        removed = 0
        for entry in self._select(queue, ids):
            removed += int(self.queue.connection.run(lambda r, raw=entry.raw: r.lrem(key, 1, raw), "LREM"))
        return removed


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


__all__ = ["DeadLetterQueue", "parse_entry"]
