"""The plugin module Graflow loads through the ``example`` entry point of the ``graflow`` group."""

from __future__ import annotations

from graflow.hookspecs import hookimpl
from graflow_example_plugin.handler import ShoutTaskHandler
from graflow_example_plugin.policy import QuorumGroupPolicy


@hookimpl
def graflow_register_task_handlers() -> list[type]:
    return [ShoutTaskHandler]


@hookimpl
def graflow_register_group_policies() -> list[type]:
    return [QuorumGroupPolicy]
