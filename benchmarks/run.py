"""Run the Graflow benchmark suite and print ratios against floors measured in the same run.

Usage::

    python benchmarks/run.py [--quick] [--json PATH] [--only NAME ...] [--no-upstream] [--timeout SECONDS]

Every scenario runs in its own fresh subprocess (``benchmarks/scenarios.py NAME N``) once per implementation:

* ``graflow``: this repository, ``sys.executable`` with ``<repo>/packages/graflow-core/src`` on ``PYTHONPATH``
  (unless that copy of graflow is already importable);
* ``upstream-0.2.0``: ``graflow==0.2.0`` from PyPI in ``<repo>/.bench/upstream-venv``, created on demand.

A scenario that crashes makes the exit status non-zero; a missed target or a timeout does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CORE_SRC = REPO_ROOT / "packages" / "graflow-core" / "src"
SCENARIOS_PY = BENCH_DIR / "scenarios.py"
UPSTREAM_VENV = REPO_ROOT / ".bench" / "upstream-venv"
UPSTREAM_REQUIREMENT = "graflow==0.2.0"
UPSTREAM_VERSION = "0.2.0"

OURS = "graflow"
UPSTREAM = "upstream-0.2.0"

SCENARIO_NAMES = ("chain", "fanout", "iterate", "import", "hello")
FULL_SIZES: dict[str, tuple[int, ...]] = {
    "chain": (1_000, 10_000, 100_000),
    "fanout": (1_000,),
    "iterate": (10_000,),
    "import": (5,),
    "hello": (5,),
}
QUICK_SIZES: dict[str, tuple[int, ...]] = {
    "chain": (200, 1_000),
    "fanout": (100,),
    "iterate": (500,),
    "import": (3,),
    "hello": (3,),
}


@dataclass(frozen=True)
class Target:
    """An informational goal for one metric: ``value <= limit`` (or ``ratio <= limit`` when on_ratio)."""

    limit: float
    label: str
    on_ratio: bool = False
    strict: bool = False

    def met(self, value: float, ratio: float | None) -> bool | None:
        measured = ratio if self.on_ratio else value
        if measured is None:
            return None
        return measured < self.limit if self.strict else measured <= self.limit


TARGETS: dict[tuple[str, str], Target] = {
    ("chain", "overhead_us_per_task"): Target(5.0, "<= 5 us"),
    ("iterate", "overhead_us_per_iteration"): Target(5.0, "<= 5 us"),
    ("fanout", "us_per_member"): Target(2.0, "<= 2x pool", on_ratio=True),
    ("import", "import_ms"): Target(80.0, "< 80 ms", strict=True),
    ("hello", "process_ms"): Target(120.0, "< 120 ms", strict=True),
}


@dataclass
class Implementation:
    name: str
    python: str
    env: dict[str, str]
    description: str


@dataclass
class Outcome:
    """What one scenario subprocess produced."""

    scenario: str
    size: int
    implementation: str
    status: str  # "ok", "timeout", "error"
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# Interpreters
# ----------------------------------------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONHASHSEED"] = "0"
    return env


def ours_implementation() -> Implementation:
    """``sys.executable``, with the repository's source tree on PYTHONPATH unless it is already the one imported."""
    probe = subprocess.run(
        [sys.executable, "-c", "import graflow; print(graflow.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    imported = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 and probe.stdout.strip() else None
    if imported is not None and CORE_SRC.resolve() in imported.parents:
        return Implementation(OURS, sys.executable, env, f"{sys.executable} (graflow already importable)")
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(CORE_SRC) + (os.pathsep + existing if existing else "")
    return Implementation(OURS, sys.executable, env, f"{sys.executable} + PYTHONPATH={CORE_SRC}")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def upstream_installed(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('graflow'))"],
        capture_output=True,
        text=True,
        check=False,
        env=base_env(),
    )
    return check.returncode == 0 and check.stdout.strip() == UPSTREAM_VERSION


def tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    joined = " | ".join(lines[-3:])
    return joined[-limit:] if joined else "(no output)"


def upstream_implementation() -> tuple[Implementation | None, str]:
    """Return the upstream interpreter (creating its venv if needed) or ``None`` and the reason it was skipped."""
    python = venv_python(UPSTREAM_VENV)
    if not upstream_installed(python):
        if not python.exists():
            print(f"creating {UPSTREAM_VENV} ...", flush=True)
            made = subprocess.run(
                [sys.executable, "-m", "venv", str(UPSTREAM_VENV)], capture_output=True, text=True, check=False
            )
            if made.returncode != 0:
                return None, f"python -m venv failed: {tail(made.stderr or made.stdout)}"
        print(f"installing {UPSTREAM_REQUIREMENT} into {UPSTREAM_VENV} ...", flush=True)
        try:
            pip = subprocess.run(
                [str(python), "-m", "pip", "install", "--retries", "1", "--timeout", "20", UPSTREAM_REQUIREMENT],
                capture_output=True,
                text=True,
                check=False,
                env=base_env(),
                timeout=900,
            )
        except subprocess.TimeoutExpired:
            return None, f"pip install {UPSTREAM_REQUIREMENT} timed out"
        if pip.returncode != 0:
            return None, f"pip install {UPSTREAM_REQUIREMENT} failed (no network?): {tail(pip.stderr or pip.stdout)}"
        if not upstream_installed(python):
            return None, f"{UPSTREAM_REQUIREMENT} not importable from {python} after install"
    return Implementation(UPSTREAM, str(python), base_env(), f"{python} ({UPSTREAM_REQUIREMENT})"), ""


# ----------------------------------------------------------------------------------------------------------------
# Running scenarios
# ----------------------------------------------------------------------------------------------------------------


def run_scenario(impl: Implementation, scenario: str, size: int, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    try:
        # A scratch working directory: engines may create folders in the cwd (upstream makes feedback_data/).
        with tempfile.TemporaryDirectory(prefix="graflow-bench-") as scratch:
            proc = subprocess.run(
                [impl.python, str(SCENARIOS_PY), scenario, str(size)],
                capture_output=True,
                text=True,
                check=False,
                env=impl.env,
                cwd=scratch,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        elapsed = time.perf_counter() - t0
        return Outcome(scenario, size, impl.name, "timeout", elapsed, error=f"no result within {timeout:.0f} s")
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        return Outcome(scenario, size, impl.name, "error", elapsed, error=tail(proc.stderr or proc.stdout, 600))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return Outcome(scenario, size, impl.name, "error", elapsed, error=f"no JSON line: {tail(proc.stdout)}")
    return Outcome(scenario, size, impl.name, "ok", elapsed, data=data)


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------

HEADERS = ("scenario", "size", "implementation", "metric", "value", "floor", "ratio", "target", "")


def fmt_num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    text = f"{value:,.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def table_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Flatten outcomes into one row per metric, with its target and OK/MISS verdict."""
    rows: list[dict[str, Any]] = []
    for out in outcomes:
        common = {"scenario": out.scenario, "size": out.size, "implementation": out.implementation}
        if out.status != "ok":
            rows.append({**common, "metric": "-", "status": out.status, "error": out.error})
            continue
        for m in out.data["metrics"]:
            target = TARGETS.get((out.scenario, m["metric"]))
            verdict = target.met(m["value"], m["ratio"]) if target else None
            rows.append(
                {
                    **common,
                    "metric": m["metric"],
                    "unit": m["unit"],
                    "value": m["value"],
                    "floor": m["floor"],
                    "ratio": m["ratio"],
                    "target": target.label if target else None,
                    "status": "ok" if verdict is None else ("OK" if verdict else "MISS"),
                }
            )
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    cells: list[tuple[str, ...]] = []
    for row in rows:
        if row["metric"] == "-":
            verdict = "TIMEOUT" if row["status"] == "timeout" else "CRASH"
            cells.append((row["scenario"], f"{row['size']:,}", row["implementation"], "-", "-", "-", "-", "-", verdict))
            continue
        unit = row["unit"]
        cells.append(
            (
                row["scenario"],
                f"{row['size']:,}",
                row["implementation"],
                row["metric"],
                fmt_num(row["value"], unit),
                fmt_num(row["floor"], unit),
                "-" if row["ratio"] is None else f"{row['ratio']:,.1f}x",
                row["target"] or "",
                row["status"] if row["status"] in ("OK", "MISS") else "",
            )
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(HEADERS)]
    numeric = {1, 4, 5, 6}

    def line(values: tuple[str, ...]) -> str:
        parts = [v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = [line(HEADERS), line(tuple("-" * w for w in widths))]
    previous: tuple[str, str] | None = None
    for values in cells:
        key = (values[0], values[1])
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(line(values))
    return "\n".join(out)


HEADLINE_METRICS = {
    "chain": "overhead_us_per_task",
    "fanout": "us_per_member",
    "iterate": "overhead_us_per_iteration",
    "import": "import_ms",
    "hello": "process_ms",
}


def render_comparison(rows: list[dict[str, Any]]) -> str:
    """One line per scenario/size: headline metric for both implementations and how many times faster ours is."""
    index = {(r["scenario"], r["size"], r["implementation"], r["metric"]): r for r in rows}
    timeouts = {(r["scenario"], r["size"], r["implementation"]) for r in rows if r["status"] == "timeout"}
    seen: list[tuple[str, int]] = []
    for r in rows:
        if (r["scenario"], r["size"]) not in seen:
            seen.append((r["scenario"], r["size"]))
    lines = []
    for scenario, size in seen:
        metric = HEADLINE_METRICS[scenario]
        ours = index.get((scenario, size, OURS, metric))
        theirs = index.get((scenario, size, UPSTREAM, metric))
        if ours is None and theirs is None:
            continue

        def show(row: dict[str, Any] | None, key: tuple[str, int, str]) -> str:
            if row is not None:
                return fmt_num(row["value"], row["unit"])
            return "timeout" if key in timeouts else "n/a"

        speedup = ""
        if ours is not None and theirs is not None and ours["value"] > 0 and theirs["value"] > 0:
            speedup = f"{theirs['value'] / ours['value']:,.1f}x"
        elif ours is not None and (scenario, size, UPSTREAM) in timeouts:
            speedup = "upstream timed out"
        lines.append(
            f"  {scenario:<8} {size:>8,}  {metric:<26} graflow {show(ours, (scenario, size, OURS)):>12}"
            f"   upstream {show(theirs, (scenario, size, UPSTREAM)):>12}   {speedup}"
        )
    if not lines:
        return ""
    return "graflow vs upstream-0.2.0 (headline metric; last column = upstream / graflow):\n" + "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Graflow benchmark suite (ratios against same-run floors).")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON to PATH")
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        default=[],
        help=f"run only this scenario (repeatable or comma-separated): {', '.join(SCENARIO_NAMES)}",
    )
    parser.add_argument("--no-upstream", action="store_true", help="skip upstream graflow 0.2.0")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds allowed per scenario subprocess (default 60)"
    )
    args = parser.parse_args(argv)
    only = [name.strip() for chunk in args.only for name in chunk.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SCENARIO_NAMES))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIO_NAMES)}")
    args.only = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [name for name in SCENARIO_NAMES if not args.only or name in args.only]
    sizes = QUICK_SIZES if args.quick else FULL_SIZES

    implementations = [ours_implementation()]
    skipped_reason = "--no-upstream"
    if not args.no_upstream:
        upstream, skipped_reason = upstream_implementation()
        if upstream is None:
            print(f"upstream {UPSTREAM_REQUIREMENT} skipped: {skipped_reason}", flush=True)
        else:
            implementations.append(upstream)
            skipped_reason = ""
    for impl in implementations:
        print(f"{impl.name}: {impl.description}", flush=True)

    outcomes: list[Outcome] = []
    started = time.perf_counter()
    for scenario in selected:
        for size in sizes[scenario]:
            for impl in implementations:
                print(f"  running {scenario} {size:,} [{impl.name}] ...", end="", flush=True)
                outcome = run_scenario(impl, scenario, size, args.timeout)
                print(f" {outcome.status} ({outcome.seconds:.1f} s)", flush=True)
                if outcome.error:
                    print(f"    {outcome.error}", flush=True)
                outcomes.append(outcome)

    rows = table_rows(outcomes)
    print()
    print(render_table(rows))
    comparison = render_comparison(rows) if len(implementations) > 1 else ""
    if comparison:
        print()
        print(comparison)
    crashed = [o for o in outcomes if o.status == "error"]
    print()
    print(
        f"{len(outcomes)} runs in {time.perf_counter() - started:.1f} s; "
        f"{sum(r['status'] == 'MISS' for r in rows)} target(s) missed (informational), "
        f"{sum(o.status == 'timeout' for o in outcomes)} timeout(s), {len(crashed)} crash(es)"
    )

    if args.json is not None:
        report = {
            "meta": {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "quick": args.quick,
                "timeout_s": args.timeout,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "implementations": {impl.name: impl.description for impl in implementations},
                "upstream_skipped": skipped_reason or None,
            },
            "scenarios": selected,
            "results": [
                {
                    "scenario": o.scenario,
                    "size": o.size,
                    "implementation": o.implementation,
                    "status": o.status,
                    "seconds": o.seconds,
                    "error": o.error,
                    "data": o.data,
                }
                for o in outcomes
            ],
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
