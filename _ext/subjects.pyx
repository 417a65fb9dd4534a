# cython: language_level=3
"""Match NATS subjects against wildcard patterns exactly as nats-server's sublist does (compiled core)."""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from agentcore.errors import SubjectError

__all__ = ("SubjectIndex", "subject_matches", "validate_subject", "validate_token")


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size)
    bint PyUnicode_Check(object o)
    void Py_INCREF(PyObject* o)
    void Py_XDECREF(PyObject* o)
    PyObject* PyDict_GetItemWithError(object d, object k) except? NULL
    int PyDict_SetItem(object d, object k, object v) except -1
    int PyDict_DelItem(object d, object k) except -1
    Py_ssize_t PyList_GET_SIZE(PyObject* o)
    PyObject* PyList_GET_ITEM(PyObject* o, Py_ssize_t i)
    object PyList_AsTuple(PyObject* o)
    object PyTuple_New(Py_ssize_t n)
    void PyTuple_SET_ITEM(object t, Py_ssize_t i, PyObject* o)
    PyObject* PyList_New(Py_ssize_t n) except NULL
    int PyList_Append(PyObject* l, object o) except -1
    int PyList_SetSlice(PyObject* l, Py_ssize_t lo, Py_ssize_t hi, object v) except -1
    bint PyErr_Occurred()
    void PyErr_Clear()
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch)


cdef extern from *:
    """
    #define _AC_FNV_OFFSET 0xcbf29ce484222325ULL
    #define _AC_FNV_PRIME 0x100000001b3ULL
    """
    uint64_t _FNV_OFFSET "_AC_FNV_OFFSET"
    uint64_t _FNV_PRIME "_AC_FNV_PRIME"


# Token stack size: subjects deeper than this take one heap allocation.
cdef enum:
    _STACK_TOKENS = 32
    _INLINE = 16

cdef tuple _EMPTY = ()


# ---------------------------------------------------------------- validation

cdef str _problem(str subject, bint wildcards):
    cdef Py_ssize_t n = len(subject)
    cdef Py_ssize_t start = 0, i, tlen
    cdef Py_UCS4 ch
    cdef bint has_wild
    cdef str token
    if n == 0:
        return "subject must not be empty"
    i = 0
    has_wild = False
    for ch in subject:
        if ch == u".":
            tlen = i - start
            if tlen == 0:
                return "empty token (leading, trailing or double '.')"
            if has_wild:
                token = subject[start:i]
                if tlen > 1:
                    return f"wildcard inside token {token!r}"
                if not wildcards:
                    return f"wildcard {token!r} not allowed here"
                if token == ">":
                    return "'>' must be the last token"
            start = i + 1
            has_wild = False
        elif ch == u"*" or ch == u">":
            has_wild = True
        elif ch == 0 or Py_UNICODE_ISSPACE(ch):
            return f"forbidden character {chr(ch)!r}"
        elif 0xD800 <= ch <= 0xDFFF:
            return f"lone surrogate {chr(ch)!r}"
        i += 1
    tlen = n - start
    if tlen == 0:
        return "empty token (leading, trailing or double '.')"
    if has_wild:
        token = subject[start:]
        if tlen > 1:
            return f"wildcard inside token {token!r}"
        if not wildcards:
            return f"wildcard {token!r} not allowed here"
    return None


cdef inline int _check_pattern(object pattern, bint wildcards) except -1:
    if not PyUnicode_Check(pattern):
        raise SubjectError(f"subject must be a str, got {type(pattern).__name__}")
    problem = _problem(<str>pattern, wildcards)
    if problem is not None:
        raise SubjectError(f"invalid subject {pattern!r}: {problem}")
    return 0


def validate_subject(subject, *, bint wildcards=False):
    """Return subject if it is a valid NATS subject (or pattern, with wildcards=True), else raise SubjectError."""
    _check_pattern(subject, wildcards)
    return subject


