"""``RedisTaskQueue``: the reliable Redis task queue, for producers and for workers.

**Delivery.** Queues are Redis lists (``<prefix>:q:<name>``). A worker takes a message with
``BLMOVE`` from the right end of the queue onto the left of its own in-flight list
(``<prefix>:inflight:<worker>:<name>``): one atomic, blocking command, so workers wait on Redis
instead of polling and a message is never held by nobody. The message stays in flight until the
worker acknowledges it, which drops it and pushes the reply in one Lua script. Workers heartbeat a
key with a ttl; when it expires, any live worker or producer runs the reaper script, which puts that
worker's in-flight messages back at the front of their queue and counts a failed delivery on each;
a message at its ``max_deliveries`` goes to the dead-letter queue (``<prefix>:dlq:<name>``) with the
reason, and its producer is told. So delivery is at-least-once: a task whose worker died runs
again elsewhere; nothing is lost, and a task that keeps killing its workers stops doing so.

Three more ways a message could be stranded are closed too. The reaper only walks registered
workers, so it also sweeps (``SCAN``, at most every :attr:`RedisTaskQueue.orphan_sweep_interval`
seconds) the ``<prefix>:inflight:*`` lists of workers that are neither registered nor heartbeating,
for a fetch that completed after its worker unregistered. A command retried after a broken
connection may already have run: a worker whose fetch was retried puts back on the queue whatever
its in-flight list holds that it never received, and a producer moves replies onto a list of its
own (``<reply key>:taken``) and deletes them only once handled, so a reply is never lost with an
answer. A worker that dead-letters a message it no longer holds (the reaper took it for dead and
redelivered it) leaves it alone: it is live on its queue again.

Why lists and not streams: ``BLMOVE`` gives the move into a per-worker in-flight list in one
round trip, the in-flight list *is* the ownership record (no separate pending-entries bookkeeping
to trim), redelivery depends on the worker's heartbeat rather than on an idle time that a long but
healthy task would also reach (``XAUTOCLAIM``'s model), and every state change (ack + reply,
redeliver, dead-letter) is one small script over a few lists. What streams would add (a blocking
read over several queues) the worker gets with one fetcher per queue.

**Producers.** ``RedisTaskQueue(context, redis_client=r, key_prefix="graflow:etl")`` attaches the
queue to a run: ``WorkflowEngine().execute(context)`` then sends every task to workers (each task
as a :class:`~graflow.worker.jobs.TaskJob`; parallel groups go to the ``redis`` coordinator, each
member as a :class:`~graflow.worker.jobs.MemberJob`), while the engine stays the scheduler. The run's
channel must be shared by the workers: a channel that is not (the default memory channel) is
replaced by a :class:`~graflow_redis.channel.RedisChannel` of the same session, seeded with its
content. Replies come back on a per-wait reply list; duplicates from redelivery are ignored. A
producer that finds Redis emptied under it (restarted without persistence) re-sends what it is
still waiting for.

**Workers** use the same class through the :class:`~graflow.worker.broker.Broker` interface:
``graflow worker --redis-url redis://host:6379/0`` builds one with :meth:`RedisTaskQueue.for_worker`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from graflow.coordination.waiting import waiting_on_fleet
from graflow.exceptions import ConfigError, GraflowRuntimeError, TaskError
from graflow.pickling import pickled_by_value
from graflow.queue.base import TaskQueue
from graflow.worker.broker import DEFAULT_MAX_DELIVERIES, Broker, DeadLetter, Delivery
from graflow_redis import scripts, signing
from graflow_redis.connection import RedisConnection
from graflow_redis.signing import MalformedMessage, Signer

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import Executable
    from graflow.worker.jobs import JobReply

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "default"
#: Seconds a reply list, a run marker or a shipped graph survives a producer that vanished.
DEFAULT_RESULT_TTL = 3600.0
_REPLY_BATCH = 1000
_PUSH_BATCH = 1000
_NO_WORKER_WARNING_EVERY = 30.0

# Secrets given as secret_key= in this process, by (server url, key prefix), so that a coordinator
# built from a pickle-safe config (no secret in it) signs with the same key.
_known_secrets: dict[tuple[str, str], bytes | str] = {}


class QueueTimeoutError(GraflowRuntimeError):
    """A producer waited longer than its ``timeout`` for workers to answer."""


class _Sent:
    """A message waiting for its reply."""

    __slots__ = ("id", "queue", "raw", "tag")

    def __init__(self, message_id: str, queue: str, raw: bytes, tag: Any) -> None:
        self.id = message_id
        self.queue = queue
        self.raw = raw
        self.tag = tag


class _Reconcile:
    """A look at a worker's in-flight list after a retried fetch, due once ``waiting`` fetches returned."""

    __slots__ = ("inflight", "queue", "snapshot", "waiting", "worker_id")

    def __init__(self, inflight: str, queue: str, worker_id: str, snapshot: list[bytes]) -> None:
        self.inflight = inflight
        self.queue = queue
        self.worker_id = worker_id
        self.snapshot = snapshot
        self.waiting: set[int] = set()


def _glob(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "| \t\r\n"):
        raise ConfigError(f"{what} must be a non-empty string without spaces or '|', got {value!r}")
    return value


