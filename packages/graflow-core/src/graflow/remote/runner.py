"""The remote side: serve tasks sent by a host over a frame stream (see ``protocol``).

Started by the bundle's bootstrap once the host has its ``HELLO``. It runs tasks one after
another until the host says ``EXIT`` or closes the stream, so a warm runner serves many tasks.
"""

from __future__ import annotations

import inspect
import os
import threading
import traceback
from typing import Any, BinaryIO

import cloudpickle

from graflow.remote import protocol
from graflow.remote.proxy import RemoteTaskContext


class HostCallError(Exception):
    """The host could not carry out a call and its exception could not be sent back as itself."""


class _Host:
    """Sends CALL frames and waits for their REPLY; one call at a time per runner."""

    def __init__(self, stream: protocol.FrameStream) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def caller(self, seq: int) -> Any:
        """The call function of task number ``seq``: the host refuses calls of a finished task."""

        def call(target: str, method: str, args: tuple, kwargs: dict) -> Any:
            return self.call(seq, target, method, args, kwargs)

        return call

    def call(self, seq: int, target: str, method: str, args: tuple, kwargs: dict) -> Any:
        body = cloudpickle.dumps((seq, target, method, args, kwargs))
        with self.lock:
            self.stream.send(protocol.CALL, body)
            frame = self.stream.recv()
        if frame is None:
            raise HostCallError("the host closed the connection while the task was running")
        kind, reply = frame
        if kind != protocol.REPLY:
            raise protocol.ProtocolError(f"expected a reply from the host, got frame {kind!r}")
        ok, value = cloudpickle.loads(reply)
        if ok:
            return value
        raise value


def _error_body(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    details = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": text,
        "pid": os.getpid(),
    }
    try:
        details["exception"] = cloudpickle.dumps(exc)
    except Exception as pickling_error:  # noqa: BLE001 - any pickling failure: send the text instead
        details["exception"] = None
        details["pickling_error"] = repr(pickling_error)
    return cloudpickle.dumps(details)


def _load_error(exc: Exception) -> Exception:
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    hint = (
        f" The task refers to module '{missing}', which the runner cannot import: install it where the task "
        f"runs, or ship it with the task by value: handler_kwargs={{'pickle_by_value': ['{missing}']}}."
        if missing
        else ""
    )
    error = RuntimeError(f"The runner could not load the task: {type(exc).__name__}: {exc}.{hint}")
    error.__cause__ = exc
    return error


def _run(host: _Host, spec: dict[str, Any]) -> Any:
    args = list(spec["args"])
    if spec["inject_context"]:
        args.insert(0, RemoteTaskContext(host.caller(spec["seq"]), spec["info"]))
    func = spec["func"]
    result = func(*args, **spec["kwargs"])
    if inspect.isawaitable(result):
        import asyncio  # only coroutine tasks pay for importing asyncio

        result = asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _fence(seq: int) -> None:
    """Mark the end of a task's output on stderr (see ``protocol.OUTPUT_FENCE``)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a task may have closed or replaced its streams
            pass
    os.write(2, f"{protocol.OUTPUT_FENCE}{seq}\n".encode())


def serve(proto_in: BinaryIO, proto_out: BinaryIO) -> int:
    stream = protocol.FrameStream(proto_in.read, proto_out.write)
    host = _Host(stream)
    while True:
        # under the call lock: a thread the last task left running cannot read this task's frames
        with host.lock:
            frame = stream.recv()
        if frame is None:
            return 0
        kind, body = frame
        if kind == protocol.EXIT:
            return 0
        if kind == protocol.PING:
            stream.send(protocol.PONG)
            continue
        if kind != protocol.TASK:
            raise protocol.ProtocolError(f"unexpected frame {kind!r} while waiting for a task")
        (seq,) = protocol.TASK_SEQ.unpack_from(body[: protocol.TASK_SEQ.size])
        try:
            spec = cloudpickle.loads(body[protocol.TASK_SEQ.size :])
            spec["seq"] = seq
        except Exception as exc:  # noqa: BLE001 - reported to the host with what to do about it
            _fence(seq)
            stream.send(protocol.ERROR, _error_body(_load_error(exc)))
            continue
        try:
            result = _run(host, spec)
        except (HostCallError, protocol.ProtocolError):
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure of the task goes back to the host
            _fence(seq)
            stream.send(protocol.ERROR, _error_body(exc))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return 1
            continue
        try:
            payload = cloudpickle.dumps(result)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result is reported, not fatal
            message = (
                f"The return value of task '{spec['info']['task_id']}' ({type(result).__name__}) cannot be "
                f"pickled to send it back to the host: {exc}. Return plain data (or write the object somewhere "
                f"the next task can read it)."
            )
            _fence(seq)
            stream.send(protocol.ERROR, _error_body(TypeError(message)))
            continue
        _fence(seq)
        stream.send(protocol.DONE, payload)
