"""Names users know from upstream that now live in plugin packages, resolved on first use."""

from __future__ import annotations

import importlib
from typing import Any

from graflow.exceptions import PluginNotFoundError


def plugin_attribute(attr: str, wanted: str, target: str, kind: str, name: str) -> Any:
    """Import ``wanted`` from the plugin module ``target``, or raise the registry's "not found" error.

    ``kind`` and ``name`` say what the plugin registers (``"task_queue"``, ``"redis"``), so the error
    lists what is installed and which package to install.
    """
    if attr != wanted:
        raise AttributeError(attr)
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        from graflow import plugins

        error: PluginNotFoundError = plugins._registry.not_found(kind, name)
        raise error from exc
    return getattr(module, wanted)
