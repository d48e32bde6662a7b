"""DockerTaskHandler: run a task in a container made from any image that has ``python3``.

The container needs nothing else: no network, no pip. The handler copies the runner bundle
(a zip holding a bootstrap, the pure-Python graflow package, cloudpickle and pluggy) into the
container before it starts, then talks to the runner over the container's attached stdin/stdout
(see :mod:`graflow_docker.container`). Everything above the transport (handshake and version check,
the live ``context`` round trip, results, exceptions, timeouts, warm reuse) is
:class:`graflow.remote.handler.RemoteTaskHandler`'s.

Use it by name::

    @task(handler="docker", handler_kwargs={"image": "python:3.11-slim", "mem_limit": "512m"})
    def train() -> float: ...

or register instances, several images side by side::

    engine.register_handler("py311", DockerTaskHandler(image="python:3.11-slim", reuse=True))
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import parse_bytes

from graflow.exceptions import ConfigError
from graflow.remote.bundle import RunnerBundle
from graflow.remote.handler import RemoteTaskHandler
from graflow_docker.client import (
    LABEL_AUTO_REMOVE,
    LABEL_HANDLER_ID,
    connect,
    daemon_address,
    owner_labels,
    sweep_orphans,
)
from graflow_docker.container import RUNNER_DIR, ContainerProcess, bundle_archive, wait_for_cleanup
from graflow_docker.devices import gpu_device_requests
from graflow_docker.errors import DockerContainerError, DockerDaemonUnreachableError, DockerImageNotFoundError

logger = logging.getLogger("graflow.docker")


def _check_environment(environment: Any) -> dict[str, str] | list[str] | None:
    if environment is None:
        return None
    if isinstance(environment, Mapping):
        for key in environment:
            if not isinstance(key, str) or not key or "=" in key:
                raise ConfigError(f"environment: {key!r} is not a valid variable name (a non-empty string without '=')")
        return {key: "" if value is None else str(value) for key, value in environment.items()}
    if isinstance(environment, (list, tuple)):
        for item in environment:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise ConfigError(
                    f"environment: {item!r} is not a 'NAME=value' string; or pass a dict {{'NAME': 'value'}}"
                )
        return list(environment)
    raise ConfigError(
        "environment must be a dict {'NAME': 'value'} or a list of 'NAME=value' strings, "
        f"got {type(environment).__name__}"
    )


def _check_volumes(volumes: Any) -> dict[str, dict[str, str]] | list[str] | None:
    if volumes is None:
        return None
    if isinstance(volumes, Mapping):
        checked: dict[str, dict[str, str]] = {}
        for source, target in volumes.items():
            if isinstance(target, str):
                target = {"bind": target, "mode": "rw"}
            if not isinstance(target, Mapping) or not isinstance(target.get("bind"), str):
                raise ConfigError(
                    f"volumes[{source!r}] must be a container path or "
                    f"{{'bind': '/path', 'mode': 'ro'|'rw'}}, got {target!r}"
                )
            mode = target.get("mode", "rw")
            if mode not in ("ro", "rw") and not isinstance(mode, str):
                raise ConfigError(f"volumes[{source!r}]: mode must be 'ro' or 'rw', got {mode!r}")
            checked[str(source)] = {"bind": target["bind"], "mode": mode}
        return checked
    if isinstance(volumes, (list, tuple)):
        for item in volumes:
            if not isinstance(item, str) or ":" not in item:
                raise ConfigError(f"volumes: {item!r} is not a 'source:/container/path[:ro]' string")
        return list(volumes)
    raise ConfigError(
        "volumes must be a dict {'/host/path': {'bind': '/in/container', 'mode': 'ro'}} or a list of "
        f"'/host/path:/in/container[:ro]' strings, got {type(volumes).__name__}"
    )


class DockerTaskHandler(RemoteTaskHandler):
    """Runs each task in a container from ``image`` (any image with ``python3``; never pulled).

    Container settings (the Docker SDK's names): ``environment``, ``volumes``, ``gpus`` (``"all"``, a
    count, or device ids), ``mem_limit`` (``"512m"``, bytes; also caps swap), ``cpus`` (a float),
    ``network``, ``user``, ``working_dir``, ``labels``. ``auto_remove=False`` keeps stopped containers
    for inspection. ``docker_host`` (alias ``base_url``) picks the daemon, else the environment
    (``DOCKER_HOST``). ``reuse``/``pool_size``/``python``/``pickle_by_value``/``startup_timeout``
    are :class:`RemoteTaskHandler`'s.
    """

    name = "docker"

    def __init__(
        self,
        image: str,
        *,
        environment: Mapping[str, str] | Sequence[str] | None = None,
        volumes: Mapping[str, Any] | Sequence[str] | None = None,
        gpus: str | int | Sequence[str | int] | None = None,
        mem_limit: str | int | None = None,
        cpus: float | None = None,
        network: str | None = None,
        user: str | int | None = None,
        working_dir: str | None = None,
        labels: Mapping[str, str] | None = None,
        auto_remove: bool = True,
        reuse: bool = False,
        pool_size: int = 4,
        python: str = "python3",
        pickle_by_value: Sequence[str] = (),
        startup_timeout: float = 120.0,
        docker_host: str | None = None,
        base_url: str | None = None,
    ) -> None:
        super().__init__(
            reuse=reuse,
            pool_size=pool_size,
            python=python,
            pickle_by_value=pickle_by_value,
            startup_timeout=startup_timeout,
        )
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(
                f"image must be the name of a Docker image with python3 (e.g. 'python:3.11-slim'), got {image!r}"
            )
        if docker_host and base_url and docker_host != base_url:
            raise ConfigError(
                f"docker_host={docker_host!r} and base_url={base_url!r} disagree; base_url is an alias: set one of them"
            )
        self.image = image.strip()
        self.docker_host = docker_host or base_url or None
        self.environment = _check_environment(environment)
        self.volumes = _check_volumes(volumes)
        self.gpus = gpus
        self._device_requests = gpu_device_requests(gpus)
        if mem_limit is not None:
            try:
                parse_bytes(mem_limit) if isinstance(mem_limit, str) else int(mem_limit)
            except (DockerException, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"mem_limit={mem_limit!r} is not a memory size; use bytes or a string such as '512m' or '2g'"
                ) from exc
            if isinstance(mem_limit, bool) or (isinstance(mem_limit, int) and mem_limit <= 0):
                raise ConfigError(f"mem_limit={mem_limit!r} must be a positive size such as '512m'")
        self.mem_limit = mem_limit
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0):
            raise ConfigError(f"cpus={cpus!r} must be a positive number of CPUs, e.g. 1.5")
        self.cpus = cpus
        for key, value in (("network", network), ("working_dir", working_dir)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        if working_dir is not None and not working_dir.startswith("/"):
            raise ConfigError(f"working_dir must be an absolute path inside the container, got {working_dir!r}")
        if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int)) or user == ""):
            raise ConfigError(f"user must be a user name or 'uid[:gid]' (or a uid number), got {user!r}")
        self.network = network
        self.user = user
        self.working_dir = working_dir
        if labels is not None and (
            not isinstance(labels, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise ConfigError(f"labels must be a dict of strings, got {labels!r}")
        self.labels = dict(labels or {})
        self.auto_remove = bool(auto_remove)
        #: Every container of this handler carries ``graflow.handler-id=<this>``.
        self.handler_id = uuid.uuid4().hex
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- the daemon ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return daemon_address(self.docker_host)

    def client(self) -> Any:
        """The ``docker.DockerClient`` (connected on first use; its daemon answered a ping)."""
        with self._client_lock:
            if self._client is None:
                client = connect(self.docker_host, max_pool_size=max(32, 4 * self.pool_size))
                sweep_orphans(client.api)
                self._client = client
            return self._client

    def describe_target(self) -> str:
        where = f" on {self.docker_host}" if self.docker_host else ""
        return f"a container from image '{self.image}'{where}"

    def container_labels(self) -> dict[str, str]:
        labels = dict(self.labels)
        labels.update(owner_labels())
        labels[LABEL_HANDLER_ID] = self.handler_id
        labels[LABEL_AUTO_REMOVE] = "true" if self.auto_remove else "false"
        return labels

    def host_config_options(self) -> dict[str, Any]:
        """Keyword arguments for the SDK's ``create_host_config`` from the settings."""
        options: dict[str, Any] = {"auto_remove": False}  # the handler removes it, after reading why it stopped
        if self.volumes is not None:
            options["binds"] = self.volumes
        if self._device_requests:
            options["device_requests"] = self._device_requests
        if self.mem_limit is not None:
            options["mem_limit"] = self.mem_limit
            options["memswap_limit"] = self.mem_limit
        if self.cpus is not None:
            options["nano_cpus"] = round(self.cpus * 1e9)
        if self.network is not None:
            options["network_mode"] = self.network
        return options

    def container_options(self) -> dict[str, Any]:
        """Keyword arguments for the SDK's ``create_container`` (besides image, command and host config)."""
        # stdin_open without detach also sets StdinOnce: closing the attached stdin closes the runner's.
        options: dict[str, Any] = {
            "stdin_open": True,
            "detach": False,
            "tty": False,
            "labels": self.container_labels(),
        }
        if self.environment is not None:
            options["environment"] = self.environment
        if self.user is not None:
            options["user"] = self.user
        if self.working_dir is not None:
            options["working_dir"] = self.working_dir
        return options

    # -- the transport ---------------------------------------------------------------------------
    def start_process(self, bundle: RunnerBundle, on_output: Callable[[str], None]) -> ContainerProcess:
        client = self.client()
        api = client.api
        path = f"{RUNNER_DIR}/{bundle.filename}"
        command = bundle.command(self.python, path)
        try:
            host_config = api.create_host_config(**self.host_config_options())
            created = api.create_container(self.image, command, host_config=host_config, **self.container_options())
            container_id = created["Id"]
        except ImageNotFound as exc:
            raise DockerImageNotFoundError(self.image, self.address) from exc
        except APIError as exc:
            raise self._refused("create", exc) from exc
        except (DockerException, OSError) as exc:
            raise DockerDaemonUnreachableError(self.address, str(exc)) from exc
        attached = None
        try:
            if not api.put_archive(container_id, "/", bundle_archive(bundle.filename, bundle.data, bundle.digest)):
                raise DockerContainerError(f"Could not copy the runner into container {container_id[:12]}")
            attached = api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            process = ContainerProcess(
                api,
                container_id,
                attached,
                on_output,
                auto_remove=self.auto_remove,
                mem_limit=self.mem_limit,
                image=self.image,
            )
        except BaseException as exc:
            if attached is not None:
                with contextlib.suppress(Exception):
                    attached.close()
            self._remove_quietly(api, container_id)
            if isinstance(exc, APIError):
                raise self._refused("prepare", exc) from exc
            if isinstance(exc, (DockerException, OSError)):
                raise DockerDaemonUnreachableError(self.address, str(exc)) from exc
            raise
        try:
            api.start(container_id)
        except BaseException as exc:
            process.close()
            if isinstance(exc, APIError):
                raise self._refused("start", exc) from exc
            if isinstance(exc, (DockerException, OSError)):
                raise DockerDaemonUnreachableError(self.address, str(exc)) from exc
            raise
        return process

    @staticmethod
    def _remove_quietly(api: Any, container_id: str) -> None:
        try:
            api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except (APIError, DockerException, OSError) as exc:
            short = container_id[:12]
            logger.warning("could not remove container %s: %s; remove it with `docker rm -f %s`", short, exc, short)

    def _refused(self, step: str, exc: APIError) -> DockerContainerError:
        detail = exc.explanation or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        hint = ""
        lowered = str(detail).lower()
        if "executable file not found" in lowered or ("no such file or directory" in lowered and step == "start"):
            hint = (
                f" The image has no '{self.python}' on its PATH: use an image with Python 3, or set handler_kwargs "
                f"{{'python': '/path/to/python3'}}."
            )
        elif "network" in lowered and "not found" in lowered:
            hint = f" Create it with `docker network create {self.network}` or fix the 'network' setting."
        elif "could not select device driver" in lowered or "nvidia" in lowered:
            hint = (
                " GPUs were requested (gpus=...) but the daemon has no GPU runtime: install the NVIDIA Container "
                "Toolkit on the daemon's machine or drop 'gpus'."
            )
        elif "unable to find user" in lowered or "no matching entries in passwd" in lowered:
            hint = f" The image has no user {self.user!r}: use a uid ('1000:1000') or a user the image defines."
        elif "minimum memory limit" in lowered:
            hint = " Raise mem_limit."
        return DockerContainerError(
            f"Docker refused to {step} a container from image '{self.image}' on {self.address}: {detail}.{hint}"
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def containers(self, all: bool = True) -> list[Any]:  # noqa: A002 - the SDK's name
        """This handler's containers on the daemon (running ones, and stopped ones with ``all``)."""
        return self.client().containers.list(
            all=all, filters={"label": f"{LABEL_HANDLER_ID}={self.handler_id}"}, ignore_removed=True
        )

    def wait_for_cleanup(self, timeout: float | None = 60.0) -> bool:
        """Wait until closed containers are removed (removal runs in the background); False on timeout."""
        return wait_for_cleanup(timeout)

    def close(self) -> None:
        """Stop the warm containers and wait until every container this process closed is removed."""
        super().close()
        wait_for_cleanup(60.0)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


__all__ = ["DockerTaskHandler"]
