"""Live progress for ``graflow run``, fed by engine events.

The reporter is an ordinary in-process plugin: it implements ``graflow_on_event`` and is registered
with :func:`graflow.plugins.register` for the duration of one run. Going through the event hook (not
a private engine callback) means the CLI sees exactly what metrics and tracing plugins see, and
works unchanged for tasks run on threads, in containers or on remote hosts.

On a terminal it keeps one status line up to date (``\\r`` + erase) and prints only what needs
attention (failures, retries) above it, so a run of thousands of tasks does not flood the screen;
anywhere else (CI logs, pipes) it prints one line per finished task so logs stay readable.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from graflow.hookspecs import hookimpl


@dataclass
class RunStats:
    """Counts for the end-of-run summary."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    groups: int = 0
    running: dict[str, float] = field(default_factory=dict)  # task id -> start time
    failures: list[tuple[str, str]] = field(default_factory=list)  # (task id, error)


class ProgressReporter:
    """Turns ``graflow_on_event`` calls into progress output and :class:`RunStats`.

    Only events of the first session seen are counted, so a task that itself runs a nested
    workflow does not inflate the outer run's numbers.
    """

    def __init__(self, stream: TextIO | None, live: bool) -> None:
        self.stream = stream
        self.live = live and stream is not None
        self.stats = RunStats()
        self.session_id: str | None = None
        self.started_at = time.perf_counter()
        self._lock = threading.Lock()  # events arrive from every thread of a threading group
        self._line_width = 0

    # -- the hook ---------------------------------------------------------------------------------------
    @hookimpl
    def graflow_on_event(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            session = payload.get("session_id")
            if event == "workflow.started" and self.session_id is None:
                self.session_id = session
                return
            if self.session_id is not None and session is not None and session != self.session_id:
                return
            handler = getattr(self, "_on_" + event.replace(".", "_"), None)
            if handler is not None:
                handler(payload)

    # -- per event ----------------------------------------------------------------------------------------
    def _on_task_started(self, payload: dict[str, Any]) -> None:
        self.stats.started += 1
        self.stats.running[str(payload.get("task_id"))] = time.perf_counter()
        self._refresh()

    def _on_task_succeeded(self, payload: dict[str, Any]) -> None:
        tid = str(payload.get("task_id"))
        self.stats.succeeded += 1
        self.stats.running.pop(tid, None)
        self._finished_line(f"ok     {tid}", payload.get("duration"), quiet_when_live=True)

    def _on_task_failed(self, payload: dict[str, Any]) -> None:
        tid = str(payload.get("task_id"))
        error = _one_line(str(payload.get("error", "")))
        self.stats.failed += 1
        self.stats.failures.append((tid, error))
        self.stats.running.pop(tid, None)
        self._finished_line(f"FAILED {tid}: {error}", None)

    def _on_task_retrying(self, payload: dict[str, Any]) -> None:
        tid = str(payload.get("task_id"))
        self.stats.retried += 1
        self.stats.running.pop(tid, None)
        delay = payload.get("delay")
        when = f" in {delay:.2f}s" if isinstance(delay, (int, float)) and delay > 0 else ""
        self._finished_line(f"retry  {tid}{when}: {_one_line(str(payload.get('error', '')))}", None)

    def _on_group_finished(self, payload: dict[str, Any]) -> None:
        self.stats.groups += 1
        failed = payload.get("failed") or []
        succeeded = payload.get("succeeded") or []
        text = f"group  {payload.get('group_id')}: {len(succeeded)} ok, {len(failed)} failed"
        self._finished_line(text, payload.get("duration"), quiet_when_live=not failed)

    # -- output -------------------------------------------------------------------------------------------
    def _finished_line(self, text: str, duration: Any, quiet_when_live: bool = False) -> None:
        if self.stream is None:
            return
        if isinstance(duration, (int, float)):
            text += f" ({_seconds(duration)})"
        if self.live:
            if quiet_when_live:
                self._refresh()
                return
            # Problems scroll above the status line so they stay on screen after the run.
            self._clear()
            self.stream.write(text + "\n")
            self._refresh()
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _refresh(self) -> None:
        if not self.live or self.stream is None:
            return
        stats = self.stats
        running = ", ".join(sorted(stats.running)) or "-"
        if len(running) > 50:
            running = running[:47] + "..."
        elapsed = _seconds(time.perf_counter() - self.started_at)
        line = (
            f"[{elapsed}] done {stats.succeeded}, failed {stats.failed}, retried {stats.retried} | running: {running}"
        )
        # A line wider than the terminal wraps, and a carriage return would then only erase its last row.
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if len(line) > width > 3:
            line = line[: width - 3] + "..."
        self._clear()
        self.stream.write(line)
        self._line_width = len(line)
        self.stream.flush()

    def _clear(self) -> None:
        if self.live and self.stream is not None and self._line_width:
            self.stream.write("\r\x1b[K")
            self._line_width = 0

    def close(self) -> None:
        """Erase the status line so the summary starts on a clean line."""
        with self._lock:
            self._clear()
            if self.stream is not None:
                self.stream.flush()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.2f}s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


__all__ = ["ProgressReporter", "RunStats"]
