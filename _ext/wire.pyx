# cython: language_level=3, boundscheck=False, wraparound=False
"""Read NATS MSG frames straight from a connection's read buffer and hand them to their targets (compiled core)."""

from libc.string cimport memchr, memcmp, memcpy
from agentcore._ext.wire_py import pub_frame as _twin_pub_frame

__all__ = ("scan_frames", "frame_end", "pub_frame", "Frame", "Target")

MORE = 0
OTHER = 1

cdef Py_ssize_t _MAX_LINE = 4096


cdef extern from "Python.h":
    bint PyByteArray_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    char* PyByteArray_AS_STRING(object o)
    Py_ssize_t PyByteArray_GET_SIZE(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t n)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t n, const char* errors)
    object PyLong_FromSsize_t(Py_ssize_t v)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL


cdef inline const char* _data(object buf, Py_ssize_t* n) except NULL:
    if PyByteArray_CheckExact(buf):
        n[0] = PyByteArray_GET_SIZE(buf)
        return PyByteArray_AS_STRING(buf)
    if PyBytes_CheckExact(buf):
        n[0] = PyBytes_GET_SIZE(buf)
        return PyBytes_AS_STRING(buf)
    raise TypeError(f"expected bytes or bytearray, got {type(buf).__name__}")


cdef inline Py_ssize_t _find_crlf(const char* p, Py_ssize_t start, Py_ssize_t stop) noexcept:
    """Index of the first CRLF in p[start:stop], or -1."""
    cdef const char* hit
    while start < stop:
        hit = <const char*>memchr(p + start, b'\r', stop - start)
        if hit == NULL:
            return -1
        start = hit - p
        if start + 1 < stop and p[start + 1] == b'\n':
            return start
        start += 1
    return -1


cdef inline Py_ssize_t _number(const char* p, Py_ssize_t a, Py_ssize_t b) noexcept:
    """The decimal number p[a:b] (digits only, at most 18), or -1."""
    cdef Py_ssize_t v = 0
    cdef char c
    if a >= b or b - a > 18:
        return -1
    while a < b:
        c = p[a]
        if c < 48 or c > 57:  # '0'..'9'
            return -1
        v = v * 10 + (c - 48)
        a += 1
    return v


def frame_end(object buf, Py_ssize_t pos):
    """Return where the protocol frame starting at pos ends (after its CRLFs), or -1 when it is not all in buf yet."""
    # MSG and HMSG carry a payload whose size their control line gives; every other operation is one line. A
    # control line this cannot read returns the end of buf, so the general parser sees it (and raises).
    cdef Py_ssize_t n, nl, i, last, size, end
    cdef const char* p = _data(buf, &n)
    nl = _find_crlf(p, pos, n)
    if nl < 0:
        return -1 if n - pos <= _MAX_LINE else n
    if (nl - pos >= 4 and memcmp(p + pos, b"MSG ", 4) == 0) or (nl - pos >= 5 and memcmp(p + pos, b"HMSG ", 5) == 0):
        # the last whitespace-separated token is the total size; a MSG/HMSG has at least 4 tokens
        return _payload_end(p, pos, nl, n)
    return nl + 2


