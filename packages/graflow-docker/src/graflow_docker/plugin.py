"""The plugin module Graflow loads through the ``docker`` entry point of the ``graflow`` group."""

from __future__ import annotations

from graflow.hookspecs import hookimpl


@hookimpl
def graflow_register_task_handlers() -> list[type]:
    # Imported here so that discovering plugins does not import the Docker SDK.
    from graflow_docker.handler import DockerTaskHandler

    return [DockerTaskHandler]
