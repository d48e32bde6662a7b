"""Stale runner bundles on an SSH host are pruned right after an upload, against a real sshd.

Each test works in a remote cache folder of its own (``REMOTE_CACHE_DIR`` pointed at a unique folder
under the test user's home) with a runner of its own (the real runner plus a unique zip comment, so
its digest and file name are new and the first task has to upload it). Files are planted over SFTP
as the login user, with old modification times set by ``sftp.utime``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import shutil
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
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
Run = Callable[..., Any]


def unique_bundle() -> RunnerBundle:
    """The real runner under a digest nobody has shipped yet (a zip comment changes the bytes only)."""
    archive_bytes = io.BytesIO(runner_bundle().data)
    with zipfile.ZipFile(archive_bytes, "a") as archive:
        archive.comment = f"prune test {secrets.token_hex(8)}".encode()
    data = archive_bytes.getvalue()
    return RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())


def fake_runner_name() -> str:
    return f"graflow-runner-{secrets.token_hex(8)}.pyz"


class RemoteFolder:
    """An SFTP session as the test user on a cache folder of its own; plants files with chosen ages."""

    def __init__(self, server: SSHServer) -> None:
        self.server = server
        self.relative = f".cache/graflow-prune-test-{secrets.token_hex(6)}"
        self.local = server.home / self.relative  # the same folder seen from this machine
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

    def plant(self, name: str, age: float, data: bytes = b"not a real runner") -> str:
        target = f"{self.path}/{name}"
        with self.sftp.open(target, "wb") as handle:
            handle.write(data)
        then = int(time.time() - age)
        self.sftp.utime(target, (then, then))
        assert abs(self.sftp.stat(target).st_mtime - then) <= 1
        return name

    def age(self, name: str, seconds: float) -> None:
        then = int(time.time() - seconds)
        self.sftp.utime(f"{self.path}/{name}", (then, then))

    def names(self) -> set[str]:
        return set(self.sftp.listdir(self.path))

    def close(self) -> None:
        self.sftp.close()
        self.client.close()
        shutil.rmtree(self.local, ignore_errors=True)


@pytest.fixture
def remote_folder(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteFolder]:
    folder = RemoteFolder(sshd)
    monkeypatch.setattr(shipping, "REMOTE_CACHE_DIR", folder.relative)
    try:
        yield folder
    finally:
        folder.close()


def handler_for(bundle: RunnerBundle, settings: dict[str, Any]) -> SSHTaskHandler:
    class ShipsThisBundle(SSHTaskHandler):
        def start_process(self, _bundle: RunnerBundle, on_output: Any) -> Any:
            return super().start_process(bundle, on_output)

    return ShipsThisBundle(**settings)


def probe_with(handler: SSHTaskHandler, run_workflow: Run) -> str:
    """Run one task on ``handler``; return the path the remote runner was started from."""

    @task(handler="remote")
    def probe() -> str:
        import sys

        return sys.argv[0]

    with workflow("ssh-prune") as wf:
        chain(probe)
    return run_workflow(handler, wf)[0]


def run_probe(bundle: RunnerBundle, settings: dict[str, Any], run_workflow: Run) -> str:
    """Run one task with ``bundle`` as the runner on a handler of its own (closed afterwards)."""
    handler = handler_for(bundle, settings)
    try:
        return probe_with(handler, run_workflow)
    finally:
        handler.close()


def test_an_upload_prunes_old_runners_and_temporaries_but_nothing_else(
    remote_folder: RemoteFolder,
    sshd: SSHServer,
    settings_for: Run,
    run_workflow: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(sshd)
    old = [remote_folder.plant(fake_runner_name(), (20 + n) * DAY) for n in range(5)]  # old[0] is the newest
    young = remote_folder.plant(fake_runner_name(), 3600)
    old_temp = remote_folder.plant(f".{fake_runner_name()}.{secrets.token_hex(6)}.tmp", 2 * DAY)  # killed upload
    young_temp = remote_folder.plant(f".{fake_runner_name()}.{secrets.token_hex(6)}.tmp", 60)  # maybe in progress
    foreign = {
        remote_folder.plant("notes.txt", 900 * DAY),
        remote_folder.plant("graflow-runner-0123456789abcdef.pyz.bak", 900 * DAY),
        remote_folder.plant(".graflow-runner-0123456789abcdef.pyz.tmp", 900 * DAY),
    }

    first = unique_bundle()
    assert first.filename not in remote_folder.names()
    with caplog.at_level(logging.DEBUG, logger="graflow_ssh"):
        assert run_probe(first, settings, run_workflow) == f"{remote_folder.path}/{first.filename}"
    assert any("shipped runner" in r.getMessage() and first.filename in r.getMessage() for r in caplog.records)
    # kept: the three newest bundles (the one just shipped, the young one, the newest old one), the
    # young temporary and every foreign file; deleted: the four other old bundles and the old temporary
    assert remote_folder.names() == {first.filename, young, old[0], young_temp, *foreign}
    deleted = {r.getMessage() for r in caplog.records if "deleted stale" in r.getMessage()}
    assert len(deleted) == 5 and all(any(name in m for m in deleted) for name in [*old[1:], old_temp])
    assert (remote_folder.local / first.filename).read_bytes() == first.data

    # the fast path (runner already there) uploads nothing and prunes nothing
    later_old = remote_folder.plant(fake_runner_name(), 30 * DAY)
    assert run_probe(first, settings, run_workflow) == f"{remote_folder.path}/{first.filename}"
    assert later_old in remote_folder.names() and old[0] in remote_folder.names()

    # the next new runner: now it, the first one and the young one are the newest three
    second = unique_bundle()
    assert run_probe(second, settings, run_workflow) == f"{remote_folder.path}/{second.filename}"
    assert remote_folder.names() == {second.filename, first.filename, young, young_temp, *foreign}


def test_a_folder_that_cannot_be_listed_does_not_fail_the_task(
    remote_folder: RemoteFolder,
    sshd: SSHServer,
    settings_for: Run,
    run_workflow: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = {remote_folder.plant(fake_runner_name(), (30 + n) * DAY) for n in range(5)}
    # write and search permission but no read: stat, upload, rename and running work; listing does not
    remote_folder.sftp.chmod(remote_folder.path, 0o300)
    bundle = unique_bundle()
    try:
        with caplog.at_level(logging.DEBUG, logger="graflow_ssh"):
            assert run_probe(bundle, settings_for(sshd), run_workflow) == f"{remote_folder.path}/{bundle.filename}"
    finally:
        remote_folder.sftp.chmod(remote_folder.path, 0o755)
    assert any("cannot list" in r.getMessage() and remote_folder.relative in r.getMessage() for r in caplog.records)
    assert remote_folder.names() == {bundle.filename, *old}  # nothing deleted, the task ran all the same


def test_a_bundle_named_folder_is_never_deleted(
    remote_folder: RemoteFolder, sshd: SSHServer, settings_for: Run, run_workflow: Run
) -> None:
    odd = fake_runner_name()
    remote_folder.sftp.mkdir(f"{remote_folder.path}/{odd}", 0o755)
    remote_folder.sftp.utime(f"{remote_folder.path}/{odd}", (0, 0))
    old = [remote_folder.plant(fake_runner_name(), (40 + n) * DAY) for n in range(4)]
    bundle = unique_bundle()
    run_probe(bundle, settings_for(sshd), run_workflow)
    left = remote_folder.names()
    # the folder is not a file, so it is neither deleted nor counted among the three newest bundles
    assert left == {odd, bundle.filename, old[0], old[1]}


def test_a_runner_in_use_survives_another_clients_prune(
    remote_folder: RemoteFolder, sshd: SSHServer, settings_for: Any, run_workflow: Run
) -> None:
    """A runner uploaded eight days ago but used today is not stale: a connection that remembers it
    as shipped would otherwise start its next tasks from a file that is gone."""
    settings = settings_for(sshd)
    old = unique_bundle()
    assert run_probe(old, settings, run_workflow) == f"{remote_folder.path}/{old.filename}"
    remote_folder.age(old.filename, 8 * DAY)  # shipped eight days ago

    worker = handler_for(old, settings)  # a worker that connects today and keeps using that runner
    try:
        assert probe_with(worker, run_workflow) == f"{remote_folder.path}/{old.filename}"
        for _ in range(3):
            remote_folder.plant(fake_runner_name(), 3600)  # other clients' recent runners
        run_probe(unique_bundle(), settings, run_workflow)  # a newer graflow ships its runner: a prune
        assert old.filename in remote_folder.names(), "a runner used today was pruned as stale"
        assert probe_with(worker, run_workflow) == f"{remote_folder.path}/{old.filename}"
    finally:
        worker.close()
