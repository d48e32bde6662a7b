"""Errors the Docker handler raises on purpose; each message says what was wrong and how to fix it."""

from __future__ import annotations

from graflow.exceptions import ConfigError, TaskError


class DockerDaemonUnreachableError(ConfigError):
    """No Docker daemon answers at the configured address (``docker_host`` or ``DOCKER_HOST``)."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(
            f"Cannot reach the Docker daemon at {address}: {detail}. Start it (`sudo systemctl start docker`, "
            f"or `sudo dockerd &`), or point the handler at a running one with DOCKER_HOST / "
            f"handler_kwargs={{'docker_host': 'tcp://host:2375'}}; `docker info` should answer."
        )
        self.address = address


class DockerImageNotFoundError(ConfigError):
    """The image is not on the daemon; graflow-docker never pulls images itself."""

    def __init__(self, image: str, address: str) -> None:
        super().__init__(
            f"Docker image '{image}' is not on the Docker daemon at {address}, and graflow-docker does not pull "
            f"images. Fetch it with `docker pull {image}` or build it with `docker build -t {image} .`, then run "
            f"the workflow again. Any image with python3 works."
        )
        self.image = image
        self.address = address


class DockerContainerError(TaskError):
    """The daemon refused to create or start the task's container (bad setting, no such network...)."""


__all__ = ["DockerContainerError", "DockerDaemonUnreachableError", "DockerImageNotFoundError"]
