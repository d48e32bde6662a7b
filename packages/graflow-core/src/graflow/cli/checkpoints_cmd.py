"""``graflow checkpoints``: list, show, resume and prune checkpoints from the shell.

Sub-commands::

    graflow checkpoints list LOCATION [--json]
    graflow checkpoints show PATH [--json]
    graflow checkpoints resume PATH [--latest] [--json]
    graflow checkpoints prune LOCATION --keep N [--dry-run]

Every address a store serves works (plain paths, ``file://``, ``s3://`` ... once the store's package
is installed). Problems the user can fix (missing, damaged, tampered checkpoint) print one line on
stderr and exit 1; ``--traceback`` shows the full trace. Also runnable on its own as
``python -m graflow.cli.checkpoints_cmd ...`` (handy in scripts and before the CLI entry point is set up).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any, ClassVar

from graflow.exceptions import GraflowError

RESULT_LIMIT = 2000


class CheckpointsCommand:
    """The ``checkpoints`` command, registered through ``graflow_register_commands``."""

    name: ClassVar[str] = "checkpoints"
    help: ClassVar[str] = "list, show, resume and prune workflow checkpoints"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "List, inspect, resume and prune workflow checkpoints."
        parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
        sub = parser.add_subparsers(dest="checkpoints_action", metavar="ACTION")
        sub.required = True

        p = sub.add_parser("list", help="committed checkpoints under LOCATION, newest first")
        p.add_argument("location", metavar="LOCATION", help="folder or store address holding checkpoints")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

        p = sub.add_parser("show", help="metadata and run state of one checkpoint (checksums verified)")
        p.add_argument("path", metavar="PATH", help="checkpoint base or any of its parts (.pkl, .meta.json ...)")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("resume", help="resume a checkpoint and run the workflow to completion")
        p.add_argument("path", metavar="PATH", help="checkpoint to resume (with --latest: a LOCATION)")
        p.add_argument("--latest", action="store_true", help="PATH is a location: resume its newest checkpoint")
        p.add_argument("--json", action="store_true", help="print the outcome as JSON")

        p = sub.add_parser("prune", help="delete all but the newest N checkpoints under LOCATION")
        p.add_argument("location", metavar="LOCATION")
        p.add_argument("--keep", type=int, required=True, metavar="N", help="how many of the newest to keep")
        p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")

    def run(self, args: argparse.Namespace) -> int:
        action = getattr(args, "checkpoints_action", None)
        handler = {"list": self._list, "show": self._show, "resume": self._resume, "prune": self._prune}.get(
            action or ""
        )
        if handler is None:
            sys.stderr.write("graflow checkpoints: choose an action: list, show, resume or prune\n")
            return 2
        try:
            return handler(args)
        except GraflowError as exc:
            if getattr(args, "traceback", False):
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.write(f"graflow checkpoints {action}: error: {exc}\n")
            return 1

    # -- actions ------------------------------------------------------------------------------------------
    @staticmethod
    def _list(args: argparse.Namespace) -> int:
        from graflow.core.checkpoint import CheckpointManager

        found = CheckpointManager.list_checkpoints(args.location)
        if args.json:
            rows = [{**m.to_dict(), "path": m.path} for m in found]
            print(json.dumps(rows, indent=2, default=str))
            return 0
        if not found:
            print(f"no checkpoints in {args.location}")
            return 0
        rows = [
            (
                m.created_at[:19].replace("T", " "),
                str(m.steps),
                str(m.user_metadata.get("task_id") or "-"),
                str(m.user_metadata.get("mode") or "-"),
                m.path or "",
            )
            for m in found
        ]
        _table(("created (UTC)", "steps", "task", "mode", "path"), rows)
        return 0

    @staticmethod
    def _show(args: argparse.Namespace) -> int:
        from graflow.core.checkpoint import CheckpointManager

        meta = CheckpointManager.verify(args.path)
        state = CheckpointManager.read_state(args.path)
        if args.json:
            print(json.dumps({"metadata": meta.to_dict(), "path": meta.path, "state": state}, indent=2, default=str))
            return 0
        user = {k: v for k, v in meta.user_metadata.items() if k not in ("task_id", "cycle_count", "mode")}
        lines = [
            ("path", meta.path),
            ("checkpoint_id", meta.checkpoint_id),
            ("session_id", meta.session_id),
            ("created_at", meta.created_at),
            ("schema_version", meta.schema_version),
            ("graflow_version", meta.graflow_version or "?"),
            ("steps", meta.steps),
            ("taken in", f"{meta.user_metadata.get('task_id')} ({meta.user_metadata.get('mode')})"),
            ("user metadata", json.dumps(user, default=str) if user else "-"),
            ("tasks in graph", state.get("task_count")),
            ("completed", len(state.get("completed_tasks", []))),
            ("pending", _ids(state.get("pending_tasks", []))),
            ("running groups", _ids(state.get("active_groups", [])) or "-"),
            ("compression", meta.compression or "none"),
            ("size", f"{sum(meta.sizes.values()):,} bytes"),
            ("checksums", "ok (sha256)"),
        ]
        width = max(len(k) for k, _ in lines)
        for key, value in lines:
            print(f"{key:<{width}}  {value}")
        return 0

    @staticmethod
    def _resume(args: argparse.Namespace) -> int:
        from graflow.core.checkpoint import CheckpointManager
        from graflow.core.engine import WorkflowEngine
        from graflow.exceptions import CheckpointError

        path = args.path
        if args.latest:
            latest = CheckpointManager.latest(path)
            if latest is None or latest.path is None:
                raise CheckpointError(f"No committed checkpoint in {path}", path)
            path = latest.path
        ctx, meta = CheckpointManager.resume_from_checkpoint(path)
        if not args.json:
            pending = ctx.task_queue.to_list()
            sys.stderr.write(
                f"resuming {meta.path} (session {meta.session_id}, step {meta.steps}, "
                f"{len(pending)} pending: {_ids(pending)})\n"
            )
        result = WorkflowEngine().execute(ctx)
        if args.json:
            print(
                json.dumps(
                    {"checkpoint": meta.path, "session_id": ctx.session_id, "steps": ctx.steps, "result": result},
                    default=repr,
                )
            )
        else:
            text = repr(result)
            print(text if len(text) <= RESULT_LIMIT else text[: RESULT_LIMIT - 3] + "...")
        return 0

    @staticmethod
    def _prune(args: argparse.Namespace) -> int:
        from graflow.core.checkpoint import CheckpointManager
        from graflow.exceptions import ConfigError

        if args.keep < 0:
            raise ConfigError(f"--keep must be 0 or more, got {args.keep}")
        if args.dry_run:
            doomed = [m.path for m in CheckpointManager.list_checkpoints(args.location)[args.keep :]]
            for path in doomed:
                print(f"would delete {path}")
            return 0
        deleted = CheckpointManager.prune(args.location, keep_last=args.keep)
        for path in deleted:
            print(f"deleted {path}")
        print(f"kept the newest {args.keep}, deleted {len(deleted)}")
        return 0


def _ids(ids: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command on its own: ``python -m graflow.cli.checkpoints_cmd list LOCATION``."""
    command = CheckpointsCommand()
    parser = argparse.ArgumentParser(prog="graflow checkpoints")
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CheckpointsCommand", "main"]
