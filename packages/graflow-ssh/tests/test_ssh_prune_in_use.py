"""Pruning must not delete a runner that is still in use because it was *uploaded* long ago (real sshd).

Pruning judges a runner by its file's modification time. A runner shipped eight days ago and used
by a worker that connected today is not stale: if another client, shipping a newer graflow next to
three other recent runners, deletes it, the worker's connection (which remembers the runner as
shipped) starts its next tasks from a file that is gone. Using a runner that is already on the host
must count as a use.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import shutil
import stat
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from graflow.core.decorators import task
from graflow.core.task import chain
from graflow.core.workflow import workflow
from graflow.remote.bundle import RunnerBundle, runner_bundle
from graflow_ssh import SSHTaskHandler, shipping
from graflow_testkit.services.sshd import SSHServer

pytestmark = pytest.mark.ssh

DAY = 86400


def _new_bundle() -> RunnerBundle:
    """The real runner under a digest nobody has shipped (a zip comment changes the bytes only)."""
    buffer = io.BytesIO(runner_bundle().data)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = f"review prune {secrets.token_hex(8)}".encode()
    data = buffer.getvalue()
    return RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())


class _Folder:
    """The test's own remote cache folder, seen over SFTP as the login user."""

    def __init__(self, server: SSHServer) -> None:
        self.relative = f".cache/graflow-review-prune-{secrets.token_hex(6)}"
        self.local = server.home / self.relative
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(str(server.known_hosts))
        self.client.connect(
            server.host,
            port=server.port,
            username=server.user,
            key_filename=str(server.client_key),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        self.sftp = self.client.open_sftp()
        self.path = f"{self.sftp.normalize('.')}/{self.relative}"
        for part in (".cache", self.relative):
            try:
                self.sftp.mkdir(part, 0o755)
            except OSError:
                assert stat.S_ISDIR(self.sftp.stat(part).st_mode or 0)

    def age(self, name: str, seconds: float) -> None:
        then = int(time.time() - seconds)
        self.sftp.utime(f"{self.path}/{name}", (then, then))

    def plant(self, name: str, seconds: float) -> None:
        with self.sftp.open(f"{self.path}/{name}", "wb") as handle:
            handle.write(b"not a real runner")
        self.age(name, seconds)

    def names(self) -> set[str]:
        return set(self.sftp.listdir(self.path))

    def close(self) -> None:
        self.sftp.close()
        self.client.close()
        shutil.rmtree(self.local, ignore_errors=True)


@pytest.fixture
def folder(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Folder]:
    made = _Folder(sshd)
    monkeypatch.setattr(shipping, "REMOTE_CACHE_DIR", made.relative)
    try:
        yield made
    finally:
        made.close()


def _handler(bundle: RunnerBundle, settings: dict[str, Any]) -> SSHTaskHandler:
    class ShipsThisBundle(SSHTaskHandler):
        def start_process(self, _bundle: RunnerBundle, on_output: Any) -> Any:
            return super().start_process(bundle, on_output)

    return ShipsThisBundle(**settings)


def _probe(handler: SSHTaskHandler, run_workflow: Any) -> str:
    @task(handler="remote")
    def probe() -> str:
        import sys

        return sys.argv[0]

    with workflow("ssh-prune") as wf:
        chain(probe)
    return run_workflow(handler, wf)[0]


def test_a_runner_in_use_survives_another_clients_prune(
    folder: _Folder, sshd: SSHServer, settings_for: Any, run_workflow: Any
) -> None:
    settings = settings_for(sshd)
    old = _new_bundle()
    shipper = _handler(old, settings)
    try:
        assert _probe(shipper, run_workflow) == f"{folder.path}/{old.filename}"
    finally:
        shipper.close()
    folder.age(old.filename, 8 * DAY)  # shipped eight days ago

    worker = _handler(old, settings)  # a worker that connects today and keeps using that runner
    other = _handler(_new_bundle(), settings)
    try:
        assert _probe(worker, run_workflow) == f"{folder.path}/{old.filename}"
        for _ in range(3):
            folder.plant(f"graflow-runner-{secrets.token_hex(8)}.pyz", 3600)  # other clients' recent runners
        _probe(other, run_workflow)  # a newer graflow ships its runner: the folder is pruned
        assert old.filename in folder.names(), "a runner used today was pruned as stale"
        assert _probe(worker, run_workflow) == f"{folder.path}/{old.filename}"
    finally:
        worker.close()
        other.close()
