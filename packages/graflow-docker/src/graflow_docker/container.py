"""ContainerProcess: one runner in one container, seen by the host as a byte pipe each way.

The container is created with the runner as its command, stdin open and no TTY. Before it starts,
the runner bundle is copied in with ``put_archive`` (so a remote daemon works the same as a local
one: nothing is bind-mounted), and the host attaches to the container's stdin, stdout and stderr
over one socket. Without a TTY, Docker multiplexes stdout and stderr on that socket: each frame has
an 8-byte header (stream id, three zero bytes, big-endian payload size). A reader thread splits
the frames: stdout bytes (the runner's protocol) are buffered for :meth:`read`, stderr bytes (the
task's output) are cut into lines for the ``on_output`` callback.

The container is removed on :meth:`close` (``auto_remove=True``, the default) or left stopped with
its id logged (``auto_remove=False``).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import socket
import struct
import tarfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from docker.errors import APIError, DockerException, NotFound

from graflow.remote.process import RemoteProcess

logger = logging.getLogger("graflow.docker")

#: Where the runner bundle is stored inside containers (a directory of its own, created by the copy).
RUNNER_DIR = "/.graflow"

_STDOUT = 1
_STDERR = 2
_HEADER = struct.Struct(">BxxxL")

_archives: dict[str, bytes] = {}
_archives_lock = threading.Lock()


def bundle_archive(filename: str, data: bytes, digest: str) -> bytes:
    """A tar archive holding ``RUNNER_DIR/filename`` (cached per bundle digest)."""
    with _archives_lock:
        cached = _archives.get(digest)
        if cached is not None:
            return cached
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            folder = tarfile.TarInfo(RUNNER_DIR.lstrip("/"))
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o755
            tar.addfile(folder)
            member = tarfile.TarInfo(f"{RUNNER_DIR.lstrip('/')}/{filename}")
            member.size = len(data)
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(data))
        _archives[digest] = buffer.getvalue()
        return _archives[digest]


class _Pipe:
    """The raw byte stream under the SDK's attach socket (a socket, or a paramiko channel over SSH)."""

    def __init__(self, attached: Any) -> None:
        self.attached = attached
        self.raw = getattr(attached, "_sock", attached)
        with contextlib.suppress(Exception):
            # The SDK's client timeout would end a quiet, long-running task's stream.
            self.raw.settimeout(None)

    def recv(self, n: int) -> bytes:
        return self.raw.recv(n)

    def sendall(self, data: bytes) -> None:
        self.raw.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(Exception):
            if hasattr(self.raw, "shutdown_write"):
                self.raw.shutdown_write()
            else:
                self.raw.shutdown(socket.SHUT_WR)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if hasattr(self.raw, "shutdown"):
                self.raw.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for thing in (self.raw, self.attached, getattr(self.attached, "_response", None)):
            with contextlib.suppress(Exception):
                if thing is not None:
                    thing.close()


