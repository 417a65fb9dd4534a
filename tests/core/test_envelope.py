"""The message envelope codec: both implementations, every failure an EnvelopeError naming its field."""

from __future__ import annotations

import copy
import datetime
import math
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.errors import EnvelopeError


def make_message(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "0123456789abcdef-1",
        "timestamp": 1732560000.123,
        "version": "1.0",
        "type": "task",
        "source": {"id": "agent-planner", "type": "agent"},
        "target": "agents.worker.tasks",
        "replyTo": "_INBOX.abc",
        "correlationId": None,
        "context": {"conversationId": "conv-1", "metadata": {"user": "alice"}},
        "payload": {"content": {"task": "summarize", "text": "hello", "n": [1, 2.5, None, True]}},
        "routing": {"priority": 5, "capabilities": ["summarize"], "timeout": 30000},
    }
    message.update(changes)
    return message


MINIMAL = {
    "id": "m",
    "timestamp": 0,
    "version": "1.0",
    "type": "event",
    "source": {"id": "s", "type": ""},
    "payload": {"content": None},
}


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_message_types(envelope_module: ModuleType) -> None:
    assert envelope_module.MESSAGE_TYPES == frozenset({"task", "result", "event", "query"})
    assert envelope_module.MAX_DEPTH == 100


@pytest.mark.parametrize("message", [make_message(), MINIMAL], ids=["full", "minimal"])
def test_round_trip(envelope_module: ModuleType, message: dict[str, Any]) -> None:
    data = envelope_module.encode(message)
    assert isinstance(data, bytes)
    assert orjson.loads(data) == message
    decoded = envelope_module.decode(data)
    assert decoded == message
    assert "routing" in decoded or "routing" not in message  # no defaults filled in
    assert envelope_module.encode(decoded) == data


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: b.decode()])
def test_decode_input_types(envelope_module: ModuleType, wrap: Any) -> None:
    data = orjson.dumps(MINIMAL)
    assert envelope_module.decode(wrap(data)) == MINIMAL


def test_unknown_keys_are_kept(envelope_module: ModuleType) -> None:
    message = make_message(extra={"x": [1, {"y": "z"}]})
    message["source"]["region"] = "eu"
    message["payload"]["attachments"] = []
    message["routing"]["hops"] = 3
    message["context"]["trace"] = "t"
    assert envelope_module.decode(envelope_module.encode(message)) == message


@pytest.mark.parametrize("message_type", ["task", "result", "event", "query"])
def test_every_type(envelope_module: ModuleType, message_type: str) -> None:
    envelope_module.validate(make_message(type=message_type))


@pytest.mark.parametrize(
    "changes",
    [
        {"timestamp": 5},
        {"target": None, "replyTo": None, "correlationId": "c"},
        {"context": None},
        {"context": {}},
        {"context": {"conversationId": None, "metadata": None}},
        {"routing": None},
        {"routing": {}},
        {"routing": {"priority": None, "capabilities": None, "timeout": None}},
        {"routing": {"timeout": 0}},
        {"routing": {"timeout": 1.5}},
        {"payload": {"content": None, "error": None}},
        {"payload": {"content": None, "error": {"code": "E", "message": "m", "details": {"a": 1}}}},
        {"payload": {"content": "text"}},
        {"payload": {"content": [nested(98)]}},  # payload is level 1, the innermost list level 100
        {"context": {"metadata": {"a": nested(98)}}},
        {"version": "2.0-beta"},
    ],
)
def test_valid_variants(envelope_module: ModuleType, changes: dict[str, Any]) -> None:
    message = make_message(**changes)
    assert envelope_module.decode(envelope_module.encode(message)) == message


def _missing(key: str) -> dict[str, Any]:
    message = make_message()
    del message[key]
    return message


def _set(path: str, value: Any) -> dict[str, Any]:
    message = make_message()
    *parents, last = path.split(".")
    target = message
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return message


