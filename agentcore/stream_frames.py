"""Stream frames on the wire: NATS headers carry the framing, the body carries the chunk's bytes untouched.

A frame is one NATS message to the stream's inbox with headers
  Agent-Stream (task id), Agent-Seq (0, 1, ...), Agent-Kind (text | bytes | json | envelope | error),
  Agent-Final ("1" on the last frame) and Agent-Ctl (where the consumer sends credit and cancel).
Credit: the consumer publishes to Agent-Ctl a message with Agent-Ack (highest sequence consumed) and
Agent-Window (W): the producer may send sequence numbers up to ack + W. Agent-Cancel: 1 stops the producer.
The bodies are raw bytes, so a 20 MB result costs no base64 or JSON re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ("StreamChunk", "H_STREAM", "H_SEQ", "H_KIND", "H_FINAL", "H_CTL", "H_ACK", "H_WINDOW", "H_CANCEL", "encode_item")

H_STREAM = "Agent-Stream"
H_SEQ = "Agent-Seq"
H_KIND = "Agent-Kind"
H_FINAL = "Agent-Final"
H_CTL = "Agent-Ctl"
H_ACK = "Agent-Ack"
H_WINDOW = "Agent-Window"
H_CANCEL = "Agent-Cancel"

TEXT, BYTES, JSON, ENVELOPE, ERROR = "text", "bytes", "json", "envelope", "error"


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One chunk of a stream, in order: data is at most chunk_size bytes of items of one kind."""

    task_id: str
    seq: int
    kind: str  # "text" (UTF-8, never split inside a character), "bytes", or "json" (JSON Lines: one item per line)
    data: bytes
    final: bool

    @property
    def text(self) -> str:
        """Return the chunk's data as text."""
        return self.data.decode("utf-8")

    def items(self) -> list[Any]:
        """Return the JSON items of a json chunk (an item larger than chunk_size spans chunks: join their data)."""
        return [orjson.loads(line) for line in self.data.splitlines() if line]


def encode_item(item: Any) -> tuple[str, bytes]:
    """Return (kind, bytes) for one generator item: str -> text, bytes -> bytes, anything else -> one JSON line."""
    if isinstance(item, str):
        return TEXT, item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return BYTES, bytes(item)
    return JSON, orjson.dumps(item) + b"\n"


def split_point(kind: str, data: bytes | bytearray, size: int) -> int:
    """Return where to cut data so the first part holds at most size bytes (text is never cut inside a character)."""
    if kind != TEXT:
        return size
    cut = size
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a UTF-8 continuation byte: back up to the character start
        cut -= 1
    return cut or size
