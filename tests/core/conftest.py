"""Compiled core vs pure-Python twins (multidict's model): every test here that asks for one of these fixtures
runs once per implementation. A compiled module that does not import makes its tests FAIL; only
AGENTCORE_NO_EXTENSIONS=1 (an honest pure build) leaves the c-extension parameter out."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import pytest

from helpers import FakeClock

NO_EXTENSIONS = bool(os.environ.get("AGENTCORE_NO_EXTENSIONS"))
CORE_MODULES = ("subjects", "envelope", "cache", "batch", "wire", "eager", "ledger", "dedup", "slots")


@dataclass(frozen=True)
class CoreImplementation:
    """The core modules of one implementation."""

    name: str
    subjects: ModuleType
    envelope: ModuleType
    cache: ModuleType
    batch: ModuleType
    wire: ModuleType
    eager: ModuleType
    ledger: ModuleType
    dedup: ModuleType
    slots: ModuleType


def load_core(compiled: bool) -> CoreImplementation:
    """Import the compiled core (agentcore._ext.<name>) or its twins (agentcore._ext.<name>_py)."""
    suffix = "" if compiled else "_py"
    modules = {name: importlib.import_module(f"agentcore._ext.{name}{suffix}") for name in CORE_MODULES}
    return CoreImplementation(name="c-extension" if compiled else "pure-python", **modules)


_CORE_PARAMS = [pytest.param(False, id="pure-python")]
if not NO_EXTENSIONS:
    _CORE_PARAMS.insert(0, pytest.param(True, id="c-extension"))


@pytest.fixture(scope="session", params=_CORE_PARAMS)
def core(request: pytest.FixtureRequest) -> CoreImplementation:
    """Yield each implementation of the core in turn."""
    return load_core(request.param)


@pytest.fixture(scope="session")
def subjects_module(core: CoreImplementation) -> ModuleType:
    return core.subjects


@pytest.fixture(scope="session")
def envelope_module(core: CoreImplementation) -> ModuleType:
    return core.envelope


@pytest.fixture(scope="session")
def cache_module(core: CoreImplementation) -> ModuleType:
    return core.cache


@pytest.fixture(scope="session")
def batch_module(core: CoreImplementation) -> ModuleType:
    return core.batch


@pytest.fixture(scope="session")
def wire_module(core: CoreImplementation) -> ModuleType:
    return core.wire


@pytest.fixture(scope="session")
def eager_module(core: CoreImplementation) -> ModuleType:
    return core.eager


@pytest.fixture(scope="session")
def ledger_module(core: CoreImplementation) -> ModuleType:
    return core.ledger


@pytest.fixture(scope="session")
def dedup_module(core: CoreImplementation) -> ModuleType:
    return core.dedup


@pytest.fixture(scope="session")
def slots_module(core: CoreImplementation) -> ModuleType:
    return core.slots


@pytest.fixture(scope="session")
def twins() -> tuple[CoreImplementation, CoreImplementation]:
    """Return (compiled, pure) for the tests that check the twins agree."""
    if NO_EXTENSIONS:
        pytest.skip("AGENTCORE_NO_EXTENSIONS=1: there is no compiled core to compare")
    return load_core(True), load_core(False)


@pytest.fixture(scope="session")
def make_clock() -> type[FakeClock]:
    """Return the FakeClock class, for tests that need a fresh clock per example."""
    return FakeClock
