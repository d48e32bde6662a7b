"""The distributions as users get them: built, checked, installed from wheels into a fresh venv.

Builds the wheel and sdist of graflow-core, graflow-testkit and the example plugin (the wheel is
built from the sdist, so a file missing from the sdist fails here), runs ``twine check`` on them,
then installs the wheels into a virtualenv outside the repository and runs a workflow and the
``graflow plugins --json`` console script from a directory outside the repository too. Nothing
here imports the working tree: what passes is what ``pip install`` would give a user.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# distribution -> (project folder, version file inside it, import name, entry-point name)
DISTRIBUTIONS: dict[str, tuple[str, str, str, str | None]] = {
    "graflow-core": ("packages/graflow-core", "src/graflow/__about__.py", "graflow", "core"),
    "graflow-testkit": ("packages/graflow-testkit", "src/graflow_testkit/__about__.py", "graflow_testkit", None),
    "graflow-redis": ("packages/graflow-redis", "src/graflow_redis/__about__.py", "graflow_redis", "redis"),
    "graflow-docker": ("packages/graflow-docker", "src/graflow_docker/__about__.py", "graflow_docker", "docker"),
    "graflow-ssh": ("packages/graflow-ssh", "src/graflow_ssh/__about__.py", "graflow_ssh", "ssh"),
    "graflow-s3-checkpoint": (
        "packages/graflow-s3-checkpoint",
        "src/graflow_s3_checkpoint/__about__.py",
        "graflow_s3_checkpoint",
        "s3",
    ),
    "graflow-example-plugin": (
        "examples/plugins/graflow-example-plugin",
        "src/graflow_example_plugin/__about__.py",
        "graflow_example_plugin",
        "example",
    ),
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class Built:
    version: str
    wheel: Path
    sdist: Path


def _about_version(dist: str) -> str:
    folder, about, _, _ = DISTRIBUTIONS[dist]
    tree = ast.parse((REPO / folder / about).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"no __version__ in {folder}/{about}")


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything that would let the working tree leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GRAFLOW_DISABLE_PLUGINS", "GRAFLOW_TRACE_PLUGINS"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"command failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def _outside_repo(path: Path) -> Path:
    assert not path.resolve().is_relative_to(REPO), f"{path} must be outside the repository {REPO}"
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    dist_dir = _outside_repo(tmp_path_factory.mktemp("dist"))

    def build(dist: str) -> Path:
        target = dist_dir / dist
        # No --sdist/--wheel: build makes the sdist, then the wheel from the unpacked sdist; each in
        # an isolated environment that uv fills with the build backend (pip does the same, slower).
        folder = REPO / DISTRIBUTIONS[dist][0]
        _run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(target), str(folder)], cwd=dist_dir)
        return target

    with ThreadPoolExecutor(max_workers=len(DISTRIBUTIONS)) as pool:
        targets = dict(zip(DISTRIBUTIONS, pool.map(build, DISTRIBUTIONS)))
    out: dict[str, Built] = {}
    for dist, target in targets.items():
        wheels = sorted(target.glob("*.whl"))
        sdists = sorted(target.glob("*.tar.gz"))
        assert len(wheels) == 1, wheels
        assert len(sdists) == 1, sdists
        out[dist] = Built(_about_version(dist), wheels[0], sdists[0])
    return out


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    bin: Path
    workdir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = _clean_env(**extra)
        env["VIRTUAL_ENV"] = str(self.root)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture(scope="module")
def venv(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = _outside_repo(tmp_path_factory.mktemp("venv"))
    workdir = _outside_repo(tmp_path_factory.mktemp("work"))
    _run([sys.executable, "-m", "venv", str(root)], cwd=workdir)
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    env = _clean_env()
    # The wheels are named on the command line, so Graflow's own distributions can only come from
    # them; their third-party dependencies (pluggy, cloudpickle, pytest, redis, docker, paramiko,
    # boto3) come from the index.
    wheels = [str(b.wheel) for b in built.values()]
    _run([str(python), "-m", "pip", "install", "--no-cache-dir", *wheels], cwd=workdir, env=env)
    return Venv(root, python, bin_dir, workdir)


# -- building ------------------------------------------------------------------------------------------


def test_each_distribution_builds_with_the_version_from_its_about_file(built: dict[str, Built]) -> None:
    for dist, b in built.items():
        stem = dist.replace("-", "_")
        assert b.wheel.name == f"{stem}-{b.version}-py3-none-any.whl"
        assert b.sdist.name == f"{stem}-{b.version}.tar.gz"
        with zipfile.ZipFile(b.wheel) as zf:
            metadata = zf.read(f"{stem}-{b.version}.dist-info/METADATA").decode()
        assert f"\nName: {dist}\n" in metadata
        assert f"\nVersion: {b.version}\n" in metadata
        assert "Requires-Python: >=3.10" in metadata
    # The versions are independent: each comes from its own package, not from one shared number.
    assert built["graflow-example-plugin"].version == _about_version("graflow-example-plugin")


def test_twine_check_passes_on_every_artifact(built: dict[str, Built], tmp_path: Path) -> None:
    files = [str(p) for b in built.values() for p in (b.wheel, b.sdist)]
    out = _run([sys.executable, "-m", "twine", "check", "--strict", *files], cwd=tmp_path)
    assert out.count("PASSED") == len(files), out


def test_wheels_hold_their_package_and_entry_points(built: dict[str, Built]) -> None:
    for dist, b in built.items():
        _, _, import_name, ep_name = DISTRIBUTIONS[dist]
        stem = dist.replace("-", "_")
        with zipfile.ZipFile(b.wheel) as zf:
            names = zf.namelist()
            assert f"{import_name}/__about__.py" in names
            assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
            assert not [n for n in names if n.startswith(("tests/", "src/"))], "wheel must hold only the package"
            entry_points = zf.read(f"{stem}-{b.version}.dist-info/entry_points.txt").decode() if ep_name else ""
        if ep_name:
            section = entry_points.split("[graflow]", 1)[1]
            assert f"{ep_name} = " in section, entry_points
    with zipfile.ZipFile(built["graflow-core"].wheel) as zf:
        core_eps = zf.read(f"graflow_core-{built['graflow-core'].version}.dist-info/entry_points.txt").decode()
    assert "graflow = graflow.cli.main:main" in core_eps


def test_sdists_hold_sources_docs_and_tests(built: dict[str, Built]) -> None:
    for dist, b in built.items():
        folder, about, _, _ = DISTRIBUTIONS[dist]
        prefix = f"{dist.replace('-', '_')}-{b.version}/"
        with tarfile.open(b.sdist) as tf:
            names = {m.name.removeprefix(prefix) for m in tf.getmembers()}
        for required in ("pyproject.toml", "README.md", "CHANGELOG.md", about, "PKG-INFO"):
            assert required in names, f"{dist} sdist lacks {required}"
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], f"{dist} sdist holds bytecode"
        if (REPO / folder / "tests").is_dir() and any((REPO / folder / "tests").glob("test_*.py")):
            assert any(n.startswith("tests/test_") for n in names), f"{dist} sdist lacks its tests"


# -- installed from the wheels ---------------------------------------------------------------------------

WORKFLOW_SCRIPT = """
import json

