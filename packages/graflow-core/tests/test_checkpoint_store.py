"""The local checkpoint store: conformance suite, file layout, bad input and retention."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import pytest

from graflow import plugins
from graflow.checkpoint_store import LocalFileCheckpointStore
from graflow.core.checkpoint import SCHEMA_VERSION, CheckpointManager, store_for
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.task import TaskWrapper
from graflow.core.workflow import workflow
from graflow.exceptions import CheckpointError, ConfigError, PluginNotFoundError
from graflow_testkit.checkpoint_stores import CheckpointStoreConformance


class TestLocalFileStoreConformance(CheckpointStoreConformance):
    @pytest.fixture
    def store(self) -> LocalFileCheckpointStore:
        return LocalFileCheckpointStore()

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        return str(tmp_path / "ckpts")


class TestFileUrlConformance(CheckpointStoreConformance):
    """The same store through ``file://`` addresses."""

    @pytest.fixture
    def store(self) -> LocalFileCheckpointStore:
        return LocalFileCheckpointStore()

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        return "file://" + str(tmp_path / "url ckpts")


def add_one(value: int = 0) -> int:
    return value + 1


def make_ctx(n: int = 3) -> ExecutionContext:
    with workflow("small") as wf:
        tasks = [TaskWrapper(f"t{i}", add_one) for i in range(n)]
        for a, b in itertools.pairwise(tasks):
            a >> b
    return ExecutionContext.create(wf.graph)


def checkpoint(tmp_path: Path, name: str = "c", **kwargs: object) -> tuple[str, str]:
    path, _ = CheckpointManager.create_checkpoint(make_ctx(), path=str(tmp_path / name), **kwargs)
    return path, path[: -len(".pkl")]


# -- layout ---------------------------------------------------------------------------------------------
def test_three_parts_with_upstream_field_names(tmp_path: Path) -> None:
    path, base = checkpoint(tmp_path, metadata={"stage": 1})
    assert path == base + ".pkl"
    assert sorted(os.listdir(tmp_path)) == ["c.meta.json", "c.pkl", "c.state.json"]
    state = json.loads(Path(base + ".state.json").read_text())
    for key in ("schema_version", "session_id", "steps", "completed_tasks", "pending_tasks", "cycle_counts"):
        assert key in state
    assert state["schema_version"] == SCHEMA_VERSION
    assert state["pending_tasks"] == ["t0"]
    meta = json.loads(Path(base + ".meta.json").read_text())
    for key in ("checkpoint_id", "session_id", "created_at", "steps", "user_metadata", "schema_version", "checksum"):
        assert key in meta
    assert meta["user_metadata"] == {"stage": 1, "mode": "manual"}
    assert meta["checksum"]["algorithm"] == "sha256"


def test_default_path_is_checkpoints_session_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = make_ctx()
    path, meta = CheckpointManager.create_checkpoint(ctx)
    assert path == os.path.join("checkpoints", ctx.session_id, meta.checkpoint_id) + ".pkl"
    assert (tmp_path / path).exists()
    assert ctx.last_checkpoint_path == path
    assert ctx.checkpoint_metadata["checkpoint_id"] == meta.checkpoint_id
    restored, _ = CheckpointManager.resume_from_checkpoint(path)
    assert restored.session_id == ctx.session_id


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    checkpoint(tmp_path)
    checkpoint(tmp_path)  # overwrite
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_any_part_path_resumes(tmp_path: Path) -> None:
    _, base = checkpoint(tmp_path)
    for given in (base, base + ".pkl", base + ".meta.json", base + ".state.json"):
        ctx, meta = CheckpointManager.resume_from_checkpoint(given)
        assert meta.path == base + ".pkl"
        assert ctx.task_queue.to_list() == ["t0"]


def test_compression_round_trip(tmp_path: Path) -> None:
    ctx = make_ctx()
    ctx.channel.set("big", "x" * 200_000)
    path, meta = CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "z"), compress=True)
    assert meta.compression == "zlib"
    assert os.path.getsize(path) < 50_000
    restored, _ = CheckpointManager.resume_from_checkpoint(path)
    assert restored.channel.get("big") == "x" * 200_000
    assert WorkflowEngine().execute(restored) == 1
    assert restored.completed_tasks == {"t0", "t1", "t2"}
    with pytest.raises(ConfigError, match="compression"):
        CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "b"), compress="brotli")


