"""The envelope's field names as the str objects that orjson puts into the dicts it decodes.

orjson hands every decode the same object for a key it has cached (keys up to 64 bytes). A dict finds a key
identical to one it holds by a pointer compare. An equal str that is another object, such as a literal in source
code, costs a full string comparison: about 220 instructions more per lookup on CPython 3.11 (280 on 3.12), and an
envelope is read a dozen times on the way from the socket to its handler. The hot paths read decoded envelopes with
these keys.

They are only faster, never different: a dict made in Python, or a key orjson's cache gave up to another key of the
same cache slot, is still found by equality.
"""

from __future__ import annotations

import orjson

__all__ = ("ID", "TIMESTAMP", "TYPE", "SOURCE", "REPLY_TO", "CORRELATION_ID", "CONTEXT", "PAYLOAD", "ROUTING",
           "CONTENT", "ERROR", "METADATA", "CONVERSATION_ID", "TIMEOUT")

_DECODED: tuple[str, ...] = tuple(orjson.loads(
    b'{"id":0,"timestamp":0,"type":0,"source":0,"replyTo":0,"correlationId":0,"context":0,"payload":0,'
    b'"routing":0,"content":0,"error":0,"metadata":0,"conversationId":0,"timeout":0}'))
(ID, TIMESTAMP, TYPE, SOURCE, REPLY_TO, CORRELATION_ID, CONTEXT, PAYLOAD, ROUTING, CONTENT, ERROR, METADATA,
 CONVERSATION_ID, TIMEOUT) = _DECODED
