"""Fixtures for graflow-docker's tests: a real Docker engine and locally built images.

The engine and the base image come from ``graflow_testkit.services.docker``: ``dockerd`` is started
when nothing answers (and left running: images are cached in it), and ``graflow-test/python:3.11``
is built offline with debootstrap when missing. Under ``CI=true`` a test that needs them fails
when they cannot be had; elsewhere it is skipped with the reason.

Every container the handler creates carries the label ``graflow.owner-pid=<this process>``; the
``no_leaks`` fixture compares this process's containers before and after a test.
"""

from __future__ import annotations

import os
import socket as socket_module
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from graflow_docker.container import wait_for_cleanup
from graflow_testkit.services.docker import BASE_IMAGE, require_base_image, require_docker, require_image

DERIVED_IMAGE = "graflow-test/python-flavour-b:3.11"
NEWER_PYTHON_IMAGE = "graflow-test/python:trixie"


@pytest.fixture(scope="session")
def docker_info() -> dict[str, Any]:
    return require_docker()


@pytest.fixture(scope="session")
def base_image(docker_info: dict[str, Any]) -> str:
    return require_base_image(BASE_IMAGE)


@pytest.fixture(scope="session")
def derived_image(base_image: str) -> str:
    """A second image built offline FROM the base: an env variable and a file tell it apart."""
    dockerfile = textwrap.dedent(
        f"""\
        FROM {base_image}
        ENV GRAFLOW_FLAVOUR=b
        COPY flavour.txt /etc/graflow-flavour
        """
    )
    return require_image(DERIVED_IMAGE, dockerfile, {"flavour.txt": "flavour b\n"})


@pytest.fixture(scope="session")
def docker_client(docker_info: dict[str, Any]) -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url=docker_info["DockerHost"])
    yield client
    client.close()


def owned_containers(client: Any) -> list[Any]:
    """Containers graflow-docker created from this test process (running or not)."""
    return client.containers.list(
        all=True,
        filters={"label": ["graflow.managed=true", f"graflow.owner-pid={os.getpid()}"]},
        ignore_removed=True,  # one removed between the listing and its inspection is simply gone
    )


@pytest.fixture
def no_leaks(docker_client: Any) -> Iterator[None]:
    """Fail the test if it leaves any container of this process behind (after cleanup finished)."""
    before = {c.id for c in owned_containers(docker_client)}
    yield
    assert wait_for_cleanup(60.0), "container cleanup did not finish within 60s"
    leaked = [c for c in owned_containers(docker_client) if c.id not in before]
    for container in leaked:
        container.remove(force=True)
    assert not leaked, f"containers leaked: {[(c.short_id, c.status, c.labels) for c in leaked]}"


class UnixSocketRelay:
    """A TCP listener on 127.0.0.1 relaying every connection, byte for byte, to a Unix socket.

    It makes the local daemon reachable as ``tcp://127.0.0.1:<port>``, the way a remote daemon is
    (the handler cannot tell the difference and must not rely on shared files). Half-closes are
    passed on, so closing a container's stdin works through it as it does directly.
    """

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.connections = 0
        self._listener = socket_module.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so that close() is noticed: accept() does not wake up on close
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._open: list[Any] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="docker-tcp-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
            try:
                upstream.connect(self.unix_path)
            except OSError:
                client.close()
                upstream.close()
                continue
            self.connections += 1
            self._open.extend([client, upstream])
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket_module.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass
        self._thread.join(5)


@pytest.fixture
def docker_tcp_relay(docker_info: dict[str, Any]) -> Iterator[UnixSocketRelay]:
    host = docker_info["DockerHost"]
    if not host.startswith("unix://"):
        pytest.skip(f"the daemon is not on a local socket ({host}); it is already remote")
    relay = UnixSocketRelay(host[len("unix://") :])
    yield relay
    relay.close()
