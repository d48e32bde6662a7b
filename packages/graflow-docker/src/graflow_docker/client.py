"""Connecting to the Docker daemon, and cleaning up after host processes that died.

:func:`connect` returns a ``docker.DockerClient`` for ``docker_host`` (or the environment:
``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``) after checking that the daemon
answers, and turns every way of not answering into one :class:`DockerDaemonUnreachableError`.

Every container the handler creates carries labels (:data:`LABEL_MANAGED`, the owning host, PID
namespace, PID and the PID's start time). A host process killed with SIGKILL cannot remove its
containers; the next handler on that host does, with :func:`sweep_orphans`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound

from graflow_docker.errors import DockerDaemonUnreachableError

logger = logging.getLogger("graflow.docker")

LABEL_MANAGED = "graflow.managed"
LABEL_HANDLER = "graflow.handler"
LABEL_HANDLER_ID = "graflow.handler-id"
LABEL_OWNER_HOST = "graflow.owner-host"
LABEL_OWNER_PID = "graflow.owner-pid"
LABEL_OWNER_PIDNS = "graflow.owner-pidns"
LABEL_OWNER_STARTED = "graflow.owner-started"
LABEL_AUTO_REMOVE = "graflow.auto-remove"

_DEFAULT_ADDRESS = "unix:///var/run/docker.sock"


def daemon_address(docker_host: str | None) -> str:
    """The address the handler talks to, for messages."""
    return docker_host or os.environ.get("DOCKER_HOST") or _DEFAULT_ADDRESS


def _innermost(exc: BaseException) -> str:
    """The most specific reason in an exception chain (a refused connection, a missing socket)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    outer = str(exc)
    if "No such file or directory" in outer or "FileNotFoundError" in outer:
        return "its socket does not exist (no daemon is running there)"
    if "Connection refused" in outer or "Connection refused" in text:
        return "connection refused (nothing listens there)"
    return text if len(text) < 300 else text[:300] + "..."


def connect(docker_host: str | None = None, *, max_pool_size: int = 32, timeout: int = 120) -> Any:
    """A ``docker.DockerClient`` whose daemon answered a ping, or :class:`DockerDaemonUnreachableError`."""
    address = daemon_address(docker_host)
    try:
        if docker_host:
            client = docker.DockerClient(base_url=docker_host, max_pool_size=max_pool_size, timeout=timeout)
        else:
            client = docker.from_env(max_pool_size=max_pool_size, timeout=timeout)
    except DockerException as exc:
        raise DockerDaemonUnreachableError(address, _innermost(exc)) from exc
    try:
        client.ping()
    except (DockerException, OSError) as exc:
        with contextlib.suppress(Exception):
            client.close()
        raise DockerDaemonUnreachableError(address, _innermost(exc)) from exc
    except Exception as exc:
        with contextlib.suppress(Exception):
            client.close()
        raise DockerDaemonUnreachableError(address, _innermost(exc)) from exc
    return client


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" when it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19] if len(fields) > 19 else ""


def owner_labels() -> dict[str, str]:
    """Labels naming the process that owns a container: host, PID namespace, PID and its start time."""
    pid = os.getpid()
    return {
        LABEL_MANAGED: "true",
        LABEL_HANDLER: "docker",
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PIDNS: _pid_namespace(),
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_STARTED: _start_time(pid),
    }


def _owner_gone(labels: dict[str, str]) -> bool:
    """True only when the owner certainly was a process of this host's PID namespace that has ended."""
    namespace = _pid_namespace()
    if not namespace or labels.get(LABEL_OWNER_PIDNS) != namespace:
        return False
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return False
    started = labels.get(LABEL_OWNER_STARTED, "")
    if not started:
        return False
    # A different start time means the PID now belongs to another process.
    return _start_time(pid) != started


def sweep_orphans(api: Any) -> list[str]:
    """Remove containers whose owning graflow process on this host has died (e.g. ``kill -9``).

    Only containers labelled with this host name and PID namespace, ``auto_remove`` on, and whose
    owner process is gone (its PID ended, or now belongs to a process started at another time) are
    removed, running ones included: nobody will read their results. Returns their ids.
    """
    host = socket.gethostname()
    try:
        found = api.containers(
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_OWNER_HOST}={host}", f"{LABEL_AUTO_REMOVE}=true"]},
        )
    except (APIError, DockerException, OSError) as exc:
        logger.debug("listing orphaned containers: %s", exc)
        return []
    removed = []
    for info in found:
        if not _owner_gone(info.get("Labels") or {}):
            continue
        with contextlib.suppress(NotFound, APIError, DockerException, OSError):
            api.remove_container(info["Id"], force=True)
            removed.append(info["Id"])
    if removed:
        logger.info("removed %d container(s) left behind by graflow processes that died", len(removed))
    return removed


__all__ = [
    "LABEL_AUTO_REMOVE",
    "LABEL_HANDLER",
    "LABEL_HANDLER_ID",
    "LABEL_MANAGED",
    "LABEL_OWNER_HOST",
    "LABEL_OWNER_PID",
    "LABEL_OWNER_PIDNS",
    "LABEL_OWNER_STARTED",
    "connect",
    "daemon_address",
    "owner_labels",
    "sweep_orphans",
]
