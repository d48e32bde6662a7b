"""The wire format of queue messages and replies, and their HMAC-SHA256 signatures.

A **message** (one element of a Redis list) is::

    GF1|<id>|<reply key>|<max deliveries>|<failed deliveries>|<signature>|<payload>

``id`` is 32 hex digits; ``reply key`` is the Redis list the producer waits on (may be empty);
``failed deliveries`` counts deliveries whose worker stopped before answering (the reaper raises it
in place, in Lua, which is why it is outside the signature); ``signature`` is the hex HMAC-SHA256
of ``GF1|<id>|<reply key>|<max deliveries>|`` + payload under the shared secret, or empty when
signing is off; ``payload`` is the pickled job.

A **reply** (pushed to the reply key) is ``GR1|<id>|<status>|<signature>|<payload>``: status
``ok`` carries a pickled job reply (signed like messages), status ``dead`` a plain-text reason
(written by the dead-letter scripts, never unpickled, so it needs no signature).

With a secret configured (``secret_key=``, else ``GRAFLOW_SECRET_KEY``), producers sign and workers
refuse unsigned or tampered messages: they go to the dead-letter queue and are never unpickled.
Signatures are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import uuid
from dataclasses import dataclass

from graflow.exceptions import ConfigError

ENV_SECRET = "GRAFLOW_SECRET_KEY"
MESSAGE_MAGIC = b"GF1"
REPLY_MAGIC = b"GR1"
STATUS_OK = b"ok"
STATUS_DEAD = b"dead"
_ID = re.compile(rb"^[0-9a-f]{32}$")


class MalformedMessage(ValueError):
    """Bytes that are not a message or reply of this format."""


class Signer:
    """HMAC-SHA256 with one shared secret; ``Signer(None)`` signs nothing and accepts anything."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes | None) -> None:
        if secret is not None and not isinstance(secret, (str, bytes)):
            raise ConfigError(f"secret_key must be a string or bytes, got {type(secret).__name__}")
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) == 0:
            secret = None
        self._key = secret

    @classmethod
    def from_options(cls, secret_key: str | bytes | None = None) -> Signer:
        """``secret_key`` if given, else the ``GRAFLOW_SECRET_KEY`` environment variable, else no signing."""
        return cls(secret_key if secret_key is not None else os.environ.get(ENV_SECRET))

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def sign(self, data: bytes) -> bytes:
        if self._key is None:
            return b""
        return hmac.new(self._key, data, hashlib.sha256).hexdigest().encode()

    def verify(self, data: bytes, signature: bytes) -> bool:
        if self._key is None:
            return True
        return bool(signature) and hmac.compare_digest(self.sign(data), signature)

    def __repr__(self) -> str:
        return f"Signer(enabled={self.enabled})"

    def __reduce__(self) -> tuple:
        raise TypeError("a Signer holds a secret and is never pickled")


@dataclass
class Message:
    id: str
    reply_key: str
    max_deliveries: int
    failed_deliveries: int
    signature: bytes
    payload: bytes
    signed_part: bytes


def new_id() -> str:
    return uuid.uuid4().hex


def encode_message(
    signer: Signer, payload: bytes, reply_key: str, max_deliveries: int, message_id: str | None = None
) -> tuple[str, bytes]:
    """Return ``(id, message bytes)``."""
    if "|" in reply_key:
        raise ConfigError(f"A reply key must not contain '|': {reply_key!r}")
    message_id = message_id or new_id()
    head = b"GF1|%s|%s|%d|" % (message_id.encode(), reply_key.encode(), int(max_deliveries))
    signature = signer.sign(head + payload)
    return message_id, head + b"0|" + signature + b"|" + payload


def decode_message(raw: bytes) -> Message:
    parts = raw.split(b"|", 6)
    if len(parts) != 7 or parts[0] != MESSAGE_MAGIC:
        raise MalformedMessage("not a graflow queue message (expected 'GF1|id|reply|max|count|sig|payload')")
    _, mid, reply, max_deliveries, failed, signature, payload = parts
    if not _ID.match(mid):
        raise MalformedMessage(f"bad message id {mid[:40]!r}")
    try:
        maxd, count = int(max_deliveries), int(failed)
    except ValueError:
        raise MalformedMessage("bad delivery counters") from None
    signed = b"GF1|%s|%s|%s|" % (mid, reply, max_deliveries) + payload
    return Message(mid.decode(), reply.decode("utf-8", "replace"), maxd, count, signature, payload, signed)


def encode_reply(signer: Signer, message_id: str, payload: bytes) -> bytes:
    head = b"GR1|%s|ok|" % message_id.encode()
    return head + signer.sign(head + payload) + b"|" + payload


def dead_reply(message_id: str, reason: str) -> bytes:
    return b"GR1|%s|dead||%s" % (message_id.encode(), reason.encode("utf-8", "replace"))


@dataclass
class Reply:
    id: str
    status: bytes
    payload: bytes
    verified: bool


def decode_reply(signer: Signer, raw: bytes) -> Reply:
    parts = raw.split(b"|", 4)
    if len(parts) != 5 or parts[0] != REPLY_MAGIC:
        raise MalformedMessage("not a graflow reply (expected 'GR1|id|status|sig|payload')")
    _, mid, status, signature, payload = parts
    if status == STATUS_DEAD:
        return Reply(mid.decode("ascii", "replace"), status, payload, True)
    head = b"GR1|%s|%s|" % (mid, status)
    return Reply(mid.decode("ascii", "replace"), status, payload, signer.verify(head + payload, signature))


__all__ = [
    "ENV_SECRET",
    "MalformedMessage",
    "Message",
    "Reply",
    "Signer",
    "dead_reply",
    "decode_message",
    "decode_reply",
    "encode_message",
    "encode_reply",
    "new_id",
]