INVALID = [
    (_missing("id"), "id", "is required"),
    (_missing("timestamp"), "timestamp", "is required"),
    (_missing("version"), "version", "is required"),
    (_missing("type"), "type", "is required"),
    (_missing("source"), "source", "is required"),
    (_missing("payload"), "payload", "is required"),
    (_set("id", ""), "id", "non-empty string, got str"),
    (_set("id", 7), "id", "non-empty string, got int"),
    (_set("timestamp", True), "timestamp", "finite number, got bool"),
    (_set("timestamp", "now"), "timestamp", "finite number, got str"),
    (_set("timestamp", None), "timestamp", "finite number, got null"),
    (_set("timestamp", math.inf), "timestamp", "finite number"),
    (_set("version", 1.0), "version", "string, got float"),
    (_set("type", "command"), "type", "one of event, query, result, task, got 'command'"),
    (_set("type", None), "type", "string, got null"),
    (_set("source", "agent"), "source", "an object, got str"),
    (_set("source.id", 3), "source.id", "must be a non-empty string, got int"),
    (_set("source.id", ""), "source.id", "non-empty string"),
    (_set("source.id", KeyError), "source.id", "is required"),
    (_set("source.type", None), "source.type", "string, got null"),
    (_set("source.type", KeyError), "source.type", "is required"),
    (_set("payload", []), "payload", "an object, got list"),
    (_set("payload.content", KeyError), "payload.content", "is required"),
    (_set("payload.error", "boom"), "payload.error", "an object or null, got str"),
    (_set("payload.error", {"code": "E"}), "payload.error.message", "is required"),
    (_set("payload.error", {"code": 1, "message": "m"}), "payload.error.code", "string, got int"),
    (_set("target", 5), "target", "string or null, got int"),
    (_set("replyTo", ["x"]), "replyTo", "string or null, got list"),
    (_set("correlationId", {}), "correlationId", "string or null, got dict"),
    (_set("context", []), "context", "an object or null, got list"),
    (_set("context.conversationId", 1), "context.conversationId", "string or null"),
    (_set("context.metadata", []), "context.metadata", "an object or null, got list"),
    (_set("routing", 5), "routing", "an object or null, got int"),
    (_set("routing.priority", True), "routing.priority", "an integer or null, got bool"),
    (_set("routing.priority", 1.0), "routing.priority", "an integer or null, got float"),
    (_set("routing.capabilities", "x"), "routing.capabilities", "a list of strings or null, got str"),
    (_set("routing.capabilities", ["a", 1]), "routing.capabilities[1]", "a string, got int"),
    (_set("routing.timeout", -1), "routing.timeout", "milliseconds >= 0"),
    (_set("routing.timeout", "5"), "routing.timeout", "milliseconds >= 0"),
    (_set("routing.timeout", False), "routing.timeout", "milliseconds >= 0"),
    (_set("payload.content", {"a": [1, math.nan]}), "payload.content.a[1]", "finite number, got nan"),
    (_set("payload.content", -math.inf), "payload.content", "finite number, got -inf"),
    (_set("context.metadata", {"x": math.inf}), "context.metadata.x", "finite number"),
    (make_message(extra=math.nan), "extra", "finite number"),
    (_set("payload.content", {1: "a"}), "payload.content", "non-str key 1 (int)"),
    (_set("payload.content", [nested(99)]), "payload.content" + "[0]" * 99, "deeper than 100 levels"),
    (_set("context.metadata", {"a": nested(99)}), "context.metadata.a" + "[0]" * 98, "deeper than 100"),
]


