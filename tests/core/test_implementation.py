"""The selection module picks the compiled core by default and the pure twins only when asked to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import importlib, json
from agentcore import _impl
names = ("SubjectIndex", "subject_matches", "validate_subject", "validate_token", "MESSAGE_TYPES", "decode",
         "encode", "validate", "ContentCache", "canonical_hash", "content_hash", "task_key", "BatchAccumulator", "scan_frames",
         "frame_end", "first_step", "FinishedLedger", "SlotsMaker")
modules = {}
for name in names:
    obj = getattr(_impl, name)
    modules[name] = getattr(obj, "__module__", None)
files = {m: importlib.import_module(f"agentcore._ext.{m}").__file__ for m in ("subjects", "envelope", "cache", "batch", "wire", "eager", "ledger", "slots")}
print(json.dumps({"implementation": _impl.IMPLEMENTATION, "modules": modules, "files": files}))
"""


def _probe(no_extensions: bool) -> dict:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if k != "AGENTCORE_NO_EXTENSIONS"}
    if no_extensions:
        env["AGENTCORE_NO_EXTENSIONS"] = "1"
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")), reason="pure build requested")
def test_c_extension_preferred_by_default() -> None:
    info = _probe(no_extensions=False)
    assert info["implementation"] == "compiled"
    for name in ("SubjectIndex", "ContentCache", "BatchAccumulator"):
        assert info["modules"][name].startswith("agentcore._ext.")
        assert not info["modules"][name].endswith("_py")
    assert info["modules"]["SubjectIndex"] == "agentcore._ext.subjects"
    assert info["modules"]["BatchAccumulator"] == "agentcore._ext.batch"
    assert info["modules"]["scan_frames"] == "agentcore._ext.wire"
    assert info["modules"]["first_step"] == "agentcore._ext.eager"
    assert info["modules"]["FinishedLedger"] == "agentcore._ext.ledger"
    assert info["modules"]["SlotsMaker"] == "agentcore._ext.slots"
    for path in info["files"].values():
        assert path.endswith(".so") or path.endswith(".pyd")


def test_pure_python_when_asked() -> None:
    info = _probe(no_extensions=True)
    assert info["implementation"] == "pure"
    assert info["modules"]["SubjectIndex"] == "agentcore._ext.subjects_py"
    assert info["modules"]["ContentCache"] == "agentcore._ext.cache_py"
    assert info["modules"]["BatchAccumulator"] == "agentcore._ext.batch_py"
    assert info["modules"]["decode"] == "agentcore._ext.envelope_py"
    assert info["modules"]["scan_frames"] == "agentcore._ext.wire_py"
    assert info["modules"]["first_step"] == "agentcore._ext.eager_py"
    assert info["modules"]["FinishedLedger"] == "agentcore._ext.ledger_py"
    assert info["modules"]["SlotsMaker"] == "agentcore._ext.slots_py"


def _doc_body(obj: object) -> str:
    # embedsignature puts the signature in front of a compiled docstring; the text after it must match.
    return (obj.__doc__ or "").strip().split("\n\n")[-1]


@pytest.mark.parametrize("name", ["subjects", "envelope", "cache", "batch", "wire", "ledger", "slots"])
def test_twins_have_the_same_public_api(name: str) -> None:
    if os.environ.get("AGENTCORE_NO_EXTENSIONS"):
        pytest.skip("pure build requested")
    import importlib

    compiled = importlib.import_module(f"agentcore._ext.{name}")
    pure = importlib.import_module(f"agentcore._ext.{name}_py")
    assert compiled.__all__ == pure.__all__
    assert _doc_body(compiled) .replace("compiled core", "") == _doc_body(pure).replace("pure-Python twin", "")
    for public in pure.__all__:
        c_obj, p_obj = getattr(compiled, public), getattr(pure, public)
        if not callable(p_obj):
            assert c_obj == p_obj
            continue
        assert _doc_body(c_obj) == _doc_body(p_obj), public
        assert len(_doc_body(p_obj).splitlines()) == 1, public
        if isinstance(p_obj, type):
            c_names = {n for n in dir(c_obj) if not n.startswith("_")}
            p_names = {n for n in dir(p_obj) if not n.startswith("_")}
            assert c_names == p_names, public
            for member in p_names:
                assert _doc_body(getattr(c_obj, member)) == _doc_body(getattr(p_obj, member)), f"{public}.{member}"


def test_a_missing_compiled_module_falls_back_with_a_warning() -> None:
    """A broken install (a compiled module that cannot load) still works on the twins, and says so."""
    code = """
import sys, warnings
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "agentcore._ext.envelope":
            raise ImportError("simulated broken build")
sys.meta_path.insert(0, Broken())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import agentcore
print(agentcore.implementation, [str(w.message) for w in caught if w.category is RuntimeWarning])
"""
    env = {k: v for k, v in os.environ.items() if k != "AGENTCORE_NO_EXTENSIONS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("pure ") and "simulated broken build" in out and "AGENTCORE_NO_EXTENSIONS=1" in out


def _source_copy(tmp_path: Path) -> Path:
    """A checkout's agentcore/ and _ext/ as git has them: no compiled module built in place."""
    root = Path(__file__).resolve().parents[2]
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.c", "*.html")
    for folder in ("agentcore", "_ext"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=ignore)
    return tmp_path


# As from a wheel install: an editable install's finder would map agentcore._ext to the built checkout instead.
_IMPORT_FROM_CWD = """
import sys, warnings
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import agentcore
    from agentcore import NATSAgent
print(agentcore.implementation, agentcore.__file__)
print(*[str(w.message) for w in caught if w.category is RuntimeWarning], sep="\\n")
"""


@pytest.mark.parametrize("no_extensions", [False, True], ids=["default", "AGENTCORE_NO_EXTENSIONS"])
def test_a_source_tree_without_its_compiled_core_imports_the_twins_and_says_so(tmp_path: Path, no_extensions: bool) -> None:
    """`python -c "import agentcore"` in a checkout finds the source tree first; it works, and tells what to run."""
    tree = _source_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTCORE_NO_EXTENSIONS", "PYTHONPATH")}
    if no_extensions:
        env["AGENTCORE_NO_EXTENSIONS"] = "1"
    proc = subprocess.run([sys.executable, "-c", _IMPORT_FROM_CWD], cwd=tree, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    first, *warned = [line for line in proc.stdout.splitlines() if line]
    assert first == f"pure {tree / 'agentcore' / '__init__.py'}"
    if no_extensions:
        assert warned == []  # chosen explicitly: no warning
    else:
        assert len(warned) == 1 and "source tree" in warned[0] and "`pip install -e .`" in warned[0]
