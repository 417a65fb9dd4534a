"""The one place that picks the compiled core or its pure-Python twins (AGENTCORE_NO_EXTENSIONS=1 forces pure)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

NO_EXTENSIONS = bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"


def _map_source_tree() -> str | None:
    """Map a source checkout's top-level _ext/ as agentcore._ext (installs map it in setup.py); return the checkout."""
    from importlib.util import find_spec, module_from_spec, spec_from_file_location
    from pathlib import Path

    if find_spec("agentcore._ext") is not None:
        return None  # an installed (wheel or editable) package: its own mapping holds
    root = Path(__file__).resolve().parent.parent
    init = root / "_ext" / "__init__.py"
    if not init.is_file():
        return None
    spec = spec_from_file_location("agentcore._ext", init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        return None
    module = sys.modules["agentcore._ext"] = module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(root)


# Python puts the working directory first on sys.path, so in a checkout `import agentcore` finds the source tree
# ahead of the installed package; without this mapping that import failed with a circular ImportError.
SOURCE_TREE = _map_source_tree()

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._ext.batch_py import BatchAccumulator
    from ._ext.cache_py import ContentCache, canonical_hash, content_hash, task_key
    from ._ext.dedup_py import DONE, IN_FLIGHT, MISS, NOT_KEPT, DuplicateStore
    from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, encode_result, new_id, validate
    from ._ext.ledger_py import FinishedLedger
    from ._ext.subjects_py import SubjectIndex, subject_matches, validate_subject, validate_token
    from ._ext.slots_py import SlotsMaker
    from ._ext.wire_py import Frame, Target, frame_end, pub_frame, scan_frames

    IMPLEMENTATION = "pure"
    if TYPE_CHECKING:
        from ._ext.eager_py import FINISHED, SpareFields, ThreadSlot, eager_start, first_step
else:
    try:
        from ._ext.batch import BatchAccumulator
        from ._ext.cache import ContentCache, canonical_hash, content_hash, task_key
        from ._ext.dedup import DONE, IN_FLIGHT, MISS, NOT_KEPT, DuplicateStore
        from ._ext.envelope import MESSAGE_TYPES, decode, encode, encode_result, new_id, validate
        from ._ext.ledger import FinishedLedger
        from ._ext.subjects import SubjectIndex, subject_matches, validate_subject, validate_token
        from ._ext.slots import SlotsMaker
        from ._ext.wire import Frame, Target, frame_end, pub_frame, scan_frames

        IMPLEMENTATION = "compiled"
    except ImportError as exc:  # a build made with AGENTCORE_NO_EXTENSIONS=1, or a broken install
        import warnings
        from importlib.machinery import EXTENSION_SUFFIXES
        from pathlib import Path

        # A broken install (compiled files present, not loadable) would otherwise run the ~10x slower twins
        # without anyone noticing; a build made without extensions has no such files and stays quiet.
        from . import _ext

        ext_dirs = [Path(d) for d in _ext.__path__]  # an editable install maps the package to the source _ext/
        if any(any(d.glob(f"*{suffix}")) for d in ext_dirs for suffix in EXTENSION_SUFFIXES):
            warnings.warn(f"agentcore's compiled core cannot be imported ({exc}); using the pure-Python twins. "
                          "Set AGENTCORE_NO_EXTENSIONS=1 to choose them explicitly.", RuntimeWarning, stacklevel=2)
        elif SOURCE_TREE is not None:
            warnings.warn(f"agentcore is imported from the source tree {SOURCE_TREE}, whose compiled core is not built: "
                          "using the pure-Python twins. Run `pip install -e .` there to build it (or run from another "
                          "folder to use the installed package); AGENTCORE_NO_EXTENSIONS=1 chooses the twins quietly.",
                          RuntimeWarning, stacklevel=2)
        from ._ext.batch_py import BatchAccumulator
        from ._ext.cache_py import ContentCache, canonical_hash, content_hash, task_key
        from ._ext.dedup_py import DONE, IN_FLIGHT, MISS, NOT_KEPT, DuplicateStore
        from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, encode_result, new_id, validate
        from ._ext.ledger_py import FinishedLedger
        from ._ext.subjects_py import SubjectIndex, subject_matches, validate_subject, validate_token
        from ._ext.slots_py import SlotsMaker
        from ._ext.wire_py import Frame, Target, frame_end, pub_frame, scan_frames

        IMPLEMENTATION = "pure"

_EAGER = ("FINISHED", "SpareFields", "ThreadSlot", "eager_start", "first_step")


def __getattr__(name: str) -> Any:
    """Import the eager start on first use, compiled or its twin as chosen above.

    It imports asyncio, which `import agentcore` must not (the command line starts fast without it).
    """
    if name not in _EAGER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module: Any = None
    if IMPLEMENTATION == "compiled":
        try:
            module = importlib.import_module("agentcore._ext.eager")
        except ImportError as exc:  # a build older than this module: the rest of the core is compiled, this one not
            import warnings

            warnings.warn(f"agentcore's compiled eager start cannot be imported ({exc}); using its pure-Python twin. "
                          "Rebuild the package (`pip install -e .` in a checkout) to compile it.", RuntimeWarning,
                          stacklevel=2)
    if module is None:
        module = importlib.import_module("agentcore._ext.eager_py")
    for known in _EAGER:
        globals()[known] = getattr(module, known)
    return getattr(module, name)


__all__ = (
    "IMPLEMENTATION",
    "BatchAccumulator",
    "ContentCache",
    "canonical_hash",
    "content_hash",
    "task_key",
    "FINISHED",
    "SpareFields",
    "ThreadSlot",
    "first_step",
    "eager_start",
    "FinishedLedger",
    "DuplicateStore",
    "MISS",
    "IN_FLIGHT",
    "DONE",
    "NOT_KEPT",
    "MESSAGE_TYPES",
    "decode",
    "encode",
    "encode_result",
    "new_id",
    "validate",
    "SlotsMaker",
    "SubjectIndex",
    "subject_matches",
    "validate_subject",
    "validate_token",
    "frame_end",
    "scan_frames",
    "pub_frame",
    "Frame",
    "Target",
)