class ContainerProcess(RemoteProcess):
    """A started container running the runner; see the module docstring.

    Built by :meth:`graflow_docker.handler.DockerTaskHandler.start_process`, which creates the
    container and hands it over here before starting it.
    """

    def __init__(
        self,
        api: Any,
        container_id: str,
        attached: Any,
        on_output: Callable[[str], None],
        *,
        auto_remove: bool = True,
        mem_limit: str | int | None = None,
        image: str = "",
    ) -> None:
        self._api = api
        self.container_id = container_id
        self.image = image
        self._pipe = _Pipe(attached)
        self._on_output = on_output
        self._auto_remove = auto_remove
        self._mem_limit = mem_limit
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._killed = False
        self._closed = False
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._exit_code: int | None = None
        self._state: dict[str, Any] = {}
        self._vanished = False
        self._reader = threading.Thread(target=self._pump, name=f"graflow-docker-{container_id[:12]}", daemon=True)
        self._reader.start()
        _live.add(self)

    @property
    def short_id(self) -> str:
        return self.container_id[:12]

    # -- the stream ------------------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes | None:
        chunks = []
        while n:
            try:
                chunk = self._pipe.recv(min(n, 1 << 16))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _pump(self) -> None:
        pending = b""
        try:
            while True:
                header = self._recv_exact(_HEADER.size)
                if header is None:
                    break
                stream, size = _HEADER.unpack(header)
                payload = self._recv_exact(size) if size else b""
                if payload is None:
                    break
                if stream == _STDERR:
                    pending += payload
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._emit(line)
                elif stream == _STDOUT:
                    with self._cond:
                        self._buffer += payload
                        self._cond.notify_all()
                # stream 0 (stdin echoed) does not happen without a TTY; ignore anything else
        finally:
            if pending:
                self._emit(pending)
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _emit(self, line: bytes) -> None:
        try:
            self._on_output(line.decode("utf-8", errors="replace").rstrip("\r"))
        except Exception:
            logger.exception("output callback failed for container %s", self.short_id)

    def write(self, data: bytes) -> None:
        if self._closed or self._killed:
            raise BrokenPipeError(f"container {self.short_id} is stopped; its stdin is closed")
        with self._write_lock:
            self._pipe.sendall(data)

    def read(self, n: int) -> bytes:
        with self._cond:
            while not self._buffer and not self._eof and not self._killed:
                self._cond.wait()
            if not self._buffer:
                return b""
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data

    # -- control ---------------------------------------------------------------------------------
    def kill(self) -> None:
        with self._cond:
            if self._killed:
                return
            self._killed = True
            self._cond.notify_all()
        try:
            self._api.kill(self.container_id)
        except NotFound:
            pass
        except (APIError, DockerException, OSError) as exc:
            # Not running any more (409), or the daemon is gone: the stream ends either way.
            logger.debug("killing container %s: %s", self.short_id, exc)
        # The attached stream ends when the container does; if the daemon does not say so soon,
        # cut it so that read() and the reader thread stop.
        self._reader.join(2.0)
        if self._reader.is_alive():
            self._pipe.shutdown()

    def _inspect_state(self) -> dict[str, Any] | None:
        try:
            state = self._api.inspect_container(self.container_id)["State"]
        except NotFound:
            self._vanished = True
            return None
        except (APIError, DockerException, OSError) as exc:
            logger.debug("inspecting container %s: %s", self.short_id, exc)
            return None
        with self._state_lock:
            self._state = dict(state)
        return state

    def wait(self, timeout: float | None = None) -> int | None:
        if self._exit_code is not None:
            return self._exit_code
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            state = self._inspect_state()
            if state is not None and not state.get("Running") and state.get("Status") in ("exited", "dead"):
                self._exit_code = int(state.get("ExitCode", -1))
                return self._exit_code
            if state is None and self._vanished:
                # Removed behind our back (e.g. `docker rm -f`): it certainly does not run.
                self._exit_code = 137
                return self._exit_code
            if deadline is not None and time.monotonic() >= deadline:
                return None
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            # Wake up early when the stream ends: the container is about to be reported as exited.
            with self._cond:
                if not self._eof:
                    self._cond.wait(pause)
                else:
                    time.sleep(pause)
            delay = min(delay * 2, 0.25)

    def exit_reason(self, code: int | None) -> str:
        where = f"container {self.short_id} (image '{self.image}')"
        with self._state_lock:
            state = dict(self._state)
        if code is None:
            return f"stopped answering ({where} is still running)"
        if self._vanished and not state:
            return f"disappeared: {where} was removed by someone else while the task ran"
        if state.get("OOMKilled") and self._mem_limit is None:
            return (
                f"ran out of memory (Docker reports {where} OOM-killed, exit code {code}; the host or the daemon's "
                f"cgroup is short of memory)"
            )
        if state.get("OOMKilled"):
            return (
                f"was killed for exceeding mem_limit={self._mem_limit} (Docker reports {where} OOM-killed, exit code "
                f"{code}; raise mem_limit in handler_kwargs or make the task use less memory)"
            )
        if code == 137 and self._mem_limit is not None and not self._killed:
            return (
                f"was killed with SIGKILL, most likely for exceeding mem_limit={self._mem_limit} ({where}, exit code "
                f"137; raise mem_limit in handler_kwargs or make the task use less memory)"
            )
        if code == 137:
            who = "by graflow" if self._killed else "with SIGKILL (docker kill, or the host ran out of memory)"
            return f"was killed {who} ({where}, exit code 137)"
        if code == 143:
            return f"was stopped with SIGTERM ({where}, exit code 143; docker stop?)"
        if code == 127:
            return f"could not start its command ({where}, exit code 127: is the 'python' setting right?)"
        return f"exited with code {code} ({where})"

    def close(self) -> None:
        """Close the runner's stdin and hand the container to the background cleaner.

        Removal (or, with ``auto_remove=False``, stopping) happens off the task's critical path;
        :func:`wait_for_cleanup` waits for it, and so do ``DockerTaskHandler.close()`` and
        interpreter exit.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        _live.discard(self)
        # Closing stdin lets a runner that was told to exit finish on its own.
        self._pipe.shutdown_write()
        _cleanup(self._dispose)

    def _dispose(self) -> None:
        try:
            if self._auto_remove:
                self._api.remove_container(self.container_id, force=True)
            else:
                if self.wait(2.0) is None:
                    with contextlib.suppress(NotFound, APIError, DockerException, OSError):
                        self._api.kill(self.container_id)
                    self.wait(5.0)
                logger.info(
                    "kept stopped container %s (auto_remove=False); remove it with `docker rm %s`",
                    self.container_id,
                    self.short_id,
                )
        except NotFound:
            pass
        except (APIError, DockerException, OSError) as exc:
            if isinstance(exc, APIError) and exc.status_code == 409:
                pass  # removal already in progress
            else:
                logger.warning(
                    "could not remove container %s: %s; remove it with `docker rm -f %s`",
                    self.short_id,
                    exc,
                    self.short_id,
                )
        finally:
            self._pipe.shutdown()
            self._reader.join(2.0)
            self._pipe.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()


_cleaner: ThreadPoolExecutor | None = None
_pending: set[Future[None]] = set()
_pending_lock = threading.Lock()


def _cleanup(job: Callable[[], None]) -> None:
    global _cleaner
    future: Future[None] | None = None
    with _pending_lock:
        if _cleaner is None:
            _cleaner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="graflow-docker-cleanup")
        try:
            future = _cleaner.submit(job)
        except RuntimeError:
            # The interpreter is shutting down and the pool takes no more work: do it here.
            future = None
        if future is not None:
            _pending.add(future)
    if future is None:
        job()
    else:
        # Outside the lock: a job that already finished runs the callback right here.
        future.add_done_callback(_forget)


def _forget(future: Future[None]) -> None:
    with _pending_lock:
        _pending.discard(future)


def wait_for_cleanup(timeout: float | None = 60.0) -> bool:
    """Wait until every closed container has been removed (or stopped); False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _pending_lock:
            pending = list(_pending)
        if not pending:
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        wait_futures(pending, timeout=remaining)


_live: weakref.WeakSet[ContainerProcess] = weakref.WeakSet()


@atexit.register
def _close_leftovers() -> None:
    """Remove containers of runners nobody closed (a handler never closed, an interrupted run)."""
    for process in list(_live):
        with contextlib.suppress(Exception):
            process.close()
    wait_for_cleanup(60.0)


__all__ = ["RUNNER_DIR", "ContainerProcess", "bundle_archive", "wait_for_cleanup"]