def test_scheme_picks_store_and_unknown_scheme_names_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(store_for(str(tmp_path)), LocalFileCheckpointStore)
    assert isinstance(store_for("file:///x"), LocalFileCheckpointStore)
    assert plugins.get_checkpoint_store_class("file") is LocalFileCheckpointStore
    # a scheme whose package is known but not installed (s3 and redis may be installed next to core)
    monkeypatch.setitem(plugins.KNOWN_PROVIDERS["checkpoint_store"], "nosuch", "graflow-nosuch-store")
    with pytest.raises(PluginNotFoundError, match="pip install graflow-nosuch-store"):
        CheckpointManager.create_checkpoint(make_ctx(), path="nosuch://bucket/run/c1")
    with pytest.raises(PluginNotFoundError, match="graflow-nosuch-store"):
        CheckpointManager.resume_from_checkpoint("nosuch://bucket/run/c1.pkl")
    with pytest.raises(PluginNotFoundError, match="unheard"):
        CheckpointManager.list_checkpoints("unheard://somewhere/")


def test_third_party_store_plugs_in_without_touching_core(tmp_path: Path) -> None:
    """A store registered through the hook serves its scheme for write, list and resume."""
    from graflow.checkpoint_store import CheckpointStore
    from graflow.hookspecs import hookimpl

    class MemStore(CheckpointStore):
        schemes = ("mem",)
        blobs: dict[str, bytes] = {}

        def write_part(self, base: str, suffix: str, data: bytes) -> None:
            self.blobs[base + suffix] = bytes(data)

        def read_part(self, base: str, suffix: str) -> bytes:
            try:
                return self.blobs[base + suffix]
            except KeyError:
                raise FileNotFoundError(base + suffix) from None

        def list_bases(self, location: str) -> list[str]:
            prefix = location.rstrip("/") + "/"
            return sorted(
                k[: -len(".meta.json")]
                for k in self.blobs
                if k.startswith(prefix) and k.endswith(".meta.json") and "/" not in k[len(prefix) :]
            )

        def delete(self, base: str) -> None:
            for suffix in (".meta.json", ".pkl", ".state.json"):
                self.blobs.pop(base + suffix, None)

    class Plugin:
        @hookimpl
        def graflow_register_checkpoint_stores(self) -> list[type]:
            return [MemStore]

    plugin = Plugin()
    plugins.register(plugin, name="test-mem-store")
    try:
        ctx = make_ctx()
        path, _ = CheckpointManager.create_checkpoint(ctx, path="mem://run/one")
        assert path == "mem://run/one.pkl"
        assert [m.path for m in CheckpointManager.list_checkpoints("mem://run")] == [path]
        restored, _ = CheckpointManager.resume_from_checkpoint(path)
        assert WorkflowEngine().execute(restored) == 1
        assert restored.completed_tasks == {"t0", "t1", "t2"}
    finally:
        plugins.unregister(plugin)


# -- bad input ------------------------------------------------------------------------------------------
def test_truncated_pickle_is_reported(tmp_path: Path) -> None:
    path, _ = checkpoint(tmp_path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pkl is truncated \(\d+ of \d+ bytes\)") as info:
        CheckpointManager.resume_from_checkpoint(path)
    assert info.value.path == path[:-4]


def test_tampered_pickle_fails_checksum(tmp_path: Path) -> None:
    path, _ = checkpoint(tmp_path)
    data = bytearray(Path(path).read_bytes())
    data[-5] ^= 0x01
    Path(path).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for .*c\.pkl"):
        CheckpointManager.resume_from_checkpoint(path)


def test_tampered_state_fails_checksum(tmp_path: Path) -> None:
    path, base = checkpoint(tmp_path)
    state = Path(base + ".state.json")
    state.write_text(state.read_text().replace('"steps":0', '"steps":9'))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for .*c\.state\.json"):
        CheckpointManager.resume_from_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pkl", ".state.json"])
def test_missing_part_is_named(tmp_path: Path, suffix: str) -> None:
    path, base = checkpoint(tmp_path)
    os.unlink(base + suffix)
    with pytest.raises(CheckpointError, match="part .*c" + re.escape(suffix) + " is missing"):
        CheckpointManager.resume_from_checkpoint(path)


def test_future_schema_version_is_refused(tmp_path: Path) -> None:
    path, base = checkpoint(tmp_path)
    meta_file = Path(base + ".meta.json")
    meta = json.loads(meta_file.read_text())
    future = f"{int(SCHEMA_VERSION.split('.')[0]) + 1}.0"
    meta["schema_version"] = future
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"schema_version .{future}. \(.*c\.meta\.json\).*newer Graflow"):
        CheckpointManager.resume_from_checkpoint(path)


