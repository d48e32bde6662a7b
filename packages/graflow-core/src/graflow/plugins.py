"""The plugin registry: the public face of Graflow's pluggy manager.

Plugins are loaded lazily, on the first lookup, and cached. Loading registers core's built-ins
(:mod:`graflow.core_plugin`), then every entry point of the ``graflow`` group, minus the ones named
in ``GRAFLOW_DISABLE_PLUGINS`` (entry-point or distribution names, comma separated). A plugin that
fails to import is recorded, not raised: ``graflow plugins`` lists it and a lookup of one of its
names says why it is missing. ``GRAFLOW_TRACE_PLUGINS=1`` logs every hook call.

Typical use::

    from graflow import plugins
    plugins.register(my_plugin_module)       # in-process plugin (tests, notebooks)
    cls = plugins.lookup("task_handler", "docker")
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from graflow import hookspecs
from graflow.exceptions import ConfigError, PluginNotFoundError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graflow"

# kind -> (hook name, human name, attribute holding the keys)
KINDS: dict[str, tuple[str, str, str]] = {
    "task_handler": ("graflow_register_task_handlers", "task handler", "name"),
    "channel": ("graflow_register_channels", "channel backend", "name"),
    "task_queue": ("graflow_register_task_queues", "task queue", "name"),
    "coordinator": ("graflow_register_coordinators", "coordinator", "name"),
    "group_policy": ("graflow_register_group_policies", "group policy", "name"),
    "checkpoint_store": ("graflow_register_checkpoint_stores", "checkpoint store", "schemes"),
    "command": ("graflow_register_commands", "command", "name"),
}

# Names that well-known packages provide, for the "pip install ..." hint.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "task_handler": {"docker": "graflow-docker", "ssh": "graflow-ssh"},
    "channel": {"redis": "graflow-redis"},
    "task_queue": {"redis": "graflow-redis", "distributed": "graflow-redis"},
    "coordinator": {"redis": "graflow-redis"},
    "checkpoint_store": {"s3": "graflow-s3-checkpoint", "redis": "graflow-redis", "rediss": "graflow-redis"},
    "command": {"dlq": "graflow-redis"},
    "group_policy": {},
}


@dataclass
class PluginInfo:
    """What ``graflow plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "registers": self.registers,
            "error": self.error,
        }


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._loaded = False
        self._tables: dict[str, dict[str, tuple[type, str]]] | None = None
        self._failed: dict[str, tuple[str, str]] = {}  # entry point name -> (distribution, error)
        self._dists: dict[int, tuple[str, str]] = {}  # id(plugin) -> (distribution, version)
        self._has_observers: bool | None = None
        self._trace: logging.Logger | None = None
        self._owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name

    # -- loading -----------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._load()
            self._loaded = True

    def _load(self) -> None:
        from graflow import core_plugin
        from graflow.__about__ import __version__

        disabled = {n.strip() for n in os.environ.get("GRAFLOW_DISABLE_PLUGINS", "").split(",") if n.strip()}
        if os.environ.get("GRAFLOW_TRACE_PLUGINS", "").lower() in ("1", "true", "yes"):
            self._enable_tracing()
        if not self.manager.is_registered(core_plugin):
            self.manager.register(core_plugin, name="core")
            self._dists[id(core_plugin)] = ("graflow-core", __version__)
        for ep in _entry_points():
            dist_name = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
            dist_version = ep.dist.version if getattr(ep, "dist", None) is not None else "?"
            if ep.name == "core" and ep.value == "graflow.core_plugin":
                continue
            if ep.name in disabled or dist_name in disabled:
                logger.info("plugin %s (%s) disabled by GRAFLOW_DISABLE_PLUGINS", ep.name, dist_name)
                continue
            if self.manager.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
                self.manager.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break Graflow
                logger.warning("graflow plugin %r from %s failed to load: %s", ep.name, dist_name, exc)
                self._failed[ep.name] = (dist_name, f"{type(exc).__name__}: {exc}")
                continue
            self._dists[id(plugin)] = (dist_name, dist_version)
        # A misspelt hook (graflow_register_handler, ...) fails here instead of being ignored.
        self.manager.check_pending()

    def _enable_tracing(self) -> None:
        trace_logger = logging.getLogger("graflow.plugins.trace")
        if not trace_logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("graflow-trace: %(message)s"))
            trace_logger.addHandler(handler)
            trace_logger.setLevel(logging.DEBUG)

        def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            plugins = ", ".join(impl.plugin_name for impl in hook_impls)
            trace_logger.debug("call %s -> [%s]", hook_name, plugins)

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            trace_logger.debug("done %s", hook_name)

        self.manager.add_hookcall_monitoring(before, after)
        self._trace = trace_logger

    # -- in-process registration ---------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str:
        self.ensure_loaded()
        with self._lock:
            plugin_name = self.manager.register(plugin, name=name)
            if plugin_name is None:
                raise ConfigError(f"Plugin {plugin!r} is already registered or blocked")
            try:
                self.manager.check_pending()
            except Exception:
                self.manager.unregister(plugin)
                raise
            self._dists.setdefault(id(plugin), ("<in-process>", ""))
            self._invalidate()
            try:
                self._build_tables()
            except Exception:
                self.manager.unregister(plugin)
                self._dists.pop(id(plugin), None)
                self._invalidate()
                raise
            return plugin_name

    def unregister(self, plugin: object) -> None:
        self.ensure_loaded()
        with self._lock:
            self.manager.unregister(plugin)
            self._dists.pop(id(plugin), None)
            self._invalidate()

    def _invalidate(self) -> None:
        self._tables = None
        self._has_observers = None

    # -- lookups ---------------------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, tuple[type, str]]]:
        return {kind: self.table(kind) for kind in KINDS}

    def table(self, kind: str) -> dict[str, tuple[type, str]]:
        """Name -> (class, distribution) for one kind, built on first use.

        Only that kind's registration hook runs, so looking up a task queue does not import every
        installed handler's SDK (a worker process would pay for Docker, paramiko and boto3).
        """
        tables = self._tables
        if tables is not None:
            table = tables.get(kind)
            if table is not None:
                return table
        self.ensure_loaded()
        with self._lock:
            if self._tables is None:
                self._tables = {}
            table = self._tables.get(kind)
            if table is None:
                table = self._tables[kind] = self._build_table(kind)
        return table

    def _build_tables(self) -> dict[str, dict[str, tuple[type, str]]]:
        tables = {kind: self._build_table(kind) for kind in KINDS}
        self._tables = tables
        return tables

    def _build_table(self, kind: str) -> dict[str, tuple[type, str]]:
        hook_name, human, attr = KINDS[kind]
        table: dict[str, tuple[type, str]] = {}
        owners = {key: owner for key, owner in self._owners.items() if key[0] != kind}
        hook = getattr(self.manager.hook, hook_name)
        if self._trace is not None:
            plugin_names = ", ".join(impl.plugin_name for impl in hook.get_hookimpls())
            self._trace.debug("call %s -> [%s]", hook_name, plugin_names)
        for impl in hook.get_hookimpls():
            dist = self._dists.get(id(impl.plugin), (impl.plugin_name, ""))[0]
            for cls in impl.function() or ():
                for key in _keys_of(cls, attr, kind):
                    if key in table and table[key][0] is not cls:
                        other_cls, other_dist = table[key]
                        raise ConfigError(
                            f"Two plugins register the {human} '{key}': "
                            f"{other_cls.__module__}.{other_cls.__qualname__} from {other_dist} and "
                            f"{cls.__module__}.{cls.__qualname__} from {dist}. Uninstall one of them "
                            f"or block it with GRAFLOW_DISABLE_PLUGINS."
                        )
                    table[key] = (cls, dist)
                    owners[(kind, key)] = impl.plugin_name
        self._owners = owners
        return table

    def lookup(self, kind: str, name: str) -> type:
        entry = self.table(kind).get(name)
        if entry is not None:
            return entry[0]
        raise self.not_found(kind, name)

    def not_found(self, kind: str, name: str) -> PluginNotFoundError:
        human = KINDS[kind][1]
        hint = ""
        package = KNOWN_PROVIDERS.get(kind, {}).get(name)
        broken = [f"{ep} from {dist} ({err})" for ep, (dist, err) in self._failed.items()]
        if package:
            failed_here = [b for b in broken if package in b]
            if failed_here:
                hint = (
                    f"It is provided by the {package} package, which is installed but failed to load: {failed_here[0]}."
                )
            elif package in os.environ.get("GRAFLOW_DISABLE_PLUGINS", ""):
                hint = f"It is provided by the {package} package, which GRAFLOW_DISABLE_PLUGINS blocks."
            else:
                hint = f"It is provided by the {package} package: pip install {package}"
        elif broken:
            hint = "These plugins failed to load and may provide it: " + "; ".join(broken)
        return PluginNotFoundError(human, name, self.table(kind).keys(), hint)

    def names(self, kind: str) -> list[str]:
        return sorted(self.table(kind))

    # -- events ----------------------------------------------------------------------------------
    def has_observers(self) -> bool:
        observed = self._has_observers
        if observed is None:
            self.ensure_loaded()
            observed = bool(self.manager.hook.graflow_on_event.get_hookimpls())
            self._has_observers = observed
        return observed

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        if self._trace is not None:
            self._trace.debug("call graflow_on_event(%s)", event)
        for impl in self.manager.hook.graflow_on_event.get_hookimpls():
            try:
                impl.function(event=event, payload=payload)
            except Exception:
                logger.exception("graflow_on_event observer %s failed on %s", impl.plugin_name, event)

    # -- introspection -----------------------------------------------------------------------------
    def describe(self) -> list[PluginInfo]:
        tables = self.tables()
        infos: list[PluginInfo] = []
        for name, plugin in self.manager.list_name_plugin():
            dist, version = self._dists.get(id(plugin), ("<in-process>", ""))
            hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or ())
            registers: dict[str, list[str]] = {}
            for kind, table in tables.items():
                mine = sorted(key for key in table if self._owners.get((kind, key)) == name)
                if mine:
                    registers[kind] = mine
            infos.append(PluginInfo(name, dist, version, hooks, registers))
        for ep_name, (dist, err) in self._failed.items():
            infos.append(PluginInfo(ep_name, dist, _dist_version(dist), [], {}, err))
        return infos

    def reset(self) -> None:
        """Forget everything and load again on the next lookup (for tests)."""
        with self._lock:
            for _, plugin in list(self.manager.list_name_plugin()):
                self.manager.unregister(plugin)
            self._loaded = False
            self._failed.clear()
            self._dists.clear()
            self._invalidate()


