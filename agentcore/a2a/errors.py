"""agentcore's own A2A error: a bound of the serving agent refused the request (docs/limits.md).

The A2A specification has no error for an agent that is over its limits; this binding answers one as a
``google.rpc.Status`` 503 ``UNAVAILABLE`` whose ErrorInfo reason is ``OVERLOADED`` (metadata ``bound``: the config
key). The class is added to a2a-sdk's error tables when this module is imported (binding.py imports it, so every
client and server of the binding has it), so the binding's client raises it as it raises the SDK's own classes.
"""

from __future__ import annotations

from a2a.utils.errors import A2A_ERROR_MAPPING, A2A_ERROR_REASONS, A2A_REASON_TO_ERROR, A2AError, ErrorMapping

__all__ = ("OverloadedError", "OVERLOADED")

OVERLOADED = "OVERLOADED"


class OverloadedError(A2AError):
    """The agent refused the request: one of its a2a.* bounds is reached (data["bound"] names it); retry later."""

    message = "the A2A agent is over one of its limits"


# Added, never replacing: the SDK's own reasons keep their classes.
A2A_ERROR_MAPPING.setdefault(OverloadedError, ErrorMapping(503, "UNAVAILABLE", OVERLOADED))
A2A_ERROR_REASONS.setdefault(OverloadedError, OVERLOADED)
A2A_REASON_TO_ERROR.setdefault(OVERLOADED, OverloadedError)
