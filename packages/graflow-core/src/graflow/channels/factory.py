"""Build a channel by backend name: ``create_channel("memory", session_id)``.

Backends are plugins, so the factory knows no backend itself: it asks the plugin registry for the
class registered under ``backend``. An unknown name therefore gets the registry's error, which
lists the installed backends and, for well-known ones such as ``redis``, the package to install.
"""

from __future__ import annotations

from typing import Any

from graflow.channels.base import Channel


class ChannelFactory:
    """Upstream's entry point for making channels, kept so ``ChannelFactory.create_channel`` still works."""

    @staticmethod
    def create_channel(backend: str = "memory", name: str = "default", **kwargs: Any) -> Channel:
        """Instantiate the channel backend registered as ``backend`` as ``cls(name, **kwargs)``.

        Raises :class:`~graflow.exceptions.PluginNotFoundError` for an unknown backend and
        :class:`~graflow.exceptions.ConfigError` for options the backend does not accept.
        """
        if backend == "memory":
            # Core's default needs no plugin scan: a run on defaults starts without importing any
            # installed backend (a plugin cannot take this name: core registers it).
            from graflow.channels.memory_channel import MemoryChannel

            cls: type = MemoryChannel
        else:
            # Imported here so that importing graflow.channels does not load the plugin machinery.
            from graflow.plugins import get_channel_class

            cls = get_channel_class(backend)
        channel = cls(name, **kwargs)
        if not isinstance(channel, Channel):
            raise TypeError(
                f"Channel backend '{backend}' ({cls.__module__}.{cls.__qualname__}) did not build a "
                f"graflow.channels.base.Channel subclass instance"
            )
        return channel


#: Module-level shortcut: ``create_channel(backend, name, **kwargs)``.
create_channel = ChannelFactory.create_channel

__all__ = ["ChannelFactory", "create_channel"]
