"""Running tasks in another Python process: the protocol and host side shared by remote handlers.

``graflow.core.handlers.subprocess`` (a child process), graflow-docker (a container) and
graflow-ssh (a remote host) all subclass :class:`RemoteTaskHandler`; they differ only in how they
start a runner (:class:`RemoteProcess`) and deliver the :class:`RunnerBundle` to it.
"""

from graflow.remote.bundle import RunnerBundle, runner_bundle
from graflow.remote.handler import (
    RemoteRunnerError,
    RemoteTaskError,
    RemoteTaskHandler,
    RemoteTraceback,
    RemoteVersionMismatchError,
)
from graflow.remote.process import RemoteProcess

__all__ = [
    "RemoteProcess",
    "RemoteRunnerError",
    "RemoteTaskError",
    "RemoteTaskHandler",
    "RemoteTraceback",
    "RemoteVersionMismatchError",
    "RunnerBundle",
    "runner_bundle",
]
