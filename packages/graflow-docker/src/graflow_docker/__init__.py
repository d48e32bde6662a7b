"""graflow-docker: run any Graflow task in a Docker container.

Installing this distribution adds the ``docker`` task handler::

    @task(handler="docker", handler_kwargs={"image": "python:3.11-slim"})
    def step() -> int: ...

Any image with ``python3`` works: the handler copies everything the task needs into the container.
See :class:`graflow_docker.handler.DockerTaskHandler` for the settings.
"""

from graflow_docker.__about__ import __version__
from graflow_docker.devices import gpu_device_requests
from graflow_docker.errors import DockerContainerError, DockerDaemonUnreachableError, DockerImageNotFoundError
from graflow_docker.handler import DockerTaskHandler

__all__ = [
    "DockerContainerError",
    "DockerDaemonUnreachableError",
    "DockerImageNotFoundError",
    "DockerTaskHandler",
    "__version__",
    "gpu_device_requests",
]
