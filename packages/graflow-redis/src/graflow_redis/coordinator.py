"""``RedisCoordinator``: the members of a parallel group run on Redis workers.

``(a | b | c).with_execution(backend=CoordinationBackend.REDIS, backend_config={"url": ...})`` (or a
context-wide ``coordinator="redis"``) sends each member, with its chained tail, to the queue as one
:class:`~graflow.worker.jobs.MemberJob`; a worker runs it exactly as the engine's ``_run_member``
does locally and the reply becomes the member's :class:`~graflow.core.handler.TaskResult`, so
group policies see the same thing as with threads.

**Scoping.** What one group execution writes is named after the session, the group and a fresh
token (``<prefix>:reply:<session>:<group>:<token>``, the run marker, the mirrored channel): two runs
with the same group names and key prefix never see each other's replies, and there are no shared
barrier counters to corrupt. Waiting has no fixed cap (``timeout=``, default none). Those keys are
deleted when the group finishes, and expire (``result_ttl``) if the producer dies first. The shipped
part of the graph is stored under its content hash (``<prefix>:blob:graph:<sha256>``), shared by
runs of the same workflow, and expires after ``result_ttl``.

**The channel.** Members share the run's channel. A Redis channel is shared as it is. Any other
(the memory channel, say) is mirrored: its snapshot is copied into a Redis channel scoped to this
group execution before dispatch, members read and write that (``atomic_add`` and ``lock`` stay
atomic across them), and the keys they changed or deleted are applied back to the producer's
channel afterwards. Only members' changes are applied back, so the producer's own writes made
meanwhile to other keys survive.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from graflow.coordination.coordinator import Coordinator
from graflow.coordination.waiting import waiting_on_fleet
from graflow.core.handler import TaskResult
from graflow.exceptions import ConfigError, TaskError
from graflow.worker.broker import DEFAULT_MAX_DELIVERIES
from graflow_redis.queue import DEFAULT_QUEUE, DEFAULT_RESULT_TTL, RedisTaskQueue, _Sent

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import ParallelGroup
    from graflow.worker.jobs import JobReply

logger = logging.getLogger(__name__)

_MISSING: Any = object()


class RedisCoordinator(Coordinator):
    """The ``redis`` coordinator (see the module docstring).

    ``backend_config`` keys: ``redis_client`` or ``url`` (or ``host``/``port``/``db``), ``password``,
    ``tls``, ``key_prefix`` (default ``"graflow"``; must match the workers'), ``queue`` (default
    ``"default"``; a member whose first task says ``@task(queue=...)`` goes there instead),
    ``timeout`` (seconds to wait for the whole group; default no limit), ``max_deliveries``,
    ``secret_key``, ``result_ttl``, ``reap_interval``, ``pickle_by_value``.
    """

    name = "redis"

    def __init__(
        self,
        redis_client: Any = None,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        tls: bool | None = None,
        key_prefix: str = "graflow",
        queue: str = DEFAULT_QUEUE,
        timeout: float | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        secret_key: str | bytes | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        reap_interval: float = 5.0,
        pickle_by_value: Iterable[str] = (),
        retry_deadline: float | None = None,
    ) -> None:
        self.queue = RedisTaskQueue(
            None,
            redis_client,
            url=url,
            host=host,
            port=port,
            db=db,
            password=password,
            tls=tls,
            key_prefix=key_prefix,
            queue=queue,
            max_deliveries=max_deliveries,
            secret_key=secret_key,
            timeout=timeout,
            result_ttl=result_ttl,
            reap_interval=reap_interval,
            pickle_by_value=pickle_by_value,
            retry_deadline=retry_deadline,
        )
        self.timeout = timeout
        self._graphs: dict[tuple[int, int, str], tuple[Any, str, bytes]] = {}
        self._lock = threading.Lock()

    # -- the group --------------------------------------------------------------------------------------
    def run_members(
        self,
        group: ParallelGroup,
        member_ids: Sequence[str],
        run_member: Callable[[str], TaskResult],
        context: ExecutionContext,
    ) -> dict[str, TaskResult]:
        from graflow.core.task import ParallelGroup as _Group
        from graflow.worker.jobs import MemberJob, apply_member_reply, member_branch_state, member_branches
        from graflow_redis.channel import RedisChannel

        if not isinstance(group, _Group):
            raise ConfigError(f"RedisCoordinator runs parallel groups, got {type(group).__name__}")
        queue = self.queue
        session = context.session_id
        group_id = group.task_id
        token = uuid.uuid4().hex[:12]
        scope = f"{group_id}:{token}"
        record = getattr(run_member, "record", None)
        marker = queue.key("run", session, scope)
        cancel_key = queue.key("cancel", session, scope)
        reply_key = queue.new_reply_key(session, scope)

        # the channel the members share
        own_channel = context.channel
        mirror: RedisChannel | None = None
        before: dict[str, dict[str, Any]] = {}
        if isinstance(own_channel, RedisChannel):
            channel_blob = queue.channel_blob(own_channel)
        else:
            # Keys members write expire after result_ttl, so a producer that dies mid-group leaves nothing
            # behind for ever; _apply_back tells that expiry from ttls the members chose.
            mirror = RedisChannel(
                f"{session}:{scope}",
                redis_client=queue.connection.client,
                key_prefix=queue.key_prefix,
                default_ttl=queue.result_ttl,
            )
            before = own_channel.snapshot()
            mirror.restore(before)
            mirror.expire(queue.result_ttl)
            channel_blob = queue.channel_blob(mirror)
        dispatched = time.monotonic()

        graph_blob = self._graph_blob(context, group_id)
        # Content-addressed: repeated runs of one workflow share the shipped graph, and workers keep
        # one unpickled copy. It expires after result_ttl (another run may be using it right now).
        graph_key = queue.key("blob", "graph", hashlib.sha256(graph_blob).hexdigest())
        queue.put_blob(graph_key, graph_blob)
        queue.set_marker(marker)
        remaining_steps = max(1, context.max_steps - context.steps)
        items = []
        branches = member_branches(group)
        for member_id in member_ids:
            state = member_branch_state(context, branches.get(member_id, [member_id]))
            job = MemberJob(
                session,
                graph_key,
                group_id,
                member_id,
                channel_blob,
                default_max_cycles=context.default_max_cycles,
                default_max_retries=context.default_max_retries,
                max_steps=remaining_steps,
                cancel_key=cancel_key,
                **state,
            )
            payload = queue.dumps_job(job, f"Member '{member_id}' of group '{group_id}'", member_id)
            node = context.graph._nodes.get(member_id)
            items.append((getattr(node, "queue", None) or queue.queue_name, payload, member_id))

        results: dict[str, TaskResult] = {}
        pending: dict[str, _Sent] = {}

        def on_reply(sent: _Sent, reply: JobReply | None, error: str | None) -> None:
            member_id = sent.tag
            if reply is None:
                exc = TaskError(f"Member '{member_id}' of group '{group_id}' did not run: {error}", member_id)
                outcome = TaskResult(member_id, False, exc, f"TaskError: {exc}")
                outcome.metadata["failed_task"] = member_id
            else:
                outcome = apply_member_reply(context, member_id, reply)
            results[member_id] = outcome
            if record is not None:
                record(member_id, outcome)

        def recover() -> None:
            queue.put_blob(graph_key, graph_blob)
            if mirror is not None:
                logger.warning(
                    "group '%s': the mirrored channel was lost with Redis's data; members that finished before "
                    "lose their channel writes (their results are kept)",
                    group_id,
                )
                mirror.restore(before)

        def stopped() -> bool:
            return context.terminated is not None or context.canceled is not None

        try:
            pending.update(queue.send(items, reply_key))
            with waiting_on_fleet():  # on a worker: a stand-in takes work while this member waits
                queue.collect(
                    reply_key,
                    pending,
                    on_reply,
                    marker=marker,
                    recover=recover,
                    timeout=self.timeout,
                    stop_early=stopped,
                )
            if pending:
                # terminate / cancel from a member: members no worker took yet do not run (as with threads)
                why = "the workflow was terminated" if context.terminated is not None else "the workflow was canceled"
                if context.canceled is not None:
                    # members already running: their workers stop their remote runners (Docker, SSH, ...)
                    queue.request_cancel(cancel_key, *context.canceled)
                for message_id, sent in list(pending.items()):
                    if queue.withdraw(sent):
                        del pending[message_id]
                        member_id = sent.tag
                        outcome = TaskResult(member_id, False, None, f"not run: {why}", 0.0)
                        results[member_id] = outcome
                        if record is not None:
                            record(member_id, outcome)
                if pending:
                    with waiting_on_fleet():
                        queue.collect(
                            reply_key, pending, on_reply, marker=marker, recover=recover, timeout=self.timeout
                        )
        finally:
            if pending:
                for sent in pending.values():
                    queue.withdraw(sent)
            try:
                if mirror is not None:
                    horizon = queue.result_ttl - (time.monotonic() - dispatched) - 5.0
                    self._apply_back(own_channel, mirror, before, results, context, horizon)
            finally:
                queue.delete_keys(*queue.reply_keys(reply_key), marker, cancel_key)
                if mirror is not None:
                    mirror.cleanup()
        return results

    # -- helpers -----------------------------------------------------------------------------------------
    def _graph_blob(self, context: ExecutionContext, group_id: str) -> bytes:
        """The part of the run's graph the group's members need, pickled once per graph version."""
        from graflow.worker.jobs import group_subgraph

        graph = context.graph
        key = (id(graph), graph.version, group_id)
        with self._lock:
            cached = self._graphs.get(key)
            if cached is not None and cached[0] is graph:
                return cached[2]
        with context.state_lock:
            sub = group_subgraph(graph, group_id)
            blob = self.queue.dumps_job(sub, f"The tasks of group '{group_id}'", group_id)
        with self._lock:
            if len(self._graphs) >= 8:
                self._graphs.clear()
            self._graphs[key] = (graph, group_id, blob)
        return blob

    @staticmethod
    def _apply_back(
        own: Any,
        mirror: Any,
        before: dict[str, dict[str, Any]],
        results: dict[str, TaskResult],
        context: Any,
        horizon: float,
    ) -> None:
        """Copy the keys members changed (or deleted) from the mirror into the producer's channel.

        A remaining ttl beyond ``horizon`` is the mirror's own safety expiry, not one a member chose:
        such a key keeps the ttl it had before (none for a new key).
        """
        after = mirror.snapshot()
        for key, entry in after.items():
            old = before.get(key, _MISSING)
            value = entry["value"]
            if old is not _MISSING and _same(old["value"], value):
                continue
            ttl = entry.get("ttl")
            if ttl is None or ttl >= horizon:
                ttl = old.get("ttl") if old is not _MISSING else None
            own.set(key, value, ttl=ttl if ttl and ttl > 0 else None)
        for key in before:
            if key not in after:
                own.delete(key)
        # Single-task members that finished before a Redis data loss still have their results.
        graph = context.graph
        for member_id, outcome in results.items():
            node = graph._nodes.get(member_id)
            result_key = getattr(node, "result_key", None)
            tail = [s for s in graph._succ.get(member_id, ()) if graph.owner_of.get(s) == graph.owner_of.get(member_id)]
            if outcome.success and result_key and not tail and result_key not in after:
                own.set(result_key, outcome.result)

    def close(self) -> None:
        self.queue.close()

    def __repr__(self) -> str:
        return f"RedisCoordinator({self.queue!r})"


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - values without a usable == count as changed
        return False


__all__ = ["RedisCoordinator"]
