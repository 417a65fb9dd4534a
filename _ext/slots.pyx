# cython: language_level=3
"""Instances of a slotted dataclass made with their fields set directly, its __init__ not run (compiled core)."""

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

from agentcore._ext.slots_py import defaults_of

__all__ = ("SlotsMaker", "defaults_of")

cdef extern from "Python.h":
    object PyType_GenericAlloc(type t, Py_ssize_t n)
    void* PyType_GetSlot(type t, int slot) except? NULL
    int Py_tp_alloc

DEF MAX_FIELDS = 32


cdef class SlotsMaker:
    """make(a, b, c, d): a new instance of cls with its first four fields set to a, b, c, d and the rest to their defaults."""

    # Creating a dataclass instance through its __init__ costs a Python frame and one store per field (about 2,500
    # instructions for the 14 fields of a Delivery, made per message); this allocates it and writes each slot.
    cdef readonly type cls
    cdef Py_ssize_t offsets[MAX_FIELDS]  # where each field's slot is in an instance: the given ones, then the rest
    cdef Py_ssize_t n
    cdef tuple values  # the defaults, in the order of offsets[4:]

    def __init__(self, type cls not None, tuple given not None):
        defaults = defaults_of(cls, given)
        names = list(given) + list(defaults)
        if len(names) > MAX_FIELDS:
            raise ValueError(f"{cls.__name__} has more than {MAX_FIELDS} fields")
        if PyType_GetSlot(cls, Py_tp_alloc) != <void*>PyType_GenericAlloc:
            raise ValueError(f"{cls.__name__} allocates its instances its own way")
        # Where each slot is: set every field of a probe to its own sentinel and find that pointer in the probe.
        probe = object.__new__(cls)
        sentinels = [object() for _ in names]
        for name, sentinel in zip(names, sentinels):
            setattr(probe, name, sentinel)
        cdef char* base = <char*><PyObject*>probe
        cdef Py_ssize_t size = (<PyTypeObject*>cls).tp_basicsize
        cdef Py_ssize_t i, at, found
        for i in range(len(names)):
            found = -1
            at = sizeof(PyObject)
            while at + <Py_ssize_t>sizeof(PyObject*) <= size:
                if (<PyObject**>(base + at))[0] == <PyObject*>sentinels[i]:
                    found = at
                at += sizeof(PyObject*)
            if found < 0:
                raise ValueError(f"{cls.__name__}.{names[i]} is not a slot of its instances")
            self.offsets[i] = found
        self.cls = cls
        self.n = len(names)
        self.values = tuple(defaults.values())

    def make(self, a, b, c, d):
        """Return a new instance with its first four fields set to a, b, c, d and the rest to their defaults."""
        cdef object made = PyType_GenericAlloc(self.cls, 0)  # zeroed and tracked by the GC, as object.__new__ makes it
        cdef char* base = <char*><PyObject*>made
        cdef tuple values = self.values
        cdef Py_ssize_t i
        cdef object value
        Py_INCREF(a)
        (<PyObject**>(base + self.offsets[0]))[0] = <PyObject*>a
        Py_INCREF(b)
        (<PyObject**>(base + self.offsets[1]))[0] = <PyObject*>b
        Py_INCREF(c)
        (<PyObject**>(base + self.offsets[2]))[0] = <PyObject*>c
        Py_INCREF(d)
        (<PyObject**>(base + self.offsets[3]))[0] = <PyObject*>d
        for i in range(4, self.n):
            value = values[i - 4]
            Py_INCREF(value)
            (<PyObject**>(base + self.offsets[i]))[0] = <PyObject*>value
        return made
