"""RemoteProcess: one started runner, seen by the host as a byte pipe each way plus control.

Transports implement it: a local child process (core's ``subprocess`` handler), a container's
attached streams (graflow-docker), an SSH exec channel (graflow-ssh). The host-side protocol and
everything above it live in :class:`graflow.remote.handler.RemoteTaskHandler`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class RemoteProcess(ABC):
    """A runner process started by a transport.

    The runner's stderr (where the task's prints go too) is the transport's to forward, line by
    line, to the ``on_output`` callback it was started with.
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Write all of ``data`` to the runner's stdin."""

    @abstractmethod
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the runner's stdout; blocks; ``b""`` at end of stream."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the runner now. Idempotent; may be called from another thread (timeouts)."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if the runner is still running after ``timeout`` seconds."""

    def close(self) -> None:
        """Release everything the runner holds (container, channel, temp files). Idempotent."""

    def exit_reason(self, code: int | None) -> str:
        """Why the runner ended, for error messages (transports explain OOM kills and the like)."""
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by signal {-code}"
        return f"exited with code {code}"
