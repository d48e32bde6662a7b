"""Local autoscaling for ``graflow worker --autoscale MIN,MAX``.

Two parts, kept apart so the policy can be tested without processes or Redis:

- :class:`AutoscalePolicy` is pure arithmetic. Each tick it is told the queue depth (tasks waiting),
  how many tasks are running and how many worker processes exist, and it answers how many processes
  there should be. It grows at once, to as many processes as the backlog needs (never above MAX),
  and shrinks only after the demand has stayed below the current size for ``scale_down_after``
  seconds, to the largest need seen during that quiet window (never below MIN).
- :class:`Autoscaler` is the loop: a thread that samples the queue every ``interval`` seconds, asks
  the policy, and calls the supervisor's ``scale_to(n)``; the supervisor starts processes or drains
  surplus ones gracefully (they finish their running tasks, then exit), so scaling down never loses
  a task.

The supervisor only needs ``scale_to(n)`` and ``process_count()`` (see
:mod:`graflow.worker.supervisor`); the queue is read through plain callables, so any backend works.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from graflow.exceptions import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_SCALE_DOWN_AFTER",
    "AutoscaleDecision",
    "AutoscalePolicy",
    "Autoscaler",
    "ScalableSupervisor",
    "parse_autoscale",
    "run_autoscaled",
]

#: Seconds the demand must stay below the process count before the fleet shrinks.
DEFAULT_SCALE_DOWN_AFTER = 30.0
#: Seconds between two samples of the queue.
DEFAULT_INTERVAL = 1.0


class ScalableSupervisor(Protocol):
    """What the autoscaler needs from a process supervisor."""

    def scale_to(self, n: int) -> object:
        """Run ``n`` worker processes: start new ones, or drain surplus ones gracefully."""

    def process_count(self) -> int:
        """How many worker processes run now (draining ones excluded)."""


def parse_autoscale(text: str) -> tuple[int, int]:
    """Parse the ``--autoscale`` value ``"MIN,MAX"`` into ``(min, max)``.

    Raises :class:`~graflow.exceptions.ConfigError` saying what is wrong and what a valid value
    looks like.
    """
    raw = str(text).strip()
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"--autoscale expects MIN,MAX (two whole numbers separated by a comma, e.g. 1,8); got {text!r}"
        )
    try:
        low, high = int(parts[0]), int(parts[1])
    except ValueError:
        raise ConfigError(
            f"--autoscale expects MIN,MAX as whole numbers (e.g. 1,8); got {text!r}"
        ) from None
    if low < 0:
        raise ConfigError(f"--autoscale MIN must be 0 or more; got {low} in {text!r}")
    if high < 1:
        raise ConfigError(f"--autoscale MAX must be at least 1; got {high} in {text!r}")
    if low > high:
        raise ConfigError(
            f"--autoscale MIN ({low}) is larger than MAX ({high}) in {text!r}; write it as MIN,MAX, e.g. {high},{low}"
        )
    return low, high


@dataclass(frozen=True)
class AutoscaleDecision:
    """One tick's answer: the process count to run and why (for logs and tests)."""

    target: int
    reason: str


@dataclass
class AutoscalePolicy:
    """How many worker processes a queue needs; see the module docstring.

    ``tasks_per_process`` is how many tasks one process works on at once (its ``--concurrency``):
    a backlog of ``depth + running`` tasks needs ``ceil((depth + running) / tasks_per_process)``
    processes. ``scale_down_after`` is the quiet time (seconds) before shrinking.
    """

    min_processes: int
    max_processes: int
    tasks_per_process: int = 1
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER
    _low_since: float | None = field(default=None, init=False, repr=False)
    _peak_while_low: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.min_processes < 0:
            raise ConfigError(f"autoscale: min_processes must be 0 or more, got {self.min_processes}")
        if self.max_processes < 1:
            raise ConfigError(f"autoscale: max_processes must be at least 1, got {self.max_processes}")
        if self.min_processes > self.max_processes:
            raise ConfigError(
                f"autoscale: min_processes ({self.min_processes}) is larger than max_processes "
                f"({self.max_processes}); swap them"
            )
        if self.tasks_per_process < 1:
            raise ConfigError(
                f"autoscale: tasks_per_process (the worker's --concurrency) must be at least 1, "
                f"got {self.tasks_per_process}"
            )
        if self.scale_down_after < 0:
            raise ConfigError(f"autoscale: scale_down_after must be 0 seconds or more, got {self.scale_down_after}")

    def needed(self, queue_depth: int, running: int) -> int:
        """Processes the current backlog needs, clamped to ``[min, max]``."""
        backlog = max(0, int(queue_depth)) + max(0, int(running))
        want = math.ceil(backlog / self.tasks_per_process)
        return max(self.min_processes, min(self.max_processes, want))

    def decide(self, now: float, queue_depth: int, running: int, current: int) -> AutoscaleDecision:
        """The process count to run, given a sample taken at monotonic time ``now``."""
        need = self.needed(queue_depth, running)
        if current < self.min_processes or need > current:
            # Growing is never delayed: waiting tasks are latency users see.
            self._reset()
            target = max(need, self.min_processes)
            return AutoscaleDecision(
                target, f"grow {current} -> {target}: {queue_depth} waiting, {running} running"
            )
        if current > self.max_processes:
            self._reset()
            return AutoscaleDecision(self.max_processes, f"shrink {current} -> {self.max_processes}: above MAX")
        if need == current:
            self._reset()
            return AutoscaleDecision(current, "steady")
        # need < current: shrink only after a quiet window, to the busiest need seen in it.
        if self._low_since is None:
            self._low_since = now
            self._peak_while_low = need
        else:
            self._peak_while_low = max(self._peak_while_low, need)
        quiet_for = now - self._low_since
        if quiet_for < self.scale_down_after:
            return AutoscaleDecision(
                current, f"hold {current}: demand {need} for {quiet_for:.1f}s of {self.scale_down_after:g}s"
            )
        target = self._peak_while_low
        self._reset()
        return AutoscaleDecision(target, f"shrink {current} -> {target}: idle for {quiet_for:.1f}s")

    def _reset(self) -> None:
        self._low_since = None
        self._peak_while_low = 0


