"""Pruning stale runner bundles: the pure rule, and the local caches that apply it when they store a bundle."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from graflow.core.handlers.subprocess import store_bundle
from graflow.remote import bundle as bundle_module
from graflow.remote.bundle import (
    PRUNE_KEEP,
    PRUNE_MAX_AGE,
    PRUNE_TMP_AGE,
    RunnerBundle,
    is_bundle_name,
    is_bundle_temporary,
    prune_folder,
    stale_bundles,
    store_once,
)

NOW = 1_700_000_000.0
DAY = 86400.0


def runner(n: int) -> str:
    """A distinct shipped-runner name, ``graflow-runner-<16 hex>.pyz``."""
    return f"graflow-runner-{hashlib.sha256(str(n).encode()).hexdigest()[:16]}.pyz"


def cached(n: int) -> str:
    """A distinct local build-cache name, ``<64 hex>.pyz``."""
    return f"{hashlib.sha256(f'src{n}'.encode()).hexdigest()}.pyz"


def temporary(name: str, suffix: str = "a1b2c3d4e5f6") -> str:
    return f".{name}.{suffix}.tmp"


# -- which names are graflow's ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [runner(1), cached(1)])
def test_graflow_bundle_names_are_recognised(name: str) -> None:
    assert is_bundle_name(name)
    assert is_bundle_temporary(temporary(name))
    assert is_bundle_temporary(temporary(name, "k3_x9zqa"))  # mkstemp's alphabet (local temporaries)
    assert not is_bundle_temporary(name)
    assert not is_bundle_name(temporary(name))


@pytest.mark.parametrize(
    "name",
    [
        "graflow-runner-0123456789abcdef.zip",  # wrong suffix
        "graflow-runner-0123456789abcde.pyz",  # 15 hex digits
        "graflow-runner-0123456789ABCDEF.pyz",  # graflow writes lower-case hex
        "graflow-runner-0123456789abcdef.pyz.bak",
        "my-graflow-runner-0123456789abcdef.pyz",
        "runner.pyz",
        "a" * 63 + ".pyz",
        "g" * 64 + ".pyz",
        "notes.txt",
        ".bashrc",
        ".tmp-abc12345",
        ".notes.txt.abcdef.tmp",  # a temporary, but not of a bundle
        ".graflow-runner-0123456789abcdef.pyz.tmp",  # no random part
        ".graflow-runner-0123456789abcdef.pyz.ab/cd.tmp",
    ],
)
def test_foreign_names_are_never_bundles_nor_temporaries(name: str) -> None:
    assert not is_bundle_name(name)
    assert not is_bundle_temporary(name)
    # ... so even ancient, such a file is never returned
    assert stale_bundles([(name, NOW - 1000 * DAY)], now=NOW, keep=0, max_age=0, tmp_age=0) == []


# -- the rule ---------------------------------------------------------------------------------------------
def test_old_bundles_beyond_the_newest_three_are_stale() -> None:
    entries = [(runner(n), NOW - (10 + n) * DAY) for n in range(6)]  # all older than a week; 0 is newest
    assert stale_bundles(entries, now=NOW) == sorted([runner(3), runner(4), runner(5)])


def test_the_newest_n_are_kept_whatever_their_age() -> None:
    entries = [(runner(n), NOW - (100 + n) * DAY) for n in range(5)]
    assert stale_bundles(entries, now=NOW, keep=1) == sorted(runner(n) for n in range(1, 5))
    assert stale_bundles(entries, now=NOW, keep=5) == []
    assert stale_bundles(entries, now=NOW, keep=0) == sorted(runner(n) for n in range(5))


def test_young_bundles_are_kept_even_beyond_the_newest_n() -> None:
    entries = [(runner(n), NOW - n * DAY) for n in range(10)]  # 0..9 days old
    # beyond the newest three, only those older than 7 days (8 and 9) go
    assert stale_bundles(entries, now=NOW) == sorted([runner(8), runner(9)])
    # exactly max_age old is not older than max_age
    assert stale_bundles([(runner(n), NOW - PRUNE_MAX_AGE) for n in range(5)], now=NOW, keep=0) == []
    assert stale_bundles([(runner(1), NOW - PRUNE_MAX_AGE - 1)], now=NOW, keep=0) == [runner(1)]


def test_both_name_shapes_share_one_ranking() -> None:
    entries = [(cached(1), NOW - 20 * DAY), (runner(1), NOW - 30 * DAY), (cached(2), NOW - 40 * DAY)]
    assert stale_bundles(entries, now=NOW, keep=1) == sorted([runner(1), cached(2)])


def test_the_current_bundle_is_never_stale() -> None:
    current = runner(99)
    # even when it is the oldest file of the folder and nothing is kept by rank
    entries = [(current, NOW - 400 * DAY)] + [(runner(n), NOW - (8 + n) * DAY) for n in range(4)]
    assert stale_bundles(entries, now=NOW, current=current, keep=0) == sorted(runner(n) for n in range(4))
    assert current not in stale_bundles(entries, now=NOW, current=current)
    # a fresh current bundle takes one of the newest places
    entries = [(current, NOW)] + [(runner(n), NOW - (8 + n) * DAY) for n in range(4)]
    assert stale_bundles(entries, now=NOW, current=current, keep=2) == sorted([runner(1), runner(2), runner(3)])


def test_old_temporaries_are_stale_young_ones_are_kept() -> None:
    old_remote = temporary(runner(1))
    old_local = temporary(cached(1), "q8_zk2mx")
    young = temporary(runner(2), "ffffffffffff")
    current_upload = temporary(runner(3), "000000000000")
    entries = [
        (old_remote, NOW - PRUNE_TMP_AGE - 60),
        (old_local, NOW - 3 * DAY),
        (young, NOW - 3600),
        (current_upload, NOW),
    ]
    assert stale_bundles(entries, now=NOW) == sorted([old_remote, old_local])
    # temporaries take no place among the kept bundles, and keep does not protect them
    assert stale_bundles(entries, now=NOW, keep=100) == sorted([old_remote, old_local])
    assert stale_bundles(entries, now=NOW, tmp_age=0) == sorted([old_remote, old_local, young])


def test_unknown_and_future_mtimes_are_never_stale() -> None:
    entries = [
        (runner(1), None),
        (temporary(runner(2)), None),
        (runner(3), NOW + 30 * DAY),  # clock skew: "from the future"
        (temporary(runner(4)), NOW + 30 * DAY),
    ]
    assert stale_bundles(entries, now=NOW, keep=0, max_age=0, tmp_age=0) == []


def test_a_mixed_folder() -> None:
    current = runner(0)
    foreign = [("notes.txt", NOW - 900 * DAY), ("graflow.log", NOW - 900 * DAY), (".tmp-k2j3h4g5", NOW - 900 * DAY)]
    old = [(runner(n), NOW - (20 + n) * DAY) for n in range(1, 6)]
    young = [(cached(n), NOW - n * 3600) for n in range(1, 3)]
    temps = [(temporary(runner(7)), NOW - 2 * DAY), (temporary(runner(8)), NOW - 60)]
    entries = [(current, NOW), *foreign, *old, *young, *temps]
    # the three newest are current + the two young cached ones; every old runner goes
    assert stale_bundles(entries, now=NOW, current=current) == sorted(
        [name for name, _ in old] + [temporary(runner(7))]
    )
    # entries may be any iterable (a generator is read once)
    assert stale_bundles(iter(entries), now=NOW, current=current) == stale_bundles(entries, now=NOW, current=current)


@pytest.mark.parametrize("bad", [{"keep": -1}, {"max_age": -1.0}, {"tmp_age": -5}])
def test_negative_limits_are_refused_with_a_hint(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="pass 0 to turn a limit off"):
        stale_bundles([(runner(1), NOW - 100 * DAY)], now=NOW, **bad)


def test_defaults_are_generous() -> None:
    # a runner that is still running reopens its zip lazily: deletion relies on a generous age
    assert PRUNE_KEEP >= 2
    assert PRUNE_MAX_AGE >= 7 * DAY
    assert PRUNE_TMP_AGE >= DAY


# -- the local caches ---------------------------------------------------------------------------------------
def plant(folder: Path, name: str, age: float, data: bytes = b"x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_storing_a_new_bundle_prunes_the_build_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert bundle_module.cache_dir() == tmp_path
    folder = tmp_path / "bundles"
    old = [plant(folder, cached(n), (30 + n) * DAY) for n in range(5)]
    young = plant(folder, cached(50), 2 * DAY)
    old_temp = plant(folder, temporary(cached(60), "ab_cd123"), 2 * DAY)
    young_temp = plant(folder, temporary(cached(61), "ef_gh456"), 60)
    foreign = [plant(folder, "README.txt", 900 * DAY), plant(folder, ".tmp-zz99yy88", 900 * DAY)]
    (folder / cached(70)).mkdir()  # a folder with a bundle's name is not a file: left alone
    os.utime(folder / cached(70), (0, 0))

    built = bundle_module._load_or_build()  # the real path: builds, then stores under the source digest

    names = {p.name for p in folder.iterdir()}
    stored = [name for name in names if is_bundle_name(name) and (folder / name).is_file()]
    current = [name for name in stored if (folder / name).read_bytes() == built.data]
    assert len(current) == 1
    # kept: current, the young one, and the newest old one (3 newest); the other four old ones went
    assert names == {
        current[0],
        young.name,
        old[0].name,
        young_temp.name,
        cached(70),
        *(path.name for path in foreign),
    }
    assert not old_temp.exists()
    # the next process finds the stored bytes and neither rebuilds nor prunes
    plant(folder, cached(80), 40 * DAY)
    assert bundle_module._load_or_build().data == built.data
    assert (folder / cached(80)).exists()


def test_the_subprocess_runner_copy_prunes_its_folder(tmp_path: Path) -> None:
    old = [plant(tmp_path, runner(n), (10 + n) * DAY) for n in range(5)]
    foreign = plant(tmp_path, "graflow-runner-notes.txt", 100 * DAY)
    data = b"runner bytes"
    bundle = RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())
    path = store_bundle(bundle, tmp_path)
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [bundle.filename, old[0].name, old[1].name, foreign.name]
    )
    # storing an existing file again writes nothing and prunes nothing
    late = plant(tmp_path, runner(42), 300 * DAY)
    assert store_bundle(bundle, tmp_path) == path
    assert late.exists()


def test_store_once_leaves_no_temporary_and_ignores_foreign_names(tmp_path: Path) -> None:
    ancient = plant(tmp_path, "runner.pyz.old", 900 * DAY)
    path = store_once(tmp_path, "runner.pyz", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, ancient.name])


def test_pruning_errors_never_fail_storing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a folder that cannot be listed: nothing deleted, a debug message, no exception
    with caplog.at_level(logging.DEBUG, logger="graflow.remote"):
        assert prune_folder(tmp_path / "missing", current=None) == []
    assert any("cannot list" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


def test_a_stale_file_that_cannot_be_deleted_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = plant(tmp_path, runner(1), 40 * DAY)  # the oldest: stale
    gone = [plant(tmp_path, runner(n), (30 + n) * DAY) for n in range(2, 6)]
    real_unlink = os.unlink

    def unlink(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        if Path(path).name == stuck.name:
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle_module.os, "unlink", unlink)
    with caplog.at_level(logging.DEBUG, logger="graflow.remote"):
        deleted = prune_folder(tmp_path)
    monkeypatch.undo()
    # runner 2..4 are the newest three; runner 5 and the stuck one are stale: one deleted, one skipped
    assert deleted == [gone[3].name]
    assert stuck.exists() and all(p.exists() for p in gone[:3]) and not gone[3].exists()
    assert any("cannot delete stale" in r.getMessage() and stuck.name in r.getMessage() for r in caplog.records)
