"""The plugin module Graflow loads through the ``ssh`` entry point of the ``graflow`` group."""

from __future__ import annotations

from graflow.hookspecs import hookimpl


@hookimpl
def graflow_register_task_handlers() -> list[type]:
    from graflow_ssh.handler import SSHTaskHandler

    return [SSHTaskHandler]
