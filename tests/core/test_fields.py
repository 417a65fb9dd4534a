"""The envelope's field names as orjson's decoder hands them out (agentcore.fields): the same objects as the keys of
every decoded envelope, and only faster to look up with, never different, on both implementations."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import orjson

from agentcore import fields
from agentcore.envelope import decode, encode, new_message

NAMES = {"ID": "id", "TYPE": "type", "SOURCE": "source", "REPLY_TO": "replyTo", "CORRELATION_ID": "correlationId",
         "CONTEXT": "context", "PAYLOAD": "payload", "ROUTING": "routing", "CONTENT": "content", "ERROR": "error",
         "METADATA": "metadata", "CONVERSATION_ID": "conversationId"}


def test_each_key_is_its_field_name() -> None:
    assert set(fields.__all__) == set(NAMES)
    for name, text in NAMES.items():
        assert getattr(fields, name) == text


def test_a_decoded_envelope_holds_the_very_same_key_objects() -> None:
    """The premise of the module: orjson's key cache gives every decode the object it gave the first one."""
    message = new_message("task", {"x": 1}, source_id="a", reply_to="_INBOX.x", conversation_id="c", metadata={"k": 1})
    message["payload"]["error"] = None
    decoded = decode(encode(message))
    keys = {key: key for key in decoded}
    for nested in ("source", "payload", "context"):
        keys.update({key: key for key in decoded[nested]})
    for name, text in NAMES.items():
        assert keys[text] is getattr(fields, name), text


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
