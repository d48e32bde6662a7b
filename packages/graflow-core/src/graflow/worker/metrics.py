"""Worker metrics: counters and a duration histogram kept in-process, exported to Prometheus on demand.

:class:`WorkerMetrics` is plain Python (no dependency): ``TaskWorker.get_metrics()`` reads it.
:func:`serve_prometheus` exposes it, plus queue and dead-letter depths read from the broker at
scrape time, on an HTTP port with prometheus-client (the optional extra
``pip install graflow-core[metrics]``). The metric names are fixed; dashboards and alerts use them:

========================================================  =========  ===============
name                                                      type       labels
========================================================  =========  ===============
``graflow_tasks_processed_total``                         counter    queue, worker
``graflow_tasks_succeeded_total``                         counter    queue, worker
``graflow_tasks_failed_total``                            counter    queue, worker
``graflow_tasks_retried_total``                           counter    queue, worker
``graflow_tasks_redelivered_total``                       counter    queue, worker
``graflow_task_duration_seconds``                         histogram  queue, worker
``graflow_active_tasks``                                  gauge      worker
``graflow_queue_depth``                                   gauge      queue
``graflow_dead_letter_depth``                             gauge      queue
``graflow_worker_last_heartbeat_timestamp_seconds``       gauge      worker
========================================================  =========  ===============
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from graflow.exceptions import ConfigError

logger = logging.getLogger(__name__)

#: Histogram bucket upper bounds, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
_COUNTERS = ("processed", "succeeded", "failed", "retried", "redelivered")
#: How many recent durations ``get_metrics()`` computes percentiles from.
RECENT_DURATIONS = 4096

INSTALL_HINT = "pip install graflow-core[metrics]"


class _QueueStats:
    __slots__ = ("buckets", "counts", "duration_count", "duration_sum")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.duration_count = 0


class WorkerMetrics:
    """Thread-safe counters of one worker, per queue."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._queues: dict[str, _QueueStats] = {}
        self._recent: deque[float] = deque(maxlen=RECENT_DURATIONS)
        self.active = 0
        self.last_heartbeat = 0.0
        self.started_at = time.time()

    def _stats(self, queue: str) -> _QueueStats:
        stats = self._queues.get(queue)
        if stats is None:
            stats = self._queues[queue] = _QueueStats()
        return stats

    def count(self, queue: str, what: str, n: int = 1) -> None:
        with self._lock:
            self._stats(queue).counts[what] += n

    def task_started(self) -> None:
        with self._lock:
            self.active += 1

    def task_finished(self, queue: str, duration: float, ok: bool) -> None:
        with self._lock:
            self.active -= 1
            stats = self._stats(queue)
            stats.counts["processed"] += 1
            stats.counts["succeeded" if ok else "failed"] += 1
            stats.buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
            stats.duration_sum += duration
            stats.duration_count += 1
            self._recent.append(duration)

    def total(self, what: str) -> int:
        with self._lock:
            return sum(s.counts[what] for s in self._queues.values())

    def recent_mean(self, last: int = 64) -> float | None:
        """Mean duration of the last ``last`` jobs (None before the first)."""
        with self._lock:
            n = min(last, len(self._recent))
            if n == 0:
                return None
            return sum(self._recent[-i] for i in range(1, n + 1)) / n

    def percentiles(self, points: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
        with self._lock:
            values = sorted(self._recent)
        out: dict[str, float | None] = {}
        for p in points:
            key = f"p{p:g}"
            if not values:
                out[key] = None
                continue
            index = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
            out[key] = values[index]
        return out

    def per_queue(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                q: {
                    **s.counts,
                    "buckets": list(s.buckets),
                    "duration_sum": s.duration_sum,
                    "duration_count": s.duration_count,
                }
                for q, s in self._queues.items()
            }


# -- Prometheus -----------------------------------------------------------------------------------------------
def require_prometheus() -> Any:
    """Import prometheus_client or raise a ConfigError saying how to install it."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            f"Serving worker metrics (--metrics-port) needs prometheus-client, which is not installed: {INSTALL_HINT}"
        ) from exc
    return prometheus_client


class PrometheusCollector:
    """A prometheus-client collector reading :class:`WorkerMetrics` and the broker at scrape time."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        queues: Sequence[str],
        depths: Callable[[Sequence[str]], dict[str, tuple[int, int]]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.queues = list(queues)
        self.depths = depths

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        worker = self.metrics.worker_id
        per_queue = self.metrics.per_queue()
        for queue in self.queues:
            per_queue.setdefault(
                queue,
                {
                    **dict.fromkeys(_COUNTERS, 0),
                    "buckets": [0] * (len(DURATION_BUCKETS) + 1),
                    "duration_sum": 0.0,
                    "duration_count": 0,
                },
            )
        for what in _COUNTERS:
            family = CounterMetricFamily(
                f"graflow_tasks_{what}", f"Tasks {what} by this worker", labels=["queue", "worker"]
            )
            for queue, stats in sorted(per_queue.items()):
                family.add_metric([queue, worker], stats[what])
            yield family
        histogram = HistogramMetricFamily(
            "graflow_task_duration_seconds", "Time from a task's start to its reply", labels=["queue", "worker"]
        )
        for queue, stats in sorted(per_queue.items()):
            cumulative = 0
            buckets = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), stats["buckets"]):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            histogram.add_metric([queue, worker], buckets, stats["duration_sum"])
        yield histogram
        active = GaugeMetricFamily("graflow_active_tasks", "Tasks running on this worker now", labels=["worker"])
        active.add_metric([worker], self.metrics.active)
        yield active
        beat = GaugeMetricFamily(
            "graflow_worker_last_heartbeat_timestamp_seconds",
            "Unix time of this worker's last heartbeat",
            labels=["worker"],
        )
        beat.add_metric([worker], self.metrics.last_heartbeat)
        yield beat
        depth = GaugeMetricFamily("graflow_queue_depth", "Tasks waiting in the queue", labels=["queue"])
        dead = GaugeMetricFamily("graflow_dead_letter_depth", "Messages in the dead-letter queue", labels=["queue"])
        if self.depths is not None:
            try:
                depths = self.depths(self.queues)
            except Exception as exc:  # noqa: BLE001 - a scrape during a Redis outage still returns the counters
                logger.warning("queue depth unavailable for metrics: %s", exc)
                depths = {}
            for queue, (waiting, dead_letters) in sorted(depths.items()):
                depth.add_metric([queue], waiting)
                dead.add_metric([queue], dead_letters)
        yield depth
        yield dead


def serve_prometheus(collector: Any, port: int, addr: str = "0.0.0.0") -> tuple[Any, int]:
    """Serve ``collector`` on ``addr:port`` (port 0 picks a free one); return (server, port)."""
    prometheus_client = require_prometheus()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        result = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"Cannot serve metrics on {addr}:{port}: {exc}. Pick a free port with --metrics-port."
        ) from exc
    server = result[0] if isinstance(result, tuple) else result
    bound = server.server_address[1] if server is not None else port
    return server, int(bound)


__all__ = [
    "DURATION_BUCKETS",
    "INSTALL_HINT",
    "PrometheusCollector",
    "WorkerMetrics",
    "require_prometheus",
    "serve_prometheus",
]
