"""A real crash for checkpoint stores: a workflow process killed with SIGKILL mid-run, then resumed
from the store's newest checkpoint by ``graflow checkpoints resume --latest`` in a new process.

Any checkpoint store can be put through it (the file store in core, S3, Redis, a third-party one)::

    from graflow_testkit.crash import sigkill_then_resume

    def test_crash(tmp_path):
        listed = sigkill_then_resume("s3://bucket/run", tmp_path, env)

The workflow is ``a >> b >> c >> d``: ``a`` and ``b`` each take a deferred checkpoint, the process
dies inside ``c``, and the resumed run must run ``c`` again and ``d``, never ``a`` or ``b``, and end
with the channel total both runs built (1111).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

_WORKFLOW = textwrap.dedent(
    """
    import os, sys, time
    from graflow import task, workflow

    LOCATION, LOG, READY = sys.argv[1], sys.argv[2], sys.argv[3]

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task(inject_context=True)
    def a(ctx):
        mark("a")
        ctx.get_channel().set("total", 1)
        ctx.checkpoint(metadata={"after": "a"}, path=LOCATION + "/")

    @task(inject_context=True)
    def b(ctx):
        mark("b")
        ctx.get_channel().atomic_add("total", 10)
        ctx.checkpoint(metadata={"after": "b"}, path=LOCATION + "/")

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

_CLI = "import sys\nfrom graflow.cli.checkpoints_cmd import main\nsys.exit(main(sys.argv[1:]))\n"


def sigkill_then_resume(
    location: str, workdir: Path, env: dict[str, str], *, prelude: str = "", timeout: float = 120.0
) -> list[Any]:
    """Run the crash scenario against ``location``; assert every step; return the checkpoints
    listed after the crash (newest first) for the caller's own checks.

    ``env`` is the processes' environment (``PYTHONPATH``, credentials); ``prelude`` is Python code
    run first in both processes (to register a plugin that has no entry point installed).
    """
    from graflow.core.checkpoint import CheckpointManager

    script = workdir / "crashy.py"
    script.write_text(prelude + _WORKFLOW)
    log, ready = workdir / "crash-log.txt", workdir / "crash-ready"
    proc = subprocess.Popen([sys.executable, str(script), location, str(log), str(ready)], env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the workflow process ended before reaching the crash point"
            assert time.monotonic() < deadline, "the workflow process never reached the crash point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert log.read_text().split() == ["a", "b", "c"]

    listed = CheckpointManager.list_checkpoints(location)
    assert [m.user_metadata["after"] for m in listed] == ["b", "a"]

    resumed = subprocess.run(
        [sys.executable, "-c", prelude + _CLI, "resume", "--latest", location],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "1111"
    # a and b did not run again; c (interrupted) and d ran in the new process
    assert log.read_text().split() == ["a", "b", "c", "c", "d"]
    return listed


__all__ = ["sigkill_then_resume"]
