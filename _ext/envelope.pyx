# cython: language_level=3
"""Encode, decode and validate the agent message envelope with orjson (compiled core)."""

from cpython.ref cimport PyObject
from libc.math cimport isfinite
from libc.string cimport memcmp, memcpy

from os import register_at_fork as _register_at_fork, urandom as _urandom
from sys import intern as _intern

import orjson

from agentcore.errors import EnvelopeError

from agentcore._ext import envelope_py as _twin

__all__ = ("MAX_DEPTH", "MESSAGE_TYPES", "decode", "encode", "encode_result", "new_id", "validate")


cdef extern from "Python.h":
    # Borrowed-pointer forms of the type checks, so the hot path does no reference counting.
    bint _is_str "PyUnicode_Check"(PyObject* o)
    bint _is_exact_str "PyUnicode_CheckExact"(PyObject* o)
    bint _is_int "PyLong_Check"(PyObject* o)
    bint _is_exact_int "PyLong_CheckExact"(PyObject* o)
    bint _is_bool "PyBool_Check"(PyObject* o)
    bint _is_float "PyFloat_Check"(PyObject* o)
    bint _is_exact_float "PyFloat_CheckExact"(PyObject* o)
    Py_ssize_t _dict_size "PyDict_GET_SIZE"(PyObject* o)
    bint PyBytes_CheckExact(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    bint _is_dict "PyDict_Check"(PyObject* o)
    bint _is_list "PyList_Check"(PyObject* o)
    bint _is_tuple "PyTuple_Check"(PyObject* o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyUnicode_Check(object o)
    double _float_value "PyFloat_AS_DOUBLE"(PyObject* o)
    Py_ssize_t _str_len "PyUnicode_GET_LENGTH"(PyObject* o)
    bint _is_ascii "PyUnicode_IS_ASCII"(PyObject* o)
    void* _str_data "PyUnicode_DATA"(PyObject* o)
    PyObject* _get "PyDict_GetItemWithError"(PyObject* d, PyObject* k) except? NULL
    int _dict_next "PyDict_Next"(PyObject* d, Py_ssize_t* pos, PyObject** k, PyObject** v)
    Py_ssize_t _list_size "PyList_GET_SIZE"(PyObject* o)
    PyObject* _list_item "PyList_GET_ITEM"(PyObject* o, Py_ssize_t i)
    Py_ssize_t _tuple_size "PyTuple_GET_SIZE"(PyObject* o)
    PyObject* _tuple_item "PyTuple_GET_ITEM"(PyObject* o, Py_ssize_t i)
    int _set_contains "PySet_Contains"(PyObject* s, PyObject* k) except -1
    int _less "PyObject_RichCompareBool"(PyObject* a, PyObject* b, int op) except -1
    int Py_LT
    long long _as_long_long "PyLong_AsLongLongAndOverflow"(PyObject* o, int* overflow) except? -1


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


cdef inline bint _optional_str(PyObject* v) noexcept:
    return v == NULL or v == <PyObject*>None or _is_str(v)


cdef inline int _negative(PyObject* v) except -1:
    """Return whether the number v is below zero."""
    cdef int overflow
    if _is_float(v):
        return _float_value(v) < 0
    if _is_exact_int(v):
        return _as_long_long(v, &overflow) < 0 or overflow < 0
    return _less(v, <PyObject*>_ZERO, Py_LT)


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
    # Exact-type checks first: they are pointer compares, while subclass checks walk the MRO.
    if _is_exact_str(v) or _is_exact_int(v) or v == <PyObject*>None:
        return True
    if _is_exact_float(v):
        return isfinite(_float_value(v))
    if _is_dict(v):
        if depth > _MAX_DEPTH:
            return False
        while _dict_next(v, &pos, &key, &item):
            if not _is_exact_str(key) or not _tree_ok(item, depth + 1):
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
    if _is_float(v):
        return isfinite(_float_value(v))
    return True


cdef bint _shallow(const char* buf, Py_ssize_t n) noexcept nogil:
    """Return whether JSON text buf has at most MAX_DEPTH + 1 brackets, so no container nests too deep."""
    cdef Py_ssize_t count = 0, i = 0, j, stop
    cdef unsigned char block
    while i < n:
        # A byte-wide counter over blocks of at most 255 bytes lets the compiler count 16+ bytes per step.
        stop = i + 255 if n - i > 255 else n
        block = 0
        for j in range(i, stop):
            block += (buf[j] == 123) | (buf[j] == 91)  # '{' or '['
        count += block
        if count > _MAX_DEPTH + 1:
            return False
        i = stop
    return True


cdef enum:
    # Codes of the field names the envelope defines; _OTHER is any other key.
    _OTHER, _K_ID, _K_TIMESTAMP, _K_VERSION, _K_TYPE, _K_SOURCE, _K_PAYLOAD, _K_TARGET, _K_REPLY_TO
    _K_CORRELATION_ID, _K_CONTEXT, _K_ROUTING, _K_CONTENT, _K_ERROR, _K_CODE, _K_MESSAGE
    _K_CONVERSATION_ID, _K_METADATA, _K_PRIORITY, _K_CAPABILITIES, _K_TIMEOUT


cdef inline int _key(PyObject* key) noexcept:
    """Return the code of a dict key, or -1 when it is not an exact str (the slow path then decides)."""
    cdef const char* s
    if not _is_exact_str(key):
        return -1
    if not _is_ascii(key):
        return _OTHER  # every defined name is ASCII
    s = <const char*>_str_data(key)
    # memcmp with a constant length compiles to a few integer compares.
    n = _str_len(key)
    if n == 2:
        return _K_ID if memcmp(s, b"id", 2) == 0 else _OTHER
    if n == 4:
        if memcmp(s, b"type", 4) == 0:
            return _K_TYPE
        return _K_CODE if memcmp(s, b"code", 4) == 0 else _OTHER
    if n == 5:
        return _K_ERROR if memcmp(s, b"error", 5) == 0 else _OTHER
    if n == 6:
        if memcmp(s, b"source", 6) == 0:
            return _K_SOURCE
        return _K_TARGET if memcmp(s, b"target", 6) == 0 else _OTHER
    if n == 7:
        if memcmp(s, b"version", 7) == 0:
            return _K_VERSION
        if memcmp(s, b"payload", 7) == 0:
            return _K_PAYLOAD
        if memcmp(s, b"replyTo", 7) == 0:
            return _K_REPLY_TO
        if memcmp(s, b"context", 7) == 0:
            return _K_CONTEXT
        if memcmp(s, b"routing", 7) == 0:
            return _K_ROUTING
        if memcmp(s, b"content", 7) == 0:
            return _K_CONTENT
        if memcmp(s, b"message", 7) == 0:
            return _K_MESSAGE
        return _K_TIMEOUT if memcmp(s, b"timeout", 7) == 0 else _OTHER
    if n == 8:
        if memcmp(s, b"metadata", 8) == 0:
            return _K_METADATA
        return _K_PRIORITY if memcmp(s, b"priority", 8) == 0 else _OTHER
    if n == 9:
        return _K_TIMESTAMP if memcmp(s, b"timestamp", 9) == 0 else _OTHER
    if n == 12:
        return _K_CAPABILITIES if memcmp(s, b"capabilities", 12) == 0 else _OTHER
    if n == 13:
        return _K_CORRELATION_ID if memcmp(s, b"correlationId", 13) == 0 else _OTHER
    if n == 14:
        return _K_CONVERSATION_ID if memcmp(s, b"conversationId", 14) == 0 else _OTHER
    return _OTHER


cdef inline int _message_type_ok(PyObject* v) except -1:
    cdef const char* s
    cdef Py_ssize_t n
    if not _is_str(v):
        return 0
    if _is_exact_str(v) and _is_ascii(v):
        s = <const char*>_str_data(v)
        n = _str_len(v)
        if n == 4:
            return memcmp(s, b"task", 4) == 0
        if n == 5:
            return memcmp(s, b"event", 5) == 0 or memcmp(s, b"query", 5) == 0
        if n == 6:
            return memcmp(s, b"result", 6) == 0
        return 0
    return _set_contains(<PyObject*>_TYPES, v)


# The envelope's field names, in the order agentcore.envelope.new_message inserts them (then the nested ones).
cdef tuple _FIELDS = (
    "id", "timestamp", "version", "type", "source", "target", "replyTo", "correlationId", "context", "payload",
    "routing", "content", "error", "conversationId", "metadata", "priority", "capabilities", "timeout", "stream",
)
cdef enum:
    _F_ID, _F_TIMESTAMP, _F_VERSION, _F_TYPE, _F_SOURCE, _F_TARGET, _F_REPLY_TO, _F_CORRELATION_ID, _F_CONTEXT
    _F_PAYLOAD, _F_ROUTING, _F_CONTENT, _F_ERROR, _F_CONVERSATION_ID, _F_METADATA, _F_PRIORITY, _F_CAPABILITIES
    _F_TIMEOUT, _F_STREAM, _F_COUNT

# Two key objects per field: the interned str that Python source code uses, and the one orjson's key cache hands
# out when it decodes. A key identical to either is surely that exact str, found with one pointer compare.
# The pointers are borrowed from these two tuples, which live as long as the module.
cdef tuple _interned_keys = tuple([_intern(name) for name in _FIELDS])
cdef tuple _decoded_keys = tuple(_loads(b"{" + b",".join([b'"%s":0' % n.encode() for n in _FIELDS]) + b"}"))
cdef PyObject* _KEY_STR[_F_COUNT]
cdef PyObject* _KEY_JSON[_F_COUNT]


cdef int _fill_keys() except -1:
    cdef int i
    if len(_interned_keys) != _F_COUNT or len(_decoded_keys) != _F_COUNT:
        raise ImportError("envelope: _FIELDS and the _F_ codes disagree")
    for i in range(_F_COUNT):
        _KEY_STR[i] = <PyObject*>_interned_keys[i]
        _KEY_JSON[i] = <PyObject*>_decoded_keys[i]


_fill_keys()


cdef inline bint _next(PyObject* d, Py_ssize_t* pos, PyObject** v, int field) noexcept:
    """Step to the next item of d; return whether its key is the given field's exact str."""
    cdef PyObject* key
    return _dict_next(d, pos, &key, v) and (key == _KEY_STR[field] or key == _KEY_JSON[field])


cdef int _valid_fast(PyObject* m, bint deep) except -1:
    """Return 1 when m is a valid envelope shaped exactly like new_message's output, 0 to let _valid decide.

    Each dict must hold the expected keys in the expected order, so no key needs a text compare or a type check.
    """
    cdef Py_ssize_t pos = 0, sub, i, n, routed
    cdef PyObject* v
    cdef PyObject* d
    if not _is_dict(m) or _dict_size(m) != 11:
        return 0
    if not _next(m, &pos, &v, _F_ID) or not _nonempty_str(v):
        return 0
    if not _next(m, &pos, &v, _F_TIMESTAMP) or not _number(v):
        return 0
    if not _next(m, &pos, &v, _F_VERSION) or not _is_str(v):
        return 0
    if not _next(m, &pos, &v, _F_TYPE) or not _message_type_ok(v):
        return 0
    if not _next(m, &pos, &d, _F_SOURCE) or not _is_dict(d) or _dict_size(d) != 2:
        return 0
    sub = 0
    if not _next(d, &sub, &v, _F_ID) or not _nonempty_str(v) or not _next(d, &sub, &v, _F_TYPE) or not _is_str(v):
        return 0
    if not _next(m, &pos, &v, _F_TARGET) or not _optional_str(v):
        return 0
    if not _next(m, &pos, &v, _F_REPLY_TO) or not _optional_str(v):
        return 0
    if not _next(m, &pos, &v, _F_CORRELATION_ID) or not _optional_str(v):
        return 0
    if not _next(m, &pos, &d, _F_CONTEXT) or not _is_dict(d) or _dict_size(d) != 2:
        return 0
    sub = 0
    if not _next(d, &sub, &v, _F_CONVERSATION_ID) or not _optional_str(v):
        return 0
    if not _next(d, &sub, &v, _F_METADATA):
        return 0
    if v != <PyObject*>None and (not _is_dict(v) or (deep and not _tree_ok(v, 2))):
        return 0
    if not _next(m, &pos, &d, _F_PAYLOAD) or not _is_dict(d):
        return 0
    n = _dict_size(d)
    sub = 0
    if n < 1 or n > 2 or not _next(d, &sub, &v, _F_CONTENT) or (deep and not _tree_ok(v, 2)):
        return 0
    if n == 2 and (not _next(d, &sub, &v, _F_ERROR) or not _error_ok(v) or (deep and not _tree_ok(v, 2))):
        return 0
    if not _next(m, &pos, &d, _F_ROUTING):
        return 0
    if d == <PyObject*>None:  # a result's routing
        return 1
    # new_message's three routing fields, then the "stream" a request that takes an oversized result adds
    routed = _dict_size(d) if _is_dict(d) else 0
    if routed != 3 and routed != 4:
        return 0
    sub = 0
    if not _next(d, &sub, &v, _F_PRIORITY) or (v != <PyObject*>None and (not _is_int(v) or _is_bool(v))):
        return 0
    if not _next(d, &sub, &v, _F_CAPABILITIES):
        return 0
    if v != <PyObject*>None:
        if not _is_list(v):
            return 0
        n = _list_size(v)
        for i in range(n):
            if not _is_str(_list_item(v, i)):
                return 0
    if not _next(d, &sub, &v, _F_TIMEOUT) or (v != <PyObject*>None and (not _number(v) or _negative(v))):
        return 0
    if routed == 4 and (not _next(d, &sub, &v, _F_STREAM) or (deep and not _tree_ok(v, 2))):
        return 0
    return 1


cdef int _valid(PyObject* m, bint deep) except -1:
    """Return 1 when m is surely a valid envelope, 0 when the pure twin must decide (and explain).

    One pass over each dict sorts its items into the defined fields. With deep false the value tree is not
    walked: that is only for orjson output known to be shallow, as orjson never yields NaN or non-str keys.
    """
    cdef Py_ssize_t pos, i, n
    cdef PyObject* key
    cdef PyObject* v
    cdef int code
    cdef PyObject* id_ = NULL
    cdef PyObject* timestamp = NULL
    cdef PyObject* version = NULL
    cdef PyObject* type_ = NULL
    cdef PyObject* source = NULL
    cdef PyObject* payload = NULL
    cdef PyObject* context = NULL
    cdef PyObject* routing = NULL
    cdef PyObject* metadata = NULL
    cdef bint extra = False
    cdef bint has_content = False
    if not _is_dict(m):
        return 0
    pos = 0
    while _dict_next(m, &pos, &key, &v):
        code = _key(key)
        if code == _K_ID:
            id_ = v
        elif code == _K_TIMESTAMP:
            timestamp = v
        elif code == _K_VERSION:
            version = v
        elif code == _K_TYPE:
            type_ = v
        elif code == _K_SOURCE:
            source = v
        elif code == _K_PAYLOAD:
            payload = v
        elif code == _K_TARGET or code == _K_REPLY_TO or code == _K_CORRELATION_ID:
            if not _optional_str(v):
                return 0
        elif code == _K_CONTEXT:
            context = v
        elif code == _K_ROUTING:
            routing = v
        elif code < 0:
            return 0
        else:
            extra = True
    if not _nonempty_str(id_) or timestamp == NULL or not _number(timestamp):
        return 0
    if version == NULL or not _is_str(version) or type_ == NULL or not _message_type_ok(type_):
        return 0

    if source == NULL or not _is_dict(source):
        return 0
    n = 0
    pos = 0
    while _dict_next(source, &pos, &key, &v):
        code = _key(key)
        if code == _K_ID:
            if not _nonempty_str(v):
                return 0
            n += 1
        elif code == _K_TYPE:
            if not _is_str(v):
                return 0
            n += 1
        elif code < 0:
            return 0
    if n != 2:
        return 0
    if deep and _dict_size(source) != 2 and not _tree_ok(source, 1):
        return 0

    if payload == NULL or not _is_dict(payload):
        return 0
    pos = 0
    while _dict_next(payload, &pos, &key, &v):
        code = _key(key)
        if code == _K_CONTENT:
            has_content = True
        elif code == _K_ERROR:
            if not _error_ok(v):
                return 0
        elif code < 0:
            return 0
    if not has_content or (deep and not _tree_ok(payload, 1)):
        return 0

    if context != NULL and context != <PyObject*>None:
        if not _is_dict(context):
            return 0
        pos = 0
        while _dict_next(context, &pos, &key, &v):
            code = _key(key)
            if code == _K_CONVERSATION_ID:
                if not _optional_str(v):
                    return 0
            elif code == _K_METADATA:
                if v != <PyObject*>None and not _is_dict(v):
                    return 0
                metadata = v
            elif code < 0:
                return 0
            else:
                extra = True
    if routing != NULL and routing != <PyObject*>None:
        if not _is_dict(routing):
            return 0
        pos = 0
        while _dict_next(routing, &pos, &key, &v):
            code = _key(key)
            if code == _K_PRIORITY:
                if v != <PyObject*>None and (not _is_int(v) or _is_bool(v)):
                    return 0
            elif code == _K_CAPABILITIES:
                if v != <PyObject*>None:
                    if not _is_list(v):
                        return 0
                    n = _list_size(v)
                    for i in range(n):
                        if not _is_str(_list_item(v, i)):
                            return 0
            elif code == _K_TIMEOUT:
                if v != <PyObject*>None and (not _number(v) or _negative(v)):
                    return 0
            elif code < 0:
                return 0
            else:
                extra = True
    if not deep:
        return 1
    # The defined fields hold checked leaves: walk what may hide a bad value (payload was walked above).
    if extra:
        return _tree_ok(m, 0)
    if metadata != NULL and not _tree_ok(metadata, 2):
        return 0
    return 1


cdef inline int _error_ok(PyObject* error) noexcept:
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* v
    cdef int found = 0, code
    if error == <PyObject*>None:
        return 1
    if not _is_dict(error):
        return 0
    while _dict_next(error, &pos, &key, &v):
        code = _key(key)
        if code == _K_CODE or code == _K_MESSAGE:
            if not _is_str(v):
                return 0
            found += 1
        elif code < 0:
            return 0
    return found == 2


cdef int _slow(object message) except -1:
    """Let the pure twin judge what the fast path could not vouch for: it raises the precise error."""
    _slow_validate(message)
    return 0


def validate(message):
    """Raise EnvelopeError naming the field unless message is a valid envelope."""
    if not _valid_fast(<PyObject*>message, True) and not _valid(<PyObject*>message, True):
        _slow(message)


def decode(data):
    """Parse and validate one envelope; return the decoded dict unchanged."""
    if not (PyBytes_Check(data) or PyUnicode_Check(data) or PyByteArray_Check(data) or PyMemoryView_Check(data)):
        raise EnvelopeError(f"envelope data must be bytes, bytearray, memoryview or str, got {_name(data)}")
    try:
        message = _loads(data)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    # orjson output needs the tree walk only for its depth, and short bracket counts rule that out.
    cdef bint deep
    if PyBytes_CheckExact(data):
        deep = not _shallow(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    else:
        deep = True
    if not _valid_fast(<PyObject*>message, deep) and not _valid(<PyObject*>message, deep):
        _slow(message)
    return message


def encode(message):
    """Validate message and serialize it to JSON bytes."""
    if not _valid_fast(<PyObject*>message, True) and not _valid(<PyObject*>message, True):
        _slow(message)
    try:
        return _dumps(message, None, _DUMPS_OPTIONS)
    except TypeError as exc:
        raise EnvelopeError(f"envelope cannot be serialized: {exc}") from None


cdef object _time = __import__("time").time
cdef object _encode_result_slow = _twin.encode_result


cdef extern from "Python.h":
    object _bytes_of_size "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n)
    char* _bytes_data "PyBytes_AS_STRING"(object o)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE"(object o)

# The fixed text of a result envelope, between the values written into it: orjson's own output for that dict
# (compact, keys in insertion order), so the bytes are what encode() writes.
cdef bytes _R_ID = b'{"id":"'
cdef bytes _R_TIMESTAMP = b'","timestamp":'
cdef bytes _R_SOURCE = b',"version":"1.0","type":"result","source":'
cdef bytes _R_TARGET = b',"target":'
cdef bytes _R_CORRELATION = b',"replyTo":null,"correlationId":'
cdef bytes _R_CONVERSATION = b',"context":{"conversationId":'
cdef bytes _R_CONTENT = b',"metadata":{}},"payload":{"content":'
cdef bytes _R_ERROR = b',"error":'
cdef bytes _R_END = b'},"routing":null}'
cdef bytes _NULL = b"null"


cdef inline bint _verbatim(object s) noexcept:
    """Whether str s is written by orjson as its own characters between quotes: printable ASCII, no quote or backslash."""
    cdef PyObject* o = <PyObject*>s
    cdef const unsigned char* c
    cdef Py_ssize_t i, n
    if not _is_exact_str(o) or not _is_ascii(o):
        return False
    c = <const unsigned char*>_str_data(o)
    n = _str_len(o)
    for i in range(n):
        if c[i] < 32 or c[i] > 126 or c[i] == 34 or c[i] == 92:
            return False
    return True


cdef inline object _json(object value):
    """orjson's bytes for value (None when it is a verbatim str, copied straight into the envelope)."""
    if value is None:
        return _NULL
    if _verbatim(value):
        return None
    return _dumps(value, None, _DUMPS_OPTIONS)


cdef inline Py_ssize_t _json_size(object value, object encoded) noexcept:
    return _bytes_size(encoded) if encoded is not None else _str_len(<PyObject*>value) + 2


cdef inline char* _put(char* o, object data) noexcept:
    cdef Py_ssize_t n = _bytes_size(data)
    memcpy(o, _bytes_data(data), n)
    return o + n


cdef inline char* _put_json(char* o, object value, object encoded) noexcept:
    cdef Py_ssize_t n
    if encoded is not None:
        return _put(o, encoded)
    n = _str_len(<PyObject*>value)
    o[0] = b'"'
    memcpy(o + 1, _str_data(<PyObject*>value), n)
    o[n + 1] = b'"'
    return o + n + 2


def encode_result(source, target, correlation_id, conversation_id, content, error=None):
    """Return encode() of a new result envelope from source (validated) answering correlation_id, id and time new."""
    # Only what the caller hands in is checked (the rest is written here, valid by construction); anything that
    # fails goes to the twin's encode(), which raises the error encode() raises.
    if not (_tree_ok(<PyObject*>content, 2)
            and (target is None or PyUnicode_Check(target))
            and (correlation_id is None or PyUnicode_Check(correlation_id))
            and (conversation_id is None or PyUnicode_Check(conversation_id))
            and (error is None or _valid_error(error))):
        return _encode_result_slow(source, target, correlation_id, conversation_id, content, error)
    # The envelope is written as text around orjson's bytes for each value, in the order orjson would meet them
    # (so a value it refuses raises the error encode() raises): no dicts built and walked per answer.
    cdef object t_json, c_json, v_json, e_json = None
    try:
        stamp = _dumps(_time(), None, _DUMPS_OPTIONS)
        s_json = _dumps(source, None, _DUMPS_OPTIONS)
        t_json = _json(target)
        c_json = _json(correlation_id)
        v_json = _json(conversation_id)
        body = _dumps(content, None, _DUMPS_OPTIONS)
        if error is not None:
            e_json = _dumps(error, None, _DUMPS_OPTIONS)
    except TypeError as exc:
        raise EnvelopeError(f"envelope cannot be serialized: {exc}") from None
    cdef Py_ssize_t total = (_bytes_size(_R_ID) + 2 * _ID_BYTES + _bytes_size(_R_TIMESTAMP) + _bytes_size(stamp)
                             + _bytes_size(_R_SOURCE) + _bytes_size(s_json)
                             + _bytes_size(_R_TARGET) + _json_size(target, t_json)
                             + _bytes_size(_R_CORRELATION) + _json_size(correlation_id, c_json)
                             + _bytes_size(_R_CONVERSATION) + _json_size(conversation_id, v_json)
                             + _bytes_size(_R_CONTENT) + _bytes_size(body) + _bytes_size(_R_END))
    if e_json is not None:
        total += _bytes_size(_R_ERROR) + _bytes_size(e_json)
    out = _bytes_of_size(NULL, total)
    cdef char* o = _bytes_data(out)
    o = _put(o, _R_ID)
    _write_id(<unsigned char*>o)
    o += 2 * _ID_BYTES
    o = _put(o, _R_TIMESTAMP)
    o = _put(o, stamp)
    o = _put(o, _R_SOURCE)
    o = _put(o, s_json)
    o = _put(o, _R_TARGET)
    o = _put_json(o, target, t_json)
    o = _put(o, _R_CORRELATION)
    o = _put_json(o, correlation_id, c_json)
    o = _put(o, _R_CONVERSATION)
    o = _put_json(o, conversation_id, v_json)
    o = _put(o, _R_CONTENT)
    o = _put(o, body)
    if e_json is not None:
        o = _put(o, _R_ERROR)
        o = _put(o, e_json)
    _put(o, _R_END)
    return out


cdef bint _valid_error(object error):
    """Return whether error is a payload.error encode() takes: an object with str code and message, a valid tree."""
    if not _is_dict(<PyObject*>error):
        return False
    code = error.get("code")
    message = error.get("message")
    return PyUnicode_Check(code) and PyUnicode_Check(message) and _tree_ok(<PyObject*>error, 2)


# ------------------------------------------------------------------------------------------------ message ids
# 128 bits of the operating system's CSPRNG per id, as 32 lowercase hex digits. Randomness is drawn 4 KB (256
# ids) at a time into a C buffer. Under the GIL taking 16 bytes is atomic: no Python code runs between the
# check, the copy and the advance (os.urandom may let other threads run, so the buffer is filled only after it
# returns). A free-threaded build has no GIL to rely on and draws each id's bytes on its own. A forked child
# forgets the buffer it inherited (its parent keeps using it).

cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #define AGENTCORE_SHARED_POOL 0
    #else
    #define AGENTCORE_SHARED_POOL 1
    #endif
    """
    int AGENTCORE_SHARED_POOL

cdef extern from "Python.h":
    object _new_str "PyUnicode_New"(Py_ssize_t size, Py_UCS4 maxchar)
    void* _str_bytes "PyUnicode_DATA"(object o)

cdef enum:
    _POOL = 4096
    _ID_BYTES = 16

cdef unsigned char _pool[_POOL]
cdef Py_ssize_t _pool_used = _POOL
cdef const char* _HEX_DIGITS = b"0123456789abcdef"


def _forget_pool():
    global _pool_used
    _pool_used = _POOL


_register_at_fork(after_in_child=_forget_pool)


cdef int _write_id(unsigned char* out) except -1:
    """Write a new message id's 32 hex digits at out."""
    global _pool_used
    cdef unsigned char raw[_ID_BYTES]
    cdef bytes fresh
    cdef int i
    if AGENTCORE_SHARED_POOL:
        while _pool_used > _POOL - _ID_BYTES:
            fresh = _urandom(_POOL)
            memcpy(_pool, <const char*>fresh, _POOL)
            _pool_used = 0
        memcpy(raw, _pool + _pool_used, _ID_BYTES)
        _pool_used += _ID_BYTES
    else:
        fresh = _urandom(_ID_BYTES)
        memcpy(raw, <const char*>fresh, _ID_BYTES)
    for i in range(_ID_BYTES):
        out[2 * i] = _HEX_DIGITS[raw[i] >> 4]
        out[2 * i + 1] = _HEX_DIGITS[raw[i] & 15]
    return 0


def new_id():
    """Return a new message id: 128 random bits from the operating system as 32 hex digits."""
    s = _new_str(2 * _ID_BYTES, 127)
    _write_id(<unsigned char*>_str_bytes(s))
    return s
