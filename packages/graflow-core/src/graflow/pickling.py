"""Pickling task code for another process: the user's own modules travel by value.

A task function defined in an installed package is pickled by reference (the other side imports
it); one defined in the user's own files (a script, a test module, a project folder that is not
installed) may not exist where the task runs, so cloudpickle ships it, and the rest of its
module, by value. Remote handlers and the Redis queue both send work this way.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable, Iterator
from typing import Any

_lock = threading.Lock()
_installed: tuple[str, ...] | None = None
#: Top-level packages the runner bundle carries itself.
_SHIPPED = ("graflow", "cloudpickle", "pluggy")


def _installed_dirs() -> tuple[str, ...]:
    global _installed
    if _installed is None:
        dirs = set()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            with contextlib.suppress(Exception):
                dirs.add(sysconfig.get_paths()[key])
        with contextlib.suppress(Exception):
            dirs.update(site.getsitepackages())
        with contextlib.suppress(Exception):
            dirs.add(site.getusersitepackages())
        _installed = tuple(os.path.realpath(d) + os.sep for d in dirs if d)
    return _installed


def is_user_module(name: str) -> bool:
    """Whether ``name`` is the user's own code: imported from a file outside every install folder."""
    if name in ("__main__", "builtins") or name.split(".")[0] in _SHIPPED:
        return False
    path = getattr(sys.modules.get(name), "__file__", None)
    if not path:
        return False
    return not os.path.realpath(path).startswith(_installed_dirs())


def by_value_modules(func: Any, extra: Iterable[str] = ()) -> list[str]:
    """``extra`` plus the module of ``func`` when it is the user's own code."""
    modules = list(extra)
    name = getattr(func, "__module__", None)
    if name and is_user_module(name) and name not in modules:
        modules.append(name)
    return modules


@contextlib.contextmanager
def pickled_by_value(modules: Iterable[str]) -> Iterator[None]:
    """Within the block, cloudpickle ships ``modules`` by value (an ImportError names a missing one).

    cloudpickle's registry is global, so pickling under it is serialised by a lock, and only the
    modules registered here are unregistered afterwards.
    """
    names = list(modules)
    if not names:
        yield
        return
    import cloudpickle

    with _lock:
        registered = []
        try:
            for name in names:
                module = sys.modules.get(name) or importlib.import_module(name)
                try:
                    cloudpickle.register_pickle_by_value(module)
                except ValueError:
                    continue  # already registered (by the user, or through an enclosing package)
                registered.append(module)
            yield
        finally:
            for module in registered:
                cloudpickle.unregister_pickle_by_value(module)