def validate_token(token):
    """Return token if it can be used as one subject token, else raise SubjectError."""
    cdef Py_UCS4 ch
    if not PyUnicode_Check(token):
        raise SubjectError(f"subject token must be a str, got {type(token).__name__}")
    if len(<str>token) == 0:
        raise SubjectError("invalid subject token '': token must not be empty")
    for ch in <str>token:
        if ch == u"." or ch == u"*" or ch == u">" or ch == 0 or Py_UNICODE_ISSPACE(ch):
            raise SubjectError(f"invalid subject token {token!r}: forbidden character {chr(ch)!r}")
        if 0xD800 <= ch <= 0xDFFF:
            raise SubjectError(f"invalid subject token {token!r}: lone surrogate {chr(ch)!r}")
    return token


# ---------------------------------------------------------------- tokens

cdef struct _Tok:
    const char* ptr
    Py_ssize_t len
    uint64_t hash


cdef inline const char* _utf8(object s, Py_ssize_t* size, list keep) except? NULL:
    """Return the UTF-8 bytes of s; subjects with lone surrogates are encoded with surrogatepass."""
    cdef const char* buf = PyUnicode_AsUTF8AndSize(s, size)
    cdef bytes raw
    if buf != NULL:
        return buf
    PyErr_Clear()
    # Lone surrogates never occur in a valid pattern, so this subject can match through wildcards only.
    raw = (<str>s).encode("utf-8", "surrogatepass")
    keep.append(raw)
    size[0] = len(raw)
    return <const char*>raw


cdef Py_ssize_t _split(const char* buf, Py_ssize_t n, _Tok* toks, Py_ssize_t cap) noexcept nogil:
    """Split buf on '.' into toks; return the count, -1 for an empty token, -2 when cap is too small."""
    cdef Py_ssize_t i, start = 0, count = 0
    cdef uint64_t h = _FNV_OFFSET
    cdef unsigned char c
    if n == 0:
        return -1
    for i in range(n):
        c = <unsigned char>buf[i]
        if c == 46:  # '.'
            if i == start:
                return -1
            if count == cap:
                return -2
            toks[count].ptr = buf + start
            toks[count].len = i - start
            toks[count].hash = h
            count += 1
            start = i + 1
            h = _FNV_OFFSET
        else:
            h = (h ^ c) * _FNV_PRIME
    if start == n:
        return -1
    if count == cap:
        return -2
    toks[count].ptr = buf + start
    toks[count].len = n - start
    toks[count].hash = h
    return count + 1


