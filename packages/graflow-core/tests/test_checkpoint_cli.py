"""``graflow checkpoints list/show/resume/prune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from graflow.cli.checkpoints_cmd import CheckpointsCommand, main
from graflow.core.checkpoint import CheckpointManager
from graflow.core.context import ExecutionContext
from graflow.core.task import TaskWrapper
from graflow.core.workflow import workflow


def double(value: int = 21) -> int:
    return value * 2


def make_checkpoints(folder: Path, count: int = 3) -> list[str]:
    with workflow("cli") as wf:
        TaskWrapper("first", double) >> TaskWrapper("second", double)
    ctx = ExecutionContext.create(wf.graph)
    return [
        CheckpointManager.create_checkpoint(ctx, path=str(folder / f"c{i}"), metadata={"i": i})[0] for i in range(count)
    ]


def test_command_shape() -> None:
    command = CheckpointsCommand()
    assert command.name == "checkpoints" and command.help
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["prune", "somewhere", "--keep", "2"])
    assert (args.checkpoints_action, args.location, args.keep) == ("prune", "somewhere", 2)


def test_list_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = make_checkpoints(tmp_path)
    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index(paths[2]) < out.index(paths[1]) < out.index(paths[0])
    assert main(["list", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == paths[::-1]
    assert main(["list", str(tmp_path / "empty")]) == 0
    assert "no checkpoints" in capsys.readouterr().out


def test_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_checkpoints(tmp_path, 1)[0]
    assert main(["show", path]) == 0
    out = capsys.readouterr().out
    assert "checksums" in out and "first" in out and '{"i": 0}' in out
    assert main(["show", path, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"]["pending_tasks"] == ["first"]


def test_resume_runs_to_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_checkpoints(tmp_path, 1)[0]
    assert main(["resume", path]) == 0
    assert capsys.readouterr().out.strip() == "42"
    assert main(["resume", "--latest", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == 42


def test_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = make_checkpoints(tmp_path, 4)
    assert main(["prune", str(tmp_path), "--keep", "1", "--dry-run"]) == 0
    assert len(CheckpointManager.list_checkpoints(str(tmp_path))) == 4
    capsys.readouterr()
    assert main(["prune", str(tmp_path), "--keep", "1"]) == 0
    assert "deleted 3" in capsys.readouterr().out
    assert [m.path for m in CheckpointManager.list_checkpoints(str(tmp_path))] == [paths[3]]


def test_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_checkpoints(tmp_path, 1)[0]
    Path(path).write_bytes(Path(path).read_bytes()[:10])
    assert main(["resume", path]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and "c0.pkl" in err and "Traceback" not in err
    assert main(["resume", "--latest", str(tmp_path / "none")]) == 1
    assert "No committed checkpoint" in capsys.readouterr().err
