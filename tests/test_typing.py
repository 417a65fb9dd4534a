"""The package type-checks under mypy --strict, with the pure twins as the type source of the compiled core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mypy(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_strict_on_the_package_and_the_twins() -> None:
    _mypy(["--strict"], ROOT)
    _mypy(["--strict", *sorted(str(p) for p in (ROOT / "_ext").glob("*_py.py"))], ROOT)


def test_mypy_strict_across_the_core_boundary(tmp_path: Path) -> None:
    """Check agentcore with agentcore._ext resolvable, as in an installed wheel: calls into the core are typed too."""
    package = tmp_path / "agentcore"
    package.mkdir()
    for entry in (ROOT / "agentcore").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "_ext").symlink_to(ROOT / "_ext")  # setup.py maps _ext/ to agentcore._ext the same way
    _mypy(["--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), "agentcore"], tmp_path)


def test_mypy_strict_for_every_python_the_wheels_claim() -> None:
    """Checked as each newer CPython would see it: a `type: ignore` needed on one version is unused on another."""
    for version in ("3.12", "3.13"):
        _mypy(["--strict", "--python-version", version], ROOT)
