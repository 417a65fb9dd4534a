"""The envelope's field names as orjson's decoder hands them out (agentcore.fields): the same objects as the keys of
every decoded envelope, and only faster to look up with, never different, on both implementations."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from types import ModuleType

import orjson
import pytest

from agentcore import fields
from agentcore.envelope import decode, encode, new_message

NAMES = {"ID": "id", "TIMESTAMP": "timestamp", "TYPE": "type", "SOURCE": "source", "REPLY_TO": "replyTo",
         "CORRELATION_ID": "correlationId",
         "CONTEXT": "context", "PAYLOAD": "payload", "ROUTING": "routing", "CONTENT": "content", "ERROR": "error",
         "METADATA": "metadata", "CONVERSATION_ID": "conversationId", "TIMEOUT": "timeout"}


def test_each_key_is_its_field_name() -> None:
    assert set(fields.__all__) == set(NAMES)
    for name, text in NAMES.items():
        assert getattr(fields, name) == text


_PREMISE = """
from agentcore import fields
from agentcore.envelope import decode, encode, new_message
message = new_message("task", {"x": 1}, source_id="a", reply_to="_INBOX.x", conversation_id="c", metadata={"k": 1},
                      timeout_ms=1000)
message["payload"]["error"] = None
decoded = decode(encode(message))
keys = {key: key for key in decoded}
for nested in ("source", "payload", "context", "routing"):
    keys.update({key: key for key in decoded[nested]})
print(sorted(name for name in fields.__all__ if keys[getattr(fields, name)] is not getattr(fields, name)))
"""


def test_a_decoded_envelope_holds_the_very_same_key_objects() -> None:
    """The premise of the module: orjson's key cache gives every decode the object it gave the first one. Checked in
    a fresh interpreter: in this one, other tests' JSON may have taken a key's cache slot (see below)."""
    out = subprocess.run([sys.executable, "-c", _PREMISE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _colliding_key(key: str) -> str | None:
    """Return a key that takes key's slot in orjson's key cache (direct-mapped), or None when none is found."""
    def decoded(name: str) -> str:
        return next(iter(orjson.loads(b'{"%s":0}' % name.encode())))

    for n in range(200_000):  # about one key in 2,048 collides
        before = decoded(key)
        decoded(f"collider-{n}")
        if decoded(key) is not before:
            return f"collider-{n}"
    return None


def test_a_dict_made_in_python_is_read_the_same() -> None:
    message = new_message("task", {"x": 1}, source_id="a", reply_to="_INBOX.x")
    assert all(not (key is getattr(fields, name)) for name, key in NAMES.items())  # interned literals, not orjson's
    assert message[fields.SOURCE][fields.ID] == "a" and message.get(fields.REPLY_TO) == "_INBOX.x"
    assert message[fields.PAYLOAD][fields.CONTENT] == {"x": 1}


def test_the_core_reads_python_made_and_decoded_envelopes_alike(dedup_module: ModuleType, ledger_module: ModuleType,
                                                                 cache_module: ModuleType) -> None:
    made = new_message("task", {"x": 1}, source_id="a", reply_to="_INBOX.x", message_id="m-1")
    decoded = orjson.loads(orjson.dumps(made))
    assert cache_module.task_key(7, "p", made) == cache_module.task_key(7, "p", decoded) is not None
    store = dedup_module.DuplicateStore(64, 1 << 20, 60.0, lambda: 0.0, Counter())
    assert store.seen(("p", ""), made) is dedup_module.MISS
    assert store.seen(("p", ""), decoded) is dedup_module.IN_FLIGHT  # the same id from the same sender
    store.finish(("p", ""), decoded, {"r": 1}, None)
    assert store.seen(("p", ""), made) == ("_INBOX.x", {"r": 1})  # kept for the replyTo both name
    ledger = ledger_module.FinishedLedger(64 * 1024, Counter(), ("queued", "running", "done", "failed", "cancelled"))
    ledger.add(decoded, "done", None)
    assert ledger.find("a", "m-1")[0] == "done"


def test_after_another_key_took_a_fields_cache_slot_the_core_reads_envelopes_the_same(
        dedup_module: ModuleType, ledger_module: ModuleType, cache_module: ModuleType) -> None:
    """An application's JSON key that shares the cache slot of "source" makes orjson hand out a new "source" object:
    fields.SOURCE no longer is the decoded key, and every read falls back to equality, with the same results. (The
    search for such a key decodes thousands of others: other keys of fields may have lost their slots too.)"""
    collider = _colliding_key("source")
    if collider is None:
        pytest.skip("no key shares a slot of orjson's key cache with 'source' here")
    made = new_message("task", {"x": 1}, source_id="a", reply_to="_INBOX.x", message_id="m-2")
    orjson.loads(b'{"%s":0}' % collider.encode())
    decoded = decode(encode(made))
    assert not any(key is fields.SOURCE for key in decoded) and decoded[fields.SOURCE][fields.ID] == "a"
    assert cache_module.task_key(7, "p", made) == cache_module.task_key(7, "p", decoded) is not None
    store = dedup_module.DuplicateStore(64, 1 << 20, 60.0, lambda: 0.0, Counter())
    assert store.seen(("p", ""), decoded) is dedup_module.MISS and store.seen(("p", ""), made) is dedup_module.IN_FLIGHT
    ledger = ledger_module.FinishedLedger(64 * 1024, Counter(), ("queued", "running", "done", "failed", "cancelled"))
    ledger.add(decoded, "done", None)
    assert ledger.find("a", "m-2")[0] == "done"