cdef Py_ssize_t _payload_end(const char* p, Py_ssize_t pos, Py_ssize_t nl, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i = nl, stop, tokens = 0, size
    cdef bint inside = False
    # count tokens and find the last one
    cdef Py_ssize_t last_start = -1, last_stop = -1, j = pos
    while j < nl:
        if p[j] == b' ' or p[j] == b'\t':
            if inside:
                last_stop = j
                inside = False
        else:
            if not inside:
                tokens += 1
                last_start = j
                inside = True
        j += 1
    if inside:
        last_stop = nl
    if tokens < 4:
        return n
    size = _number(p, last_start, last_stop)
    if size < 0:
        return n
    if nl + 2 + size + 2 <= n:
        return nl + 2 + size + 2
    return -1


def scan_frames(object buf, Py_ssize_t pos, dict targets, list dropped=None):
    """Deliver MSG frames from pos to targets[sid](subject, reply, payload); return (stop, MORE/OTHER, msgs, bytes)."""
    # dropped: a one-item list counting the frames dropped because their subject or reply is not UTF-8.
    # A target must not raise. Scanning stops at the first frame that is not all in buf (MORE) or that is not a
    # MSG for a sid with a target (OTHER: HMSG, PING, another sid, a malformed line), which the caller's general
    # parser handles.
    cdef Py_ssize_t n, nl, a, s1, s2, s3, sid, size, start, end, limit, spaces, k
    cdef Py_ssize_t msgs = 0, nbytes = 0
    cdef Py_ssize_t sp[3]
    cdef const char* p = _data(buf, &n)
    cdef object target, subject, reply, payload
    cdef bytes _last_raw = None  # no subject decoded yet (no byte string can stand for that: b"\xff" is a subject)
    cdef object _last_subject = None
    while pos < n:
        if n - pos < 4:
            if memcmp(p + pos, b"MSG ", n - pos) == 0:
                return pos, MORE, msgs, nbytes
            return pos, OTHER, msgs, nbytes
        if memcmp(p + pos, b"MSG ", 4) != 0:
            return pos, OTHER, msgs, nbytes
        limit = pos + _MAX_LINE
        if limit > n:
            limit = n
        nl = _find_crlf(p, pos, limit)
        if nl < 0:
            return pos, (MORE if n - pos < _MAX_LINE else OTHER), msgs, nbytes
        # MSG <subject> <sid> [reply] <size>: single spaces, as nats-server writes them
        a = pos + 4
        spaces = 0
        k = a
        while k < nl:
            if p[k] == b' ':
                if spaces == 3:
                    return pos, OTHER, msgs, nbytes
                sp[spaces] = k
                spaces += 1
            k += 1
        if spaces < 2 or sp[0] == a:
            return pos, OTHER, msgs, nbytes
        s1 = sp[0]
        sid = _number(p, s1 + 1, sp[1])
        if spaces == 2:
            size = _number(p, sp[1] + 1, nl)
        else:
            if sp[2] == sp[1] + 1:
                return pos, OTHER, msgs, nbytes
            size = _number(p, sp[2] + 1, nl)
        if sid < 0 or size < 0:
            return pos, OTHER, msgs, nbytes
        target = targets.get(PyLong_FromSsize_t(sid))
        if target is None:
            return pos, OTHER, msgs, nbytes
        start = nl + 2
        end = start + size
        if end + 2 > n:
            return pos, MORE, msgs, nbytes
        if p[end] != b'\r' or p[end + 1] != b'\n':
            return pos, OTHER, msgs, nbytes
        try:
            # A stream of messages mostly repeats its subject: the same str object again (its hash cached, so
            # the subject index and the dispatcher's dict lookups do not hash it anew).
            if _last_raw is not None and s1 - a == PyBytes_GET_SIZE(_last_raw) \
                    and memcmp(p + a, PyBytes_AS_STRING(_last_raw), s1 - a) == 0:
                subject = _last_subject
            else:
                subject = PyUnicode_DecodeUTF8(p + a, s1 - a, NULL)
                _last_raw = PyBytes_FromStringAndSize(p + a, s1 - a)
                _last_subject = subject
            if spaces == 2:
                reply = ""
            else:
                reply = PyUnicode_DecodeUTF8(p + sp[1] + 1, sp[2] - sp[1] - 1, NULL)
        except UnicodeDecodeError:  # a stranger's subject that is not UTF-8: dropped (nats-py's decode would raise)
            pos = end + 2
            if dropped is not None:
                dropped[0] += 1
            continue
        payload = PyBytes_FromStringAndSize(p + start, size)
        pos = end + 2
        msgs += 1
        nbytes += size
        if type(target) is Target:
            (<Target>target).deliver(subject, reply, payload)
        else:
            target(subject, reply, payload)
        p = _data(buf, &n)  # the target ran Python code: never trust a pointer across it
    return pos, MORE, msgs, nbytes


cdef class Frame:
    """One MSG frame as the dispatcher reads it: subject, reply ("" for none), data, and no headers."""

    cdef readonly object subject, reply, data, headers

    def __init__(self, subject, reply, data):
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = None

    def __repr__(self):
        return f"Frame(subject={self.subject!r}, reply={self.reply!r}, data={self.data!r})"


cdef inline Frame _frame(object subject, object reply, object data):
    cdef Frame frame = Frame.__new__(Frame)
    frame.subject = subject
    frame.reply = reply
    frame.data = data
    frame.headers = None
    return frame


cdef class Target:
    """Delivers one subscription's frames as nats-py's _process_msg would, minus the pending queue."""

    # sub is the nats-py Subscription, subs the client's sid -> subscription dict, targets the scanner's
    # sid -> target dict. With a key, each frame goes to dispatch(Frame(subject, reply, data), key); without one
    # (None), dispatch gets make(nc, subject, reply, data, None, None, False, sid) (a nats-py Msg). on_slow(subject,
    # reply) reports one over the subscription's pending-bytes limit (it is dropped), on_error(subject) a dispatch
    # that raised (called inside the except block: it may log the exception).

    cdef readonly object nc, sub, sid, dispatch, key, make, on_slow, on_error
    cdef readonly dict subs, targets

    def __init__(self, nc, sub, sid, dict subs, dict targets, dispatch, key, make, on_slow, on_error):
        self.nc = nc
        self.sub = sub
        self.sid = sid
        self.subs = subs
        self.targets = targets
        self.dispatch = dispatch
        self.key = key
        self.make = make
        self.on_slow = on_slow
        self.on_error = on_error

    def __call__(self, subject, reply, data):
        self.deliver(subject, reply, data)

    cdef int deliver(self, object subject, object reply, object data) except -1:
        """Deliver one frame (scan_frames calls this directly: no argument tuple per frame)."""
        sub = self.sub
        if self.subs.get(self.sid) is not sub:  # unsubscribed or drained: nats-py drops what still arrives for it
            self.targets.pop(self.sid, None)
            return 0
        sub._received += 1
        if sub._max_msgs and sub._received >= sub._max_msgs:  # unsubscribe(limit=n) since: nats-py's auto-unsubscribe
            self.subs.pop(self.sid, None)
        limit = sub._pending_bytes_limit
        if 0 < limit <= len(data):  # nats-py's slow-consumer rule (the inline queue never holds one message)
            self.on_slow(subject, reply)
            return 0
        try:
            if self.key is not None:
                self.dispatch(_frame(subject, reply, data), self.key)
            else:
                self.dispatch(self.make(self.nc, subject, reply, data, None, None, False, self.sid))
        except Exception:  # never into nats-py's read loop: that would drop the connection
            self.on_error(subject)
        return 0


cdef inline bint _spaced(const char* s, Py_ssize_t n) noexcept:
    """Whether s holds what nats-py's publish refuses in a subject: a space, tab, CR or LF."""
    cdef Py_ssize_t i
    cdef char c
    for i in range(n):
        c = s[i]
        if c == b' ' or c == b'\t' or c == b'\r' or c == b'\n':
            return True
    return False


def pub_frame(subject, reply, payload, bint strict=False):
    """Return the PUB command nats-py's pub_cmd writes for payload (one buffer: control line, payload, CRLF)."""
    # strict: None instead when nats-py's publish would refuse the subjects (an empty subject, or whitespace or
    # CRLF in either), so that the caller raises nats-py's own error; the check costs no regex search per message.
    if not (PyUnicode_CheckExact(subject) and PyUnicode_CheckExact(reply)):
        # a str subclass (a StrEnum member naming a subject) or anything else: formatted (and checked) as the twin
        # (and nats-py's pub_cmd) does
        return _twin_pub_frame(subject, reply, payload, strict)
    cdef Py_ssize_t ns, nr, np, nd, total, k
    cdef const char* s = PyUnicode_AsUTF8AndSize(subject, &ns)
    cdef const char* r = PyUnicode_AsUTF8AndSize(reply, &nr)
    if strict and (ns == 0 or _spaced(s, ns) or _spaced(r, nr)):
        return None
    if not PyBytes_CheckExact(payload):  # a bytearray or memoryview: joined as the twin joins it
        return b"".join((f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, b"\r\n"))
    np = PyBytes_GET_SIZE(payload)
    cdef char digits[24]
    cdef Py_ssize_t v = np
    nd = 0
    while True:  # the payload's size in decimal, backwards
        digits[nd] = <char>(48 + v % 10)
        nd += 1
        v //= 10
        if v == 0:
            break
    total = 4 + ns + 1 + nr + 1 + nd + 2 + np + 2  # "PUB " subject " " reply " " size CRLF payload CRLF
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, b"PUB ", 4)
    k = 4
    memcpy(o + k, s, ns)
    k += ns
    o[k] = b' '
    k += 1
    memcpy(o + k, r, nr)
    k += nr
    o[k] = b' '
    k += 1
    while nd > 0:
        nd -= 1
        o[k] = digits[nd]
        k += 1
    o[k] = b'\r'
    o[k + 1] = b'\n'
    k += 2
    memcpy(o + k, PyBytes_AS_STRING(payload), np)
    k += np
    o[k] = b'\r'
    o[k + 1] = b'\n'
    return out