@pytest.mark.parametrize(("message", "field", "text"), INVALID, ids=[f"{i}-{case[1]}" for i, case in enumerate(INVALID)])
def test_invalid_fields(envelope_module: ModuleType, message: dict[str, Any], field: str, text: str) -> None:
    for func in (envelope_module.validate, envelope_module.encode):
        with pytest.raises(EnvelopeError, match=None) as info:
            func(copy.deepcopy(message))
        assert info.value.field == field
        assert text in str(info.value)
        assert repr(field)[:40] in str(info.value)
    try:
        data = orjson.dumps(message)
    except TypeError:
        return  # a non-str key: not representable as JSON at all
    if orjson.loads(data) != message:
        return  # orjson wrote a non-finite float as null: the JSON form is a different message
    with pytest.raises(EnvelopeError) as info:
        envelope_module.decode(data)
    assert info.value.field == field


def test_not_an_object(envelope_module: ModuleType) -> None:
    for value in ([], "x", None, 1):
        with pytest.raises(EnvelopeError, match="must be a JSON object") as info:
            envelope_module.validate(value)
        assert info.value.field is None
    with pytest.raises(EnvelopeError, match="JSON object, got list"):
        envelope_module.decode(b"[1, 2]")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"{'id': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b'{"a": "\xff"}',
        b'{"a": "\\ud800"}',
        "{\"a\": \"\ud800\"}",
        b"[" * 2000 + b"]" * 2000,
        b"\x00",
    ],
)
def test_decode_rejects_bad_json(envelope_module: ModuleType, data: bytes | str) -> None:
    with pytest.raises(EnvelopeError, match="not valid JSON") as info:
        envelope_module.decode(data)
    assert info.value.field is None


def test_decode_rejects_wrong_input_type(envelope_module: ModuleType) -> None:
    for data in (None, 5, {"id": "x"}, ["x"]):
        with pytest.raises(EnvelopeError, match="must be bytes, bytearray, memoryview or str"):
            envelope_module.decode(data)


def test_decode_rejects_deep_nesting_that_json_allows(envelope_module: ModuleType) -> None:
    data = orjson.dumps(make_message(payload={"content": nested(150)}))
    with pytest.raises(EnvelopeError, match="deeper than 100 levels"):
        envelope_module.decode(data)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("\ud800", "surrogates"),
        ({"k": "a\udfffb"}, "surrogates"),
        (2**70, "64-bit"),
        (datetime.datetime(2024, 1, 1), "not JSON serializable"),
        ({1, 2}, "not JSON serializable"),
        (object(), "not JSON serializable"),
    ],
)
def test_encode_rejects_unserializable(envelope_module: ModuleType, content: Any, text: str) -> None:
    with pytest.raises(EnvelopeError, match="cannot be serialized") as info:
        envelope_module.encode(make_message(payload={"content": content}))
    assert text in str(info.value)


def test_encode_accepts_tuples(envelope_module: ModuleType) -> None:
    message = make_message(payload={"content": (1, (2.5, "x"))})
    assert envelope_module.decode(envelope_module.encode(message))["payload"]["content"] == [1, [2.5, "x"]]


def test_encode_rejects_self_reference(envelope_module: ModuleType) -> None:
    content: dict[str, Any] = {}
    content["self"] = content
    with pytest.raises(EnvelopeError, match="deeper than 100"):
        envelope_module.encode(make_message(payload={"content": content}))


def test_big_int_is_decoded_as_float(envelope_module: ModuleType) -> None:
    data = orjson.dumps(MINIMAL).replace(b'"content":null', b'"content":123456789012345678901234567890')
    message = envelope_module.decode(data)
    assert message["payload"]["content"] == 1.2345678901234568e29
    assert envelope_module.decode(envelope_module.encode(message)) == message


