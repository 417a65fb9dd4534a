"""The one place that picks the compiled core or its pure-Python twins (AGENTCORE_NO_EXTENSIONS=1 forces pure)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._ext.batch_py import BatchAccumulator
    from ._ext.cache_py import ContentCache, canonical_hash, content_hash
    from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, new_id, validate
    from ._ext.subjects_py import SubjectIndex, subject_matches, validate_subject, validate_token

    IMPLEMENTATION = "pure"
else:
    try:
        from ._ext.batch import BatchAccumulator
        from ._ext.cache import ContentCache, canonical_hash, content_hash
        from ._ext.envelope import MESSAGE_TYPES, decode, encode, new_id, validate
        from ._ext.subjects import SubjectIndex, subject_matches, validate_subject, validate_token

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
        from ._ext.batch_py import BatchAccumulator
        from ._ext.cache_py import ContentCache, canonical_hash, content_hash
        from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, new_id, validate
        from ._ext.subjects_py import SubjectIndex, subject_matches, validate_subject, validate_token

        IMPLEMENTATION = "pure"

__all__ = (
    "IMPLEMENTATION",
    "BatchAccumulator",
    "ContentCache",
    "canonical_hash",
    "content_hash",
    "MESSAGE_TYPES",
    "decode",
    "encode",
    "new_id",
    "validate",
    "SubjectIndex",
    "subject_matches",
    "validate_subject",
    "validate_token",
)
