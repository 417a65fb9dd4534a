# cython: language_level=3
"""Instances of a slotted dataclass made with their fields set directly, its __init__ not run (compiled core)."""

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

cimport cython

from agentcore._ext.slots_py import MAX_FIELDS as _MAX_FIELDS, defaults_of

__all__ = ("SlotsMaker", "defaults_of")

cdef extern from "Python.h":
    object PyType_GenericAlloc(type t, Py_ssize_t n)
    void* PyType_GetSlot(type t, int slot) except? NULL
    int Py_tp_alloc

DEF MAX_FIELDS = 32


@cython.auto_pickle(False)  # its state is raw offsets: one forged by __setstate__ would write anywhere in memory
cdef class SlotsMaker:
    """make(a, b, c, d): a new instance of cls, its first four fields set to a, b, c, d and the rest to defaults."""

    # Creating a dataclass instance through its __init__ costs a Python frame and one store per field (about 2,500
    # instructions for the 14 fields of a Delivery, made per message); this allocates it and writes each slot.
    cdef readonly object cls  # a type, of any metaclass (a Cython `type` argument would accept only exact ones)
    cdef Py_ssize_t offsets[MAX_FIELDS]  # where each field's slot is in an instance: the given ones, then the rest
    cdef Py_ssize_t n
    cdef tuple values  # the defaults, in the order of offsets[4:]

    def __init__(self, cls, tuple given not None):
        defaults = defaults_of(cls, given)  # a type, a dataclass with at most MAX_FIELDS fields, made by its __init__
        names = list(given) + list(defaults)
        assert _MAX_FIELDS == MAX_FIELDS and len(names) <= MAX_FIELDS
        if PyType_GetSlot(<type>cls, Py_tp_alloc) != <void*>PyType_GenericAlloc:
            raise ValueError(f"{cls.__name__} allocates its instances its own way")
        # Where each slot is: set every field of a probe to its own sentinel and find that pointer in the probe (with
        # object.__setattr__, as a frozen dataclass's __init__ does; defaults_of refused any other __setattr__).
        probe = object.__new__(cls)
        sentinels = [object() for _ in names]
        for name, sentinel in zip(names, sentinels):
            object.__setattr__(probe, name, sentinel)
        cdef char* base = <char*><PyObject*>probe
        cdef Py_ssize_t size = (<PyTypeObject*>cls).tp_basicsize
        cdef Py_ssize_t offsets[MAX_FIELDS]  # kept once all are found: a failed __init__ leaves the maker as it was
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
            offsets[i] = found
        values = tuple(defaults.values())
        for i in range(len(names)):
            self.offsets[i] = offsets[i]
        self.cls, self.n, self.values = cls, len(names), values

    def __reduce__(self):
        """Refuse to be pickled or copied (the compiled maker's state is raw memory offsets)."""
        raise TypeError("a SlotsMaker cannot be pickled or copied")

    def make(self, a, b, c, d):
        """Return a new instance with its first four fields set to a, b, c, d and the rest to their defaults."""
        if self.n == 0:  # made by __new__ alone, never initialised: as the pure twin, which has no cls yet
            raise AttributeError("cls")
        cdef object made = PyType_GenericAlloc(<type>self.cls, 0)  # zeroed, tracked by the GC: as object.__new__ does
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