# ------------------------------------------------------------------------------------------- property tests

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
_opt_str = st.none() | st.text(max_size=10)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=20)),
        "timestamp": draw(st.integers(0, 2**40) | st.floats(0, 2e9)),
        "version": "1.0",
        "type": draw(st.sampled_from(["task", "result", "event", "query"])),
        "source": {"id": draw(st.text(min_size=1, max_size=10)), "type": draw(st.text(max_size=8))},
        "payload": {"content": draw(_json)},
    }
    for key in ("target", "replyTo", "correlationId"):
        if draw(st.booleans()):
            message[key] = draw(_opt_str)
    if draw(st.booleans()):
        message["context"] = {"conversationId": draw(_opt_str), "metadata": draw(st.dictionaries(st.text(max_size=5), _json, max_size=3))}
    if draw(st.booleans()):
        message["routing"] = {
            "priority": draw(st.integers(-10, 10)),
            "capabilities": draw(st.lists(st.text(max_size=6), max_size=3)),
            "timeout": draw(st.none() | st.integers(0, 10**6) | st.floats(0, 1e6)),
        }
    if draw(st.booleans()):
        message["payload"]["error"] = {"code": draw(st.text(max_size=5)), "message": draw(st.text(max_size=10))}
    if draw(st.booleans()):
        # An extra key the envelope does not define (never one of its own optional fields with a wrong type).
        known = {"id", "timestamp", "version", "type", "source", "target", "replyTo", "correlationId", "context", "payload", "routing"}
        message[draw(st.text(max_size=6).filter(lambda k: k not in known))] = draw(_json)
    return message


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if len(prefix) > 6:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, prefix + (i,))
    return found


_mutants = st.one_of(
    st.just(KeyError),
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([math.nan, math.inf, -1.5, 0.0, 2**70]),
    st.text(max_size=3),
    st.just("\ud800"),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(lambda: {1: 2}),
    st.builds(lambda: nested(120)),
)