import graflow
from graflow import task, workflow
from graflow.exceptions import ParallelGroupError

report = {"graflow_file": graflow.__file__, "graflow_version": graflow.__version__}

with workflow("packaging_quorum_ok") as wf:

    @task(handler="shout")
    def greet() -> str:
        return "hello"

    @task(handler="shout", handler_kwargs={"suffix": "!"})
    def excite(greet: str) -> str:
        return greet + " world"

    @task
    def vote_a() -> int:
        return 1

    @task
    def vote_b() -> int:
        return 2

    @task
    def vote_c() -> int:
        raise RuntimeError("vote_c is down")

    @task
    def tally(excite: str, vote_a: int, vote_b: int) -> str:
        return f"{excite} {vote_a + vote_b}"

    votes = vote_a | vote_b | vote_c
    votes.with_policy("quorum")
    greet >> excite >> votes >> tally

report["ok"] = wf.execute()

with workflow("packaging_quorum_fail") as wf2:

    @task
    def only_ok() -> int:
        return 1

    @task
    def down_1() -> int:
        raise RuntimeError("down_1 broke")

    @task
    def down_2() -> int:
        raise RuntimeError("down_2 broke")

    @task
    def never() -> str:
        return "must not run"

    group = only_ok | down_1 | down_2
    group.with_policy("quorum")
    group >> never

