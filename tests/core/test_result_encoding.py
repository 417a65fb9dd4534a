"""encode_result and pub_frame (compiled and pure twin): a result envelope and its PUB command, each in one call."""

from __future__ import annotations

import enum
import math
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.command import pub_cmd

from agentcore.errors import EnvelopeError

SOURCE = {"id": "worker-1", "type": "worker"}


def _nested(depth: int) -> Any:
    """A list nested depth levels deep (deeper than an envelope may nest)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _as_dict(envelope_module: ModuleType, target: Any, correlation_id: Any, conversation_id: Any, content: Any,
             error: Any = None) -> dict[str, Any]:
    """The dict encode_result stands for (the same fields new_message writes for a result)."""
    payload = {"content": content} if error is None else {"content": content, "error": error}
    return {"id": "x", "timestamp": 1.5, "version": "1.0", "type": "result", "source": SOURCE, "target": target,
            "replyTo": None, "correlationId": correlation_id,
            "context": {"conversationId": conversation_id, "metadata": {}}, "payload": payload, "routing": None}


@pytest.mark.parametrize("content", [None, "text", 3, 2.5, [1, {"a": [True, None]}], {"nested": {"deep": ["x"]}}])
@pytest.mark.parametrize("conversation", [None, "conv-1"])
def test_an_encoded_result_is_the_envelope_encode_would_write(envelope_module: ModuleType, content: Any,
                                                               conversation: str | None) -> None:
    data = envelope_module.encode_result(SOURCE, "asker", "task-9", conversation, content)
    message = envelope_module.decode(data)  # a valid envelope
    expected = _as_dict(envelope_module, "asker", "task-9", conversation, content)
    assert len(message["id"]) == 32 and isinstance(message["timestamp"], float)
    assert {k: v for k, v in message.items() if k not in ("id", "timestamp")} == \
        {k: v for k, v in expected.items() if k not in ("id", "timestamp")}
    assert list(message) == list(expected)  # the same field order as new_message's


def test_an_encoded_error_result_carries_its_error(envelope_module: ModuleType) -> None:
    error = {"code": "handler_error", "message": "boom", "details": {"n": 1}}
    message = envelope_module.decode(envelope_module.encode_result(SOURCE, None, "t", None, None, error))
    assert message["payload"] == {"content": None, "error": error} and message["target"] is None


@pytest.mark.parametrize("content,error", [
    (math.nan, None),
    ({1: "non-str key"}, None),
    (object(), None),
    ({"set": {1, 2}}, None),
    (_nested(200), None),
    (None, {"code": 1, "message": "code is no string"}),
    (None, {"message": "no code"}),
    (None, ["not", "an", "object"]),
    (None, {"code": "c", "message": "m", "bad": math.inf}),
])
def test_what_encode_refuses_encode_result_refuses_with_the_same_error(envelope_module: ModuleType, content: Any,
                                                                        error: Any) -> None:
    with pytest.raises(EnvelopeError) as expected:
        envelope_module.encode(_as_dict(envelope_module, "asker", "t", None, content, error))
    with pytest.raises(EnvelopeError) as got:
        envelope_module.encode_result(SOURCE, "asker", "t", None, content, error)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("target,correlation,conversation", [(7, "t", None), ("a", b"t", None), ("a", "t", 3.5)])
def test_ids_that_are_no_strings_are_refused_as_encode_refuses_them(envelope_module: ModuleType, target: Any,
                                                                   correlation: Any, conversation: Any) -> None:
    with pytest.raises(EnvelopeError) as expected:
        envelope_module.encode(_as_dict(envelope_module, target, correlation, conversation, "c"))
    with pytest.raises(EnvelopeError) as got:
        envelope_module.encode_result(SOURCE, target, correlation, conversation, "c")
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("subject,reply,payload", [
    ("a.b", "", b"xyz"),
    ("_INBOX.abc.1", "_INBOX.r.2", b""),
    ("agents.prod.result.wörker.default", "", b"0" * 70_000),
    ("s", "", bytearray(b"a bytearray")),
])
def test_a_pub_frame_is_what_nats_py_writes(wire_module: ModuleType, subject: str, reply: str, payload: Any) -> None:
    assert wire_module.pub_frame(subject, reply, payload) == pub_cmd(subject, reply, payload)


class _Subject(enum.StrEnum):
    TASKS = "agents.prod.task.work.default"


@pytest.mark.parametrize("subject,reply", [
    (_Subject.TASKS, ""),          # a StrEnum member (a str subclass) naming a subject, as user code may
    ("a.b", _Subject.TASKS),
    (None, ""),                    # what nats-py's pub_cmd writes for these too: the twins write the same
    ("a.b", None),
])
def test_a_pub_frame_of_any_subject_object_is_what_nats_py_writes(wire_module: ModuleType, subject: Any, reply: Any) -> None:
    """The compiled pub_frame took exact str only (TypeError for a StrEnum subject); the twin and nats-py format any."""
    assert wire_module.pub_frame(subject, reply, b"xyz") == pub_cmd(subject, reply, b"xyz")
    if isinstance(subject, str) and isinstance(reply, str):  # strict (what send_now asks for) takes them alike
        assert wire_module.pub_frame(subject, reply, b"xyz", True) == pub_cmd(subject, reply, b"xyz")


def test_a_pub_frame_refuses_what_nats_py_cannot_encode(wire_module: ModuleType) -> None:
    with pytest.raises(UnicodeEncodeError):
        wire_module.pub_frame("bad\udc80", "", b"x")
    with pytest.raises(UnicodeEncodeError):
        pub_cmd("bad\udc80", "", b"x")


def test_an_encoded_result_round_trips_through_orjson(envelope_module: ModuleType) -> None:
    content = {"text": "é\u2028\"quoted\"", "n": [1, 2.0, -3e-5]}
    assert orjson.loads(envelope_module.encode_result(SOURCE, "a", "t", None, content))["payload"]["content"] == content


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    | st.dictionaries(st.integers(), children, min_size=1, max_size=2),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(content=_json, conversation=st.none() | st.text(max_size=12), target=st.none() | st.text(max_size=12))
def test_encode_result_agrees_with_encode_on_any_content(envelope_module: ModuleType, content: Any,
                                                          conversation: str | None, target: str | None) -> None:
    expected: Any
    try:
        expected = orjson.loads(envelope_module.encode(_as_dict(envelope_module, target, "t", conversation, content)))
    except EnvelopeError as exc:
        expected = str(exc)
    got: Any
    try:
        raw = envelope_module.encode_result(SOURCE, target, "t", conversation, content)
        got = orjson.loads(raw)
        assert orjson.dumps(got) == raw  # byte for byte what orjson writes for the envelope (encode() writes that)
    except EnvelopeError as exc:
        got = str(exc)
    if isinstance(expected, dict) and isinstance(got, dict):
        for message in (expected, got):
            del message["id"], message["timestamp"]
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(subject=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
       reply=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), payload=st.binary(max_size=300))
def test_a_pub_frame_is_what_nats_py_writes_for_any_input(wire_module: ModuleType, subject: str, reply: str,
                                                           payload: bytes) -> None:
    assert wire_module.pub_frame(subject, reply, payload) == pub_cmd(subject, reply, payload)


def _nats_py_refuses(subject: str, reply: str) -> bool:
    """Whether nats-py's publish refuses these subjects (its own check)."""
    from nats.aio.client import _validate_subject
    from nats.errors import BadSubjectError

    try:
        _validate_subject(subject)
        if reply:
            _validate_subject(reply)
    except BadSubjectError:
        return True
    return False


