"""A real crash: a workflow process killed with SIGKILL mid-run, resumed in a new process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from graflow_testkit.crash import sigkill_then_resume

SRC = [
    str(Path(__file__).resolve().parents[1] / "src"),
    str(Path(__file__).resolve().parents[2] / "graflow-testkit" / "src"),
]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_then_resume_in_new_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*SRC, os.environ.get("PYTHONPATH", "")])}
    sigkill_then_resume(str(tmp_path / "ckpts"), tmp_path, env)
