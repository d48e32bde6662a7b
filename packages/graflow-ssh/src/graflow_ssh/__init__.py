"""graflow-ssh: run Graflow tasks on remote hosts over SSH.

Installing this distribution registers the ``ssh`` task handler::

    @task(handler="ssh", handler_kwargs={"host": "gpu-box", "user": "me"})
    def train(data): ...

or, on one engine, ``engine.register_handler("gpu-box", SSHTaskHandler(host="gpu-box"))``.
"""

from __future__ import annotations

import importlib
from typing import Any

from graflow_ssh.__about__ import __version__

# Imported on first use: Graflow loads this package to find its plugin, and that must not import
# the SDK underneath (every worker process would pay for it).
_EXPORTS = {
    "SSHAuthenticationError": "graflow_ssh.errors",
    "SSHConnectionError": "graflow_ssh.errors",
    "SSHHostKeyError": "graflow_ssh.errors",
    "SSHTaskHandler": "graflow_ssh.handler",
}


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module 'graflow_ssh' has no attribute {attr!r}")
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]
