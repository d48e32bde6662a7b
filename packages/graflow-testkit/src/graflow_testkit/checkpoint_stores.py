"""Conformance suite for checkpoint stores.

A checkpoint written to S3 must be as safe to resume as one written to a local disk, so every store
runs the same tests. Plugin authors subclass :class:`CheckpointStoreConformance` and provide two
fixtures::

    import pytest
    from graflow_testkit.checkpoint_stores import CheckpointStoreConformance
    from my_plugin import MyStore

    class TestMyStore(CheckpointStoreConformance):
        xfail_tests = {"test_overwrite_is_atomic_for_readers": "the backend has no atomic put"}

        @pytest.fixture
        def store(self):
            return MyStore()

        @pytest.fixture
        def location(self, store):
            yield "myscheme://bucket/conformance-" + uuid.uuid4().hex   # fresh and empty
            # (clean up here)

``location`` must be a fresh, empty, folder-like address that ``store`` serves (its scheme must be
registered through ``graflow_register_checkpoint_stores``, since the round-trip tests go through
:class:`~graflow.core.checkpoint.CheckpointManager`). ``xfail_tests`` maps test names to the reason
they are expected to fail; they run as strict xfails, so a test that starts passing is reported.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from graflow.checkpoint_store import PARTS, CheckpointStore
from graflow.core.checkpoint import CheckpointManager
from graflow.exceptions import CheckpointError
from graflow_testkit.expected_failures import ExpectedFailures

PKL, STATE, META = PARTS


def _record(ctx: Any, name: str) -> None:
    ctx.get_channel().append("conformance.ran", name)


def _bump(ctx: Any) -> None:
    """Loop task: counts in the channel, checkpoints at the second visit, iterates five times."""
    channel = ctx.get_channel()
    _record(ctx, "loop")
    count = channel.atomic_add("conformance.count", 1)
    if count == 2:
        ctx.checkpoint(metadata={"at": count}, path=channel.get("conformance.path"))
    if count < 5:
        ctx.next_iteration()


def _build_workflow(name: str) -> Any:
    from graflow.core.task import TaskWrapper
    from graflow.core.workflow import workflow

    with workflow(name) as wf:
        first = TaskWrapper("first", lambda ctx: _record(ctx, "first"), inject_context=True)
        loop = TaskWrapper("loop", _bump, inject_context=True)
        last = TaskWrapper("last", lambda ctx: _record(ctx, "last") or "done", inject_context=True)
        first >> loop >> last
    return wf


class CheckpointStoreConformance(ExpectedFailures):
    """Tests every :class:`~graflow.checkpoint_store.CheckpointStore` must pass."""



    @pytest.fixture
    def store(self) -> CheckpointStore:
        raise NotImplementedError("subclasses provide a 'store' fixture")

    @pytest.fixture
    def location(self) -> str:
        raise NotImplementedError("subclasses provide a 'location' fixture (a fresh, empty address)")

    def _commit(self, store: CheckpointStore, base: str, payload: bytes = b"pkl") -> None:
        store.write_part(base, PKL, payload)
        store.write_part(base, STATE, b"{}")
        store.write_part(base, META, b'{"schema_version": "2.0"}')

    # -- the raw contract -----------------------------------------------------------------------------
    def test_declares_schemes(self, store: CheckpointStore) -> None:
        assert isinstance(store.schemes, tuple) and store.schemes
        assert all(isinstance(s, str) for s in store.schemes)

    def test_write_then_read_every_part(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "c1")
        payloads = {PKL: bytes(range(256)) * 4096, STATE: b'{"steps": 1}', META: b'{"id": "c1"}'}
        for suffix, data in payloads.items():
            store.write_part(base, suffix, data)
        for suffix, data in payloads.items():
            assert store.read_part(base, suffix) == data

    def test_empty_part_round_trips(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "empty")
        store.write_part(base, STATE, b"")
        assert store.read_part(base, STATE) == b""

    def test_read_missing_part_raises_file_not_found(self, store: CheckpointStore, location: str) -> None:
        with pytest.raises(FileNotFoundError):
            store.read_part(store.join(location, "nope"), PKL)

    def test_list_of_missing_location_is_empty(self, store: CheckpointStore, location: str) -> None:
        assert store.list_bases(store.join(location, "never-written")) == []

    def test_list_returns_committed_bases(self, store: CheckpointStore, location: str) -> None:
        bases = [store.join(location, name) for name in ("a", "b", "c")]
        for base in bases:
            self._commit(store, base)
        assert sorted(store.list_bases(location)) == sorted(bases)

    def test_uncommitted_base_is_not_listed(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "half")
        store.write_part(base, PKL, b"pkl")
        store.write_part(base, STATE, b"{}")
        assert store.list_bases(location) == []
        store.write_part(base, META, b"{}")
        assert store.list_bases(location) == [base]

    def test_list_is_not_recursive(self, store: CheckpointStore, location: str) -> None:
        self._commit(store, store.join(location, "top"))
        self._commit(store, store.join(store.join(location, "sub"), "deep"))
        assert store.list_bases(location) == [store.join(location, "top")]

    def test_overwrite_replaces_content(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "o")
        store.write_part(base, PKL, b"old" * 1000)
        store.write_part(base, PKL, b"new")
        assert store.read_part(base, PKL) == b"new"

    def test_overwrite_is_atomic_for_readers(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "race")
        size = 1 << 20
        old, new = b"a" * size, b"b" * size
        store.write_part(base, PKL, old)
        stop = threading.Event()
        torn: list[int] = []

        def reader() -> None:
            while not stop.is_set():
                data = store.read_part(base, PKL)
                if data not in (old, new):
                    torn.append(len(data))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for i in range(20):
                store.write_part(base, PKL, new if i % 2 == 0 else old)
        finally:
            stop.set()
            thread.join()
        assert torn == [], f"readers saw {len(torn)} torn or partial writes"

    def test_delete_removes_every_part(self, store: CheckpointStore, location: str) -> None:
        base = store.join(location, "d")
        keep = store.join(location, "k")
        self._commit(store, base)
        self._commit(store, keep)
        store.delete(base)
        assert store.list_bases(location) == [keep]
        for suffix in PARTS:
            with pytest.raises(FileNotFoundError):
                store.read_part(base, suffix)
        assert store.read_part(keep, PKL) == b"pkl"

    def test_delete_of_missing_checkpoint_is_quiet(self, store: CheckpointStore, location: str) -> None:
        store.delete(store.join(location, "ghost"))

    # -- through CheckpointManager ----------------------------------------------------------------------
    def _run_interrupted(self, location: str, base: str) -> Any:
        """Run the sample workflow to completion once, checkpointing inside the loop; return the context."""
        from graflow.core.context import ExecutionContext
        from graflow.core.engine import WorkflowEngine

        wf = _build_workflow("conformance")
        ctx = ExecutionContext.create(wf.graph, max_steps=100)
        ctx.channel.set("conformance.path", base)
        WorkflowEngine().execute(ctx)
        return ctx

    def test_manager_round_trip_resumes_where_it_stopped(self, store: CheckpointStore, location: str) -> None:
        from graflow.core.engine import WorkflowEngine

        base = store.join(location, "wf")
        full = self._run_interrupted(location, base)
        assert full.last_checkpoint_path == base + PKL
        ctx, meta = CheckpointManager.resume_from_checkpoint(base + PKL)
        assert meta.user_metadata["at"] == 2
        assert meta.user_metadata["task_id"] == "loop"
        assert meta.user_metadata["mode"] == "deferred"
        assert meta.session_id == full.session_id
        # At the checkpoint: first + two loop visits done, the third loop visit pending.
        assert ctx.channel.get("conformance.ran") == ["first", "loop", "loop"]
        assert ctx.task_queue.to_list() == ["loop"]
        assert ctx.cycle_counts["loop"] == 2
        result = WorkflowEngine().execute(ctx)
        assert result == "done"
        assert ctx.channel.get("conformance.ran") == full.channel.get("conformance.ran")
        assert ctx.channel.get("conformance.count") == 5
        assert ctx.cycle_counts == full.cycle_counts

    def test_manager_lists_latest_and_prunes(self, store: CheckpointStore, location: str) -> None:
        from graflow.core.context import ExecutionContext

        wf = _build_workflow("conformance-list")
        ctx = ExecutionContext.create(wf.graph)
        paths = []
        for i in range(4):
            ctx.steps = i
            path, _ = CheckpointManager.create_checkpoint(ctx, path=store.join(location, f"c{i}"), metadata={"i": i})
            paths.append(path)
        listed = CheckpointManager.list_checkpoints(location)
        assert [m.user_metadata["i"] for m in listed] == [3, 2, 1, 0]
        assert [m.path for m in listed] == paths[::-1]
        latest = CheckpointManager.latest(location)
        assert latest is not None and latest.path == paths[3]
        deleted = CheckpointManager.prune(location, keep_last=2)
        assert sorted(deleted) == sorted(paths[:2])
        assert [m.user_metadata["i"] for m in CheckpointManager.list_checkpoints(location)] == [3, 2]

    def test_manager_ignores_uncommitted_checkpoint(self, store: CheckpointStore, location: str) -> None:
        from graflow.core.context import ExecutionContext

        wf = _build_workflow("conformance-half")
        ctx = ExecutionContext.create(wf.graph)
        good, _ = CheckpointManager.create_checkpoint(ctx, path=store.join(location, "good"))
        half = store.join(location, "zz-half")
        store.write_part(half, PKL, store.read_part(good[: -len(PKL)], PKL))
        store.write_part(half, STATE, b"{}")
        assert [m.path for m in CheckpointManager.list_checkpoints(location)] == [good]
        with pytest.raises(CheckpointError, match="missing"):
            CheckpointManager.resume_from_checkpoint(half)

    def test_manager_detects_tampered_part(self, store: CheckpointStore, location: str) -> None:
        from graflow.core.context import ExecutionContext

        wf = _build_workflow("conformance-tamper")
        ctx = ExecutionContext.create(wf.graph)
        path, _ = CheckpointManager.create_checkpoint(ctx, path=store.join(location, "t"))
        base = path[: -len(PKL)]
        data = bytearray(store.read_part(base, PKL))
        data[len(data) // 2] ^= 0xFF
        store.write_part(base, PKL, bytes(data))
        with pytest.raises(CheckpointError, match="checksum"):
            CheckpointManager.resume_from_checkpoint(path)

    def test_manager_default_name_inside_location(self, store: CheckpointStore, location: str) -> None:
        from graflow.core.context import ExecutionContext

        wf = _build_workflow("conformance-auto")
        ctx = ExecutionContext.create(wf.graph)
        folder = location if location.endswith(("/", os.sep)) else location + "/"
        path, meta = CheckpointManager.create_checkpoint(ctx, path=folder)
        assert meta.checkpoint_id in path
        assert [m.path for m in CheckpointManager.list_checkpoints(location)] == [path]


__all__ = ["CheckpointStoreConformance"]
