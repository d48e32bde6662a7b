"""The benchmark command runs end to end (no timing is asserted: numbers are reported, not tested)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-upstream", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    ran = {r["scenario"] for r in report["results"] if r["status"] == "ok"}
    assert ran == {"chain", "fanout", "iterate", "import", "hello"}
    for result in report["results"]:
        assert result["implementation"] == "graflow"
        assert result["data"]["metrics"], result
