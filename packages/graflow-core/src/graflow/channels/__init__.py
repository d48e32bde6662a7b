"""Channels: the key/value stores that the tasks of one workflow run share.

``MemoryChannel`` is the in-process backend; others (Redis, ...) come from plugins and are built by
name with :func:`graflow.channels.factory.create_channel`. ``TypedChannel`` adds deep validation of
``TypedDict`` messages on top of any channel.
"""

from __future__ import annotations

from graflow.channels.base import Channel
from graflow.channels.factory import ChannelFactory, create_channel
from graflow.channels.memory_channel import MemoryChannel
from graflow.channels.typed import TypedChannel

__all__ = ["Channel", "ChannelFactory", "MemoryChannel", "TypedChannel", "create_channel"]
