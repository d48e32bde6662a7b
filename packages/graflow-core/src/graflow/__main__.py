"""``python -m graflow``: the same CLI as the ``graflow`` console script."""

from __future__ import annotations

from graflow.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