def _keys_of(cls: type, attr: str, kind: str) -> list[str]:
    if attr == "schemes":
        schemes = getattr(cls, "schemes", None)
        if not schemes:
            raise ConfigError(f"Checkpoint store {cls.__qualname__} must define 'schemes' (e.g. ('s3',))")
        return [s.lower() for s in schemes]
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{KINDS[kind][1].capitalize()} class {cls.__qualname__} must define a 'name' string")
    return [name, *getattr(cls, "aliases", ())]


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


_registry = _Registry()

#: The pluggy manager behind the registry (add hookspecs or inspect implementations on it).
plugin_manager: pluggy.PluginManager = _registry.manager
hookimpl = hookspecs.hookimpl


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in this process; its names are visible everywhere at once."""
    return _registry.register(plugin, name)


def unregister(plugin: object) -> None:
    """Remove a plugin registered with :func:`register`."""
    _registry.unregister(plugin)


def lookup(kind: str, name: str) -> type:
    """The class registered for ``name`` in ``kind`` (one of :data:`KINDS`).

    Raises :class:`~graflow.exceptions.PluginNotFoundError` listing what is installed and, for
    well-known names, which package provides it.
    """
    return _registry.lookup(kind, name)


def names(kind: str) -> list[str]:
    """Every name registered for ``kind``."""
    return _registry.names(kind)


def get_task_handler_class(name: str) -> type:
    return _registry.lookup("task_handler", name)


def get_channel_class(name: str) -> type:
    return _registry.lookup("channel", name)


def get_task_queue_class(name: str) -> type:
    return _registry.lookup("task_queue", name)


def get_coordinator_class(name: str) -> type:
    return _registry.lookup("coordinator", name)


def get_group_policy_class(name: str) -> type:
    return _registry.lookup("group_policy", name)


def get_checkpoint_store_class(scheme: str) -> type:
    return _registry.lookup("checkpoint_store", scheme.lower())


def has_observers() -> bool:
    """True when some plugin implements ``graflow_on_event`` (the engine skips events otherwise)."""
    return _registry.has_observers()


def emit(event: str, **payload: Any) -> None:
    """Send an event to every ``graflow_on_event`` observer."""
    if _registry.has_observers():
        _registry.emit(event, payload)


def describe() -> list[PluginInfo]:
    """What every loaded (or failed) plugin is and registers, for ``graflow plugins``."""
    return _registry.describe()


def reset() -> None:
    """Unload every plugin; the next lookup loads them again (tests use this)."""
    _registry.reset()


__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginInfo",
    "describe",
    "emit",
    "get_channel_class",
    "get_checkpoint_store_class",
    "get_coordinator_class",
    "get_group_policy_class",
    "get_task_handler_class",
    "get_task_queue_class",
    "has_observers",
    "hookimpl",
    "lookup",
    "names",
    "plugin_manager",
    "register",
    "reset",
    "unregister",
]