def _outcome(func: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", func(*args))
    except EnvelopeError as exc:
        return ("error", str(exc), exc.field)


@settings(max_examples=200, deadline=None)
@given(message=envelopes())
def test_twins_round_trip_losslessly(twins, message: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    data = compiled.envelope.encode(message)
    assert data == pure.envelope.encode(message)
    for envelope in (compiled.envelope, pure.envelope):
        decoded = envelope.decode(data)
        assert decoded == message
        assert envelope.encode(decoded) == data


@settings(max_examples=300, deadline=None)
@given(message=envelopes(), data=st.data())
def test_twins_agree_on_mutations(twins, message: dict[str, Any], data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(message)
        path = data.draw(st.sampled_from(paths))
        target = message
        for part in path[:-1]:
            target = target[part]
        value = data.draw(_mutants)
        if value is KeyError:
            if isinstance(target, dict):
                del target[path[-1]]
        else:
            target[path[-1]] = value
    assert _outcome(compiled.envelope.validate, message) == _outcome(pure.envelope.validate, message)
    encoded = _outcome(compiled.envelope.encode, message)
    assert encoded == _outcome(pure.envelope.encode, message)
    if encoded[0] == "ok":
        # What encodes also decodes, to the same message.
        for envelope in (compiled.envelope, pure.envelope):
            assert envelope.decode(encoded[1]) == orjson.loads(encoded[1])


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_twins_agree_on_random_bytes(twins, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    assert _outcome(compiled.envelope.decode, raw) == _outcome(pure.envelope.decode, raw)


def test_many_brackets_but_shallow(envelope_module: ModuleType) -> None:
    message = make_message(payload={"content": [[] for _ in range(300)] + [{} for _ in range(300)]})
    assert envelope_module.decode(envelope_module.encode(message)) == message


class _Key(str):
    pass


def test_odd_keys(envelope_module: ModuleType) -> None:
    message = make_message()
    message["ünïcode"] = {"ключ": [1.5]}
    assert envelope_module.decode(envelope_module.encode(message)) == message
    # orjson writes exact str keys only, so a str subclass key is refused up front, wherever it is.
    with pytest.raises(EnvelopeError, match="envelope has a non-str key 'id' \\(_Key\\)") as info:
        envelope_module.validate({_Key(k): v for k, v in message.items()})
    assert info.value.field is None
    message["payload"] = {_Key("content"): 1}
    with pytest.raises(EnvelopeError, match="non-str key 'content'") as info:
        envelope_module.encode(message)
    assert info.value.field == "payload"


# ------------------------------------------------------------------ new_message's exact shape (compiled fast path)


class _Priority(int):
    pass


def _built(**changes: Any) -> dict[str, Any]:
    """Return a message from agentcore.envelope.new_message, the shape the compiled core checks fastest."""
    from agentcore.envelope import new_message

    message = new_message(
        "task",
        {"task": "summarize", "tags": ["a", "b"], "t": 0.5},
        source_id="agent-planner",
        target="agents.worker.tasks",
        reply_to="_INBOX.abc",
        metadata={"user": "alice"},
        capabilities=["summarize"],
        timeout_ms=30000,
        message_id="m-1",
    )
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = message
        for part in parents:
            target = target[part]
        target[last] = value
    return message


FAST_SHAPE_INVALID = [
    ({"payload__content": {"x": [1.0, math.nan]}}, "payload.content.x[1]", "finite number"),
    ({"context__metadata": {"m": math.inf}}, "context.metadata.m", "finite number"),
    ({"timestamp": math.nan}, "timestamp", "finite number"),
    ({"routing__priority": True}, "routing.priority", "an integer or null"),
    ({"routing__timeout": -1}, "routing.timeout", ">= 0"),
    ({"routing__timeout": math.inf}, "routing.timeout", ">= 0"),
    ({"routing__capabilities": ["a", 1]}, "routing.capabilities[1]", "a string"),
    ({"payload__content": {1: "x"}}, "payload.content", "non-str key 1"),
    ({"payload__content": {_Key("k"): "x"}}, "payload.content", "non-str key 'k'"),
    ({"context__metadata": {None: 1}}, "context.metadata", "non-str key None"),
    ({"payload__content": nested(100)}, "payload.content" + "[0]" * 99, "deeper than 100"),
    ({"context__metadata": {"a": nested(99)}}, "context.metadata.a" + "[0]" * 98, "deeper than 100"),
    ({"payload__error": {"code": "E", "message": "m", "d": [math.nan]}}, "payload.error.d[0]", "finite number"),
    ({"payload__error": {"code": "E", "message": "m", "d": nested(99)}}, "payload.error.d" + "[0]" * 98, "deeper"),
    ({"payload__error": {"code": "E"}}, "payload.error.message", "is required"),
    ({"source__id": ""}, "source.id", "a non-empty string"),
    ({"type": "tasks"}, "type", "must be one of"),
    ({"context__conversationId": 7}, "context.conversationId", "a string or null"),
    ({"routing__stream": [math.nan]}, "routing.stream[0]", "finite number"),
    ({"routing__stream": nested(100)}, "routing.stream" + "[0]" * 99, "deeper than 100"),
    ({"routing__stream": {1: "x"}}, "routing.stream", "non-str key 1"),
    ({"routing__stream": True, "routing__timeout": -1}, "routing.timeout", ">= 0"),
]


@pytest.mark.parametrize(("changes", "field", "text"), FAST_SHAPE_INVALID)
def test_new_message_shape_invalid(envelope_module: ModuleType, changes: dict[str, Any], field: str, text: str) -> None:
    message = _built(**changes)
    for func in (envelope_module.validate, envelope_module.encode):
        with pytest.raises(EnvelopeError, match=text) as info:
            func(message)
        assert info.value.field == field


@pytest.mark.parametrize(("changes", "field", "text"), FAST_SHAPE_INVALID)
def test_twins_agree_on_new_message_shape(twins, changes: dict[str, Any], field: str, text: str) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    message = _built(**changes)
    for name in ("validate", "encode"):
        assert _outcome(getattr(compiled.envelope, name), message) == _outcome(getattr(pure.envelope, name), message)


def test_new_message_shape_str_subclass_keys(envelope_module: ModuleType) -> None:
    message = _built()
    message["source"] = {_Key("id"): "agent-planner", "type": "agent"}
    with pytest.raises(EnvelopeError, match="non-str key 'id'") as info:
        envelope_module.encode(message)
    assert info.value.field == "source"
    message = _built()
    message["routing"] = {"priority": 5, _Key("capabilities"): [], "timeout": None}
    with pytest.raises(EnvelopeError, match="non-str key 'capabilities'"):
        envelope_module.validate(message)
    message = {(_Key(k) if k == "payload" else k): v for k, v in _built().items()}
    with pytest.raises(EnvelopeError, match="envelope has a non-str key 'payload'"):
        envelope_module.encode(message)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"routing__priority": _Priority(3)},
        {"routing__priority": None, "routing__capabilities": None, "routing__timeout": 1.5},
        {"context__metadata": None},
        {"payload__error": None},
        {"payload__error": {"code": "E", "message": "m", "details": {"a": [1, 2.5]}}},
        {"payload__content": nested(99)},  # payload is level 1, the innermost list level 100
        {"context__metadata": {"a": nested(98)}},
        {"timestamp": 5},
        {"routing__stream": True},  # what a request that takes an oversized result as a stream adds
        {"routing__stream": nested(99)},
        {"routing": None},  # a result's routing
        {"routing": None, "payload__error": {"code": "E", "message": "m"}},
    ],
)
def test_new_message_shape_valid(envelope_module: ModuleType, changes: dict[str, Any]) -> None:
    message = _built(**changes)
    envelope_module.validate(message)
    data = envelope_module.encode(message)
    decoded = envelope_module.decode(data)
    assert decoded == message
    assert envelope_module.encode(decoded) == data  # decoded keys come from orjson, not from source code


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b'"priority":5', b'"priority":true', "routing.priority"),
        (b'"priority":5', b'"priority":5.0', "routing.priority"),
        (b'"timeout":30000', b'"timeout":-3', "routing.timeout"),
        (b'"id":"m-1"', b'"id":""', "id"),
        (b'"type":"task"', b'"type":"job"', "type"),
        (b'"DEEP"', b"[" * 100 + b"1" + b"]" * 100, "payload.content" + "[0]" * 99),
        (b'"DEEP"', b"[" * 99 + b"1.5" + b"]" * 99, None),
    ],
)
def test_decode_new_message_shape(envelope_module: ModuleType, old: bytes, new: bytes, field: str | None) -> None:
    data = orjson.dumps(_built(payload__content="DEEP"))
    assert old in data
    if field is None:  # just within MAX_DEPTH, but too many brackets for the byte count to vouch for it
        assert envelope_module.decode(data.replace(old, new, 1))["payload"]["content"] == orjson.loads(new)
        return
    with pytest.raises(EnvelopeError) as info:
        envelope_module.decode(data.replace(old, new, 1))
    assert info.value.field == field


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_twins_agree_on_new_message_mutations(twins, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    message = data.draw(st.sampled_from([{}, {"routing__stream": True}, {"routing": None}]).map(lambda c: _built(**c)))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(_paths(message)))
        target = message
        for part in path[:-1]:
            target = target[part]
        value = data.draw(_mutants)
        if value is KeyError:
            if isinstance(target, dict):
                del target[path[-1]]
        else:
            target[path[-1]] = value
    assert _outcome(compiled.envelope.validate, message) == _outcome(pure.envelope.validate, message)
    encoded = _outcome(compiled.envelope.encode, message)
    assert encoded == _outcome(pure.envelope.encode, message)
    try:
        raw = orjson.dumps(message)  # NaN becomes null here: decode must judge the JSON it gets, like the twin
    except TypeError:
        return
    assert _outcome(compiled.envelope.decode, raw) == _outcome(pure.envelope.decode, raw)
