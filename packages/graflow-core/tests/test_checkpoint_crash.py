"""A real crash: a workflow process killed with SIGKILL mid-run, resumed in a new process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graflow.core.checkpoint import CheckpointManager

SRC = [
    str(Path(__file__).resolve().parents[1] / "src"),
    str(Path(__file__).resolve().parents[2] / "graflow-testkit" / "src"),
]

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from graflow import task, workflow

    CKPT, LOG, READY = sys.argv[1], sys.argv[2], sys.argv[3]

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task(inject_context=True)
    def a(ctx):
        mark("a")
        ctx.get_channel().set("total", 1)
        ctx.checkpoint(metadata={"after": "a"}, path=CKPT + "/")

    @task(inject_context=True)
    def b(ctx):
        mark("b")
        ctx.get_channel().atomic_add("total", 10)
        ctx.checkpoint(metadata={"after": "b"}, path=CKPT + "/")

    @task(inject_context=True)
    def c(ctx):
        mark("c")
        if not os.path.exists(READY):
            open(READY, "w").close()
            time.sleep(120)  # killed here
        ctx.get_channel().atomic_add("total", 100)

    @task(inject_context=True)
    def d(ctx):
        mark("d")
        return ctx.get_channel().get("total") + 1000

    with workflow("crashy") as wf:
        a >> b >> c >> d
        print("RESULT", wf.execute())
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_then_resume_in_new_process(tmp_path: Path) -> None:
    script = tmp_path / "crashy.py"
    script.write_text(SCRIPT)
    ckpt, log, ready = tmp_path / "ckpts", tmp_path / "log.txt", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(log), str(ready)], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the workflow process ended before reaching the crash point"
            assert time.monotonic() < deadline, "the workflow process never reached the crash point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert log.read_text().split() == ["a", "b", "c"]

    listed = CheckpointManager.list_checkpoints(str(ckpt))
    assert [m.user_metadata["after"] for m in listed] == ["b", "a"]

    # a fresh process resumes the newest checkpoint through the CLI command and runs to completion
    resumed = subprocess.run(
        [sys.executable, "-m", "graflow.cli.checkpoints_cmd", "resume", "--latest", str(ckpt)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "1111"
    # a and b did not run again; c (interrupted) and d ran in the new process
    assert log.read_text().split() == ["a", "b", "c", "c", "d"]
