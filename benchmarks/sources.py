"""The benchmarks run from a source checkout: put the packages they measure first on ``sys.path``.

Imported by each ``bench_*.py`` script (the scripts' folder is on the path when they run), before
anything from graflow is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def use_packages(*names: str) -> list[str]:
    """Put ``packages/<name>/src`` of each name on ``sys.path``; return those folders."""
    folders = [str(REPO_ROOT / "packages" / name / "src") for name in names]
    for folder in folders:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return folders