cdef inline Py_ssize_t _count_tokens(const char* buf, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, count = 1
    for i in range(n):
        if buf[i] == 46:
            count += 1
    return count


# ---------------------------------------------------------------- trie

cdef struct _Node

cdef struct _Entry:
    # Slots are 16 bytes so that big tables stay cache-friendly; the token itself lives in the child.
    uint64_t hash
    _Node* child  # NULL marks an empty slot


cdef struct _Node:
    _Entry* table  # literal children, open addressing with linear probing
    size_t mask
    size_t used
    _Node* star
    _Node* full
    PyObject* values  # list, or NULL when nothing ends here
    Py_ssize_t klen  # the token that leads here from the parent (empty for root, '*' and '>')
    char* key  # heap copy, only when the token is longer than _INLINE bytes
    char inline_key[_INLINE]


cdef _Node* _node_new(const char* key, Py_ssize_t klen) except NULL:
    cdef _Node* node = <_Node*>PyMem_Malloc(sizeof(_Node))
    if node == NULL:
        raise MemoryError()
    node.key = NULL
    if klen > _INLINE:
        node.key = <char*>PyMem_Malloc(klen)
        if node.key == NULL:
            PyMem_Free(node)
            raise MemoryError()
        memcpy(node.key, key, klen)
    elif klen:
        memcpy(node.inline_key, key, klen)
    node.klen = klen
    node.table = NULL
    node.mask = 0
    node.used = 0
    node.star = NULL
    node.full = NULL
    node.values = NULL
    return node


cdef void _node_free(_Node* node) noexcept:
    cdef size_t i
    if node == NULL:
        return
    if node.table != NULL:
        for i in range(node.mask + 1):
            if node.table[i].child != NULL:
                _node_free(node.table[i].child)
        PyMem_Free(node.table)
    _node_free(node.star)
    _node_free(node.full)
    Py_XDECREF(node.values)
    PyMem_Free(node.key)
    PyMem_Free(node)


cdef inline bint _node_empty(_Node* node) noexcept:
    return (node.used == 0 and node.star == NULL and node.full == NULL
            and (node.values == NULL or PyList_GET_SIZE(node.values) == 0))


cdef inline bint _node_is(_Node* node, const char* key, Py_ssize_t klen) noexcept nogil:
    """Return whether node is reached by token key."""
    if node.klen != klen:
        return False
    if klen <= _INLINE:
        return memcmp(node.inline_key, key, klen) == 0
    return memcmp(node.key, key, klen) == 0


cdef inline _Node* _lookup(_Node* node, const char* key, Py_ssize_t klen, uint64_t h) noexcept nogil:
    cdef _Entry* table = node.table
    cdef size_t mask = node.mask
    cdef size_t i
    cdef _Entry* e
    if table == NULL:
        return NULL
    i = <size_t>h & mask
    while True:
        e = &table[i]
        if e.child == NULL:
            return NULL
        if e.hash == h and _node_is(e.child, key, klen):
            return e.child
        i = (i + 1) & mask


cdef int _grow(_Node* node) except -1:
    cdef size_t old_cap = node.mask + 1 if node.table != NULL else 0
    cdef size_t new_cap = old_cap * 2 if old_cap else 4
    cdef _Entry* old = node.table
    cdef _Entry* table = <_Entry*>PyMem_Malloc(new_cap * sizeof(_Entry))
    cdef size_t i, j, mask = new_cap - 1
    if table == NULL:
        raise MemoryError()
    for i in range(new_cap):
        table[i].child = NULL
    for i in range(old_cap):
        if old[i].child != NULL:
            j = <size_t>old[i].hash & mask
            while table[j].child != NULL:
                j = (j + 1) & mask
            table[j] = old[i]
    PyMem_Free(old)
    node.table = table
    node.mask = mask
    return 0


cdef _Node* _child_add(_Node* node, const char* key, Py_ssize_t klen, uint64_t h) except NULL:
    cdef _Node* child = _lookup(node, key, klen, h)
    cdef size_t i
    if child != NULL:
        return child
    # Keep the load factor at or below 1/2 so that probes stay short.
    if node.table == NULL or (node.used + 1) * 2 > node.mask + 1:
        _grow(node)
    child = _node_new(key, klen)
    i = <size_t>h & node.mask
    while node.table[i].child != NULL:
        i = (i + 1) & node.mask
    node.table[i].hash = h
    node.table[i].child = child
    node.used += 1
    return child


cdef void _child_del(_Node* node, const char* key, Py_ssize_t klen, uint64_t h) noexcept:
    """Remove and free the child under key, shifting later probes back (no tombstones)."""
    cdef size_t mask = node.mask
    cdef size_t i = <size_t>h & mask
    cdef size_t j, k
    cdef _Entry* table = node.table
    while True:
        if table[i].child == NULL:
            return
        if table[i].hash == h and _node_is(table[i].child, key, klen):
            break
        i = (i + 1) & mask
    _node_free(table[i].child)
    j = i
    while True:
        j = (j + 1) & mask
        if table[j].child == NULL:
            break
        k = <size_t>table[j].hash & mask
        # The entry at j may fill the hole at i only if its home slot k is not cyclically in (i, j].
        if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
            continue
        table[i] = table[j]
        i = j
    table[i].child = NULL
    node.used -= 1


cdef _Node* _walk(_Node* node, _Tok* toks, Py_ssize_t count, _Node** path) noexcept:
    """Follow a validated pattern's tokens from node, recording the nodes in path; NULL when absent."""
    cdef Py_ssize_t i
    path[0] = node
    for i in range(count):
        if toks[i].len == 1 and toks[i].ptr[0] == 42:  # '*'
            node = node.star
        elif toks[i].len == 1 and toks[i].ptr[0] == 62:  # '>'
            node = node.full
        else:
            node = _lookup(node, toks[i].ptr, toks[i].len, toks[i].hash)
        if node == NULL:
            return NULL
        path[i + 1] = node
    return node


cdef struct _Acc:
    PyObject** lists
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t total
    PyObject* stack[16]


cdef inline int _acc_push(_Acc* acc, PyObject* values) except -1:
    cdef Py_ssize_t size
    cdef PyObject** grown
    if values == NULL:
        return 0
    size = PyList_GET_SIZE(values)
    if size == 0:
        return 0
    if acc.n == acc.cap:
        if acc.lists == acc.stack:
            grown = <PyObject**>PyMem_Malloc(acc.cap * 2 * sizeof(PyObject*))
            if grown != NULL:
                memcpy(grown, acc.stack, acc.n * sizeof(PyObject*))
        else:
            grown = <PyObject**>PyMem_Realloc(acc.lists, acc.cap * 2 * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        acc.lists = grown
        acc.cap *= 2
    acc.lists[acc.n] = values
    acc.n += 1
    acc.total += size
    return 0


cdef int _collect(_Node* node, _Tok* toks, Py_ssize_t i, Py_ssize_t n, _Acc* acc) except -1:
    cdef _Node* child
    while i < n:
        if node.full != NULL:
            _acc_push(acc, node.full.values)
        child = _lookup(node, toks[i].ptr, toks[i].len, toks[i].hash)
        i += 1
        if node.star != NULL:
            if child != NULL:
                _collect(child, toks, i, n, acc)
            node = node.star
        elif child != NULL:
            node = child
        else:
            return 0
    _acc_push(acc, node.values)
    return 0


cdef tuple _acc_result(_Acc* acc):
    cdef Py_ssize_t i, j, k = 0, size
    cdef PyObject* values
    cdef PyObject* item
    cdef object result
    if acc.total == 0:
        return _EMPTY
    if acc.n == 1:
        return PyList_AsTuple(acc.lists[0])
    result = PyTuple_New(acc.total)
    for i in range(acc.n):
        values = acc.lists[i]
        size = PyList_GET_SIZE(values)
        for j in range(size):
            item = PyList_GET_ITEM(values, j)
            Py_INCREF(item)
            PyTuple_SET_ITEM(result, k, item)
            k += 1
    return <tuple>result


@cython.final
cdef class SubjectIndex:
    """Map NATS subject patterns to values and return the values whose pattern matches a subject."""

    cdef _Node* _root
    cdef dict _patterns
    cdef Py_ssize_t _len
    cdef dict _cache
    cdef list _ring  # cached subjects in insertion order, oldest at _ring_pos once full
    cdef Py_ssize_t _ring_pos
    cdef Py_ssize_t _cache_size
    cdef Py_ssize_t _hits
    cdef Py_ssize_t _misses

    def __cinit__(self, Py_ssize_t cache_size=1024):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._root = _node_new(NULL, 0)
        self._patterns = {}
        self._cache = {}
        self._cache_size = cache_size
        self._ring = [None] * cache_size
        self._ring_pos = 0

    @property
    def cache_hits(self):
        """Return how many match() calls were answered from the result cache."""
        return self._hits

    @property
    def cache_misses(self):
        """Return how many match() calls missed the result cache."""
        return self._misses

    def __dealloc__(self):
        _node_free(self._root)
        self._root = NULL

    def __len__(self):
        return self._len

    cdef inline void _invalidate(self):
        if self._cache:
            self._cache.clear()

    @cython.critical_section
    def insert(self, pattern, value):
        """Add value under pattern (wildcards allowed); the same pair may be added more than once."""
        cdef Py_ssize_t size, count, i
        cdef _Tok stack[_STACK_TOKENS]
        cdef _Tok* toks = stack
        cdef const char* buf
        cdef _Node* node
        cdef list keep = []
        _check_pattern(pattern, True)
        buf = _utf8(pattern, &size, keep)
        count = _count_tokens(buf, size)
        if count > _STACK_TOKENS:
            toks = <_Tok*>PyMem_Malloc(count * sizeof(_Tok))
            if toks == NULL:
                raise MemoryError()
        try:
            _split(buf, size, toks, count)
            node = self._root
            for i in range(count):
                if toks[i].len == 1 and toks[i].ptr[0] == 42:  # '*'
                    if node.star == NULL:
                        node.star = _node_new(NULL, 0)
                    node = node.star
                elif toks[i].len == 1 and toks[i].ptr[0] == 62:  # '>'
                    if node.full == NULL:
                        node.full = _node_new(NULL, 0)
                    node = node.full
                else:
                    node = _child_add(node, toks[i].ptr, toks[i].len, toks[i].hash)
            if node.values == NULL:
                node.values = PyList_New(0)
            PyList_Append(node.values, value)
        finally:
            if toks != stack:
                PyMem_Free(toks)
        self._patterns[pattern] = self._patterns.get(pattern, 0) + 1
        self._len += 1
        self._invalidate()

    @cython.critical_section
    def remove(self, pattern, value):
        """Remove one entry of pattern whose value equals value; return False when there is none."""
        cdef Py_ssize_t size, count, i, n
        cdef _Tok stack[_STACK_TOKENS]
        cdef _Node* nstack[_STACK_TOKENS + 1]
        cdef _Tok* toks = stack
        cdef _Node** path = nstack
        cdef const char* buf
        cdef _Node* node
        cdef _Node* parent
        cdef list keep = []
        cdef object values
        cdef object item
        cdef bint found = False
        _check_pattern(pattern, True)
        buf = _utf8(pattern, &size, keep)
        count = _count_tokens(buf, size)
        if count > _STACK_TOKENS:
            toks = <_Tok*>PyMem_Malloc(count * sizeof(_Tok))
            path = <_Node**>PyMem_Malloc((count + 1) * sizeof(_Node*))
            if toks == NULL or path == NULL:
                PyMem_Free(toks)
                PyMem_Free(path)
                raise MemoryError()
        try:
            _split(buf, size, toks, count)
            node = _walk(self._root, toks, count, path)
            if node == NULL or node.values == NULL:
                return False
            values = <object>node.values  # a strong reference: == below may run arbitrary code
            n = len(values)
            for i in range(n):
                item = values[i]
                if item is value or item == value:
                    found = True
                    break
            if not found:
                return False
            # == may have changed the index: walk again and delete only if the entry is still there.
            node = _walk(self._root, toks, count, path)
            if node == NULL or node.values != <PyObject*>values or i >= len(values) or values[i] is not item:
                return False
            del values[i]
            # Prune the nodes that became empty, deepest first; the root always stays.
            for i in range(count, 0, -1):
                node = path[i]
                if not _node_empty(node):
                    break
                parent = path[i - 1]
                if toks[i - 1].len == 1 and toks[i - 1].ptr[0] == 42:
                    _node_free(node)
                    parent.star = NULL
                elif toks[i - 1].len == 1 and toks[i - 1].ptr[0] == 62:
                    _node_free(node)
                    parent.full = NULL
                else:
                    _child_del(parent, toks[i - 1].ptr, toks[i - 1].len, toks[i - 1].hash)
        finally:
            if toks != stack:
                PyMem_Free(toks)
                PyMem_Free(path)
        count = self._patterns[pattern] - 1
        if count:
            self._patterns[pattern] = count
        else:
            del self._patterns[pattern]
        self._len -= 1
        self._invalidate()
        return True

    @cython.critical_section
    def match(self, subject):
        """Return the values of every pattern that matches subject."""
        cdef PyObject* cached
        cdef tuple result
        cdef Py_ssize_t pos
        if not PyUnicode_Check(subject):
            raise TypeError(f"subject must be a str, got {type(subject).__name__}")
        if self._cache_size:
            cached = PyDict_GetItemWithError(self._cache, subject)
            if cached != NULL:
                self._hits += 1
                return <object>cached
            self._misses += 1
            result = self._match(subject)
            if len(self._cache) >= self._cache_size:
                PyDict_DelItem(self._cache, self._ring[self._ring_pos])
            PyDict_SetItem(self._cache, subject, result)
            pos = self._ring_pos
            self._ring[pos] = subject
            pos += 1
            self._ring_pos = 0 if pos == self._cache_size else pos
            return result
        return self._match(subject)

    cdef tuple _match(self, object subject):
        cdef Py_ssize_t size, n
        cdef _Tok stack[_STACK_TOKENS]
        cdef _Tok* toks = stack
        cdef const char* buf
        cdef list keep = None
        cdef _Acc acc
        buf = PyUnicode_AsUTF8AndSize(subject, &size)
        if buf == NULL:
            keep = []
            buf = _utf8(subject, &size, keep)
        n = _split(buf, size, toks, _STACK_TOKENS)
        if n == -1:
            return _EMPTY
        if n == -2:
            n = _count_tokens(buf, size)
            toks = <_Tok*>PyMem_Malloc(n * sizeof(_Tok))
            if toks == NULL:
                raise MemoryError()
            if _split(buf, size, toks, n) == -1:
                PyMem_Free(toks)
                return _EMPTY
        acc.lists = acc.stack
        acc.n = 0
        acc.cap = 16
        acc.total = 0
        try:
            _collect(self._root, toks, 0, n, &acc)
            return _acc_result(&acc)
        finally:
            if acc.lists != acc.stack:
                PyMem_Free(acc.lists)
            if toks != stack:
                PyMem_Free(toks)

    @cython.critical_section
    def clear(self):
        """Remove every entry and empty the result cache."""
        cdef _Node* fresh = _node_new(NULL, 0)
        _node_free(self._root)
        self._root = fresh
        self._patterns.clear()
        self._len = 0
        self._cache.clear()

    def patterns(self):
        """Return the distinct patterns that have at least one entry."""
        return list(self._patterns)


def subject_matches(pattern, subject):
    """Return whether subject matches pattern (a subject with empty tokens matches nothing)."""
    cdef Py_ssize_t plen, slen, np, ns, i
    cdef _Tok pstack[_STACK_TOKENS]
    cdef _Tok sstack[_STACK_TOKENS]
    cdef _Tok* ptoks = pstack
    cdef _Tok* stoks = sstack
    cdef const char* pbuf
    cdef const char* sbuf
    cdef list keep = []
    cdef bint result
    _check_pattern(pattern, True)
    if not PyUnicode_Check(subject):
        raise TypeError(f"subject must be a str, got {type(subject).__name__}")
    pbuf = _utf8(pattern, &plen, keep)
    sbuf = _utf8(subject, &slen, keep)
    ns = _split(sbuf, slen, stoks, _STACK_TOKENS)
    if ns == -1:
        return False
    np = _count_tokens(pbuf, plen)
    try:
        if ns == -2:
            ns = _count_tokens(sbuf, slen)
            stoks = <_Tok*>PyMem_Malloc(ns * sizeof(_Tok))
            if stoks == NULL:
                raise MemoryError()
            if _split(sbuf, slen, stoks, ns) == -1:
                return False
        if np > _STACK_TOKENS:
            ptoks = <_Tok*>PyMem_Malloc(np * sizeof(_Tok))
            if ptoks == NULL:
                raise MemoryError()
        _split(pbuf, plen, ptoks, np)
        result = np == ns
        for i in range(np):
            if ptoks[i].len == 1 and ptoks[i].ptr[0] == 62:
                result = i < ns
                break
            if i >= ns:
                result = False
                break
            if ptoks[i].len == 1 and ptoks[i].ptr[0] == 42:
                continue
            if ptoks[i].len != stoks[i].len or memcmp(ptoks[i].ptr, stoks[i].ptr, ptoks[i].len) != 0:
                result = False
                break
        return result
    finally:
        if ptoks != pstack:
            PyMem_Free(ptoks)
        if stoks != sstack:
            PyMem_Free(stoks)
