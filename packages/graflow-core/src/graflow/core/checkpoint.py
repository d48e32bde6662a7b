"""Checkpoint and resume (SPEC §4.9).

A checkpoint is three parts under one base address, kept by a :class:`~graflow.checkpoint_store.CheckpointStore`
picked by the address's scheme:

* ``<base>.pkl``: the execution context (graph, channel snapshot, pending queue, counters, group
  progress), pickled with cloudpickle so lambdas, closures and ``__main__`` functions survive;
* ``<base>.state.json``: a readable summary of the same run state (upstream's field names);
* ``<base>.meta.json``: id, time, user metadata, the sha256 and size of the other two parts. It is
  written last and is the commit mark: a checkpoint whose meta part is missing was interrupted
  half-way and is never listed, picked as latest or loaded.

Design choices, and why:

* The context is pickled in one call of a *frozen copy* (containers copied under ``state_lock``),
  so a checkpoint taken while parallel members run in other threads is consistent, and the write
  path does no per-task Python work beyond what pickling itself needs. The copy of the group
  progress is taken first, so the channel never lacks the results of a member the progress calls
  finished.
* The copy is already arranged for resume (the running group or task put back in front of the
  pending queue, its visit undone; members of running groups that had not finished put back to
  their counters at group start, since they start again), so loading is one ``pickle.loads``.
* Pickling is cloudpickle (lambdas, closures and ``__main__`` functions survive) with two speed-ups
  measured on a 10,000-task run (``benchmarks/bench_checkpoint.py``): TaskWrappers pickle as
  ``(template, id, bound values)`` with the function and options in a template shared by every
  task made from them (``graflow.core.task._TaskTemplate``: load time 57 -> 20 ms, 58 -> 22 bytes
  a task), and the pickler's type lookup is a plain dict instead of cloudpickle's ``ChainMap``
  (one Python call per task saved). The graph's edges stay dicts of lists of ids: the C pickler
  writes and reads those (1 and 2.5 ms for 10,000 tasks) faster than Python code encodes and
  rebuilds them as integer arrays (4.5 ms each way). The cyclic garbage collector is paused while
  (un)pickling: a channel holding 100,000 small dicts loads 3x faster.
* The pickle and state parts are written side by side (their fsyncs overlap), then the meta part.
  Compression is off by default: zlib at level 1 takes about as long (4 ms for 1.8 MB) as the
  smaller write saves on a local disk; ask for it (``compress=True``) for slow or metered stores.
* Checksums and sizes of the stored bytes live in the meta part and are checked before unpickling,
  so a truncated or edited file is reported as such instead of failing somewhere inside pickle.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import pickle
import re
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from graflow.checkpoint_store import COMMIT_PART, CheckpointStore
from graflow.exceptions import CheckpointError, ConfigError

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout written here. Upstream graflow 0.x wrote "1.0"; graflow 0.3
#: wrote "2.0" until tasks were pickled through shared templates ("3.0"), which older readers lack.
SCHEMA_VERSION = "3.0"
#: Major schema versions this Graflow loads (2.x pickles still load: their rebuild path is kept).
READABLE_MAJORS = (2, 3)
READABLE_MAJOR = max(READABLE_MAJORS)
PKL, STATE, META = ".pkl", ".state.json", ".meta.json"
#: Compression names accepted by ``create_checkpoint(compress=...)``.
COMPRESSIONS = ("zlib",)
DEFAULT_LOCATION = "checkpoints"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_stores: dict[type, CheckpointStore] = {}
_stores_lock = threading.Lock()


@dataclass
class CheckpointMetadata:
    """What ``<base>.meta.json`` holds. ``path`` (the ``.pkl`` address) is where it was read or written."""

    checkpoint_id: str
    session_id: str
    created_at: str
    steps: int
    user_metadata: dict[str, Any] = field(default_factory=dict)
    start_node: str | None = None
    backend: dict[str, str] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    created_at_ns: int = 0
    checksum: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    compression: str | None = None
    graflow_version: str = ""
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "checkpoint_id": self.checkpoint_id,
            "session_id": self.session_id,
            "created_at": self.created_at,
            "created_at_ns": self.created_at_ns,
            "steps": self.steps,
            "start_node": self.start_node,
            "backend": dict(self.backend),
            "user_metadata": dict(self.user_metadata),
            "checksum": dict(self.checksum),
            "sizes": dict(self.sizes),
            "compression": self.compression,
            "graflow_version": self.graflow_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> CheckpointMetadata:
        return cls(
            checkpoint_id=data["checkpoint_id"],
            session_id=data["session_id"],
            created_at=data["created_at"],
            steps=data["steps"],
            user_metadata=dict(data.get("user_metadata") or {}),
            start_node=data.get("start_node"),
            backend=dict(data.get("backend") or {}),
            schema_version=str(data.get("schema_version", "")),
            created_at_ns=int(data.get("created_at_ns") or 0),
            checksum=dict(data.get("checksum") or {}),
            sizes={k: int(v) for k, v in (data.get("sizes") or {}).items()},
            compression=data.get("compression"),
            graflow_version=data.get("graflow_version", ""),
            path=path,
        )

    @property
    def task_id(self) -> str | None:
        return self.user_metadata.get("task_id")

    @property
    def mode(self) -> str | None:
        return self.user_metadata.get("mode")


# -- addressing -----------------------------------------------------------------------------------------
def scheme_of(address: str) -> str:
    """``"s3"`` for ``s3://bucket/x``; ``""`` for plain paths (Windows drive letters included)."""
    match = _SCHEME.match(address)
    return match.group(1).lower() if match else ""


