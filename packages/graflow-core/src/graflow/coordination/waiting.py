"""A job that waits for work the same worker fleet must do lends its slot meanwhile.

A member of a distributed group may itself run a distributed group: the worker thread running it
then waits for other workers to run the inner members. With every slot of the fleet taken by such
waiting members, nobody is left to run the inner ones. The thread that runs a job (the worker)
installs a *lender* with :func:`lending_slots`; a coordinator about to block on the fleet wraps the
wait in :func:`waiting_on_fleet`, and the lender supplies a stand-in for the waiting thread until the
wait ends (the same idea as a thread pool that grows when a thread blocks in a managed wait).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_local = threading.local()

Lender = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def lending_slots(lender: Lender) -> Iterator[None]:
    """While the block runs, waits on the fleet in this thread call ``lender()`` around the wait."""
    previous = getattr(_local, "lender", None)
    _local.lender = lender
    try:
        yield
    finally:
        _local.lender = previous


def current_lender() -> Lender | None:
    """The lender installed in this thread, if any: a coordinator that runs members in threads of its
    own installs it there too (:func:`lending_slots`), so their waits on the fleet lend slots as well."""
    return getattr(_local, "lender", None)


@contextlib.contextmanager
def waiting_on_fleet() -> Iterator[None]:
    """Wrap a wait for other workers: the thread's slot is lent to a stand-in until it returns."""
    lender = getattr(_local, "lender", None)
    if lender is None:
        yield
        return
    with lender():
        yield


__all__ = ["current_lender", "lending_slots", "waiting_on_fleet"]
