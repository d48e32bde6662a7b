"""graflow-docker: run any Graflow task in a Docker container.

Installing this distribution adds the ``docker`` task handler::

    @task(handler="docker", handler_kwargs={"image": "python:3.11-slim"})
    def step() -> int: ...

Any image with ``python3`` works: the handler copies everything the task needs into the container.
See :class:`graflow_docker.handler.DockerTaskHandler` for the settings.
"""

from __future__ import annotations

import importlib
from typing import Any

from graflow_docker.__about__ import __version__

# Imported on first use: Graflow loads this package to find its plugin, and that must not import
# the SDK underneath (every worker process would pay for it).
_EXPORTS = {
    "gpu_device_requests": "graflow_docker.devices",
    "DockerContainerError": "graflow_docker.errors",
    "DockerDaemonUnreachableError": "graflow_docker.errors",
    "DockerImageNotFoundError": "graflow_docker.errors",
    "DockerTaskHandler": "graflow_docker.handler",
}


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module 'graflow_docker' has no attribute {attr!r}")
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]
