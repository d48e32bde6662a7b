"""The ``subprocess`` handler: run a task in a child Python process on this machine.

Isolation without infrastructure: a task that leaks memory, crashes the interpreter or holds the
GIL runs in its own process, with the same ``context`` as in-process (channel, dynamic tasks,
control calls go through the remote-runner protocol). It is also the reference implementation of
:class:`~graflow.remote.handler.RemoteTaskHandler` for authors of other remote handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from graflow.exceptions import ConfigError
from graflow.remote.bundle import RunnerBundle, cache_dir, store_once
from graflow.remote.handler import RemoteTaskHandler
from graflow.remote.process import RemoteProcess


def store_bundle(bundle: RunnerBundle, folder: Path | None = None) -> Path:
    """The bundle as a file on this machine, under its content-addressed name."""
    return store_once(folder or cache_dir(), bundle.filename, bundle.data)


#: Seconds a runner that exited gets to have its last output forwarded.
_OUTPUT_DRAIN = 2.0


class ChildProcess(RemoteProcess):
    """A runner started with :mod:`subprocess`, in its own process group."""

    def __init__(self, popen: subprocess.Popen[bytes], on_output: Callable[[str], None]) -> None:
        self.popen = popen
        self._stdin = popen.stdin
        self._stdout = popen.stdout
        self._reader = threading.Thread(target=self._forward, args=(on_output,), daemon=True, name="graflow-stderr")
        self._reader.start()
        self._closed = False

    def _forward(self, on_output: Callable[[str], None]) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            on_output(raw.decode("utf-8", errors="replace"))

    def write(self, data: bytes) -> None:
        assert self._stdin is not None
        self._stdin.write(data)
        self._stdin.flush()

    def read(self, n: int) -> bytes:
        assert self._stdout is not None
        return self._stdout.read(n)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        # The runner is gone, but the forwarder may still be passing on its last lines (the host sees
        # the end of stdout first): let it finish, so an error built now ends with them. Its stderr ends
        # at once, unless a process the task started still holds it.
        self._reader.join(timeout=_OUTPUT_DRAIN)
        return code

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass
        try:  # popen.wait, not self.wait: the group is killed below, before the forwarder is joined
            exited = self.popen.wait(5) is not None
        except subprocess.TimeoutExpired:
            exited = False
        if not exited:
            self.kill()
            self.wait(5)
        else:
            # the runner is gone; children it left behind in its group go with it
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reader.join(timeout=5)
        for stream in (self._stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


class SubprocessTaskHandler(RemoteTaskHandler):
    """Runs each task in a child Python process (``@task(handler="subprocess")``).

    Settings: ``python`` (default: this interpreter), ``env`` (extra environment variables),
    ``cwd``, ``reuse`` / ``pool_size`` (keep warm child processes), ``pickle_by_value``.
    """

    name = "subprocess"

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        reuse: bool = False,
        pool_size: int = 4,
        pickle_by_value: Sequence[str] = (),
    ) -> None:
        super().__init__(
            reuse=reuse, pool_size=pool_size, python=python or sys.executable, pickle_by_value=pickle_by_value
        )
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(env).items()):
            raise ConfigError("env must map variable names to string values")
        self.env = dict(env or {})
        self.cwd = cwd

    def describe_target(self) -> str:
        return f"a child process ({self.python})"

    def start_process(self, bundle: RunnerBundle, on_output: Callable[[str], None]) -> RemoteProcess:
        path = store_bundle(bundle)
        env = {**os.environ, **self.env}
        try:
            popen = subprocess.Popen(
                bundle.command(self.python, str(path)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                bufsize=0,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"The subprocess handler cannot start {self.python!r}: no such interpreter. Set handler_kwargs "
                f"{{'python': '/path/to/python3'}} to one that exists."
            ) from exc
        return ChildProcess(popen, on_output)


__all__ = ["ChildProcess", "SubprocessTaskHandler", "cache_dir", "store_bundle"]