def test_upstream_schema_version_is_refused(tmp_path: Path) -> None:
    path, base = checkpoint(tmp_path)
    meta_file = Path(base + ".meta.json")
    meta = json.loads(meta_file.read_text())
    meta["schema_version"] = "1.0"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"graflow 0\.x"):
        CheckpointManager.resume_from_checkpoint(path)


def test_damaged_meta_json_is_reported(tmp_path: Path) -> None:
    path, base = checkpoint(tmp_path)
    Path(base + ".meta.json").write_text('{"checkpoint_id": ')
    with pytest.raises(CheckpointError, match=r"c\.meta\.json is not valid JSON"):
        CheckpointManager.resume_from_checkpoint(path)


def test_half_written_checkpoint_is_never_offered(tmp_path: Path) -> None:
    good, _ = checkpoint(tmp_path, "a-good")
    _, half = checkpoint(tmp_path, "z-half")
    os.unlink(half + ".meta.json")  # the write stopped before the commit mark
    Path(str(tmp_path / "y.pkl.tmp-123-abcd")).write_bytes(b"partial")  # a temp file from a killed writer
    assert [m.path for m in CheckpointManager.list_checkpoints(str(tmp_path))] == [good]
    latest = CheckpointManager.latest(str(tmp_path))
    assert latest is not None and latest.path == good
    with pytest.raises(CheckpointError, match="meta part was never written"):
        CheckpointManager.resume_from_checkpoint(half)


def test_nonexistent_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint exists there"):
        CheckpointManager.resume_from_checkpoint(str(tmp_path / "nothing.pkl"))


def test_unpicklable_channel_value_is_a_clear_error(tmp_path: Path) -> None:
    import threading

    ctx = make_ctx()
    ctx.channel.set("lock", threading.Lock())
    with pytest.raises(CheckpointError, match="picklable"):
        CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / "bad"))
    assert CheckpointManager.list_checkpoints(str(tmp_path)) == []


# -- retention ------------------------------------------------------------------------------------------
def test_list_newest_first_and_prune(tmp_path: Path) -> None:
    ctx = make_ctx()
    # names sort the opposite way to creation time: ordering must come from the metadata
    paths = [CheckpointManager.create_checkpoint(ctx, path=str(tmp_path / f"c{9 - i}"))[0] for i in range(5)]
    assert [m.path for m in CheckpointManager.list_checkpoints(str(tmp_path))] == paths[::-1]
    assert CheckpointManager.prune(str(tmp_path), keep_last=2) == paths[:3][::-1]
    assert [m.path for m in CheckpointManager.list_checkpoints(str(tmp_path))] == paths[:2:-1]
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p)[:-4] + s for p in paths[3:] for s in (".pkl", ".state.json", ".meta.json")
    )
    assert CheckpointManager.prune(str(tmp_path), keep_last=0) == paths[3:][::-1]
    assert CheckpointManager.list_checkpoints(str(tmp_path)) == []
    assert CheckpointManager.latest(str(tmp_path)) is None
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointManager.prune(str(tmp_path), keep_last=-1)


def test_list_of_missing_location_is_empty(tmp_path: Path) -> None:
    assert CheckpointManager.list_checkpoints(str(tmp_path / "none")) == []
