"""``DockerTaskHandler`` lives in the graflow-docker package; this path keeps upstream imports working."""

from typing import Any

from graflow._lazy import plugin_attribute


def __getattr__(attr: str) -> Any:
    return plugin_attribute(attr, "DockerTaskHandler", "graflow_docker.handler", "task_handler", "docker")