try:
    report["fail"] = {"returned": wf2.execute()}
except ParallelGroupError as exc:
    report["fail"] = {
        "message": str(exc),
        "failed": sorted(tid for tid, _ in exc.failed_tasks),
        "succeeded": sorted(exc.successful_tasks),
    }

print(json.dumps(report))
"""


def _last_json_line(stdout: str) -> object:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


def test_installed_wheels_come_from_the_wheels_not_the_tree(venv: Venv, built: dict[str, Built]) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from importlib.metadata import distribution
        out = {}
        for name in json.loads(sys.argv[1]):
            d = distribution(name)
            out[name] = {"version": d.version, "direct_url": d.read_text("direct_url.json")}
        print(json.dumps(out))
        """
    )
    names = json.dumps(sorted(built))
    info = _last_json_line(_run([str(venv.python), "-c", script, names], cwd=venv.workdir, env=venv.env()))
    assert isinstance(info, dict)
    for dist, b in built.items():
        assert info[dist]["version"] == b.version
        direct_url = json.loads(info[dist]["direct_url"] or "{}")
        assert "dir_info" not in direct_url, f"{dist} was installed from a folder: {direct_url}"
        assert direct_url.get("url", "").endswith(b.wheel.name), direct_url


def test_installed_plugin_runs_a_workflow_outside_the_repository(venv: Venv, built: dict[str, Built]) -> None:
    script = venv.workdir / "flow.py"
    script.write_text(WORKFLOW_SCRIPT, encoding="utf-8")
    report = _last_json_line(_run([str(venv.python), str(script)], cwd=venv.workdir, env=venv.env()))
    assert isinstance(report, dict)

    graflow_file = Path(report["graflow_file"]).resolve()
    assert graflow_file.is_relative_to(venv.root.resolve()), graflow_file
    assert report["graflow_version"] == built["graflow-core"].version

    # shout upper-cased both results (and appended the suffix); quorum let 2 of 3 through.
    assert report["ok"] == "HELLO WORLD! 3"

    fail = report["fail"]
    assert "returned" not in fail, f"a 1-of-3 group passed the quorum policy: {fail}"
    assert "quorum" in fail["message"]
    assert fail["failed"] == ["down_1", "down_2"]
    assert fail["succeeded"] == ["only_ok"]


def test_graflow_plugins_json_lists_the_installed_plugin(venv: Venv, built: dict[str, Built]) -> None:
    out = _run([str(venv.bin / "graflow"), "plugins", "--json"], cwd=venv.workdir, env=venv.env())
    listing = json.loads(out)
    assert isinstance(listing, list)
    for entry in listing:
        assert set(entry) >= {"name", "distribution", "version", "hooks", "registers", "error"}, entry
    by_dist = {entry["distribution"]: entry for entry in listing}

    example = by_dist["graflow-example-plugin"]
    assert example["name"] == "example"
    assert example["version"] == built["graflow-example-plugin"].version
    assert example["error"] is None
    assert example["registers"] == {"task_handler": ["shout"], "group_policy": ["quorum"]}
    assert set(example["hooks"]) >= {"graflow_register_task_handlers", "graflow_register_group_policies"}

    core = by_dist["graflow-core"]
    assert core["name"] == "core"
    assert core["version"] == built["graflow-core"].version
    assert core["error"] is None
    assert "direct" in core["registers"]["task_handler"]
    assert "shout" not in core["registers"]["task_handler"]
    assert "quorum" not in core["registers"]["group_policy"]


def test_disabling_the_installed_plugin_hides_its_names(venv: Venv) -> None:
    script = textwrap.dedent(
        """
        from graflow import plugins
        from graflow.exceptions import PluginNotFoundError
        try:
            plugins.lookup("task_handler", "shout")
        except PluginNotFoundError as exc:
            print("missing:", exc)
        else:
            print("found")
        """
    )
    for blocked in ("example", "graflow-example-plugin"):
        out = _run([str(venv.python), "-c", script], cwd=venv.workdir, env=venv.env(GRAFLOW_DISABLE_PLUGINS=blocked))
        assert out.startswith("missing:"), out
        assert "shout" in out and "direct" in out, out
    out = _run([str(venv.python), "-c", script], cwd=venv.workdir, env=venv.env())
    assert out.strip() == "found"
