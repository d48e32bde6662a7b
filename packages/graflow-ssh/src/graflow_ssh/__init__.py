"""graflow-ssh: run Graflow tasks on remote hosts over SSH.

Installing this distribution registers the ``ssh`` task handler::

    @task(handler="ssh", handler_kwargs={"host": "gpu-box", "user": "me"})
    def train(data): ...

or, on one engine, ``engine.register_handler("gpu-box", SSHTaskHandler(host="gpu-box"))``.
"""

from graflow_ssh.__about__ import __version__
from graflow_ssh.errors import SSHAuthenticationError, SSHConnectionError, SSHHostKeyError
from graflow_ssh.handler import SSHTaskHandler

__all__ = [
    "SSHAuthenticationError",
    "SSHConnectionError",
    "SSHHostKeyError",
    "SSHTaskHandler",
    "__version__",
]
