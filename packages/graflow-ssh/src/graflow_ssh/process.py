"""One runner started on a remote host over an SSH exec channel.

The channel's stdin and stdout carry the runner protocol; its stderr carries the task's output and
is forwarded line by line to the host's log. An exec channel without a terminal does not stop the
remote command when it closes, so the remote shell first reports its PID (its first stderr line)
and then ``exec``s the runner in its place; :meth:`SSHRemoteProcess.kill` sends ``kill -9`` to that
process group over a second channel (re-opening the connection if it dropped). The runner writes
no files of its own; the only remote file, the cached runner bundle, is meant to stay.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable

import paramiko
from paramiko.buffered_pipe import BufferedPipe

from graflow.remote.process import RemoteProcess
from graflow_ssh.connection import TRANSPORT_ERRORS, SSHConnection

logger = logging.getLogger("graflow_ssh")

#: Prefix of the line the remote shell prints (to stderr) with its PID before starting the runner.
PID_MARKER = "graflow-ssh-pid:"
_PID_LINE = re.compile(rb"^" + re.escape(PID_MARKER.encode()) + rb"(\d+)\s*$")


class _CountingPipe(BufferedPipe):  # type: ignore[type-arg]
    """The channel's stderr buffer, counting the bytes the transport has fed into it."""

    def __init__(self) -> None:
        super().__init__()
        self.fed = 0

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        super().feed(data)


def prepare_channel(channel: paramiko.Channel) -> None:
    """Call on a fresh channel (before exec): lets :class:`SSHRemoteProcess` keep output and results in order."""
    channel.in_stderr_buffer = _CountingPipe()


class SSHRemoteProcess(RemoteProcess):
    """A runner on an exec channel. ``killer(pid)`` kills the remote process group over another channel."""

    def __init__(
        self,
        channel: paramiko.Channel,
        connection: SSHConnection,
        on_output: Callable[[str], None],
        killer: Callable[[int], None],
        where: str,
        python: str,
    ) -> None:
        self._channel = channel
        self._connection = connection
        self._on_output = on_output
        self._killer = killer
        self._where = where
        self._python = python
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pid_known = threading.Event()
        self._kill_sent = False
        self._closed = False
        # stderr bytes the pump has handled (vs. fed by the transport): read() waits until output that
        # arrived before a result has been forwarded, so a task's last lines are logged under its id.
        self._handled = 0
        self._handled_cond = threading.Condition()
        self._counting = isinstance(channel.in_stderr_buffer, _CountingPipe)
        self._stderr = threading.Thread(target=self._pump_stderr, name=f"graflow-ssh-stderr {where}", daemon=True)
        self._stderr.start()

    # -- the byte pipe ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The runner's PID on the remote host (known shortly after start)."""
        if self._pid is None:
            self._pid_known.wait(5)
        return self._pid

    def write(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except TRANSPORT_ERRORS as exc:
            raise BrokenPipeError(f"cannot write to the runner on {self._where}: {exc or type(exc).__name__}") from exc

    def read(self, n: int) -> bytes:
        try:
            data = self._channel.recv(n)
        except TRANSPORT_ERRORS as exc:
            if self._kill_sent or self._channel.closed:
                return b""
            raise ConnectionResetError(
                f"lost the runner's output on {self._where}: {exc or type(exc).__name__}"
            ) from exc
        if self._counting:
            # The transport feeds both streams in arrival order: stderr received before these bytes is
            # already counted. Wait (briefly) until the pump has forwarded it.
            target = self._channel.in_stderr_buffer.fed
            if self._handled < target:
                with self._handled_cond:
                    self._handled_cond.wait_for(lambda: self._handled >= target or not self._stderr.is_alive(), 2.0)
        return data

    def _pump_stderr(self) -> None:
        pending = b""
        first = True
        try:
            while True:
                try:
                    chunk = self._channel.recv_stderr(65536)
                except TRANSPORT_ERRORS:
                    break
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if first:
                        first = False
                        match = _PID_LINE.match(line)
                        if match:
                            self._pid = int(match.group(1))
                            self._pid_known.set()
                            continue
                    self._emit(line)
                with self._handled_cond:
                    self._handled += len(chunk)
                    self._handled_cond.notify_all()
            if pending:
                self._emit(pending)
        finally:
            self._pid_known.set()
            with self._handled_cond:
                self._handled_cond.notify_all()

    def _emit(self, line: bytes) -> None:
        try:
            self._on_output(line.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # a failing log callback must not stop the output pump
            logger.exception("ssh: the output callback failed")

    # -- control ----------------------------------------------------------------------------------
    def _exited(self) -> bool:
        return self._channel.status_event.is_set()

    def kill(self) -> None:
        with self._lock:
            if self._kill_sent:
                return
            self._kill_sent = True
        try:
            if not self._exited():
                pid = self.pid
                if pid is not None:
                    self._killer(pid)
                else:
                    logger.warning("ssh: the runner on %s never reported its PID; closing its channel", self._where)
        finally:
            with contextlib.suppress(Exception):
                self._channel.close()

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._channel.status_event.wait(timeout):
            return None
        return self._channel.exit_status

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self._kill_sent and not self._exited():
                # End of input makes a healthy runner exit on its own; a stuck one is killed.
                with contextlib.suppress(Exception):
                    self._channel.shutdown_write()
                if not self._channel.status_event.wait(5):
                    logger.warning("ssh: the runner on %s did not exit after end of input; killing it", self._where)
                    self.kill()
        finally:
            with contextlib.suppress(Exception):
                self._channel.close()
            self._stderr.join(2)
            self._connection.channel_closed()

    def exit_reason(self, code: int | None) -> str:
        if code is None:
            return "stopped answering"
        if code == -1:
            if self._kill_sent:
                return "was killed (kill -9 sent by graflow-ssh)"
            if not self._connection.alive:
                return "was cut off: the SSH connection dropped"
            return "ended without an exit status (killed by a signal on the remote host, e.g. out of memory)"
        if code == 127:
            return (
                f"exited with code 127: command not found; is '{self._python}' installed on {self._where}? Set the "
                f"handler's python setting to the interpreter's name or full path"
            )
        if code == 126:
            return f"exited with code 126: '{self._python}' is not executable on {self._where}"
        return f"exited with code {code}"


__all__ = ["PID_MARKER", "SSHRemoteProcess"]
