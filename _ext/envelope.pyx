# cython: language_level=3, freethreading_compatible=True
"""Encode, decode and validate the agent message envelope with orjson (compiled core)."""

from cpython.ref cimport PyObject
from libc.math cimport isfinite

import orjson

from agentcore.errors import EnvelopeError

from agentcore._ext import envelope_py as _twin

__all__ = ("MAX_DEPTH", "MESSAGE_TYPES", "decode", "encode", "validate")


cdef extern from "Python.h":
    # Borrowed-pointer forms of the type checks, so the hot path does no reference counting.
    bint _is_str "PyUnicode_Check"(PyObject* o)
    bint _is_exact_str "PyUnicode_CheckExact"(PyObject* o)
    bint _is_int "PyLong_Check"(PyObject* o)
    bint _is_exact_int "PyLong_CheckExact"(PyObject* o)
    bint _is_bool "PyBool_Check"(PyObject* o)
    bint _is_float "PyFloat_Check"(PyObject* o)
    bint _is_dict "PyDict_Check"(PyObject* o)
    bint _is_list "PyList_Check"(PyObject* o)
    bint _is_tuple "PyTuple_Check"(PyObject* o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyUnicode_Check(object o)
    double _float_value "PyFloat_AS_DOUBLE"(PyObject* o)
    Py_ssize_t _str_len "PyUnicode_GET_LENGTH"(PyObject* o)
    PyObject* _get "PyDict_GetItemWithError"(PyObject* d, PyObject* k) except? NULL
    int _dict_next "PyDict_Next"(PyObject* d, Py_ssize_t* pos, PyObject** k, PyObject** v)
    Py_ssize_t _list_size "PyList_GET_SIZE"(PyObject* o)
    PyObject* _list_item "PyList_GET_ITEM"(PyObject* o, Py_ssize_t i)
    Py_ssize_t _tuple_size "PyTuple_GET_SIZE"(PyObject* o)
    PyObject* _tuple_item "PyTuple_GET_ITEM"(PyObject* o, Py_ssize_t i)
    int _set_contains "PySet_Contains"(PyObject* s, PyObject* k) except -1
    int _less "PyObject_RichCompareBool"(PyObject* a, PyObject* b, int op) except -1
    int Py_LT


MESSAGE_TYPES = _twin.MESSAGE_TYPES
MAX_DEPTH = _twin.MAX_DEPTH

cdef int _MAX_DEPTH = MAX_DEPTH
cdef object _TYPES = MESSAGE_TYPES
cdef object _ZERO = 0
cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _DUMPS_OPTIONS = _twin._DUMPS_OPTIONS
cdef object _slow_validate = _twin.validate
cdef object _name = _twin._name

# Interned keys: dict lookups with them hit the cached hash and the identity fast path.
cdef object _ID = "id"
cdef object _TIMESTAMP = "timestamp"
cdef object _VERSION = "version"
cdef object _TYPE = "type"
cdef object _SOURCE = "source"
cdef object _PAYLOAD = "payload"
cdef object _CONTENT = "content"
cdef object _ERROR = "error"
cdef object _CODE = "code"
cdef object _MESSAGE = "message"
cdef object _TARGET = "target"
cdef object _REPLY_TO = "replyTo"
cdef object _CORRELATION_ID = "correlationId"
cdef object _CONTEXT = "context"
cdef object _CONVERSATION_ID = "conversationId"
cdef object _METADATA = "metadata"
cdef object _ROUTING = "routing"
cdef object _PRIORITY = "priority"
cdef object _CAPABILITIES = "capabilities"
cdef object _TIMEOUT = "timeout"


cdef inline PyObject* _field(PyObject* obj, object key) except? NULL:
    return _get(obj, <PyObject*>key)


cdef inline bint _absent(PyObject* v) noexcept:
    return v == NULL or v == <PyObject*>None


cdef inline bint _nonempty_str(PyObject* v) noexcept:
    return v != NULL and _is_str(v) and _str_len(v) > 0


cdef inline bint _number(PyObject* v) noexcept:
    """Return whether v is a finite int or float (bool excluded)."""
    if _is_float(v):
        return isfinite(_float_value(v))
    return _is_int(v) and not _is_bool(v)


cdef bint _tree_ok(PyObject* v, int depth) noexcept:
    """Return whether v holds no non-finite float, non-str key or nesting deeper than MAX_DEPTH."""
    cdef Py_ssize_t pos = 0, i, n
    cdef PyObject* key
    cdef PyObject* item
    if _is_exact_str(v) or _is_exact_int(v) or v == <PyObject*>None:
        return True
    if _is_float(v):
        return isfinite(_float_value(v))
    if _is_dict(v):
        if depth > _MAX_DEPTH:
            return False
        while _dict_next(v, &pos, &key, &item):
            if not _is_str(key) or not _tree_ok(item, depth + 1):
                return False
        return True
    if _is_list(v):
        if depth > _MAX_DEPTH:
            return False
        n = _list_size(v)
        for i in range(n):
            if not _tree_ok(_list_item(v, i), depth + 1):
                return False
        return True
    if _is_tuple(v):
        if depth > _MAX_DEPTH:
            return False
        n = _tuple_size(v)
        for i in range(n):
            if not _tree_ok(_tuple_item(v, i), depth + 1):
                return False
        return True
    return True


cdef int _valid(PyObject* m) except -1:
    """Return 1 when m is a valid envelope, 0 when it is not (the pure twin then says why)."""
    cdef PyObject* v
    cdef PyObject* obj
    cdef Py_ssize_t i, n
    if not _is_dict(m):
        return 0
    if not _nonempty_str(_field(m, _ID)):
        return 0
    v = _field(m, _TIMESTAMP)
    if v == NULL or not _number(v):
        return 0
    v = _field(m, _VERSION)
    if v == NULL or not _is_str(v):
        return 0
    v = _field(m, _TYPE)
    if v == NULL or not _is_str(v) or not _set_contains(<PyObject*>_TYPES, v):
        return 0
    obj = _field(m, _SOURCE)
    if obj == NULL or not _is_dict(obj) or not _nonempty_str(_field(obj, _ID)):
        return 0
    v = _field(obj, _TYPE)
    if v == NULL or not _is_str(v):
        return 0
    obj = _field(m, _PAYLOAD)
    if obj == NULL or not _is_dict(obj) or _field(obj, _CONTENT) == NULL:
        return 0
    obj = _field(obj, _ERROR)
    if not _absent(obj):
        if not _is_dict(obj):
            return 0
        v = _field(obj, _CODE)
        if v == NULL or not _is_str(v):
            return 0
        v = _field(obj, _MESSAGE)
        if v == NULL or not _is_str(v):
            return 0
    for key in (_TARGET, _REPLY_TO, _CORRELATION_ID):
        v = _field(m, key)
        if not _absent(v) and not _is_str(v):
            return 0
    obj = _field(m, _CONTEXT)
    if not _absent(obj):
        if not _is_dict(obj):
            return 0
        v = _field(obj, _CONVERSATION_ID)
        if not _absent(v) and not _is_str(v):
            return 0
        v = _field(obj, _METADATA)
        if not _absent(v) and not _is_dict(v):
            return 0
    obj = _field(m, _ROUTING)
    if not _absent(obj):
        if not _is_dict(obj):
            return 0
        v = _field(obj, _PRIORITY)
        if not _absent(v) and (not _is_int(v) or _is_bool(v)):
            return 0
        v = _field(obj, _CAPABILITIES)
        if not _absent(v):
            if not _is_list(v):
                return 0
            n = _list_size(v)
            for i in range(n):
                if not _is_str(_list_item(v, i)):
                    return 0
        v = _field(obj, _TIMEOUT)
        if not _absent(v) and (not _number(v) or _less(v, <PyObject*>_ZERO, Py_LT)):
            return 0
    return _tree_ok(m, 0)


cdef int _fail(object message) except -1:
    _slow_validate(message)
    # Unreachable while both twins agree; stay loud rather than let an invalid envelope through.
    raise EnvelopeError("envelope is not valid")


def validate(message):
    """Raise EnvelopeError naming the field unless message is a valid envelope."""
    if not _valid(<PyObject*>message):
        _fail(message)


def decode(data):
    """Parse and validate one envelope; return the decoded dict unchanged."""
    if not (PyBytes_Check(data) or PyUnicode_Check(data) or PyByteArray_Check(data) or PyMemoryView_Check(data)):
        raise EnvelopeError(f"envelope data must be bytes, bytearray, memoryview or str, got {_name(data)}")
    try:
        message = _loads(data)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    if not _valid(<PyObject*>message):
        _fail(message)
    return message


def encode(message):
    """Validate message and serialize it to JSON bytes."""
    if not _valid(<PyObject*>message):
        _fail(message)
    try:
        return _dumps(message, None, _DUMPS_OPTIONS)
    except TypeError as exc:
        raise EnvelopeError(f"envelope cannot be serialized: {exc}") from None
