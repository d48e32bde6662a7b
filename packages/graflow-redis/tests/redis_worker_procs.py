"""Real worker processes for graflow-redis integration tests (imported by the test_redis_* modules).

Each worker is ``python -m graflow.worker.main`` (or a supervisor with ``--processes``) started as a
child of the test, with short heartbeats so redelivery tests take about a second. Every process
started is killed by PID when the test ends, whatever happened; its log is kept for the failure
message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from graflow_testkit.processes import children

FAST = [
    "--heartbeat-interval", "0.2",
    "--heartbeat-timeout", "2.0",
    "--poll-interval", "0.2",
    "--log-level", "INFO",
]  # fmt: skip


class Workers:
    def __init__(self, url: str, key_prefix: str, log_dir: Path) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.pop("GRAFLOW_SECRET_KEY", None)
        env.update(extra or {})
        return env

    def start(
        self,
        *args: str,
        worker_id: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        fast: bool = True,
    ) -> subprocess.Popen[bytes]:
        worker_id = worker_id or f"w-{uuid.uuid4().hex[:6]}"
        log = self.log_dir / f"{worker_id}.log"
        command = [
            sys.executable, "-m", "graflow.worker.main",
            "--redis-url", self.url, "--key-prefix", self.key_prefix, "--worker-id", worker_id,
            *(FAST if fast else []), *args,
        ]  # fmt: skip
        with open(log, "ab") as fh:
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=self.env(env))
        self.procs.append((proc, log))
        if wait:
            supervised = "--processes" in args
            self.wait_registered(worker_id if not supervised else f"{worker_id}-1", proc)
        return proc

    def wait_registered(self, worker_id: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if client.exists(f"{self.key_prefix}:hb:{worker_id}"):
                    return
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"worker {worker_id} exited with {proc.returncode}:\n{self.logs()}")
                time.sleep(0.05)
        finally:
            client.close()
        raise AssertionError(f"worker {worker_id} did not register within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for _, log in self.procs:
            try:
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
            except OSError:
                continue
        return "\n".join(parts)

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        return ""

    def execute(self, context: Any) -> Any:
        """Run ``context`` with a fresh engine; on failure, print the workers' logs before re-raising."""
        from graflow.core.engine import WorkflowEngine

        try:
            return WorkflowEngine().execute(context)
        except BaseException:
            print(self.logs())
            raise

    def delete_keys(self) -> None:
        """Remove every Redis key under this fleet's prefix."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(match=self.key_prefix + ":*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def stop_all(self) -> None:
        # Two SIGTERMs: the second means "exit now" (a supervisor then cleans up after its workers);
        # whatever is left after that is killed.
        for _ in range(2):
            for proc, _log in self.procs:
                if proc.poll() is None:
                    try:
                        os.kill(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            time.sleep(0.2)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        for proc, _ in self.procs:
            kill_tree(children_of(proc.pid))  # a supervisor's workers first
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def children_of(pid: int) -> list[int]:
    """Live child pids of ``pid`` (Linux /proc)."""
    return children(pid)


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