class RedisTaskQueue(TaskQueue, Broker):
    """The ``redis`` task queue (see the module docstring).

    ``RedisTaskQueue(execution_context=None, redis_client=None, *, url=None, key_prefix="graflow",
    queue="default", max_deliveries=5, secret_key=None, timeout=None, ...)``

    * ``execution_context``: attach to that run (its tasks go to workers); ``None`` for a worker
      or a plain queue.
    * ``redis_client`` / ``url`` / ``host``+``port``+``db`` / ``password`` / ``tls``: where Redis is
      (see :mod:`graflow_redis.connection`; default ``GRAFLOW_REDIS_URL``).
    * ``key_prefix``: first part of every key; producers and workers must agree on it.
    * ``queue``: the queue tasks go to unless they say ``@task(queue=...)``.
    * ``max_deliveries``: deliveries (each ended by a dying worker) before a message is dead-lettered.
    * ``secret_key``: sign messages (HMAC-SHA256); default ``GRAFLOW_SECRET_KEY``.
    * ``timeout``: seconds a producer waits for a task's reply (``None``: no limit).
    * ``result_ttl``: lifetime of reply lists and shipped graphs a vanished producer leaves behind.
    * ``reap_interval``: how often a waiting producer redelivers the messages of dead workers.
    * ``pickle_by_value``: module names whose functions are shipped by value (code the workers
      cannot import); ``__main__`` always is. Module-level ``@task``s otherwise travel by name.
    * ``max_queue_depth``: backpressure; :meth:`submit` waits while more tasks than this wait.

    Single tasks outside a workflow: :meth:`submit` and :meth:`result`.
    """

    name = "redis"
    aliases = ("distributed",)
    broker_name = "redis"
    #: :meth:`reap` sweeps for in-flight lists of vanished workers at most this often (seconds).
    orphan_sweep_interval = 30.0
    #: A swept list written less than this many seconds ago is left alone (a fetch may be completing).
    orphan_min_idle = 10.0

    def __init__(
        self,
        execution_context: ExecutionContext | None = None,
        redis_client: Any = None,
        *,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        username: str | None = None,
        tls: bool | None = None,
        key_prefix: str = "graflow",
        queue: str = DEFAULT_QUEUE,
        session_id: str | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        secret_key: str | bytes | None = None,
        timeout: float | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        reap_interval: float = 5.0,
        pickle_by_value: Iterable[str] = (),
        max_queue_depth: int | None = None,
        retry_deadline: float | None = None,
        **client_options: Any,
    ) -> None:
        self.key_prefix = _check_name("key_prefix", key_prefix)
        if max_queue_depth is not None and (
            isinstance(max_queue_depth, bool) or not isinstance(max_queue_depth, int) or max_queue_depth < 1
        ):
            raise ConfigError(f"max_queue_depth must be a whole number >= 1 or None, got {max_queue_depth!r}")
        self.max_queue_depth = max_queue_depth
        self.queue_name = _check_name("queue", queue)
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be a whole number >= 1, got {max_deliveries!r}")
        for label, value, allow_none in (
            ("timeout", timeout, True),
            ("result_ttl", result_ttl, False),
            ("reap_interval", reap_interval, False),
        ):
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(
                    f"{label} must be a number of seconds > 0{' or None' if allow_none else ''}, got {value!r}"
                )
        self.max_deliveries = max_deliveries
        self.timeout = timeout
        self.result_ttl = float(result_ttl)
        self.reap_interval = float(reap_interval)
        self.pickle_by_value = tuple(pickle_by_value)
        self.connection = RedisConnection.from_options(
            url,
            redis_client=redis_client,
            host=host,
            port=port,
            db=db,
            password=password,
            username=username,
            tls=tls,
            retry_deadline=retry_deadline,
            **client_options,
        )
        if secret_key is None:
            secret_key = _known_secrets.get((self.connection.url, self.key_prefix))
        elif secret_key:
            _known_secrets[(self.connection.url, self.key_prefix)] = secret_key
        self.signer = Signer.from_options(secret_key)
        self.session_id = session_id or (execution_context.session_id if execution_context is not None else "default")
        self._scripts: dict[str, Any] = {}
        self._channel_blobs: dict[int, tuple[Any, bytes]] = {}
        self._run_markers: dict[str, tuple[str, float]] = {}  # session id: (marker key, monotonic time set)
        self._lock = threading.Lock()
        self._last_no_worker_warning = 0.0
        self._submit_channel: Any = None
        self._submit_reply_key: str | None = None
        self._submitted: dict[str, _Sent] = {}
        self._outcomes: dict[str, tuple[JobReply | None, str | None]] = {}
        # worker side: what this object handed out and not yet settled, per in-flight list (see fetch)
        self._held_lock = threading.Lock()
        self._held: dict[str, Counter[bytes]] = {}
        self._fetching: dict[str, set[int]] = {}
        self._reconciling: dict[str, list[_Reconcile]] = {}
        self._unchecked: set[str] = set()  # in-flight lists to reconcile after the next fetch that works
        self._fetch_tokens = itertools.count()
        self._next_orphan_sweep = 0.0
        # producer side: reply lists whose taken list may hold replies not handled yet (see collect)
        self._unhandled_replies: set[str] = set()
        self.execution_context = execution_context
        if execution_context is not None:
            self.attach(execution_context)

    # -- construction helpers ----------------------------------------------------------------------------
    @classmethod
    def for_worker(
        cls,
        url: str | None = None,
        *,
        password: str | None = None,
        tls: bool | None = None,
        key_prefix: str = "graflow",
        secret_key: str | bytes | None = None,
        retry_deadline: float | None = None,
        **options: Any,
    ) -> RedisTaskQueue:
        """The broker a worker consumes (``graflow worker --redis-url ...`` calls this)."""
        return cls(
            None,
            url=url,
            password=password,
            tls=tls,
            key_prefix=key_prefix,
            secret_key=secret_key,
            retry_deadline=retry_deadline,
            **options,
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.key_prefix, *parts))

    @property
    def url(self) -> str:
        return self.connection.url

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.connection.client.register_script(source)
        return script

    def _eval(self, source: str, keys: list[str], args: list[Any], what: str) -> Any:
        script = self._script(source)
        return self.connection.run(lambda r: script(keys=keys, args=args, client=r), what)

    def _ttl_ms(self) -> int:
        return int(self.result_ttl * 1000)

    # -- TaskQueue: a FIFO of task ids in Redis (upstream's API) ----------------------------------------------
    def _ids_key(self) -> str:
        return self.key("tq", self.session_id)

    def enqueue(self, task_id: Any) -> bool:
        value = task_id if isinstance(task_id, str) else getattr(task_id, "task_id", None)
        if not isinstance(value, str):
            raise ConfigError(f"enqueue() takes a task id or a task, got {type(task_id).__name__}")
        key = self._ids_key()
        self.connection.run(lambda r: r.rpush(key, value), "RPUSH")
        return True

    def dequeue(self) -> str | None:
        key = self._ids_key()
        raw = self.connection.run(lambda r: r.lpop(key), "LPOP")
        return raw.decode() if raw is not None else None

    def size(self) -> int:
        key = self._ids_key()
        return int(self.connection.run(lambda r: r.llen(key), "LLEN"))

    def to_list(self) -> list[str]:
        key = self._ids_key()
        return [item.decode() for item in self.connection.run(lambda r: r.lrange(key, 0, -1), "LRANGE")]

    def clear(self) -> None:
        key = self._ids_key()
        self.connection.run(lambda r: r.delete(key), "DEL")

    def get_metrics(self) -> dict[str, Any]:
        waiting, dead = self.depths([self.queue_name])[self.queue_name]
        return {"size": self.size(), "queue": self.queue_name, "queue_depth": waiting, "dead_letter_depth": dead}

    # -- Broker: what workers call -------------------------------------------------------------------------------
    # A worker's in-flight list is its ownership record; this object also remembers which of those
    # messages it handed out and not yet settled (acknowledged, handed back or dead-lettered). When a
    # fetch had to be retried after a broken connection, Redis may have moved a message whose answer
    # never arrived: it sits in the in-flight list with nobody working on it, and the reaper leaves a
    # live worker's messages alone. So after such a retry the list is reconciled: whatever is in it
    # that this object does not know of (once the fetches that were under way have returned theirs)
    # goes back to the front of its queue.
    def fetch(self, queue: str, worker_id: str, timeout: float) -> Delivery | None:
        qkey = self.key("q", queue)
        inflight = self.key("inflight", worker_id, queue)
        token = self._fetch_started(inflight)
        attempts = 0
        delivery = None

        def take(r: Any) -> Any:
            nonlocal attempts
            attempts += 1
            return r.blmove(qkey, inflight, timeout, "RIGHT", "LEFT")

        failed = True
        try:
            raw = self.connection.run(take, "BLMOVE")
            if raw is not None:
                delivery = self._delivery(raw, queue, worker_id)
            failed = False
        finally:
            self._fetch_done(inflight, queue, worker_id, token, (delivery,) if delivery else (), attempts > 1, failed)
        return delivery

    def fetch_batch(self, queue: str, worker_id: str, count: int, timeout: float) -> list[Delivery]:
        if count <= 1:
            return super().fetch_batch(queue, worker_id, count, timeout)
        qkey = self.key("q", queue)
        inflight = self.key("inflight", worker_id, queue)
        script = self._script(scripts.FETCH_MANY)
        token = self._fetch_started(inflight)
        attempts = 0
        out: list[Delivery] = []

        def take(r: Any) -> Any:
            nonlocal attempts
            attempts += 1
            return script(keys=[qkey, inflight], args=[int(count)], client=r)

        failed = True
        try:
            raws = self.connection.run(take, "fetch")
            for raw in raws or ():
                delivery = self._delivery(raw, queue, worker_id)
                if delivery is not None:
                    out.append(delivery)
            failed = False
        finally:
            self._fetch_done(inflight, queue, worker_id, token, out, attempts > 1, failed)
        if not raws:
            return super().fetch_batch(queue, worker_id, 1, timeout)
        return out

    def _fetch_started(self, inflight: str) -> int:
        with self._held_lock:
            token = next(self._fetch_tokens)
            self._fetching.setdefault(inflight, set()).add(token)
        return token

    def _fetch_done(
        self,
        inflight: str,
        queue: str,
        worker_id: str,
        token: int,
        deliveries: Iterable[Delivery],
        retried: bool,
        failed: bool,
    ) -> None:
        """A fetch returned ``deliveries`` (now held here); run the reconciliations it was the last one
        to wait for, and start one if it was retried. A fetch that failed may have moved a message
        too: the next one that works on that list starts the reconciliation (Redis is back then)."""
        due: list[_Reconcile] = []
        with self._held_lock:
            if failed:
                self._unchecked.add(inflight)
                retried = False
            elif inflight in self._unchecked:
                self._unchecked.discard(inflight)
                retried = True
            held = self._held.setdefault(inflight, Counter())
            for delivery in deliveries:
                held[delivery.raw] += 1
            fetching = self._fetching.get(inflight)
            if fetching is not None:
                fetching.discard(token)
                if not fetching:
                    del self._fetching[inflight]
            if not held:
                del self._held[inflight]
            checks = self._reconciling.get(inflight)
            if checks:
                for check in checks:
                    check.waiting.discard(token)
                due = [c for c in checks if not c.waiting]
                rest = [c for c in checks if c.waiting]
                if rest:
                    self._reconciling[inflight] = rest
                else:
                    del self._reconciling[inflight]
        if retried:
            due.extend(self._start_reconcile(inflight, queue, worker_id))
        for check in due:
            self._finish_reconcile(check)

    def _start_reconcile(self, inflight: str, queue: str, worker_id: str) -> list[_Reconcile]:
        """Snapshot the in-flight list; the check is due once the fetches under way now have returned
        (a message they moved is theirs, not lost)."""
        try:
            snapshot = self.connection.run(lambda r: r.lrange(inflight, 0, -1), "LRANGE")
        except Exception as exc:  # noqa: BLE001 - Redis down again: the next fetch that works tries again
            logger.warning(
                "worker %s: cannot check its in-flight list of '%s' after a retry: %s", worker_id, queue, exc
            )
            with self._held_lock:
                self._unchecked.add(inflight)
            return []
        if not snapshot:
            return []
        check = _Reconcile(inflight, queue, worker_id, snapshot)
        with self._held_lock:
            check.waiting = set(self._fetching.get(inflight, ()))
            if check.waiting:
                self._reconciling.setdefault(inflight, []).append(check)
                return []
        return [check]

    def _finish_reconcile(self, check: _Reconcile) -> None:
        with self._held_lock:
            strays = Counter(check.snapshot) - self._held.get(check.inflight, Counter())
        if not strays:
            return
        qkey = self.key("q", check.queue)
        moved = 0
        try:
            for raw, copies in strays.items():
                for _ in range(copies):
                    moved += int(self._eval(scripts.REQUEUE, [check.inflight, qkey], [raw], "hand back"))
        except Exception as exc:  # noqa: BLE001 - tried again after the next fetch that works
            logger.warning(
                "worker %s: could not hand back messages of queue '%s' whose fetch answer was lost: %s",
                check.worker_id,
                check.queue,
                exc,
            )
            with self._held_lock:
                self._unchecked.add(check.inflight)
        if moved:
            logger.warning(
                "worker %s: handed %d message(s) back to queue '%s': Redis moved them to this worker but the "
                "answer was lost with the connection",
                check.worker_id,
                moved,
                check.queue,
            )

    def _settled(self, worker_id: str, deliveries: Iterable[Delivery]) -> None:
        """These deliveries are no longer held here (acknowledged, handed back or dead-lettered)."""
        with self._held_lock:
            for delivery in deliveries:
                inflight = self.key("inflight", worker_id, delivery.queue)
                held = self._held.get(inflight)
                if held is None:
                    continue
                count = held.get(delivery.raw, 0)
                if count > 1:
                    held[delivery.raw] = count - 1
                elif count == 1:
                    del held[delivery.raw]
                    if not held:
                        del self._held[inflight]

    def _delivery(self, raw: bytes, queue: str, worker_id: str) -> Delivery | None:
        try:
            message = signing.decode_message(raw)
        except MalformedMessage as exc:
            reason = f"malformed message: {exc}"
            logger.error("queue '%s': %s; moved to the dead-letter queue", queue, reason)
            self._bury(raw, queue, worker_id, reason, message_id=None, reply_key="", deliveries=1)
            return None
        if not self.signer.verify(message.signed_part, message.signature):
            reason = (
                "unsigned message: this worker requires signed payloads (GRAFLOW_SECRET_KEY is set here); "
                "set the same GRAFLOW_SECRET_KEY on the producer"
                if not message.signature
                else "signature mismatch: the message was tampered with or signed with another secret key"
            )
            logger.error(
                "refused message %s on queue '%s' (%s); moved to the dead-letter queue", message.id, queue, reason
            )
            self._bury(raw, queue, worker_id, reason, message.id, message.reply_key, message.failed_deliveries + 1)
            return None
        return Delivery(
            message.id,
            queue,
            message.payload,
            message.reply_key,
            message.failed_deliveries + 1,
            message.max_deliveries,
            raw,
        )

    def ack(self, delivery: Delivery, worker_id: str, reply: bytes | None) -> None:
        inflight = self.key("inflight", worker_id, delivery.queue)
        data = signing.encode_reply(self.signer, delivery.id, reply) if reply is not None and delivery.reply_to else b""
        reply_key = delivery.reply_to or inflight
        self._eval(scripts.ACK, [inflight, reply_key], [delivery.raw, data, self._ttl_ms()], "acknowledge")
        self._settled(worker_id, (delivery,))

    def ack_batch(self, items: Sequence[tuple[Delivery, bytes | None]], worker_id: str) -> None:
        if len(items) == 1:
            self.ack(items[0][0], worker_id, items[0][1])
            return
        script = self._script(scripts.ACK)
        ttl = self._ttl_ms()
        calls = []
        for delivery, reply in items:
            inflight = self.key("inflight", worker_id, delivery.queue)
            data = (
                signing.encode_reply(self.signer, delivery.id, reply)
                if reply is not None and delivery.reply_to
                else b""
            )
            calls.append(([inflight, delivery.reply_to or inflight], [delivery.raw, data, ttl]))

        def run(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for keys, args in calls:
                script(keys=keys, args=args, client=pipe)
            pipe.execute()

        self.connection.run(run, "acknowledge")
        self._settled(worker_id, (delivery for delivery, _ in items))

    def requeue(self, delivery: Delivery, worker_id: str) -> None:
        inflight = self.key("inflight", worker_id, delivery.queue)
        self._eval(scripts.REQUEUE, [inflight, self.key("q", delivery.queue)], [delivery.raw], "hand back")
        self._settled(worker_id, (delivery,))

    def dead_letter(self, delivery: Delivery, worker_id: str, reason: str) -> None:
        buried = self._bury(
            delivery.raw, delivery.queue, worker_id, reason, delivery.id, delivery.reply_to, delivery.deliveries
        )
        self._settled(worker_id, (delivery,))
        if not buried:
            logger.warning(
                "worker %s: message %s of queue '%s' was not dead-lettered (%s): this worker no longer held it; "
                "it was redelivered meanwhile, and that delivery answers",
                worker_id,
                delivery.id,
                delivery.queue,
                reason,
            )

    def _bury(
        self,
        raw: bytes,
        queue: str,
        worker_id: str,
        reason: str,
        message_id: str | None,
        reply_key: str,
        deliveries: int,
    ) -> bool:
        """Dead-letter ``raw``; False when ``worker_id`` no longer held it (nothing done then)."""
        import hashlib

        header = json.dumps(
            {
                "id": message_id or hashlib.sha1(raw).hexdigest(),
                "queue": queue,
                "worker": worker_id,
                "at": time.time(),
                "deliveries": deliveries,
                "reason": reason,
            },
            separators=(",", ":"),
        )
        inflight = self.key("inflight", worker_id, queue) if worker_id else ""
        dead = signing.dead_reply(message_id, reason) if (message_id and reply_key) else b""
        return bool(
            self._eval(
                scripts.DEAD_LETTER,
                [inflight, self.key("dlq", queue), reply_key or self.key("dlq", queue)],
                [raw, header, dead, self._ttl_ms()],
                "dead-letter",
            )
        )

    def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        self._eval(
            scripts.HEARTBEAT,
            [self.key("workers"), self.key("hb", worker_id)],
            [worker_id, ",".join(queues), max(1, int(ttl * 1000)), repr(time.time())],
            "heartbeat",
        )

    def unregister(self, worker_id: str) -> None:
        self.reap(worker_id)

    def reap(self, worker_id: str | None = None) -> int:
        requeued, dead = self._eval(
            scripts.REAP,
            [self.key("workers")],
            [self.key_prefix, repr(time.time()), worker_id or "", self._ttl_ms()],
            "reap",
        )
        if dead:
            logger.error("%d message(s) were dead-lettered after too many deliveries (see `graflow dlq list`)", dead)
        moved = int(requeued) + int(dead)
        if worker_id is None:
            now = time.monotonic()
            if now >= self._next_orphan_sweep:
                self._next_orphan_sweep = now + self.orphan_sweep_interval
                moved += self.reap_orphans()
        return moved

    def reap_orphans(self, min_idle: float | None = None) -> int:
        """Redeliver the messages of in-flight lists whose worker is gone; return how many moved.

        :meth:`reap` only walks registered workers. A list whose worker is no longer registered (it
        unregistered while a fetch of its was still completing, or its registration was lost) and
        does not heartbeat is found here by ``SCAN`` over ``<prefix>:inflight:*``, and its messages
        are redelivered (or dead-lettered) as the reaper does. Lists written less than ``min_idle``
        seconds ago (default :attr:`orphan_min_idle`) are left for a later sweep. :meth:`reap` runs
        this at most every :attr:`orphan_sweep_interval` seconds.
        """
        idle = self.orphan_min_idle if min_idle is None else float(min_idle)
        head = self.key("inflight", "")
        pattern = _glob(head) + "*"
        workers_key = self.key("workers")

        def survey(r: Any) -> tuple[list[bytes], dict[bytes, bytes]]:
            return list(r.scan_iter(match=pattern, count=1000)), r.hgetall(workers_key)

        keys, registered = self.connection.run(survey, "SCAN")
        served = {
            w.decode("utf-8", "replace"): set(q.decode("utf-8", "replace").split(",")) for w, q in registered.items()
        }
        known_queues = set().union(*served.values()) if served else set()
        requeued = dead = 0
        for key in keys:
            try:
                rest = key.decode("utf-8")[len(head) :]
            except UnicodeDecodeError:
                continue
            readings = [(rest[:i], rest[i + 1 :]) for i, c in enumerate(rest) if c == ":" and 0 < i < len(rest) - 1]
            if not readings or any(q in served.get(w, ()) for w, q in readings):
                continue  # a registered worker's list: the reaper's business
            # Which reading names the queue: the script prefers one whose queue has messages waiting,
            # then the first given; queues that live workers serve come first.
            readings.sort(key=lambda reading: reading[1] not in known_queues)
            args: list[Any] = [self.key_prefix, repr(time.time()), self._ttl_ms(), idle]
            for w, q in readings:
                args += [w, q]
            r_count, d_count = self._eval(scripts.REAP_ORPHAN, [workers_key, key], args, "reap")
            requeued += int(r_count)
            dead += int(d_count)
        if requeued or dead:
            logger.warning(
                "redelivered %d and dead-lettered %d message(s) held in the in-flight lists of workers that are gone",
                requeued,
                dead,
            )
        return requeued + dead

    def load_blob(self, key: str) -> bytes | None:
        return self.connection.run(lambda r: r.get(key), "GET")

    def request_cancel(self, key: str, message: str, task_id: str | None) -> None:
        """Ask the workers running a group's members to cancel them (see :meth:`cancel_requests`)."""
        value = json.dumps({"message": message, "task_id": task_id}).encode("utf-8")
        ttl = max(1, int(self.result_ttl))
        self.connection.run(lambda r: r.set(key, value, ex=ttl), "SET")

    def cancel_requests(self, keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        names = list(keys)
        values = self.connection.run(lambda r: r.mget(names), "MGET")
        found: dict[str, tuple[str, str | None]] = {}
        for key, raw in zip(names, values):
            if raw is None:
                continue
            try:
                data = json.loads(raw)
                found[key] = (str(data["message"]), data.get("task_id"))
            except (ValueError, KeyError, TypeError):
                found[key] = ("canceled", None)  # unreadable, but set: a cancel all the same
        return found

    def depths(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        names = list(queues)

        def read(r: Any) -> list[int]:
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.llen(self.key("q", name))
                pipe.llen(self.key("dlq", name))
            return pipe.execute()

        values = self.connection.run(read, "LLEN")
        return {name: (int(values[2 * i]), int(values[2 * i + 1])) for i, name in enumerate(names)}

    def in_flight(self) -> int:
        return int(self._eval(scripts.IN_FLIGHT, [self.key("workers")], [self.key_prefix], "in-flight count"))

    def live_workers(self) -> dict[str, list[str]]:
        """``{worker id: [queues]}`` of registered workers whose heartbeat has not expired."""
        registered = self.connection.run(lambda r: r.hgetall(self.key("workers")), "HGETALL")
        ids = [w.decode() for w in registered]
        if not ids:
            return {}

        def alive(r: Any) -> list[int]:
            pipe = r.pipeline(transaction=False)
            for wid in ids:
                pipe.exists(self.key("hb", wid))
            return pipe.execute()

        flags = self.connection.run(alive, "EXISTS")
        return {wid: registered[wid.encode()].decode().split(",") for wid, flag in zip(ids, flags) if flag}

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        from graflow_redis.dlq import DeadLetterQueue

        return DeadLetterQueue(self).list(queue or self.queue_name)

    def close(self) -> None:
        self.connection.close()

    # -- producer side --------------------------------------------------------------------------------------
    def send(self, items: Sequence[tuple[str, bytes, Any]], reply_key: str) -> dict[str, _Sent]:
        """Queue ``(queue, payload, tag)`` items; return ``{message id: sent}`` (pushed in batches)."""
        sent: dict[str, _Sent] = {}
        by_queue: dict[str, list[bytes]] = {}
        for queue, payload, tag in items:
            message_id, raw = signing.encode_message(self.signer, payload, reply_key, self.max_deliveries)
            sent[message_id] = _Sent(message_id, queue, raw, tag)
            by_queue.setdefault(queue, []).append(raw)
        self._push(by_queue)
        return sent

    def _push(self, by_queue: dict[str, list[bytes]]) -> None:
        def push(r: Any) -> list[int]:
            pipe = r.pipeline(transaction=False)
            for queue, raws in by_queue.items():
                qkey = self.key("q", queue)
                for start in range(0, len(raws), _PUSH_BATCH):
                    pipe.lpush(qkey, *raws[start : start + _PUSH_BATCH])
            return pipe.execute()

        if not by_queue:
            return
        lengths = self.connection.run(push, "LPUSH")
        limit = self.max_queue_depth
        if limit is not None and max(lengths) > limit:
            self._drain_to(list(by_queue), limit)

    def _drain_to(self, queues: list[str], limit: int) -> None:
        """Backpressure: wait until the workers brought each queue down to half of ``max_queue_depth``."""
        keys = [self.key("q", q) for q in queues]
        target = max(0, limit // 2)
        pause = 0.0002
        while True:
            depths = self.connection.run(lambda r: [r.llen(k) for k in keys], "LLEN")
            if max(depths) <= target:
                return
            time.sleep(pause)
            pause = min(0.01, pause * 1.5)

    # -- single tasks outside a workflow run ---------------------------------------------------------------
    def submit(
        self,
        task: Executable | Callable[..., Any],
        /,
        *,
        queue: str | None = None,
        reply: bool = True,
        **params: Any,
    ) -> str:
        """Run one task on a worker outside any workflow; return its message id at once.

        ``task`` is a ``@task`` or a plain function; ``params`` are its arguments by name. With
        ``reply=True`` fetch the outcome with :meth:`result`; ``reply=False`` is fire-and-forget
        (delivery stays at-least-once). ``max_queue_depth`` makes this wait while the queue is full.
        """
        from graflow.core.task import TaskWrapper
        from graflow.worker.jobs import TaskJob

        if isinstance(task, TaskWrapper):
            bound = task._bind(task.task_id, dict(params)) if params else task
        elif callable(task):
            name = getattr(task, "__name__", "task")
            bound = TaskWrapper(name, task, register_to_context=False, bound_kwargs=params)
        else:
            raise ConfigError(f"submit() takes a @task or a function, got {type(task).__name__}")
        if self._submit_channel is None:
            from graflow_redis.channel import RedisChannel

            self._submit_channel = RedisChannel(
                f"submitted-{uuid.uuid4().hex[:12]}", redis_client=self.connection.client, key_prefix=self.key_prefix
            )
        job = TaskJob(self._submit_channel.name, bound, self.channel_blob(self._submit_channel))
        payload = self.dumps_job(job, f"Task '{bound.task_id}'", bound.task_id)
        target = _check_name("queue", queue or bound.queue or self.queue_name)
        reply_key = ""
        if reply:
            if self._submit_reply_key is None:
                self._submit_reply_key = self.new_reply_key("submitted")
            reply_key = self._submit_reply_key
        sent = self.send([(target, payload, bound.task_id)], reply_key)
        if reply:
            self._submitted.update(sent)
        return next(iter(sent))

    def result(self, message_id: str, timeout: float | None = None) -> Any:
        """The return value of a task sent with :meth:`submit` (raises its exception, or
        :class:`QueueTimeoutError` after ``timeout`` seconds)."""
        from graflow.worker.jobs import apply_task_reply

        if message_id not in self._outcomes:
            if message_id not in self._submitted:
                raise ConfigError(f"No task with message id {message_id!r} was submitted (with reply=True) here")

            def on_reply(sent: _Sent, job_reply: JobReply | None, error: str | None) -> None:
                self._outcomes[sent.id] = (job_reply, error)

            assert self._submit_reply_key is not None
            with waiting_on_fleet():  # called from a task on a worker: a stand-in takes work meanwhile
                self.collect(
                    self._submit_reply_key,
                    self._submitted,
                    on_reply,
                    timeout=timeout,
                    stop_early=lambda: message_id in self._outcomes,
                )
        job_reply, error = self._outcomes.pop(message_id)
        if error is not None or job_reply is None:
            raise TaskError(f"The submitted task did not run on a worker: {error}", None)
        return apply_task_reply(None, None, job_reply)  # type: ignore[arg-type]

    def new_reply_key(self, session_id: str, scope: str = "") -> str:
        token = uuid.uuid4().hex[:16]
        parts = ["reply", session_id.replace("|", "_")]
        if scope:
            parts.append(scope.replace("|", "_"))
        parts.append(token)
        return self.key(*parts)

    @staticmethod
    def taken_key(reply_key: str) -> str:
        """Where :meth:`collect` keeps the replies of ``reply_key`` it took until it handled them."""
        return reply_key + ":taken"

    def collect(
        self,
        reply_key: str,
        pending: dict[str, _Sent],
        on_reply: Callable[[_Sent, JobReply | None, str | None], None],
        *,
        marker: str | None = None,
        recover: Callable[[], None] | None = None,
        timeout: float | None = None,
        stop_early: Callable[[], bool] | None = None,
    ) -> None:
        """Wait until every message in ``pending`` has a reply, calling ``on_reply(sent, reply, error)``.

        ``error`` is a text when the message was dead-lettered or its reply could not be trusted.
        Meanwhile: redeliver dead workers' messages every ``reap_interval``; if ``marker`` (a key
        set at send time) vanished, Redis lost its data, so call ``recover`` and send again
        everything still pending. Raises :class:`QueueTimeoutError` after ``timeout`` seconds.

        Replies are never only in flight on a connection: each wait moves them (``BLMOVE``) onto
        :meth:`taken_key`, where they stay until handled; a wait retried after a broken connection
        first reads what the lost answer had taken. Handling a reply twice is harmless (the second
        finds its message no longer pending).
        """
        conn = self.connection
        taken = self.taken_key(reply_key)
        ttl_ms = self._ttl_ms()
        take_more = self._script(scripts.TAKE_REPLIES)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        next_check = started + 1.0
        next_reap = started + min(self.reap_interval, 1.0)
        # leftovers: the taken list may hold replies not handled yet; handled: it holds handled ones only
        leftovers = reply_key in self._unhandled_replies
        handled = False

        def clear_leftovers() -> None:
            nonlocal leftovers
            leftovers = False

        def take(wait: float, many: bool) -> list[bytes]:
            attempts = 0

            def op(r: Any) -> list[bytes]:
                nonlocal attempts
                attempts += 1
                if leftovers or attempts > 1:
                    # what an earlier wait took and nobody handled (its answer was lost), first
                    items = r.lrange(taken, 0, -1)
                    if items:
                        return items
                    clear_leftovers()
                pipe = r.pipeline(transaction=False)
                if handled and attempts == 1:
                    pipe.delete(taken)
                pipe.blmove(reply_key, taken, wait, "LEFT", "RIGHT")
                pipe.pexpire(taken, ttl_ms)
                item = pipe.execute()[-2]
                if item is None:
                    return []
                if not many:
                    return [item]
                return list(take_more(keys=[reply_key, taken], args=[_REPLY_BATCH - 1, ttl_ms], client=r))

            return conn.run(op, "waiting for replies")

        busy = False  # between taking replies and having handled them all
        try:
            while pending:
                wait = 1.0
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueTimeoutError(
                            f"No reply from the workers within {timeout:g}s for {len(pending)} task(s) on queue(s) "
                            f"{sorted({s.queue for s in pending.values()})} at {self.url}. Check that workers run "
                            f"(graflow worker --redis-url ... --queue NAME) or raise the timeout."
                        )
                    wait = max(0.01, min(wait, remaining))
                busy = True
                raws = take(wait, len(pending) > 1)
                for raw in raws:
                    self._handle_reply(raw, pending, on_reply)
                busy = False
                handled = bool(raws)  # after an empty wait the taken list is empty
                if raws:
                    leftovers = False
                    self._unhandled_replies.discard(reply_key)
                if not pending or (stop_early is not None and stop_early()):
                    return
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    ttl = max(1, int(self.result_ttl))
                    if marker is not None and not conn.run(lambda r, t=ttl: r.expire(marker, t), "EXPIRE"):
                        self._recover(marker, pending, recover)
                if now >= next_reap:
                    next_reap = now + self.reap_interval
                    try:
                        self.reap()
                    except Exception as exc:  # noqa: BLE001 - reaping is best effort; workers reap too
                        logger.debug("reaper failed: %s", exc)
                    self._warn_if_no_workers(pending)
            busy = False
        finally:
            if busy:
                self._unhandled_replies.add(reply_key)  # the next collect on this reply list reads them first
            elif handled:
                try:
                    conn.run(lambda r: r.delete(taken), "DEL")
                except Exception as exc:  # noqa: BLE001 - it expires; a handled reply is ignored if read again
                    logger.debug("could not delete %s: %s", taken, exc)

    def _handle_reply(
        self,
        raw: bytes,
        pending: dict[str, _Sent],
        on_reply: Callable[[_Sent, JobReply | None, str | None], None],
    ) -> None:
        from graflow.worker.jobs import decode_reply

        try:
            reply = signing.decode_reply(self.signer, raw)
        except MalformedMessage as exc:
            logger.error("ignored a malformed reply on %s: %s", self.url, exc)
            return
        sent = pending.pop(reply.id, None)
        if sent is None:
            return  # a duplicate (the task ran twice after a redelivery) or a stale reply
        if reply.status == signing.STATUS_DEAD:
            on_reply(sent, None, reply.payload.decode("utf-8", "replace"))
            return
        if not reply.verified:
            on_reply(
                sent,
                None,
                "the worker's reply is unsigned or its signature does not match: set the same GRAFLOW_SECRET_KEY "
                "on the workers as on this producer",
            )
            return
        try:
            job_reply = decode_reply(reply.payload)
        except Exception as exc:  # noqa: BLE001 - an unreadable reply fails this task, not the producer
            on_reply(sent, None, f"the worker's reply cannot be unpickled here: {type(exc).__name__}: {exc}")
            return
        on_reply(sent, job_reply, None)

    def _recover(self, marker: str, pending: dict[str, _Sent], recover: Callable[[], None] | None) -> None:
        logger.warning(
            "Redis at %s lost this run's keys (restarted without persistence?); sending %d waiting task(s) again",
            self.url,
            len(pending),
        )
        self.connection.run(lambda r: r.set(marker, b"1", ex=max(1, int(self.result_ttl))), "SET")
        if recover is not None:
            recover()
        by_queue: dict[str, list[bytes]] = {}
        for sent in pending.values():
            by_queue.setdefault(sent.queue, []).append(sent.raw)
        self._push(by_queue)

    def _warn_if_no_workers(self, pending: dict[str, _Sent]) -> None:
        now = time.monotonic()
        if now - self._last_no_worker_warning < _NO_WORKER_WARNING_EVERY:
            return
        try:
            served = {q for queues in self.live_workers().values() for q in queues}
        except Exception:  # noqa: BLE001
            return
        missing = sorted({s.queue for s in pending.values()} - served)
        if missing:
            self._last_no_worker_warning = now
            logger.warning(
                "no live worker serves queue(s) %s at %s (key prefix %r); %d task(s) are waiting. Start one with: "
                "graflow worker --redis-url %s --key-prefix %s --queue %s",
                missing,
                self.url,
                self.key_prefix,
                len(pending),
                self.url,
                self.key_prefix,
                missing[0],
            )

    def set_marker(self, marker: str) -> None:
        self.connection.run(lambda r: r.set(marker, b"1", ex=max(1, int(self.result_ttl))), "SET")

    def put_blob(self, key: str, blob: bytes) -> None:
        self.connection.run(lambda r: r.set(key, blob, ex=max(1, int(self.result_ttl))), "SET")

    def delete_keys(self, *keys: str) -> None:
        names = [k for k in keys if k]
        if names:
            self.connection.run(lambda r: r.delete(*names), "DEL")
            self._unhandled_replies.difference_update(names)

    def reply_keys(self, reply_key: str) -> tuple[str, str]:
        """The keys one producer wait uses: its reply list and the list of replies it took."""
        return reply_key, self.taken_key(reply_key)

    def withdraw(self, sent: _Sent) -> bool:
        """Take a message back if no worker took it yet (True when it was still queued)."""
        qkey = self.key("q", sent.queue)
        return bool(self.connection.run(lambda r: r.lrem(qkey, 1, sent.raw), "LREM"))

    def dumps_job(self, job: Any, what: str, task_id: str) -> bytes:
        """Pickle a job for the workers, shipping ``pickle_by_value`` modules' code by value."""
        from graflow.worker.jobs import dumps

        try:
            with pickled_by_value(self.pickle_by_value):
                return dumps(job)
        except Exception as exc:
            raise TaskError(
                f"{what} cannot be sent to Redis workers: it cannot be pickled ({type(exc).__name__}: {exc}). "
                f"Task functions must be importable on the workers (or listed in pickle_by_value=) and their "
                f"data picklable.",
                task_id,
            ) from exc

    # -- attaching to a run (every task to workers) ----------------------------------------------------------
    def attach(self, context: ExecutionContext) -> None:
        """Send every task of ``context``'s run to workers when ``WorkflowEngine().execute(context)`` runs it."""
        from graflow_redis.channel import RedisChannel

        channel = context.channel
        if not isinstance(channel, RedisChannel):
            shared = RedisChannel(context.session_id, redis_client=self.connection.client, key_prefix=self.key_prefix)
            shared.restore(channel.snapshot())
            context.channel = shared
            context.channel_backend = "redis"
            logger.info(
                "run %s: its %s channel was moved to Redis (%s) so that workers share it",
                context.session_id,
                type(channel).__name__,
                self.url,
            )
        context.task_dispatcher = self  # type: ignore[attr-defined]
        if context.default_coordinator is None:
            context.default_coordinator = "redis"
            context.default_coordinator_config = self.coordinator_config()
        self.execution_context = context
        self.session_id = context.session_id

    def coordinator_config(self) -> dict[str, Any]:
        """``backend_config`` for the ``redis`` coordinator that reaches the same queue (no secrets in it)."""
        config: dict[str, Any] = {"url": self.url, "key_prefix": self.key_prefix, "queue": self.queue_name}
        if self.max_deliveries != DEFAULT_MAX_DELIVERIES:
            config["max_deliveries"] = self.max_deliveries
        if self.timeout is not None:
            config["timeout"] = self.timeout
        if self.pickle_by_value:
            config["pickle_by_value"] = tuple(self.pickle_by_value)
        return config

    def __reduce__(self) -> Any:
        # A context pickled with this queue attached (a checkpoint) resumes locally; re-attach to distribute.
        return (_detached, ())

    def channel_blob(self, channel: Any) -> bytes:
        from graflow.worker.jobs import dumps

        with self._lock:
            cached = self._channel_blobs.get(id(channel))
            if cached is not None and cached[0] is channel:
                return cached[1]
        try:
            blob = dumps(channel)
        except Exception as exc:
            raise ConfigError(
                f"The run's channel ({type(channel).__name__}) cannot be shipped to workers: {exc}. Use the redis "
                f"channel backend (channel_backend='redis')."
            ) from exc
        with self._lock:
            self._channel_blobs = {id(channel): (channel, blob)}
        return blob

    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        """Run one task of an attached run on a worker and replay its control calls here (the engine calls this)."""
        from graflow.core.task import NO_DATA
        from graflow.worker.jobs import TaskJob, apply_task_reply

        tctx = context.current_task_context
        tid = task.task_id
        data = tctx.input_data if tctx is not None else NO_DATA
        job = TaskJob(
            context.session_id,
            task,
            self.channel_blob(context.channel),
            data=data,
            cycle_count=context.cycle_counts.get(tid, 1),
            retry_count=context.retry_counts.get(tid, 0),
            default_max_cycles=context.default_max_cycles,
            default_max_retries=context.default_max_retries,
        )
        payload = self.dumps_job(job, f"Task '{tid}'", tid)
        queue = task.queue or self.queue_name
        _check_name("@task(queue=...)", queue)
        marker = self._marker_for(context.session_id)
        reply_key = self.new_reply_key(context.session_id)
        pending = self.send([(queue, payload, None)], reply_key)
        box: dict[str, Any] = {}

        def on_reply(sent: _Sent, reply: JobReply | None, error: str | None) -> None:
            box["reply"], box["error"] = reply, error

        try:
            with waiting_on_fleet():
                self.collect(reply_key, pending, on_reply, marker=marker, timeout=self.timeout)
        finally:
            # Answered: the reply list emptied itself and collect dropped what it took (a late duplicate
            # recreates the reply list with a ttl).
            if pending:
                for sent in pending.values():
                    self.withdraw(sent)
                self.delete_keys(*self.reply_keys(reply_key))
        if box.get("error") is not None:
            raise TaskError(f"Task '{tid}' did not run on a worker: {box['error']}", tid)
        return apply_task_reply(context, tctx, box["reply"])

    def _marker_for(self, session_id: str) -> str:
        """The run's marker key, set less than ``result_ttl / 2`` seconds ago.

        A marker lives ``result_ttl`` seconds after it was set and :meth:`collect` extends it only
        during waits over a second, so an older one may have expired although Redis lost nothing:
        reusing it would make the next wait "recover" and send its task again. A new marker is made
        instead (waits still under way keep extending theirs).
        """
        now = time.monotonic()
        with self._lock:
            entry = self._run_markers.get(session_id)
            if entry is not None and now - entry[1] < self.result_ttl / 2:
                return entry[0]
            marker = self.key("run", session_id, uuid.uuid4().hex[:12])
            self._run_markers.pop(session_id, None)  # re-inserted last: the oldest entry is first
            while len(self._run_markers) >= 256:
                # a worker forwarding tasks for many runs never sees them finish: forget the oldest
                # (its key expires after result_ttl; a later call for that run just makes a new one)
                del self._run_markers[next(iter(self._run_markers))]
            self._run_markers[session_id] = (marker, now)
        self.set_marker(marker)
        return marker

    def run_finished(self, context: ExecutionContext) -> None:
        """The engine finished ``context``'s run: remove the keys this queue made for it."""
        with self._lock:
            entry = self._run_markers.pop(context.session_id, None)
        with contextlib.suppress(Exception):
            self.delete_keys(entry[0] if entry is not None else "", self._ids_key())

    def __repr__(self) -> str:
        return f"RedisTaskQueue(url={self.url!r}, key_prefix={self.key_prefix!r}, queue={self.queue_name!r})"


def _detached() -> None:
    return None


DistributedTaskQueue = RedisTaskQueue

__all__ = ["DEFAULT_QUEUE", "DistributedTaskQueue", "QueueTimeoutError", "RedisTaskQueue"]
