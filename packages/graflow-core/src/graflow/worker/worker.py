"""TaskWorker: takes jobs from a broker, runs them, and sends the replies back.

Threads of one worker process:

* ``concurrency`` executor threads. With one queue each blocks on the broker itself (Redis
  ``BLMOVE``), so a thread only takes a job when it is free; with several queues one fetcher per
  queue blocks instead and hands jobs over (at most one job per queue waits locally).
* a heartbeat thread that does nothing else, so task code cannot starve it of work (pure-Python
  tasks give up the GIL every few milliseconds; a supervisor also beats for its children);
* a maintenance thread: the timeout watchdog and, every heartbeat interval, the reaper that
  redelivers the jobs of workers that stopped heartbeating.

Timeouts: a task that overruns its ``timeout`` gets a :class:`~graflow.worker.jobs.WorkerTaskTimeout`
raised inside its thread. Code stuck in C (a long ``sleep``, a blocked socket) cannot be
interrupted that way: after ``timeout_grace`` seconds the worker answers for it (a
``TaskTimeoutError``), stops taking work, drains, and exits with :data:`EXIT_RECYCLE` so that its
supervisor (or ``graflow worker`` itself, by re-executing) starts a fresh process.

Graceful shutdown (SPEC §4.10): :meth:`TaskWorker.request_stop` (first SIGTERM/SIGINT) stops
taking work; running jobs get ``shutdown_timeout`` seconds to finish; the rest are handed back to
the front of their queue; once every fetch under way has returned (what it took is handed back too),
the worker unregisters and :meth:`run` returns :data:`EXIT_OK`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue as queue_module
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from graflow.coordination.waiting import lending_slots
from graflow.exceptions import ConfigError, TaskTimeoutError
from graflow.hookspecs import hookimpl
from graflow.worker.broker import Broker, Delivery
from graflow.worker.jobs import (
    Job,
    JobReply,
    RunState,
    TaskJob,
    WorkerRuntime,
    WorkerTaskTimeout,
    _pending_timeouts,
    encode_reply,
    loads,
)
from graflow.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

EXIT_OK = 0
#: The process should be replaced by a fresh one (max tasks reached, or a task could not be stopped).
EXIT_RECYCLE = 3
#: The worker could not start (Redis unreachable, bad configuration).
EXIT_ERROR = 1

_BACKOFF_MAX = 2.0
_ACK_BATCH = 32
#: Seconds beyond ``poll_interval`` a stopping worker waits for a thread blocked in a fetch to return.
_FETCH_JOIN_GRACE = 5.0
_CANCEL_POLL = 0.2  # seconds between checks for a producer's cancellation of members running here
_ABANDONED: Any = object()


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class _Running:
    __slots__ = ("delivery", "job", "state", "stuck_at")

    def __init__(self, state: RunState, delivery: Delivery) -> None:
        self.state = state
        self.delivery = delivery
        self.job: Job | None = None
        self.stuck_at: float | None = None


class _Observer:
    """Follows the engine's task events inside member jobs: timeouts per task, retry counts."""

    def __init__(self, worker: TaskWorker) -> None:
        self.worker = worker

    def graflow_on_event(self, event: str, payload: dict[str, Any]) -> None:
        entry = self.worker._running.get(threading.get_ident())
        if entry is None:
            return
        if event == "task.started":
            # The thread started another task (a retry of one the watchdog interrupted, or the next
            # one of the chain): an interrupted task has stopped, so its grace period is over.
            entry.stuck_at = None
            entry.state.timed_out = None
            entry.state.begin_graph_task(payload.get("task_id", "?"))
        elif event in ("task.succeeded", "task.failed"):
            entry.state.end_task()
        elif event == "task.retrying":
            entry.state.end_task()
            self.worker.metrics.count(entry.delivery.queue, "retried")


