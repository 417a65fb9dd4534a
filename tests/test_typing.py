"""The package type-checks under mypy --strict (the pure twins are the type source of the compiled core)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    for args in (["--strict"], ["--strict", *sorted(str(p) for p in (ROOT / "_ext").glob("*_py.py"))]):
        proc = subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
