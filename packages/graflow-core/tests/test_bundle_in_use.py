"""A local runner bundle in use is not pruned by another graflow's store (real files, real child processes).

Pruning judges a bundle by its file's modification time. A process that starts its runners from a
bundle written eight days ago (``store_bundle`` finds it there) is using it today: a newer graflow
storing its own bundle next to three other recent ones must leave it alone, or the runners started
from it lose the archive they import from.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

from graflow.core.context import ExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.handlers.subprocess import SubprocessTaskHandler, store_bundle
from graflow.core.workflow import workflow
from graflow.remote.bundle import RunnerBundle, runner_bundle, store_once

DAY = 86400


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _fake_runner() -> str:
    return f"graflow-runner-{secrets.token_hex(8)}.pyz"


def test_a_bundle_a_process_starts_runners_from_survives_a_newer_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFLOW_CACHE_DIR", str(tmp_path))
    bundle = runner_bundle()
    stored = store_bundle(bundle)
    _age(stored, 8 * DAY)  # written by an earlier process eight days ago

    handler = SubprocessTaskHandler()

    @task(handler="sub")
    def where() -> str:
        import sys

        return sys.argv[0]

    with workflow("bundle-in-use") as wf:
        where(task_id="where")
    engine = WorkflowEngine()
    engine.register_handler("sub", handler)
    try:
        # today: a process runs a task, its runner started from the stored bundle
        assert engine.execute(ExecutionContext.create(wf.graph, None, max_steps=10)) == str(stored)
        for _ in range(3):
            recent = tmp_path / _fake_runner()
            recent.write_bytes(b"another version's runner")
            _age(recent, 3600)
        newer = b"a newer graflow's runner " + secrets.token_bytes(8)
        newer_bundle = RunnerBundle(data=newer, digest=hashlib.sha256(newer).hexdigest())
        store_once(tmp_path, newer_bundle.filename, newer)  # another graflow stores its runner: prunes
        assert stored.exists(), "a bundle in use today was pruned as stale"
        assert engine.execute(ExecutionContext.create(wf.graph, None, max_steps=10)) == str(stored)
    finally:
        handler.close()


def test_a_runner_marks_its_archive_used_even_where_reads_do_not(tmp_path: Path, monkeypatch) -> None:
    """On a ``noatime`` mount reading a file leaves its access time alone: the runner must set it."""
    import subprocess

    mount_point = tmp_path / "noatime"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noatime,size=32m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a noatime tmpfs here (needs root): {mounted.stderr.strip()}")
    handler = SubprocessTaskHandler()
    try:
        monkeypatch.setenv("GRAFLOW_CACHE_DIR", str(mount_point))
        stored = store_bundle(runner_bundle())
        _age(stored, 8 * DAY)

        @task(handler="sub")
        def where() -> str:
            import sys

            return sys.argv[0]

        with workflow("bundle-noatime") as wf:
            where(task_id="where")
        engine = WorkflowEngine()
        engine.register_handler("sub", handler)
        started = time.time()
        assert engine.execute(ExecutionContext.create(wf.graph, None, max_steps=10)) == str(stored)
        info = stored.stat()
        assert info.st_atime >= started - 1, "the runner did not mark its archive as used"
        assert info.st_mtime < started - 7 * DAY, "the archive's contents time must stay as written"
    finally:
        handler.close()
        subprocess.run(["umount", str(mount_point)], capture_output=True)
