"""Workers: processes that run tasks taken from a distributed queue (graflow-redis).

``TaskWorker(queue=broker)`` runs jobs in threads; ``graflow worker`` / ``python -m
graflow.worker.main`` run it from the command line, alone or as N supervised processes. The names
are imported on first use, so ``import graflow.worker`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TaskWorker": "graflow.worker.worker",
    "Broker": "graflow.worker.broker",
    "MemoryBroker": "graflow.worker.broker",
    "Supervisor": "graflow.worker.supervisor",
    "WorkerMetrics": "graflow.worker.metrics",
}


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module 'graflow.worker' has no attribute {attr!r}")
    return getattr(importlib.import_module(module), attr)


__all__ = sorted(_EXPORTS)
