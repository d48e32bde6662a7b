"""The coordinator interface and the backend names users pass to ``with_execution``.

A coordinator gets the ids of the members to run and a ``run_member(member_id) -> TaskResult``
callable (which runs the member and its chained tail in this process and never raises). Local
coordinators call it from threads of their choosing; a distributed one (graflow-redis, or a
third-party Ray / Dask coordinator) may instead ship the members elsewhere and return the
:class:`~graflow.core.handler.TaskResult` of each. Either way it returns one result per member.
"""

from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from graflow.exceptions import ConfigError

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext
    from graflow.core.handler import TaskResult
    from graflow.core.task import ParallelGroup


class CoordinationBackend(str, Enum):
    """Built-in and well-known coordinator names; plugin names are accepted as plain strings too."""

    REDIS = "redis"
    THREADING = "threading"
    DIRECT = "direct"


def backend_name(backend: Any) -> str:
    if isinstance(backend, CoordinationBackend):
        return backend.value
    if isinstance(backend, Enum):
        return str(backend.value).lower()
    if isinstance(backend, str) and backend:
        return backend.lower()
    raise ConfigError(
        f"A coordination backend is a CoordinationBackend member or a name such as 'threading'; got {backend!r}"
    )


class Coordinator(ABC):
    """Runs the members of parallel groups. Subclasses set ``name`` and take ``backend_config`` as kwargs."""

    name: ClassVar[str] = ""

    @abstractmethod
    def run_members(
        self,
        group: ParallelGroup,
        member_ids: Sequence[str],
        run_member: Callable[[str], TaskResult],
        context: ExecutionContext,
    ) -> dict[str, TaskResult]:
        """Run every member and return ``{member_id: TaskResult}``."""

    def close(self) -> None:
        """Release pools or connections."""


_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Coordinator] = {}
_instances_lock = threading.Lock()


def get_coordinator(name: str, config: dict[str, Any]) -> Coordinator:
    """A shared coordinator per (name, config): pools are made once and reused by every group."""
    try:
        key = (name, tuple(sorted(config.items())))
        hash(key)
    except TypeError:
        return _instantiate(name, config)
    coordinator = _instances.get(key)
    if coordinator is None:
        with _instances_lock:
            coordinator = _instances.get(key)
            if coordinator is None:
                coordinator = _instantiate(name, config)
                _instances[key] = coordinator
    return coordinator


def _instantiate(name: str, config: dict[str, Any]) -> Coordinator:
    from graflow.plugins import get_coordinator_class

    cls = get_coordinator_class(name)
    check_kwargs(cls, config, f"coordinator '{name}'", "backend_config")
    return cls(**config)


def check_kwargs(cls: type, kwargs: dict[str, Any], what: str, where: str) -> None:
    """Raise a ConfigError naming the valid keys when ``kwargs`` has a key ``cls`` does not take."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(k for k in kwargs if k not in valid)
    if unknown:
        raise ConfigError(f"Unknown {where} key(s) {unknown} for the {what}. Valid keys: {', '.join(valid) or 'none'}")


def close_all() -> None:
    with _instances_lock:
        for coordinator in _instances.values():
            coordinator.close()
        _instances.clear()


TaskCoordinator = Coordinator

__all__ = ["CoordinationBackend", "Coordinator", "TaskCoordinator", "backend_name", "get_coordinator"]
