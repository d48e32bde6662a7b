"""``graflow run FILE[:WORKFLOW]``: load a workflow from a Python file and run it with live progress.

Loading (shared with ``graflow graph``) executes the file with ``run_name="__graflow__"`` so that a
script's own ``if __name__ == "__main__": wf.execute()`` block does not run a second time, then
picks a module-level :class:`~graflow.core.workflow.WorkflowContext` (or calls a zero-argument
function that returns one).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from graflow import plugins
from graflow.cli.progress import ProgressReporter, _one_line, _seconds
from graflow.core.workflow import WorkflowContext

RESULT_REPR_LIMIT = 200


class CLIError(Exception):
    """A problem the user can fix (bad path, unknown workflow, bad --input); shown without a traceback."""


@dataclass
class LoadedWorkflow:
    workflow: WorkflowContext
    label: str  # how the user would name it: "path:variable"


# -- loading ----------------------------------------------------------------------------------------------
def split_target(target: str) -> tuple[str, str | None]:
    """Split ``FILE[:WORKFLOW]``; a colon that belongs to the path (``C:\\x.py``, an existing file) stays."""
    if os.path.exists(target):
        return target, None
    path, sep, name = target.rpartition(":")
    if sep and path and name and (name.isidentifier() or os.path.exists(path)):
        return path, name
    return target, None


def load_workflow(target: str) -> LoadedWorkflow:
    """Run the file named by ``target`` and return the workflow it selects (see module docstring)."""
    path, wanted = split_target(target)
    if not os.path.isfile(path):
        raise CLIError(f"No such file: {path}")
    namespace = _run_file(path)
    found = _collect(namespace)
    if wanted is not None:
        return LoadedWorkflow(_pick(path, wanted, namespace, found), f"{path}:{wanted}")
    if len(found) == 1:
        name, wf = found[0]
        return LoadedWorkflow(wf, f"{path}:{name}")
    if not found:
        raise CLIError(
            f"No workflow found in {path}. Define one at module level (with workflow('name') as wf: ...) "
            f"or name a function that returns one: {path}:build_workflow"
        )
    raise CLIError(f"{path} defines several workflows; pick one with {path}:NAME. Found: {_listing(found)}")


def _run_file(path: str) -> dict[str, Any]:
    # Like `python FILE`: the file's folder goes first on sys.path so it can import its neighbours.
    # It stays there afterwards because tasks may import lazily while the workflow runs.
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return runpy.run_path(path, run_name="__graflow__")
    except Exception as exc:  # any error in the user's file is reported as a load failure
        raise CLIError(f"Loading {path} failed: {type(exc).__name__}: {_one_line(str(exc))}") from exc


def _collect(namespace: dict[str, Any]) -> list[tuple[str, WorkflowContext]]:
    """Module-level workflows, each once (the first name bound to it wins)."""
    found: list[tuple[str, WorkflowContext]] = []
    seen: set[int] = set()
    for name, value in namespace.items():
        if isinstance(value, WorkflowContext) and id(value) not in seen:
            seen.add(id(value))
            found.append((name, value))
    return found


def _pick(
    path: str, wanted: str, namespace: dict[str, Any], found: list[tuple[str, WorkflowContext]]
) -> WorkflowContext:
    value = namespace.get(wanted)
    if isinstance(value, WorkflowContext):
        return value
    if value is not None and callable(value):
        try:
            built = value()
        except TypeError as exc:
            raise CLIError(f"{path}:{wanted} must take no arguments to build a workflow ({exc})") from exc
        except Exception as exc:
            raise CLIError(f"{path}:{wanted}() failed: {type(exc).__name__}: {_one_line(str(exc))}") from exc
        if not isinstance(built, WorkflowContext):
            raise CLIError(f"{path}:{wanted}() returned {type(built).__name__}, not a workflow")
        return built
    if value is not None:
        raise CLIError(f"{path}:{wanted} is a {type(value).__name__}, not a workflow")
    # Also accept the workflow's own name, as given to workflow("name").
    by_name = [wf for _, wf in found if wf.name == wanted]
    if len(by_name) == 1:
        return by_name[0]
    raise CLIError(f"No workflow named '{wanted}' in {path}. Available: {_listing(found) or 'none'}")


def _listing(found: list[tuple[str, WorkflowContext]]) -> str:
    return ", ".join(name if wf.name == name else f"{name} (workflow '{wf.name}')" for name, wf in found)


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (``n=3``, ``xs=[1,2]``), else plain strings."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--input needs KEY=VALUE, got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


# -- the command ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILE[:WORKFLOW]", help="Python file defining the workflow, optionally :name")
    parser.add_argument(
        "-i",
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a workflow input (JSON-decoded when possible); repeat for several",
    )
    parser.add_argument("--start", metavar="TASK", help="start at this task instead of every source task")
    parser.add_argument("--max-steps", type=int, default=10000, help="stop with an error after this many steps")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output, only the summary")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback when the run fails")


def run(args: argparse.Namespace) -> int:
    """Load, run, summarise. Returns 0 on success, 1 on any failure."""
    try:
        loaded = load_workflow(args.target)
        inputs = parse_inputs(args.inputs)
    except CLIError as exc:
        return _fail(exc, args)

    stream = None if args.quiet else sys.stderr
    live = bool(stream is not None and _is_tty(stream) and os.environ.get("TERM") != "dumb")
    reporter = ProgressReporter(stream, live)
    wf = loaded.workflow
    started = time.perf_counter()
    error: BaseException | None = None
    result: Any = None
    plugins.register(reporter, name=f"graflow-cli-progress-{id(reporter)}")
    try:
        # initial_channel rather than **inputs: an input called "start" or "max_steps" must stay an input.
        result = wf.execute(start=args.start, max_steps=args.max_steps, initial_channel=inputs)
    except KeyboardInterrupt as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - any failure of the run is summarised, then reported in one line
        error = exc
    finally:
        reporter.close()
        plugins.unregister(reporter)
    elapsed = time.perf_counter() - started

    stats = reporter.stats
    status = "succeeded" if error is None else "FAILED"
    out = sys.stdout
    out.write(f"Workflow '{wf.name}' {status} in {_seconds(elapsed)}\n")
    out.write(
        f"  tasks: {stats.started} run, {stats.succeeded} succeeded, {stats.failed} failed, {stats.retried} retried\n"
    )
    if error is None:
        out.write(f"  result: {_truncate(repr(result))}\n")
        out.flush()
        return 0
    out.flush()
    if isinstance(error, KeyboardInterrupt):
        sys.stderr.write("graflow: interrupted\n")
        return 130
    return _fail(error, args)


def _fail(exc: BaseException, args: argparse.Namespace) -> int:
    if getattr(args, "traceback", False):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, CLIError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    hint = "" if getattr(args, "traceback", False) or isinstance(exc, CLIError) else " (use --traceback for details)"
    sys.stderr.write(f"graflow: error: {_one_line(message, 1000)}{hint}\n")
    sys.stderr.flush()
    return 1


def _truncate(text: str, limit: int = RESULT_REPR_LIMIT) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


__all__ = ["CLIError", "LoadedWorkflow", "add_arguments", "load_workflow", "parse_inputs", "run", "split_target"]
