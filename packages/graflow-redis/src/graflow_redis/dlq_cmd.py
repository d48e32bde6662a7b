"""``graflow dlq list|requeue|purge``: operate the dead-letter queues from the command line.

::

    graflow dlq list    --redis-url redis://host:6379/0 [--queue NAME] [--json] [--limit N]
    graflow dlq requeue (ID ... | --all) --redis-url ... --queue NAME
    graflow dlq purge   (ID ... | --all) --redis-url ... --queue NAME

IDs follow the action (before the options) and may be abbreviated to a unique prefix of at least
6 characters. ``--key-prefix`` must match
the producers' and workers' (default ``graflow``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from graflow.exceptions import ConfigError


class DlqCommand:
    """The ``dlq`` sub-command (registered through ``graflow_register_commands``)."""

    name = "dlq"
    help = "inspect, re-queue or purge dead-lettered tasks of the Redis queue"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "Inspect, re-queue or purge the dead-letter queues of graflow-redis."
        parser.add_argument("action", choices=("list", "requeue", "purge"), help="what to do")
        parser.add_argument("ids", nargs="*", metavar="ID", help="dead letters to requeue or purge (see `list`)")
        parser.add_argument("--all", action="store_true", help="requeue or purge every dead letter of the queue")
        parser.add_argument(
            "--queue", action="append", default=None, help="queue name (repeatable; list: default every queue)"
        )
        parser.add_argument("--redis-url", default=None, help="Redis URL (default: $GRAFLOW_REDIS_URL)")
        parser.add_argument("--redis-password", default=None, help="Redis password (default: $GRAFLOW_REDIS_PASSWORD)")
        parser.add_argument("--redis-tls", action="store_true", help="connect with TLS")
        parser.add_argument("--key-prefix", default="graflow", help="key prefix of the queues (default: graflow)")
        parser.add_argument("--json", action="store_true", help="list: print JSON")
        parser.add_argument("--limit", type=int, default=None, help="list: show at most N entries per queue")

    def run(self, args: argparse.Namespace) -> int:
        from graflow_redis.dlq import DeadLetterQueue
        from graflow_redis.queue import RedisTaskQueue

        url = args.redis_url or os.environ.get("GRAFLOW_REDIS_URL")
        if not url:
            sys.stderr.write(
                "graflow dlq: no Redis to talk to: pass --redis-url redis://host:6379/0 (or set GRAFLOW_REDIS_URL)\n"
            )
            return 2
        try:
            queue = RedisTaskQueue(
                None,
                url=url,
                password=args.redis_password,
                tls=True if args.redis_tls else None,
                key_prefix=args.key_prefix,
                retry_deadline=5.0,
            )
        except ConfigError as exc:
            sys.stderr.write(f"graflow dlq: {exc}\n")
            return 2
        dlq = DeadLetterQueue(queue)
        try:
            if args.action == "list":
                return self._list(dlq, args)
            return self._change(dlq, args)
        except ConfigError as exc:
            sys.stderr.write(f"graflow dlq: {exc}\n")
            return 1
        finally:
            queue.close()

    @staticmethod
    def _list(dlq: Any, args: argparse.Namespace) -> int:
        names = args.queue or dlq.queues()
        rows: list[dict[str, Any]] = []
        for name in names:
            for entry in dlq.list(name, args.limit):
                rows.append(
                    {
                        "id": entry.id,
                        "queue": entry.queue,
                        "reason": entry.reason,
                        "failed_at": entry.failed_at,
                        "deliveries": entry.deliveries,
                        "worker": entry.worker,
                        "size": len(entry.payload),
                    }
                )
        if args.json:
            json.dump(rows, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        if not rows:
            where = ", ".join(names) if names else "any queue"
            sys.stdout.write(f"no dead letters in {where}\n")
            return 0
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["failed_at"])) if row["failed_at"] else "?"
            sys.stdout.write(
                f"{row['id']}  queue={row['queue']}  at={when}  deliveries={row['deliveries']}  "
                f"worker={row['worker'] or '-'}\n    reason: {row['reason']}\n"
            )
        sys.stdout.write(f"{len(rows)} dead letter(s)\n")
        return 0

    @staticmethod
    def _change(dlq: Any, args: argparse.Namespace) -> int:
        if not args.queue or len(args.queue) != 1:
            sys.stderr.write(f"graflow dlq {args.action}: name exactly one queue with --queue NAME\n")
            return 2
        if args.all == bool(args.ids):
            sys.stderr.write(f"graflow dlq {args.action}: give the ids to {args.action}, or --all (not both)\n")
            return 2
        queue = args.queue[0]
        ids = None if args.all else list(args.ids)
        if args.action == "requeue":
            count = dlq.requeue(queue, ids)
            sys.stdout.write(f"re-queued {count} message(s) on queue '{queue}'\n")
        else:
            count = dlq.purge(queue, ids)
            sys.stdout.write(f"purged {count} dead letter(s) of queue '{queue}'\n")
        return 0


__all__ = ["DlqCommand"]
