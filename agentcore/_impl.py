"""The one place that picks the compiled core or its pure-Python twins (AGENTCORE_NO_EXTENSIONS=1 forces pure)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._ext.batch_py import BatchAccumulator
    from ._ext.cache_py import ContentCache, canonical_hash, content_hash
    from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, validate
    from ._ext.subjects_py import SubjectIndex, subject_matches, validate_subject, validate_token

    IMPLEMENTATION = "pure"
else:
    try:
        from ._ext.batch import BatchAccumulator
        from ._ext.cache import ContentCache, canonical_hash, content_hash
        from ._ext.envelope import MESSAGE_TYPES, decode, encode, validate
        from ._ext.subjects import SubjectIndex, subject_matches, validate_subject, validate_token

        IMPLEMENTATION = "compiled"
    except ImportError as exc:  # a build made with AGENTCORE_NO_EXTENSIONS=1, or a broken install
        import warnings

        # Said out loud: a broken install would otherwise run the ~10x slower twins without anyone noticing.
        warnings.warn(f"agentcore's compiled core cannot be imported ({exc}); using the pure-Python twins. "
                      "Set AGENTCORE_NO_EXTENSIONS=1 to choose them explicitly.", RuntimeWarning, stacklevel=2)
        from ._ext.batch_py import BatchAccumulator
        from ._ext.cache_py import ContentCache, canonical_hash, content_hash
        from ._ext.envelope_py import MESSAGE_TYPES, decode, encode, validate
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
    "validate",
    "SubjectIndex",
    "subject_matches",
    "validate_subject",
    "validate_token",
)
