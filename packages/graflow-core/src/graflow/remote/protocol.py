"""The wire protocol between a remote handler (host) and its runner (the remote Python process).

Both directions carry frames: a 4-byte big-endian body length, one byte saying what the frame is,
then the body. The runner's first frame is ``HELLO`` (a JSON body, so it can be read before
anything is unpickled); every other body is a cloudpickle payload. The transport underneath is
any byte pipe: a child's stdin/stdout, a container's attached streams, an SSH exec channel.

Host -> runner: ``TASK`` (the call to make), ``REPLY`` (answer to a ``CALL``), ``PING``, ``EXIT``.
Runner -> host: ``HELLO``, ``CALL`` (a channel operation or a context call to carry out on the
host), ``DONE`` (the return value), ``ERROR`` (the task's exception), ``PONG``.

This module is imported by the runner too, so it uses nothing outside the standard library.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

HELLO = b"H"
TASK = b"T"
CALL = b"C"
REPLY = b"R"
DONE = b"D"
ERROR = b"E"
PING = b"P"
PONG = b"Q"
EXIT = b"X"

_HEADER = struct.Struct(">Ic")
#: Written to stderr by the runner after a task's output and before its answer: the host waits
#: for it, so output and answer arrive in order even over transports that carry stderr separately.
OUTPUT_FENCE = "\x1egraflow-output-fence "

#: A TASK body starts with the task's number on this runner; the runner's calls carry it back, so
#: the host can refuse calls from threads an earlier task left behind.
TASK_SEQ = struct.Struct(">Q")
#: Frames above this size are refused as corrupt (a stray print on the protocol stream, say).
MAX_FRAME = 1 << 34
#: The greeting is small JSON; anything else first on the stream is not a runner talking.
MAX_HELLO = 1 << 16


class ProtocolError(Exception):
    """The byte stream does not follow the protocol (truncated, oversized or unknown frame)."""


class UnexpectedBytesError(ProtocolError):
    """The stream did not start with a frame the reader accepts (``leading`` holds what it read)."""

    def __init__(self, leading: bytes) -> None:
        super().__init__(f"unexpected bytes on the protocol stream: {leading!r}")
        self.leading = leading


class FrameStream:
    """Reads and writes frames over a pair of byte callables.

    ``read(n)`` returns up to ``n`` bytes (``b""`` at end of stream); ``write(data)`` writes all of
    ``data``. Writes are serialised by a lock so several threads of a task may call the host.
    """

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], object]) -> None:
        self._read = read
        self._write = write
        self._write_lock = threading.Lock()

    def send(self, kind: bytes, body: bytes = b"") -> None:
        data = _HEADER.pack(len(body), kind) + body
        with self._write_lock:
            self._write(data)

    def recv(self, max_body: int = MAX_FRAME) -> tuple[bytes, bytes] | None:
        """The next ``(kind, body)``, or None when the stream ended cleanly between frames.

        A header announcing more than ``max_body`` bytes raises :class:`UnexpectedBytesError`.
        """
        header = self._read_exactly(_HEADER.size, allow_eof=True)
        if header is None:
            return None
        length, kind = _HEADER.unpack(header)
        if length > max_body:
            raise UnexpectedBytesError(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes announced; the stream is corrupt")
        body = self._read_exactly(length, allow_eof=False) if length else b""
        return kind, body or b""

    def _read_exactly(self, n: int, allow_eof: bool) -> bytes | None:
        chunks = []
        missing = n
        while missing:
            chunk = self._read(missing)
            if not chunk:
                if allow_eof and missing == n:
                    return None
                raise ProtocolError(f"stream ended inside a frame ({n - missing} of {n} bytes read)")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)