class Autoscaler:
    """Samples the queue every ``interval`` seconds and resizes the supervisor to the policy's answer.

    ``queue_depth`` returns the number of waiting tasks; ``running`` (optional) the number of tasks
    being worked on right now across the supervisor's processes. A sample that raises (Redis briefly
    down, say) is logged and skipped: the fleet keeps its size rather than scaling on missing data.
    """

    def __init__(
        self,
        supervisor: ScalableSupervisor,
        policy: AutoscalePolicy,
        queue_depth: Callable[[], int],
        running: Callable[[], int] | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ConfigError(f"autoscale: interval must be more than 0 seconds, got {interval}")
        self.supervisor = supervisor
        self.policy = policy
        self.queue_depth = queue_depth
        self.running = running
        self.interval = interval
        self.clock = clock
        self.last_decision: AutoscaleDecision | None = None
        self.history: list[tuple[float, int, int]] = []  # (time, from, to) of every resize
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> AutoscaleDecision | None:
        """Take one sample and resize if needed; returns the decision (None when sampling failed)."""
        try:
            depth = int(self.queue_depth())
            busy = int(self.running()) if self.running is not None else 0
        except Exception as exc:  # noqa: BLE001 - any sampling failure means "no data": keep the current size
            logger.warning(
                "autoscale: cannot read the queue (%s: %s); keeping the current size", type(exc).__name__, exc
            )
            return None
        current = int(self.supervisor.process_count())
        now = self.clock()
        decision = self.policy.decide(now, depth, busy, current)
        self.last_decision = decision
        if decision.target != current:
            logger.info("autoscale: %s", decision.reason)
            self.supervisor.scale_to(decision.target)
            self.history.append((now, current, decision.target))
        return decision

    def run(self) -> None:
        """Tick until :meth:`stop` is called (blocking)."""
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive one failed resize; the supervisor logs its own detail
                logger.exception("autoscale: resizing failed; retrying on the next tick")
            self._stop.wait(self.interval)

    def start(self) -> Autoscaler:
        """Run the loop in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="graflow-autoscale", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the loop (the processes keep running; the supervisor shuts them down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def run_autoscaled(
    options: Any,
    autoscale: str,
    *,
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER,
    interval: float = DEFAULT_INTERVAL,
) -> int:
    """``graflow worker --autoscale MIN,MAX``: a supervisor resized by an :class:`Autoscaler`.

    ``options`` are the worker's :class:`graflow.worker.cli.WorkerOptions`. Runs until signalled:
    the first SIGTERM/SIGINT stops scaling and drains every process (exit code 0 once they are
    done), a second one stops them at once (their tasks are redelivered). Returns the exit code.
    """
    import sys

    from graflow.exceptions import GraflowError
    from graflow.worker import cli
    from graflow.worker.supervisor import Supervisor, handle_stop_signals

    def fail(message: str) -> int:
        sys.stderr.write(f"graflow worker: {message}\n")
        return 2

    try:
        low, high = parse_autoscale(autoscale)
        if options.processes is not None:
            raise ConfigError(
                "--autoscale MIN,MAX and --processes N both set the number of worker processes; pass only one"
            )
        policy = AutoscalePolicy(low, high, tasks_per_process=options.concurrency, scale_down_after=scale_down_after)
        if interval <= 0:
            raise ConfigError(f"--autoscale-interval must be more than 0 seconds, got {interval}")
        broker = cli.build_broker(options)
    except GraflowError as exc:
        return fail(str(exc))

    holder: dict[str, Autoscaler] = {}

    class _AutoscaledSupervisor(Supervisor):
        def start(self) -> Supervisor:
            started = super().start()
            # Resizing begins once the supervisor runs (its metrics endpoint and heartbeats exist).
            holder["scaler"] = Autoscaler(
                self, policy, self.queue_depth, self.running_tasks, interval=interval
            ).start()
            return started

    supervisor = _AutoscaledSupervisor(options, low, broker=broker)
    logger.info(
        "autoscale: %d to %d worker processes (%d task(s) each), shrinking after %gs of lower demand",
        low, high, options.concurrency, scale_down_after,
    )
    def stop_resizing() -> None:
        scaler = holder.get("scaler")
        if scaler is not None:
            scaler.stop(timeout=0)

    handle_stop_signals(supervisor, stop_resizing)
    try:
        return supervisor.run()
    finally:
        scaler = holder.get("scaler")
        if scaler is not None:
            scaler.stop()
        broker.close()
