"""The ``threading`` coordinator: members on a bounded thread pool shared by every group."""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from graflow.coordination.coordinator import Coordinator
from graflow.coordination.waiting import Lender, current_lender, lending_slots
from graflow.core.handler import TaskResult
from graflow.exceptions import ConfigError


class ThreadingCoordinator(Coordinator):
    """Runs members on ``thread_count`` pool threads plus the calling thread.

    Members wait in a per-group deque that pool threads *and the caller* drain. Because the
    caller always drains too, a group nested inside a member makes progress even when every
    pool thread is busy: nesting can never deadlock the pool. One pool serves every group.
    """

    name = "threading"

    def __init__(self, thread_count: int | None = None) -> None:
        if thread_count is None:
            thread_count = min(32, (os.cpu_count() or 1) + 4)
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ConfigError(
                f"threading backend_config thread_count must be a whole number >= 1, got {thread_count!r}"
            )
        self.thread_count = thread_count
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.thread_count, thread_name_prefix="graflow-group")
                pool = self._pool
        return pool

    def run_members(
        self, group: Any, member_ids: Sequence[str], run_member: Callable[[str], TaskResult], context: Any
    ) -> dict[str, TaskResult]:
        pending = deque(member_ids)
        results: dict[str, TaskResult] = {}

        def drain() -> None:
            popleft = pending.popleft
            while True:
                try:
                    member_id = popleft()
                except IndexError:
                    return
                results[member_id] = run_member(member_id)

        helpers = min(self.thread_count, len(member_ids) - 1)
        futures = []
        if helpers > 0:
            pool = self._get_pool()
            # on a worker, a member waiting on other workers lends its slot (graflow.coordination.waiting):
            # pool threads running members of this job must be able to, just like the calling thread
            lender = current_lender()
            helper = drain if lender is None else functools.partial(_drain_lending, lender, drain)
            futures = [pool.submit(helper) for _ in range(helpers)]
        drain()
        for future in futures:
            future.result()
        return results

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def _drain_lending(lender: Lender, drain: Callable[[], None]) -> None:
    with lending_slots(lender):
        drain()


__all__ = ["ThreadingCoordinator"]
