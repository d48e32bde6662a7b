"""GPU requests: the handler's ``gpus`` setting as Docker device requests (what ``docker run --gpus`` sends)."""

from __future__ import annotations

from typing import Any

from docker.types import DeviceRequest

from graflow.exceptions import ConfigError

_HELP = (
    "Use gpus='all' for every GPU, a whole number such as gpus=2 for that many, or a list of device ids "
    "(indexes or UUIDs) such as gpus=['0', '2'] or 'device=0,2'."
)


def gpu_device_requests(gpus: Any, capabilities: tuple[str, ...] = ("gpu",)) -> list[DeviceRequest]:
    """The device requests for ``gpus``; ``[]`` when no GPU is asked for (``None``, ``0``, ``False``).

    ``"all"`` maps to ``count=-1``; a positive whole number ``n`` to ``count=n``; a list of ids (or a
    string ``"0,2"`` / ``"device=0,2"``) to ``device_ids``. Every request asks for the ``gpu``
    capability, as ``docker run --gpus`` does. Anything else is a :class:`ConfigError`.
    """
    caps = [list(capabilities)]
    if gpus is None or gpus is False:
        return []
    if isinstance(gpus, bool):
        # gpus=True reads naturally as "give me the GPUs".
        return [DeviceRequest(count=-1, capabilities=caps)]
    if isinstance(gpus, int):
        if gpus < 0:
            if gpus == -1:
                return [DeviceRequest(count=-1, capabilities=caps)]
            raise ConfigError(f"gpus={gpus!r} is negative. {_HELP}")
        return [DeviceRequest(count=gpus, capabilities=caps)] if gpus else []
    if isinstance(gpus, str):
        text = gpus.strip()
        if text.lower() == "all":
            return [DeviceRequest(count=-1, capabilities=caps)]
        if text.isdigit():
            return gpu_device_requests(int(text), capabilities)
        if text.startswith("device="):
            text = text[len("device=") :]
        ids = [part.strip() for part in text.split(",")]
        if not text or any(not part or " " in part or "=" in part for part in ids):
            raise ConfigError(f"gpus={gpus!r} is not a GPU request. {_HELP}")
        return [DeviceRequest(device_ids=ids, capabilities=caps)]
    if isinstance(gpus, (list, tuple)):
        ids = []
        for item in gpus:
            if isinstance(item, bool) or not isinstance(item, (str, int)) or (isinstance(item, int) and item < 0):
                raise ConfigError(f"gpus={gpus!r}: {item!r} is not a device id. {_HELP}")
            text = str(item).strip()
            if not text:
                raise ConfigError(f"gpus={gpus!r} holds an empty device id. {_HELP}")
            ids.append(text)
        if not ids:
            return []
        return [DeviceRequest(device_ids=ids, capabilities=caps)]
    raise ConfigError(f"gpus={gpus!r} ({type(gpus).__name__}) is not a GPU request. {_HELP}")


__all__ = ["gpu_device_requests"]
