"""The distribution is agentcore-nats (the import name stays agentcore): metadata, README, CI and the wheel names agree."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import agentcore

ROOT = Path(__file__).resolve().parent.parent
NAME = "agentcore-nats"


def test_the_installed_metadata_names_agentcore_nats() -> None:
    dist = metadata.distribution(NAME)
    assert dist.metadata["Name"] == NAME
    assert dist.version == agentcore.__version__
    assert NAME in metadata.packages_distributions()["agentcore"]
    assert any(ep.name == "agentcore" for ep in dist.entry_points.select(group="console_scripts"))


def test_install_commands_and_extras_use_the_distribution_name() -> None:
    readme = (ROOT / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'name = "{NAME}"' in pyproject
    assert f'"{NAME}[server,mcp' in pyproject  # the extras that pull in other extras name the project itself
    assert f"pip install {NAME}" in readme and f'pip install "{NAME}[server]"' in readme
    sources = [readme, *(p.read_text() for p in (ROOT / "agentcore").rglob("*.py"))]
    for text in sources:
        # `pip install agentcore` or "agentcore[extra]" would install the unrelated PyPI project.
        assert not re.search(r"pip install ['\"]?agentcore(?![-\w])", text)
        assert not re.search(r"(?<![-\w])agentcore\[", text)


def test_ci_and_the_wheel_workflow_look_for_the_normalised_wheel_name() -> None:
    assert 'dist/agentcore_nats-*.whl' in (ROOT / ".ci" / "run").read_text()
    assert "wheelhouse/agentcore_nats-*.whl" in (ROOT / ".github" / "workflows" / "wheels.yml").read_text()


def test_no_free_threading_claim_without_a_free_threaded_test() -> None:
    # No free-threaded interpreter runs the suite, so the compiled modules must not declare themselves GIL-free
    # and cibuildwheel must not build cp313t/cp314t wheels.
    for source in (ROOT / "_ext").glob("*.pyx"):
        assert "freethreading_compatible" not in source.read_text().splitlines()[0], source.name
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'build = "cp311-* cp312-* cp313-* cp314-*"' in pyproject and '"*t-* ' in pyproject


def test_ci_tests_every_supported_cpython_it_finds() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "for version in 3.11 3.12 3.13 3.14; do" in ci
    workflow = (ROOT / ".github" / "workflows" / "wheels.yml").read_text()
    for runner in ("ubuntu-latest", "ubuntu-24.04-arm", "macos-latest", "macos-13", "windows-latest"):
        assert runner in workflow