@pytest.mark.parametrize("subject,reply", [
    ("", ""), ("a b", ""), ("a\tb", ""), ("a\r\nPUB x 1", ""), ("ok", "r\n"), ("ok", "r s"), ("ok", "\t"),
    ("ok", ""), ("ok", "_INBOX.x"), ("wörker.ü", "é"),
])
def test_a_strict_pub_frame_refuses_what_nats_py_publish_refuses(wire_module: ModuleType, subject: str,
                                                                   reply: str) -> None:
    got = wire_module.pub_frame(subject, reply, b"x", True)
    assert (got is None) == _nats_py_refuses(subject, reply)
    if got is not None:
        assert got == pub_cmd(subject, reply, b"x")
    assert wire_module.pub_frame(subject, reply, bytearray(b"x"), True) == (None if got is None else got)


@settings(max_examples=300, deadline=None)
@given(subject=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
       reply=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_a_strict_pub_frame_agrees_with_nats_py_on_any_subject(wire_module: ModuleType, subject: str, reply: str) -> None:
    got = wire_module.pub_frame(subject, reply, b"p", True)
    assert (got is None) == _nats_py_refuses(subject, reply)
    assert got is None or got == pub_cmd(subject, reply, b"p")


@pytest.mark.parametrize("target,correlation,conversation", [
    (None, None, None), ("plain-id", "0123abcd", "conv-1"), ('quote"d', "back\\slash", "tab\there"),
    ("é-not-ascii", "\x7f", "\x00\x1f"), ("", "", ""),
])
@pytest.mark.parametrize("error", [None, {"code": "failed", "message": "it broke", "details": {"n": 1.5}}])
def test_an_encoded_result_is_the_bytes_orjson_writes_for_its_envelope(envelope_module: ModuleType, target: Any,
                                                                       correlation: Any, conversation: Any,
                                                                       error: Any) -> None:
    raw = envelope_module.encode_result(SOURCE, target, correlation, conversation, {"text": "x", "n": [1, 2.5]}, error)
    message = orjson.loads(raw)
    assert orjson.dumps(message) == raw
    assert (message["target"], message["correlationId"], message["context"]["conversationId"]) == (
        target, correlation, conversation)
    assert message["payload"] == ({"content": {"text": "x", "n": [1, 2.5]}} if error is None
                                  else {"content": {"text": "x", "n": [1, 2.5]}, "error": error})
    envelope_module.validate(message)