def store_for(address: str) -> CheckpointStore:
    """The store serving ``address``'s scheme; the plugin error names the package for unknown ones."""
    from graflow import plugins

    cls = plugins.get_checkpoint_store_class(scheme_of(address))
    store = _stores.get(cls)
    if store is None:
        with _stores_lock:
            store = _stores.get(cls)
            if store is None:
                store = _stores[cls] = cls()
    return store


def base_of(path: str) -> str:
    """The base address of a checkpoint given as its base or as any of its three parts."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"A checkpoint path must be a non-empty string, got {path!r}")
    for suffix in (META, STATE, PKL):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _sort_key(meta: CheckpointMetadata) -> tuple[int, str, str]:
    return (meta.created_at_ns, meta.created_at, meta.checkpoint_id)


def _major(version: str) -> int:
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        return -1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointManager:
    """Creates, loads, lists and prunes checkpoints. All methods are class methods; no instance needed."""

    #: Compression used when ``create_checkpoint`` is not told (``None`` or ``"zlib"``).
    default_compression: str | None = None

    # -- writing ------------------------------------------------------------------------------------------
    @classmethod
    def create_checkpoint(
        cls,
        exec_ctx: ExecutionContext,
        *,
        path: str | None = None,
        metadata: dict[str, Any] | None = None,
        compress: bool | str | None = None,
        _current_task: str | None = None,
        _mode: str | None = None,
    ) -> tuple[str, CheckpointMetadata]:
        """Write a checkpoint of ``exec_ctx``; return the ``.pkl`` address and the metadata.

        ``path``: the base address (or its ``.pkl``); one ending in ``/`` is a location the
        checkpoint gets an automatic name in; ``None`` means ``checkpoints/<session_id>/<id>`` under
        the current folder. ``compress``: ``True`` or ``"zlib"`` compresses the pickle.
        """
        from graflow.core.context import ExecutionContext

        if not isinstance(exec_ctx, ExecutionContext):
            raise ConfigError(f"create_checkpoint() needs an ExecutionContext, got {type(exec_ctx).__name__}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError(f"Checkpoint metadata must be a dict, got {type(metadata).__name__}")
        compression = cls._compression(compress)
        mode = _mode or "manual"
        now_ns = time.time_ns()
        stamp = datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc)
        checkpoint_id = f"ckpt-{stamp:%Y%m%dT%H%M%S%f}-s{exec_ctx.steps}-{secrets.token_hex(2)}"
        if path is None:
            base = os.path.join(DEFAULT_LOCATION, exec_ctx.session_id, checkpoint_id)
            store = store_for(base)
        else:
            if isinstance(path, os.PathLike):
                path = os.fspath(path)
            store = store_for(str(path))
            base = store.join(path, checkpoint_id) if path.endswith(("/", os.sep)) else base_of(path)

        blob, state, cycle_count = cls._capture(exec_ctx, _current_task, mode)
        state["checkpoint_id"] = checkpoint_id
        state_bytes = json.dumps(state, separators=(",", ":"), default=str).encode()
        if compression == "zlib":
            blob = zlib.compress(blob, 1)

        user = dict(metadata or {})
        if _current_task is not None:
            user.setdefault("task_id", _current_task)
            user.setdefault("cycle_count", cycle_count)
        user.setdefault("mode", mode)
        from graflow.__about__ import __version__

        meta = CheckpointMetadata(
            checkpoint_id=checkpoint_id,
            session_id=exec_ctx.session_id,
            created_at=stamp.isoformat(),
            steps=state["steps"],
            user_metadata=user,
            start_node=exec_ctx.start_nodes[0] if exec_ctx.start_nodes else None,
            backend={"channel": exec_ctx.channel_backend, "store": type(store).__name__},
            created_at_ns=now_ns,
            sizes={PKL: len(blob), STATE: len(state_bytes)},
            compression=compression,
            graflow_version=__version__,
            path=base + PKL,
        )
        cls._write(store, base, blob, state_bytes, meta)
        try:
            meta_bytes = json.dumps(meta.to_dict(), separators=(",", ":"), default=str).encode()
            store.write_part(base, META, meta_bytes)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Checkpoint metadata for {base} is not JSON-serialisable: {exc}", base) from exc
        except OSError as exc:
            raise CheckpointError(
                f"Could not write checkpoint part {store.part_address(base, META)}: {exc}", base
            ) from exc

        with exec_ctx.state_lock:
            # Member threads may finish checkpoints out of order: keep the newest as "last".
            current = exec_ctx.checkpoint_metadata
            if not isinstance(current, dict) or int(current.get("created_at_ns") or 0) <= now_ns:
                exec_ctx.last_checkpoint_path = meta.path
                exec_ctx.checkpoint_metadata = meta.to_dict()
        from graflow import plugins

        plugins.emit(
            "checkpoint.written",
            session_id=exec_ctx.session_id,
            path=meta.path,
            checkpoint_id=checkpoint_id,
            task_id=_current_task,
            mode=mode,
        )
        return meta.path or base + PKL, meta

    @staticmethod
    def _compression(compress: bool | str | None) -> str | None:
        if compress is None:
            compress = CheckpointManager.default_compression
        if compress is None or compress is False:
            return None
        if compress is True:
            return "zlib"
        if compress in COMPRESSIONS:
            return str(compress)
        raise ConfigError(f"Unknown checkpoint compression {compress!r}. Use one of: {', '.join(COMPRESSIONS)}")

    @staticmethod
    def _capture(ctx: ExecutionContext, task_id: str | None, mode: str) -> tuple[bytes, dict[str, Any], int]:
        """Pickle a frozen, resume-ready copy of ``ctx``; return it with the JSON state and the task's cycle count."""
        from graflow.core.context import ExecutionContext
        from graflow.core.task import NO_DATA
        from graflow.queue.local import LocalTaskQueue

        with ctx.state_lock:
            # Each copy is one C-level call, atomic under the GIL, so threads that update these
            # containers without the lock (the engine's hot path) cannot tear them.
            # Order matters: a member the progress calls finished has all its tasks completed and
            # counted, and a completed task was counted before it ran.
            snap = ctx.__dict__.copy()
            progress = {g: dict(p) for g, p in list(ctx.group_progress.items())}
            completed = set(ctx.completed_tasks)
            cycles = dict(ctx.cycle_counts)
            retries = dict(ctx.retry_counts)
            iteration = dict(ctx.iteration_data)
            arrivals = {k: set(v) for k, v in list(ctx.join_arrivals.items())}
            active = list(ctx.active_groups)
            bases = {g: ctx.group_cycle_base.get(g, {}) for g in active}
            pending = ctx.task_queue.to_list()
            cycle_count = cycles.get(task_id, 0) if task_id is not None else 0
            steps = ctx.steps
            resuming: str | None = None

            if active:
                # Inside a parallel group: resume the whole workflow from the outermost running group;
                # its recorded progress keeps finished members from running again.
                resuming = active[0]
                if resuming not in pending[:1]:
                    pending.insert(0, resuming)
                _undo_visit(cycles, resuming)
                steps -= 1
                reset, used = _reset_unfinished_members(bases, progress, cycles, retries, iteration)
                steps -= used
                if mode == "immediate" and task_id is not None and task_id not in reset and task_id not in retries:
                    _undo_visit(cycles, task_id)
            elif mode == "immediate" and task_id is not None:
                # Written from inside the running task: resuming must run that task again.
                resuming = task_id
                pending.insert(0, task_id)
                steps -= 1
                if task_id not in retries:  # a retry attempt does not count as a new visit
                    _undo_visit(cycles, task_id)
                tctx = ctx.current_task_context
                if tctx is not None and tctx.task_id == task_id and tctx.input_data is not NO_DATA:
                    iteration[task_id] = tctx.input_data
            if not active:
                # Tasks waiting out a retry delay sit in the engine's private timer heap, not the queue.
                queued = set(pending)
                waiting = [t for t in retries if t not in queued and t != task_id]
                pending[:0] = waiting

            snap.update(
                completed_tasks=completed,
                cycle_counts=cycles,
                retry_counts=retries,
                iteration_data=iteration,
                join_arrivals=arrivals,
                group_progress=progress,
                group_cycle_base={},
                active_groups=[],
                terminated=None,
                canceled=None,
                steps=max(0, steps),
            )
            frozen = ExecutionContext.__new__(ExecutionContext)
            frozen.__dict__.update(snap)
            frozen.task_queue = LocalTaskQueue(None, pending)
            try:
                # Still under the lock: the graph must not gain dynamic tasks while it is pickled.
                blob = _dumps(frozen)
            except Exception as exc:
                raise CheckpointError(
                    f"Could not pickle the run state of session {ctx.session_id} for a checkpoint: "
                    f"{type(exc).__name__}: {exc}. Every channel value, task result and task function must be "
                    f"picklable with cloudpickle (no open files, locks, sockets or clients).",
                ) from exc

        graph = ctx.graph
        state: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "session_id": ctx.session_id,
            "steps": max(0, steps),
            "start_node": ctx.start_nodes[0] if ctx.start_nodes else None,
            "start_nodes": list(ctx.start_nodes),
            "completed_tasks": list(completed),
            "pending_tasks": pending,
            "cycle_counts": cycles,
            "retry_counts": retries,
            "resuming_task_id": resuming,
            "active_groups": active,
            "group_progress": {
                g: [m for m, r in p.items() if getattr(r, "success", False)] for g, p in progress.items()
            },
            "join_arrivals": {k: list(v) for k, v in arrivals.items()},
            "mode": mode,
            "task_id": task_id,
            "graph": getattr(graph, "name", ""),
            "task_count": len(graph._nodes),
            "backend": {"channel": ctx.channel_backend, "queue": "memory"},
        }
        return blob, state, cycle_count

    @staticmethod
    def _write(store: CheckpointStore, base: str, blob: bytes, state_bytes: bytes, meta: CheckpointMetadata) -> None:
        """Write the pickle and state parts and fill in their checksums (the meta part comes after).

        The pickle part is written by a helper thread while this one hashes both parts and writes
        the state part: hashing and file writes release the GIL, so the two fsyncs (the slowest
        step on most disks) overlap instead of adding up.
        """
        failures: dict[str, BaseException] = {}

        def write_pickle() -> None:
            try:
                store.write_part(base, PKL, blob)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the calling thread below
                failures[PKL] = exc

        writer = threading.Thread(target=write_pickle, name="graflow-checkpoint-write", daemon=True)
        writer.start()
        try:
            meta.checksum = {"algorithm": "sha256", PKL: _sha256(blob), STATE: _sha256(state_bytes)}
            store.write_part(base, STATE, state_bytes)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once the helper thread is done
            failures[STATE] = exc
        finally:
            writer.join()
        for suffix in (PKL, STATE):
            exc = failures.get(suffix)
            if isinstance(exc, OSError):
                raise CheckpointError(
                    f"Could not write checkpoint part {store.part_address(base, suffix)}: {exc}", base
                ) from exc
            if exc is not None:
                raise exc

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def read_metadata(cls, path: str) -> CheckpointMetadata:
        """The meta part of a committed checkpoint, with its schema version checked."""
        base = base_of(path)
        return cls._read_meta(store_for(base), base)

    @classmethod
    def _read_meta(cls, store: CheckpointStore, base: str) -> CheckpointMetadata:
        where = store.part_address(base, META)
        try:
            raw = store.read_part(base, META)
        except FileNotFoundError:
            present = [s for s in (PKL, STATE) if _exists(store, base, s)]
            if present:
                why = (
                    f"its {' and '.join(present)} part(s) exist but the meta part was never written: the write was "
                    f"interrupted, so the checkpoint is incomplete and cannot be resumed"
                )
            else:
                why = "no checkpoint exists there (check the path; `graflow checkpoints list LOCATION` shows them)"
            raise CheckpointError(f"Checkpoint {base}: {where} is missing; {why}.", base) from None
        except OSError as exc:
            raise CheckpointError(f"Checkpoint {base}: cannot read {where}: {exc}", base) from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise CheckpointError(
                f"Checkpoint {base}: {where} is not valid JSON ({exc}); the file is damaged or was edited.", base
            ) from exc
        version = data.get("schema_version")
        if version is None:
            raise CheckpointError(f"Checkpoint {base}: {where} has no schema_version; not a Graflow checkpoint.", base)
        major = _major(version)
        if major > READABLE_MAJOR:
            raise CheckpointError(
                f"Checkpoint {base} has schema_version {version!r} ({where}), newer than this Graflow reads "
                f"(up to {READABLE_MAJOR}.x): it was written by a newer Graflow. Upgrade graflow to resume it.",
                base,
            )
        if major not in READABLE_MAJORS:
            raise CheckpointError(
                f"Checkpoint {base} has schema_version {version!r} ({where}): it was written by graflow 0.x, whose "
                f"checkpoints this Graflow cannot load. Re-run the workflow to make a new checkpoint.",
                base,
            )
        try:
            return CheckpointMetadata.from_dict(data, path=base + PKL)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"Checkpoint {base}: {where} lacks field {exc}; the file was edited.", base) from exc

    @classmethod
    def _read_verified(cls, store: CheckpointStore, base: str, meta: CheckpointMetadata, suffix: str) -> bytes:
        where = store.part_address(base, suffix)
        try:
            data = store.read_part(base, suffix)
        except FileNotFoundError:
            raise CheckpointError(
                f"Checkpoint {base}: part {where} is missing (deleted or never copied); it cannot be resumed.", base
            ) from None
        except OSError as exc:
            raise CheckpointError(f"Checkpoint {base}: cannot read {where}: {exc}", base) from exc
        expected_size = meta.sizes.get(suffix)
        if expected_size is not None and len(data) < expected_size:
            raise CheckpointError(
                f"Checkpoint {base}: {where} is truncated ({len(data)} of {expected_size} bytes); "
                f"it cannot be resumed.",
                base,
            )
        expected = meta.checksum.get(suffix)
        if expected is None:
            raise CheckpointError(f"Checkpoint {base}: {META} has no checksum for {suffix}; the file was edited.", base)
        if _sha256(data) != expected:
            raise CheckpointError(
                f"Checkpoint {base}: checksum mismatch for {where} (sha256 differs from the one recorded in "
                f"{store.part_address(base, META)}): the file was modified or damaged after it was written.",
                base,
            )
        return data

    @classmethod
    def read_state(cls, path: str) -> dict[str, Any]:
        """The verified ``state.json`` part (what ``graflow checkpoints show`` prints)."""
        base = base_of(path)
        store = store_for(base)
        meta = cls._read_meta(store, base)
        return json.loads(cls._read_verified(store, base, meta, STATE))

    @classmethod
    def verify(cls, path: str) -> CheckpointMetadata:
        """Check every part (presence, size, checksum, schema) without unpickling; raise CheckpointError."""
        base = base_of(path)
        store = store_for(base)
        meta = cls._read_meta(store, base)
        cls._read_verified(store, base, meta, PKL)
        cls._read_verified(store, base, meta, STATE)
        return meta

    @classmethod
    def resume_from_checkpoint(cls, path: str) -> tuple[ExecutionContext, CheckpointMetadata]:
        """Load a checkpoint; run the returned context with ``WorkflowEngine().execute(ctx)`` to continue."""
        base = base_of(path)
        store = store_for(base)
        meta = cls._read_meta(store, base)
        blob = cls._read_verified(store, base, meta, PKL)
        cls._read_verified(store, base, meta, STATE)
        if meta.compression == "zlib":
            try:
                blob = zlib.decompress(blob)
            except zlib.error as exc:
                raise CheckpointError(f"Checkpoint {base}: cannot decompress {base + PKL}: {exc}", base) from exc
        elif meta.compression is not None:
            raise CheckpointError(
                f"Checkpoint {base}: unknown compression {meta.compression!r} in {base + META}; "
                f"this Graflow knows {', '.join(COMPRESSIONS)}.",
                base,
            )
        try:
            with _gc_paused():
                ctx = pickle.loads(blob)
        except Exception as exc:
            raise CheckpointError(
                f"Checkpoint {base}: cannot unpickle {store.part_address(base, PKL)}: {type(exc).__name__}: {exc}. "
                f"The modules that defined its tasks must be importable here.",
                base,
            ) from exc
        from graflow.core.context import ExecutionContext

        if not isinstance(ctx, ExecutionContext):
            raise CheckpointError(f"Checkpoint {base}: {base + PKL} does not hold an execution context.", base)
        ctx.last_checkpoint_path = meta.path
        ctx.checkpoint_metadata = meta.to_dict()
        return ctx, meta

    # -- retention ----------------------------------------------------------------------------------------
    @classmethod
    def list_checkpoints(cls, location: str) -> list[CheckpointMetadata]:
        """Committed checkpoints directly under ``location``, newest first (unreadable ones are skipped)."""
        if isinstance(location, os.PathLike):
            location = os.fspath(location)
        store = store_for(location)
        found = []
        for base in store.list_bases(location):
            try:
                found.append(cls._read_meta(store, base))
            except CheckpointError as exc:
                logger.warning("skipping checkpoint %s: %s", base, exc)
        found.sort(key=_sort_key, reverse=True)
        return found

    @classmethod
    def latest(cls, location: str) -> CheckpointMetadata | None:
        """The newest committed checkpoint under ``location``, or None."""
        found = cls.list_checkpoints(location)
        return found[0] if found else None

    @classmethod
    def prune(cls, location: str, keep_last: int) -> list[str]:
        """Delete all but the newest ``keep_last`` checkpoints under ``location``; return the deleted paths."""
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
            raise ConfigError(f"keep_last must be a whole number >= 0, got {keep_last!r}")
        store = store_for(location)
        deleted = []
        for meta in cls.list_checkpoints(location)[keep_last:]:
            assert meta.path is not None
            store.delete(base_of(meta.path))
            deleted.append(meta.path)
        return deleted

    @classmethod
    def delete(cls, path: str) -> None:
        """Delete one checkpoint (every part)."""
        base = base_of(path)
        store_for(base).delete(base)


