"""The supervisor behind ``graflow worker --processes N``: N worker processes, kept alive.

Each child is ``python -m graflow.worker.main`` with the supervisor's flags and its own worker id
(``<id>-<n>``, a new one per start, so a replaced process never inherits a dead one's in-flight
list). The supervisor:

* restarts a child that exits on its own: at once after a planned recycle (``--max-tasks-per-child``
  or a task that could not be stopped after its timeout), with a growing pause when it keeps
  crashing; a crashed child's in-flight tasks are redelivered immediately (no need to wait for its
  heartbeat to expire);
* heartbeats for its live children too, so a child whose own heartbeat thread is starved (a C
  extension holding the GIL) is not taken for dead;
* forwards the first SIGTERM/SIGINT so children drain (exit 0 once they are done), and a second
  one so they exit at once;
* serves one Prometheus endpoint (``--metrics-port``) merging its children's metrics;
* resizes on request: :meth:`Supervisor.scale_to` starts processes or drains surplus ones
  gracefully; :meth:`Supervisor.process_count` says how many run (the autoscaler uses both).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from graflow.exceptions import ConfigError, GraflowError
from graflow.worker import cli
from graflow.worker.worker import EXIT_ERROR, EXIT_OK, EXIT_RECYCLE, default_worker_id

logger = logging.getLogger(__name__)

_TICK = 0.1
_MAX_RESTART_DELAY = 30.0


class _Child:
    __slots__ = ("crashes", "draining", "metrics_file", "process", "started", "worker_id")

    def __init__(self, process: subprocess.Popen[bytes], worker_id: str, metrics_file: str | None) -> None:
        self.process = process
        self.worker_id = worker_id
        self.metrics_file = metrics_file
        self.started = time.monotonic()
        self.draining = False
        self.crashes = 0


class Supervisor:
    """Runs ``processes`` worker processes with ``options`` (see the module docstring)."""

    def __init__(
        self,
        options: cli.WorkerOptions,
        processes: int,
        *,
        broker: Any = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(processes, int) or processes < 0:
            raise ConfigError(f"processes must be a whole number >= 0, got {processes!r}")
        self.options = options
        self.target = processes
        self.broker = broker
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.base_id = options.worker_id or default_worker_id()
        self._children: list[_Child] = []
        self._lock = threading.RLock()
        self._serial = 0
        self._stopping = False
        self._aborted = False
        self._restart_at = 0.0
        self._crash_streak = 0
        self._metrics_dir: str | None = None
        self._metrics_server: Any = None
        self.bound_metrics_port: int | None = None
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    # -- what the autoscaler calls -----------------------------------------------------------------------
    def process_count(self) -> int:
        """Worker processes running now (draining ones excluded)."""
        with self._lock:
            return sum(1 for c in self._children if not c.draining and c.process.poll() is None)

    def scale_to(self, n: int) -> int:
        """Run ``n`` processes: start the missing ones, or drain the newest surplus ones gracefully."""
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"scale_to() needs a whole number >= 0, got {n!r}")
        with self._lock:
            self.target = n
            if self._stopping:
                return self.process_count()
            active = [c for c in self._children if not c.draining and c.process.poll() is None]
            for child in active[n:][::-1]:
                logger.info("supervisor: draining worker %s (scaling to %d)", child.worker_id, n)
                child.draining = True
                _signal(child.process, signal.SIGTERM)
            for _ in range(n - len(active)):
                self._start_child()
            return self.process_count()

    def queue_depth(self) -> int:
        """Tasks waiting in the served queues (0 without a broker)."""
        if self.broker is None:
            return 0
        return sum(waiting for waiting, _ in self.broker.depths(self.options.queues).values())

    def running_tasks(self) -> int:
        """Tasks held by workers right now (every worker of the key prefix)."""
        return int(self.broker.in_flight()) if self.broker is not None else 0

    @property
    def worker_ids(self) -> list[str]:
        with self._lock:
            return [c.worker_id for c in self._children if c.process.poll() is None]

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [c.process.pid for c in self._children if c.process.poll() is None]

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> Supervisor:
        if self.options.metrics_port is not None:
            self._metrics_dir = tempfile.mkdtemp(prefix="graflow-worker-metrics-")
            from graflow.worker.metrics import serve_prometheus

            self._metrics_server, self.bound_metrics_port = serve_prometheus(
                _MergedCollector(self), self.options.metrics_port, self.options.metrics_addr
            )
        if self.broker is not None:
            self._beater = threading.Thread(target=self._beat_loop, name="graflow-supervisor-heartbeat", daemon=True)
            self._beater.start()
        self.scale_to(self.target)
        return self

    def run(self) -> int:
        """Supervise until stopped and every child has exited; return 0 after a graceful drain."""
        self.start()
        try:
            while True:
                self._tick()
                with self._lock:
                    if self._stopping and not self._children:
                        break
                time.sleep(_TICK)
        finally:
            self._close()
        return EXIT_OK

    def request_stop(self, reason: str = "stop requested") -> None:
        """Drain every child (they finish running tasks within their shutdown timeout), then return from run()."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            logger.info("supervisor: %s; draining %d worker(s)", reason, len(self._children))
            for child in self._children:
                child.draining = True
                _signal(child.process, signal.SIGTERM)

    def abort(self, signum: int = signal.SIGTERM) -> None:
        """Second signal: children exit at once; their in-flight tasks are redelivered."""
        with self._lock:
            self._stopping = True
            self._aborted = True
            children = list(self._children)
        for child in children:
            _signal(child.process, signum)  # their second signal: immediate exit
        deadline = time.monotonic() + 2.0
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child.process, signal.SIGKILL)
            self._reap(child.worker_id)
        self._close()

    def _tick(self) -> None:
        with self._lock:
            for child in list(self._children):
                code = child.process.poll()
                if code is None:
                    continue
                self._children.remove(child)
                self._exited(child, code)
            if not self._stopping:
                active = [c for c in self._children if not c.draining]
                missing = self.target - len(active)
                if missing > 0 and time.monotonic() >= self._restart_at:
                    for _ in range(missing):
                        self._start_child()

    def _exited(self, child: _Child, code: int) -> None:
        planned = child.draining or self._stopping
        lived = time.monotonic() - child.started
        if code == EXIT_RECYCLE:
            logger.info("supervisor: worker %s recycled itself; starting a fresh process", child.worker_id)
        elif planned and code == EXIT_OK:
            logger.info("supervisor: worker %s drained and exited", child.worker_id)
        else:
            why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            logger.error("supervisor: worker %s (pid %d) %s", child.worker_id, child.process.pid, why)
        if code != EXIT_OK:
            self._reap(child.worker_id)
        if child.metrics_file:
            try:
                os.unlink(child.metrics_file)
            except OSError:
                pass
        if not planned and code not in (EXIT_OK, EXIT_RECYCLE):
            self._crash_streak = self._crash_streak + 1 if lived < 5.0 else 1
            delay = min(_MAX_RESTART_DELAY, 0.25 * 2 ** (self._crash_streak - 1)) if lived < 5.0 else 0.0
            self._restart_at = time.monotonic() + delay
            if code == EXIT_ERROR and lived < 5.0:
                logger.error("supervisor: worker %s could not start; retrying in %.1fs", child.worker_id, delay)

    def _reap(self, worker_id: str) -> None:
        if self.broker is None:
            return
        try:
            moved = self.broker.reap(worker_id)
            if moved:
                logger.warning("supervisor: redelivered %d task(s) of worker %s", moved, worker_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat expiry redelivers them anyway
            logger.warning("supervisor: could not redeliver the tasks of %s now: %s", worker_id, exc)

    def _start_child(self) -> _Child:
        self._serial += 1
        worker_id = f"{self.base_id}-{self._serial}"
        metrics_file = None
        metrics_port = None
        env = dict(self.env)
        env[cli.ENV_SUPERVISED] = "1"
        env[cli.ENV_PARENT] = str(os.getpid())
        if self._metrics_dir is not None:
            metrics_file = os.path.join(self._metrics_dir, f"{worker_id}.port")
            env[cli.ENV_METRICS_FILE] = metrics_file
            metrics_port = 0
        argv = cli.child_argv(self.options, worker_id, metrics_port)
        if self.options.metrics_port is not None:
            argv[argv.index("--metrics-addr") + 1] = "127.0.0.1"
        command = [self.python, "-m", "graflow.worker.main", *argv]
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        child = _Child(process, worker_id, metrics_file)
        self._children.append(child)
        logger.info("supervisor: started worker %s (pid %d)", worker_id, process.pid)
        return child

    def _beat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        ttl = self.options.heartbeat_timeout or max(3 * interval, interval + 1.0)
        while not self._beat_stop.wait(interval):
            with self._lock:
                live = [c.worker_id for c in self._children if not c.draining and c.process.poll() is None]
            for worker_id in live:
                try:
                    self.broker.heartbeat(worker_id, self.options.queues, ttl)
                except Exception as exc:  # noqa: BLE001 - children beat for themselves as well
                    logger.debug("supervisor heartbeat for %s failed: %s", worker_id, exc)

    def _close(self) -> None:
        self._beat_stop.set()
        if self._metrics_server is not None:
            try:
                self._metrics_server.shutdown()
            except Exception:  # noqa: BLE001
                pass
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def child_metrics_ports(self) -> list[int]:
        ports = []
        with self._lock:
            files = [c.metrics_file for c in self._children if c.metrics_file and c.process.poll() is None]
        for path in files:
            try:
                with open(path) as fh:
                    ports.append(int(fh.read().strip()))
            except (OSError, ValueError):
                continue
        return ports


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass


class _MergedCollector:
    """One Prometheus view of every child (scraped from their private ports) plus the queue depths."""

    _QUEUE_METRICS = ("graflow_queue_depth", "graflow_dead_letter_depth")

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        import urllib.request

        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for port in self.supervisor.child_metrics_ports():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
                    text = response.read().decode("utf-8")
            except OSError as exc:
                logger.debug("metrics of a child on port %d unavailable: %s", port, exc)
                continue
            for family in text_string_to_metric_families(text):
                if family.name in self._QUEUE_METRICS:
                    continue
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in seen:
                        seen.add(key)
                        target.samples.append(sample)
        yield from merged.values()
        depth = GaugeMetricFamily("graflow_queue_depth", "Tasks waiting in the queue", labels=["queue"])
        dead = GaugeMetricFamily("graflow_dead_letter_depth", "Messages in the dead-letter queue", labels=["queue"])
        broker = self.supervisor.broker
        if broker is not None:
            try:
                for queue, (waiting, dead_letters) in sorted(broker.depths(self.supervisor.options.queues).items()):
                    depth.add_metric([queue], waiting)
                    dead.add_metric([queue], dead_letters)
            except Exception as exc:  # noqa: BLE001
                logger.warning("queue depth unavailable for metrics: %s", exc)
        yield depth
        yield dead


def handle_stop_signals(supervisor: Supervisor, on_signal: Callable[[], None] | None = None) -> None:
    """SIGTERM / SIGINT drain the workers; a second one stops them at once and exits.

    ``on_signal`` runs first on every signal (the autoscaler stops resizing). Only the main thread
    can install handlers; elsewhere (tests driving a supervisor) nothing is installed.
    """
    received = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        received["count"] += 1
        name = signal.Signals(signum).name
        if on_signal is not None:
            on_signal()
        if received["count"] == 1:
            cli._say(f"graflow worker: received {name}: draining the workers; send it again to exit at once\n")
            supervisor.request_stop(f"received {name}")
        else:
            cli._say(f"graflow worker: received {name} again: stopping the workers now\n")
            supervisor.abort(signum)
            os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def run_supervisor(options: cli.WorkerOptions, processes: int | None = None) -> int:
    """``graflow worker --processes N``: supervise until signalled; return the exit code."""
    try:
        broker = cli.build_broker(options)
    except GraflowError as exc:
        sys.stderr.write(f"graflow worker: {exc}\n")
        return 2
    supervisor = Supervisor(options, options.processes if processes is None else processes, broker=broker)
    handle_stop_signals(supervisor)
    try:
        return supervisor.run()
    finally:
        broker.close()


def supervise(options: cli.WorkerOptions, processes: int) -> Supervisor:
    """A started :class:`Supervisor` for in-process use (tests, the autoscaler's host program)."""
    return Supervisor(options, processes, broker=cli.build_broker(options)).start()


__all__ = ["Supervisor", "run_supervisor", "supervise"]