class TaskWorker:
    """Runs jobs from ``queue`` (a :class:`~graflow.worker.broker.Broker`, e.g. graflow-redis's
    ``RedisTaskQueue``) until stopped.

    ``max_concurrent_tasks`` (alias ``concurrency``) jobs run at once, in threads. ``queues`` are
    the queue names to serve (``@task(queue="gpu")`` routes tasks to workers serving ``gpu``).
    ``max_tasks``: after that many jobs the worker drains and :meth:`run` returns
    :data:`EXIT_RECYCLE` (``--max-tasks-per-child``). ``metrics_port`` serves Prometheus metrics
    (needs ``pip install graflow-core[metrics]``).
    """

    def __init__(
        self,
        queue: Broker,
        worker_id: str | None = None,
        max_concurrent_tasks: int | None = None,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        shutdown_timeout: float = 30.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float | None = None,
        poll_interval: float = 1.0,
        max_tasks: int | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "0.0.0.0",
        timeout_grace: float = 1.0,
        watch_parent: int | None = None,
        prefetch: int = 16,
    ) -> None:
        if not isinstance(queue, Broker):
            raise ConfigError(
                f"TaskWorker needs a queue that workers can consume, such as graflow-redis's RedisTaskQueue "
                f"(RedisTaskQueue(url='redis://...')); got {type(queue).__name__}. The in-process LocalTaskQueue "
                f"is driven by the engine itself and has no workers."
            )
        if concurrency is not None and max_concurrent_tasks is not None and concurrency != max_concurrent_tasks:
            raise ConfigError("Pass concurrency= or max_concurrent_tasks= (the same setting), not both")
        n = concurrency if concurrency is not None else (max_concurrent_tasks if max_concurrent_tasks else 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"concurrency must be a whole number >= 1, got {n!r}")
        names = list(queues) if queues else ["default"]
        for name in names:
            if not isinstance(name, str) or not name or any(c in name for c in "| \t\n"):
                raise ConfigError(f"A queue name must be a non-empty string without spaces or '|', got {name!r}")
        for label, value in (
            ("shutdown_timeout", shutdown_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("poll_interval", poll_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{label} must be a number of seconds >= 0, got {value!r}")
        if heartbeat_interval <= 0 or poll_interval <= 0:
            raise ConfigError("heartbeat_interval and poll_interval must be > 0 seconds")
        if heartbeat_timeout is None:
            heartbeat_timeout = max(3 * heartbeat_interval, heartbeat_interval + 1.0)
        if heartbeat_timeout <= heartbeat_interval:
            raise ConfigError(
                f"heartbeat_timeout ({heartbeat_timeout}s) must be longer than heartbeat_interval "
                f"({heartbeat_interval}s), or live workers would be taken for dead"
            )
        if max_tasks is not None and (not isinstance(max_tasks, int) or max_tasks < 1):
            raise ConfigError(f"max_tasks must be a whole number >= 1, got {max_tasks!r}")
        self.queue = queue
        self.worker_id = worker_id or default_worker_id()
        if any(c in self.worker_id for c in "| \t\n"):
            raise ConfigError(f"A worker id must not contain spaces or '|', got {self.worker_id!r}")
        self.concurrency = n
        self.max_concurrent_tasks = n
        self.queues = names
        self.shutdown_timeout = float(shutdown_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.poll_interval = float(poll_interval)
        self.max_tasks = max_tasks
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.timeout_grace = float(timeout_grace)
        self.watch_parent = watch_parent
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"prefetch must be a whole number >= 1, got {prefetch!r}")
        self.prefetch = prefetch
        self.metrics = WorkerMetrics(self.worker_id)
        self.runtime = WorkerRuntime(queue)
        self.exit_code = EXIT_OK
        self.exit_reason = ""
        self.metrics_server: Any = None
        self.bound_metrics_port: int | None = None

        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._ready: queue_module.Queue[Delivery] = queue_module.Queue()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._beat_stop = threading.Event()
        self._executors: list[threading.Thread] = []
        self._fetchers: list[threading.Thread] = []
        self._heartbeat_thread: threading.Thread | None = None
        self._lent = 0  # slots lent to stand-ins by jobs waiting on other workers
        # max_tasks was reached while jobs waited on the fleet: their stand-ins go on (the waits may need
        # them), the other executors take no more work, and the worker recycles once no job waits
        self._recycle_pending = False
        self._stuck_threads: set[int] = set()  # executors abandoned in task code; they take no more work
        self._started = False
        self._shutting_down = False
        self._finished = 0
        self._prefetched = 0
        self._observer: _Observer | None = None
        self._error_logged: dict[str, float] = {}

    # -- public state -------------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._started and not self._stopped.is_set()

    @property
    def tasks_processed(self) -> int:
        return self.metrics.total("processed")

    @property
    def tasks_succeeded(self) -> int:
        return self.metrics.total("succeeded")

    @property
    def tasks_failed(self) -> int:
        return self.metrics.total("failed")

    @property
    def active_tasks(self) -> int:
        return self.metrics.active

    def get_metrics(self) -> dict[str, Any]:
        """Counters, duration percentiles (seconds, over the last 4,096 jobs) and queue depths."""
        try:
            depths = self.queue.depths(self.queues)
        except Exception as exc:  # noqa: BLE001 - metrics must answer during an outage
            logger.debug("queue depths unavailable: %s", exc)
            depths = {}
        percentiles = self.metrics.percentiles()
        return {
            "worker_id": self.worker_id,
            "queues": list(self.queues),
            "is_running": self.is_running,
            "concurrency": self.concurrency,
            "tasks_processed": self.metrics.total("processed"),
            "tasks_succeeded": self.metrics.total("succeeded"),
            "tasks_failed": self.metrics.total("failed"),
            "tasks_retried": self.metrics.total("retried"),
            "tasks_redelivered": self.metrics.total("redelivered"),
            "active_tasks": self.metrics.active,
            "duration_p50": percentiles["p50"],
            "duration_p95": percentiles["p95"],
            "duration_p99": percentiles["p99"],
            "uptime": time.time() - self.metrics.started_at,
            "last_heartbeat": self.metrics.last_heartbeat,
            "queue_depth": {q: d[0] for q, d in depths.items()},
            "dead_letter_depth": {q: d[1] for q, d in depths.items()},
            "per_queue": {
                q: {k: v for k, v in s.items() if k in ("processed", "succeeded", "failed", "retried", "redelivered")}
                for q, s in self.metrics.per_queue().items()
            },
        }

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> TaskWorker:
        """Register with the broker and start the threads; returns at once. Raises if the broker is unreachable."""
        if self._started:
            return self
        self.queue.heartbeat(self.worker_id, self.queues, self.heartbeat_timeout)
        self.metrics.last_heartbeat = time.time()
        if self.metrics_port is not None:
            from graflow.worker.metrics import PrometheusCollector, serve_prometheus

            collector = PrometheusCollector(self.metrics, self.queues, self.queue.depths)
            self.metrics_server, self.bound_metrics_port = serve_prometheus(
                collector, self.metrics_port, self.metrics_addr
            )
        self._started = True
        self._heartbeat_thread = self._spawn(self._heartbeat_loop, "graflow-heartbeat")
        self._spawn(self._maintenance_loop, "graflow-maintenance")
        if len(self.queues) > 1:
            for name in self.queues:
                self._fetchers.append(self._spawn(lambda n=name: self._fetch_loop(n), f"graflow-fetch-{name}"))
        for _ in range(self.concurrency):
            self._spawn(self._executor_loop, "graflow-executor", executor=True)
        logger.info(
            "worker %s started: queues %s, concurrency %d, broker %s",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.queue,
        )
        return self

    def run(self) -> int:
        """Start, serve until stopped, drain; return the exit code (:data:`EXIT_OK` or :data:`EXIT_RECYCLE`)."""
        self.start()
        while not self._stop.wait(0.5):
            pass
        self._shutdown()
        return self.exit_code

    def request_stop(self, reason: str = "stop requested", code: int = EXIT_OK) -> None:
        """Stop taking work (non-blocking; safe from a signal handler). :meth:`run` then drains and returns."""
        if not self._stop.is_set():
            if code != EXIT_OK or not self.exit_reason:
                self.exit_code = max(self.exit_code, code)
                self.exit_reason = reason
            self._stop.set()

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop: running jobs get ``timeout`` (default ``shutdown_timeout``) seconds, the rest go back."""
        if timeout is not None:
            self.shutdown_timeout = float(timeout)
        self.request_stop()
        if self._started:
            self._shutdown()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _shutdown(self) -> None:
        with self._lock:
            already = self._shutting_down
            self._shutting_down = True
        if already:
            self._stopped.wait()
            return
        logger.info("worker %s stopping (%s): finishing running tasks", self.worker_id, self.exit_reason or "stop")
        self._requeue_ready()
        deadline = time.monotonic() + self.shutdown_timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = [e for e in self._running.values() if not e.state.abandoned]
            if not busy:
                break
            time.sleep(0.02)
        with self._lock:
            left = [e for e in self._running.values() if not e.state.abandoned]
            for entry in left:
                entry.state.abandoned = True
        for entry in left:
            logger.warning(
                "worker %s: %s did not finish within the shutdown timeout (%gs); handing it back to queue '%s'",
                self.worker_id,
                entry.job.describe() if entry.job is not None else f"message {entry.delivery.id}",
                self.shutdown_timeout,
                entry.delivery.queue,
            )
            self._retry_forever(lambda e=entry: self.queue.requeue(e.delivery, self.worker_id), "hand back", 10.0)
        # Every thread that may be blocked in a fetch (BLMOVE, up to poll_interval) must have returned
        # before the worker unregisters: a message such a fetch takes afterwards would sit in the
        # in-flight list of a worker that no longer exists (the reaper's sweep of in-flight lists is
        # the safety net for a fetch that outlives even this wait). Fetchers hand back what they take
        # once stopping; what they queued here is handed back below.
        with self._lock:
            stuck = set(self._stuck_threads)
            stuck.update(ident for ident, e in self._running.items() if e.state.abandoned)
        me = threading.current_thread()
        takers = [t for t in (*self._fetchers, *self._executors) if t.ident not in stuck and t is not me]
        join_until = time.monotonic() + self.poll_interval + _FETCH_JOIN_GRACE
        for thread in takers:
            thread.join(timeout=max(0.0, join_until - time.monotonic()))
        late = [t.name for t in takers if t.is_alive()]
        if late:
            logger.warning(
                "worker %s: %d thread(s) still busy after the shutdown wait (%s); unregistering anyway",
                self.worker_id,
                len(late),
                ", ".join(sorted(set(late))),
            )
        self._requeue_ready()
        self._beat_stop.set()
        # A heartbeat in flight when the stop was set would re-register the worker after it
        # unregistered (a ghost entry until its timeout); let it land first.
        beat = self._heartbeat_thread
        if beat is not None and beat is not me:
            beat.join(timeout=_FETCH_JOIN_GRACE)
        try:
            self.queue.unregister(self.worker_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat expires anyway
            logger.warning("worker %s: could not unregister: %s", self.worker_id, exc)
        if self.metrics_server is not None:
            with contextlib.suppress(Exception):
                self.metrics_server.shutdown()
        if self._observer is not None:
            _remove_observer(self._observer)
        self._stopped.set()
        logger.info(
            "worker %s stopped: %d processed, %d succeeded, %d failed",
            self.worker_id,
            self.tasks_processed,
            self.tasks_succeeded,
            self.tasks_failed,
        )

    def _watch_engine_events(self) -> None:
        """Member jobs run the engine, whose task events give per-task timeouts and retry counts.

        Registered on the first such job only: single-task jobs never load the plugin registry.
        """
        with self._lock:
            if self._observer is not None:
                return
            self._observer = _Observer(self)
        _add_observer(_ObserverPlugin(self._observer))

    def _requeue_ready(self) -> None:
        while True:
            try:
                delivery = self._ready.get_nowait()
            except queue_module.Empty:
                return
            self._retry_forever(lambda d=delivery: self.queue.requeue(d, self.worker_id), "hand back", 10.0)

    def _spawn(self, target: Any, name: str, *, executor: bool = False) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        # Started and listed under the lock: _lend_slot prunes the executors (dropping threads not
        # alive) and _shutdown joins them, so neither may see a listed thread that has not started yet.
        with self._lock:
            thread.start()
            if executor:
                self._executors.append(thread)
        return thread

    # -- taking work ------------------------------------------------------------------------------------------
    def _executor_loop(self, retire: threading.Event | None = None) -> None:
        single = self.queues[0] if len(self.queues) == 1 else None
        backoff = 0.05
        local: list[Delivery] = []  # prefetched deliveries of this thread (all in flight, ours)
        acks: list[tuple[Delivery, bytes]] = []
        try:
            while not self._stop.is_set():
                if not local:
                    self._flush(acks)
                    if retire is not None and retire.is_set():
                        return  # a stand-in whose waiting job finished its wait
                    if retire is None and self._recycle_pending:
                        return  # max_tasks reached: only stand-ins work on, for the jobs still waiting
                    try:
                        if single is not None:
                            local = self.queue.fetch_batch(
                                single, self.worker_id, self._batch_size(), self.poll_interval
                            )
                        else:
                            local = [self._ready.get(timeout=self.poll_interval)]
                        backoff = 0.05
                    except queue_module.Empty:
                        continue
                    except Exception as exc:  # noqa: BLE001 - the broker is down: wait and try again
                        self._log_error("fetch", f"worker {self.worker_id}: cannot take work ({exc}); retrying")
                        self._stop.wait(backoff)
                        backoff = min(_BACKOFF_MAX, backoff * 2)
                        continue
                    if not local:
                        continue
                    with self._lock:
                        self._prefetched += len(local)
                delivery = local.pop(0)
                with self._lock:
                    self._prefetched -= 1
                if self._stop.is_set():
                    local.insert(0, delivery)
                    with self._lock:
                        self._prefetched += 1
                    break
                outcome = self._process(delivery)
                if outcome is _ABANDONED:
                    return  # stuck past its timeout and replaced; its deliveries are handed back below
                if outcome is not None:
                    acks.append((delivery, outcome))
                    if not local or len(acks) >= _ACK_BATCH:
                        self._flush(acks)
                if self.max_tasks is not None:
                    with self._lock:
                        self._finished += 1
                        done = self._finished
                        # stopping now would strand a job waiting for work only stand-ins of this
                        # worker may be there to do (a nested group on a small fleet): wait for it
                        waiting = self._lent > 0
                        if done >= self.max_tasks and waiting:
                            self._recycle_pending = True
                    if done >= self.max_tasks and not waiting:
                        self.request_stop(f"max tasks ({self.max_tasks}) reached", EXIT_RECYCLE)
        finally:
            self._flush(acks)
            for delivery in reversed(local):  # the last first, so the first ends up at the front
                self._retry_forever(lambda d=delivery: self.queue.requeue(d, self.worker_id), "hand back", 10.0)
            if local:
                with self._lock:
                    self._prefetched -= len(local)

    def _batch_size(self) -> int:
        """How many jobs to take at once: about 5 ms of work, judging by recent durations (1 for long tasks)."""
        if self.prefetch <= 1:
            return 1
        recent = self.metrics.recent_mean()
        if recent is None or recent <= 0:
            return 1
        return max(1, min(self.prefetch, int(0.005 / recent)))

    def _flush(self, acks: list[tuple[Delivery, bytes]]) -> None:
        if not acks:
            return
        batch = list(acks)
        acks.clear()
        self._retry_forever(lambda: self.queue.ack_batch(batch, self.worker_id), "acknowledge", None)

    def _fetch_loop(self, name: str) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            with self._lock:
                free = self.concurrency + self._lent - sum(1 for e in self._running.values() if not e.state.abandoned)
            if free - self._ready.qsize() <= 0:
                self._stop.wait(0.005)
                continue
            try:
                delivery = self.queue.fetch(name, self.worker_id, self.poll_interval)
                backoff = 0.05
            except Exception as exc:  # noqa: BLE001
                self._log_error("fetch", f"worker {self.worker_id}: cannot take work from '{name}' ({exc}); retrying")
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_MAX, backoff * 2)
                continue
            if delivery is None:
                continue
            if self._stop.is_set():
                self._retry_forever(lambda d=delivery: self.queue.requeue(d, self.worker_id), "hand back", 10.0)
                return
            self._ready.put(delivery)

    # -- running a job ----------------------------------------------------------------------------------------
    def _process(self, delivery: Delivery) -> Any:
        """Run one delivery; return the reply to acknowledge it with, None when it was dead-lettered,
        or ``_ABANDONED`` when this thread was given up on meanwhile (it must exit)."""
        state = RunState()
        entry = _Running(state, delivery)
        queue = delivery.queue
        with self._lock:
            self._running[state.thread_ident] = entry
        self.metrics.task_started()
        if delivery.deliveries > 1:
            self.metrics.count(queue, "redelivered")
        started = time.perf_counter()
        ok = False
        try:
            try:
                job = loads(delivery.body)
                if not isinstance(job, Job):
                    raise TypeError(f"the payload is a {type(job).__name__}, not a graflow job")
            except Exception as exc:  # noqa: BLE001 - undecodable payload: dead-letter it, never drop it
                reason = f"undecodable payload: {type(exc).__name__}: {exc}"
                logger.error("worker %s: message %s on queue '%s': %s", self.worker_id, delivery.id, queue, reason)
                self._retry_forever(
                    lambda: self.queue.dead_letter(delivery, self.worker_id, reason), "dead-letter", 30.0
                )
                return None
            entry.job = job
            if isinstance(job, TaskJob):
                if job.retry_count:
                    self.metrics.count(queue, "retried")
            elif self._observer is None:
                self._watch_engine_events()
            try:
                with lending_slots(self._lend_slot):
                    reply = job.execute(self.runtime, state)
            except WorkerTaskTimeout as exc:  # raised between the job's own handlers: still the task's timeout
                reply = JobReply(state.task_id or "?")
                reply.fail(TaskTimeoutError(exc.task_id or "?", getattr(exc, "timeout", 0.0)))
            reply.worker_id = self.worker_id
            ok = reply.ok
            payload = encode_reply(reply)
            with self._lock:
                abandoned = state.abandoned
                if self._running.get(state.thread_ident) is entry:
                    del self._running[state.thread_ident]
            if abandoned:
                logger.info(
                    "worker %s: abandoned %s finally returned; its result is dropped", self.worker_id, job.describe()
                )
                return _ABANDONED
            return payload
        finally:
            with self._lock:
                if self._running.get(state.thread_ident) is entry:
                    del self._running[state.thread_ident]
            if not state.abandoned:
                self.metrics.task_finished(queue, time.perf_counter() - started, ok)

    @contextlib.contextmanager
    def _lend_slot(self) -> Iterator[None]:
        """The job of this thread waits for other workers (a nested distributed group): a stand-in
        executor takes work meanwhile, so a fleet whose every slot waits that way cannot deadlock."""
        retire = threading.Event()
        with self._lock:
            self._lent += 1
            # stand-ins of earlier waits have exited: forget them, so a long-lived worker does not collect them
            self._executors[:] = [t for t in self._executors if t.is_alive()]
        if not self._stop.is_set():
            self._spawn(lambda: self._executor_loop(retire), "graflow-executor-standin", executor=True)
        try:
            yield
        finally:
            retire.set()  # the stand-in finishes the job it has, then exits
            with self._lock:
                self._lent -= 1

    def _retry_forever(self, action: Any, what: str, limit: float | None) -> None:
        """Run ``action`` until it succeeds (the broker may be restarting), or until ``limit`` seconds passed."""
        deadline = None if limit is None else time.monotonic() + limit
        backoff = 0.05
        while True:
            try:
                action()
                return
            except Exception as exc:  # noqa: BLE001 - keep the result: retry until the broker is back
                if deadline is not None and time.monotonic() > deadline:
                    logger.error("worker %s: could not %s: %s", self.worker_id, what, exc)
                    return
                self._log_error(what, f"worker {self.worker_id}: could not {what} ({exc}); retrying")
                time.sleep(backoff)
                backoff = min(_BACKOFF_MAX, backoff * 2)

    def _log_error(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._error_logged.get(key, 0.0) > 5.0:
            self._error_logged[key] = now
            logger.warning(message)

    # -- heartbeats, reaping, timeouts -----------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._beat_stop.wait(self.heartbeat_interval):
            try:
                self.queue.heartbeat(self.worker_id, self.queues, self.heartbeat_timeout)
                self.metrics.last_heartbeat = time.time()
            except Exception as exc:  # noqa: BLE001 - keep beating; the broker may come back
                self._log_error("heartbeat", f"worker {self.worker_id}: heartbeat failed ({exc})")

    def _maintenance_loop(self) -> None:
        next_reap = time.monotonic() + self.heartbeat_interval
        next_cancel_poll = 0.0
        while not self._beat_stop.is_set():
            with self._lock:
                watched = any(e.state.deadline is not None or e.stuck_at is not None for e in self._running.values())
            self._beat_stop.wait(0.02 if watched else min(0.25, self.heartbeat_interval))
            now = time.monotonic()
            if watched:
                self._watchdog(now)
            if now >= next_cancel_poll:
                next_cancel_poll = now + _CANCEL_POLL
                self._poll_cancels()
            if now >= next_reap:
                next_reap = now + self.heartbeat_interval
                try:
                    moved = self.queue.reap()
                    if moved:
                        logger.info("worker %s redelivered %d message(s) of dead workers", self.worker_id, moved)
                except Exception as exc:  # noqa: BLE001
                    self._log_error("reap", f"worker {self.worker_id}: reaper failed ({exc})")
                if self.watch_parent is not None and os.getppid() != self.watch_parent:
                    self.request_stop("the supervisor process is gone")

    def _poll_cancels(self) -> None:
        """A producer canceled the workflow of group members running here: tell their runs, which
        stops their remote runners (Docker, SSH, subprocess) as a cancel in the same process would."""
        with self._lock:
            watched = [
                (e.state.cancel_key, e.state.context)
                for e in self._running.values()
                if e.state.cancel_key and e.state.context is not None and e.state.context.canceled is None
            ]
        if not watched:
            return
        try:
            found = self.queue.cancel_requests([key for key, _ in watched])
        except Exception as exc:  # noqa: BLE001 - the broker may be restarting: ask again next time
            self._log_error("cancel-poll", f"worker {self.worker_id}: cannot check for cancellations ({exc})")
            return
        for key, context in watched:
            if key in found and context is not None:
                message, by = found[key]
                logger.info(
                    "worker %s: the workflow of session %s was canceled (%s)",
                    self.worker_id,
                    context.session_id,
                    message,
                )
                context.mark_canceled(message, by)

    def _watchdog(self, now: float) -> None:
        with self._lock:
            entries = list(self._running.items())
        for ident, entry in entries:
            state = entry.state
            if state.abandoned:
                continue
            if entry.stuck_at is None and state.deadline is not None and now > state.deadline:
                task_id, timeout = state.task_id or "?", state.timeout or 0.0
                state.timed_out = (task_id, timeout)
                _pending_timeouts[ident] = (task_id, timeout, now - (state.deadline - timeout))
                logger.warning(
                    "worker %s: task '%s' exceeded its timeout of %gs; interrupting it",
                    self.worker_id,
                    task_id,
                    timeout,
                )
                # before the interrupt: the thread, once interrupted, may start its next task (which
                # clears these) before this thread runs again
                entry.stuck_at = now + self.timeout_grace
                state.deadline = None
                _interrupt(ident, WorkerTaskTimeout)
            elif entry.stuck_at is not None and now > entry.stuck_at:
                self._abandon(ident, entry)

    def _abandon(self, ident: int, entry: _Running) -> None:
        """The task ignored the interrupt (stuck in C code): answer for it, replace its thread, recycle."""
        state = entry.state
        with self._lock:
            if state.abandoned or self._running.get(ident) is not entry:
                return
            state.abandoned = True
            del self._running[ident]
            self._stuck_threads.add(ident)
        task_id, timeout = state.timed_out or (state.task_id or "?", state.timeout or 0.0)
        reply = JobReply(task_id)
        reply.fail(TaskTimeoutError(task_id, timeout, time.monotonic() - state.started))
        if entry.job is not None and not isinstance(entry.job, TaskJob):
            reply.failed_task = task_id
            reply.task_id = getattr(entry.job, "member_id", task_id)
        reply.worker_id = self.worker_id
        payload = encode_reply(reply)
        logger.error(
            "worker %s: task '%s' could not be stopped after its timeout of %gs (stuck outside Python code); "
            "reported it as timed out; this process will be replaced once its other tasks finish",
            self.worker_id,
            task_id,
            timeout,
        )
        self._retry_forever(lambda: self.queue.ack(entry.delivery, self.worker_id, payload), "acknowledge", None)
        self.metrics.task_finished(entry.delivery.queue, time.monotonic() - state.started, False)
        if not self._stop.is_set():
            self._spawn(self._executor_loop, "graflow-executor", executor=True)
        self.request_stop(f"task '{task_id}' could not be stopped after its timeout", EXIT_RECYCLE)

    def __repr__(self) -> str:
        return f"TaskWorker({self.worker_id!r}, queues={self.queues}, concurrency={self.concurrency})"


def _interrupt(ident: int, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in the thread ``ident`` at its next Python instruction."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if done > 1:  # pragma: no cover - would mean a corrupt thread id; undo as CPython's docs say
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def _add_observer(plugin: _ObserverPlugin) -> None:
    """Register the worker's event observer without building the plugin tables.

    ``plugins.register`` would build every registry table, importing every installed plugin's
    classes (boto3, docker, ...) into each worker process; an observer needs none of that.
    """
    from graflow import plugins

    plugins._registry.ensure_loaded()
    plugins.plugin_manager.register(plugin)
    plugins._registry._has_observers = None


def _remove_observer(observer: _Observer) -> None:
    from graflow import plugins

    for plugin in list(plugins.plugin_manager.get_plugins()):
        if isinstance(plugin, _ObserverPlugin) and plugin.observer is observer:
            with contextlib.suppress(Exception):
                plugins.plugin_manager.unregister(plugin)
    plugins._registry._has_observers = None


class _ObserverPlugin:
    """The pluggy face of :class:`_Observer` (one per worker, registered in-process)."""

    def __init__(self, observer: _Observer) -> None:
        self.observer = observer

    @hookimpl
    def graflow_on_event(self, event: str, payload: dict[str, Any]) -> None:
        self.observer.graflow_on_event(event, payload)


__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_RECYCLE", "TaskWorker", "default_worker_id"]