def write_deferred_checkpoint(ctx: ExecutionContext, task_id: str, request: dict[str, Any]) -> None:
    """Carry out a ``context.checkpoint(...)`` request once its task (or its group member) finished."""
    CheckpointManager.create_checkpoint(
        ctx, path=request.get("path"), metadata=request.get("metadata"), _current_task=task_id, _mode="deferred"
    )


_pickler_class: Any = None


def _dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, faster for big graphs (see :func:`_checkpoint_pickler`)."""
    global _pickler_class
    if _pickler_class is None:
        _pickler_class = _checkpoint_pickler()
    buf = io.BytesIO()
    with _gc_paused():
        _pickler_class(buf).dump(obj)
    return buf.getvalue()


def _checkpoint_pickler() -> type:
    """A cloudpickle pickler whose per-object type lookup stays in C.

    cloudpickle keeps its reducers in a ``ChainMap`` (its own, then ``copyreg``'s), which the C
    pickler consults for every object of a non-builtin type: one Python-level lookup, and a
    ``KeyError`` raised and caught, per task. This pickler gets the same table flattened into a
    dict when it is made (so ``copyreg`` registrations made so far count) with TaskWrapper's
    reduction in it, which the C pickler then calls directly.
    """
    import copyreg

    import cloudpickle

    from graflow.core.task import TaskWrapper

    base = cloudpickle.CloudPickler

    class CheckpointPickler(base):  # type: ignore[misc, valid-type]
        def __init__(self, file: Any) -> None:
            table = dict(getattr(base, "dispatch_table", None) or copyreg.dispatch_table)
            table.setdefault(TaskWrapper, TaskWrapper.__reduce__)
            self.dispatch_table = table  # read by the C pickler's __init__, hence set first
            super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)

    return CheckpointPickler


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while (un)pickling (and leave it as it was found).

    Unpickling allocates an object per task, channel entry and container, all of which survive;
    with the collector on, the allocations keep triggering collections that walk the growing heap
    again and again (a channel of 100,000 small dicts loads 3x slower). Pickling allocates no cycles
    worth collecting meanwhile. The first collection after the call walks the new objects once.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _undo_visit(cycles: dict[str, int], task_id: str) -> None:
    """Take back the cycle count the engine added when it started ``task_id``, which the resume repeats."""
    count = cycles.get(task_id, 0) - 1
    if count > 0:
        cycles[task_id] = count
    else:
        cycles.pop(task_id, None)


def _reset_unfinished_members(
    bases: dict[str, dict[str, dict[str, int]]],
    progress: dict[str, dict[str, Any]],
    cycles: dict[str, int],
    retries: dict[str, int],
    iteration: dict[str, Any],
) -> tuple[set[str], int]:
    """Put the tasks of running groups' unfinished members back to their state at group start.

    The resumed run starts those members again, so the visits (and retries, and loop data) they
    had made before the checkpoint must not count twice. Returns the ids of the tasks reset and
    the number of steps their visits and retries had used.
    """
    reset: set[str] = set()
    steps = 0
    for group_id, members in bases.items():
        done = progress.get(group_id, {})
        for member_id, nodes in members.items():
            outcome = done.get(member_id)
            if outcome is not None and getattr(outcome, "success", False):
                continue
            for node, base in nodes.items():
                visits = cycles.get(node, 0) - base
                steps += max(0, visits) + retries.pop(node, 0)
                reset.add(node)
                if base > 0:
                    cycles[node] = base
                else:
                    cycles.pop(node, None)
                iteration.pop(node, None)
    return reset, steps


def _exists(store: CheckpointStore, base: str, suffix: str) -> bool:
    try:
        store.read_part(base, suffix)
    except OSError:
        return False
    return True


__all__ = ["COMMIT_PART", "SCHEMA_VERSION", "CheckpointManager", "CheckpointMetadata", "base_of", "store_for"]
