# cython: language_level=3
"""Run a coroutine's first step as a given Task inside a given context, as that Task's own step would (compiled core).

The step is sent with PyIter_Send (a finished coroutine returns, no StopIteration is raised and caught) inside the
context entered with PyContext_Enter (no Context.run call): what a handler that answers at once costs to start.
"""

import asyncio
import contextvars
import os
import sys
from asyncio.tasks import _enter_task, _leave_task

from cpython.ref cimport PyObject, Py_DECREF

__all__ = ("FINISHED", "SpareFields", "ThreadSlot", "eager_start", "first_step")


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject** presult) except? PYGEN_ERROR
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    PyObject* PyThreadState_GetDict()
    PyObject* PyDict_GetItem(object d, object key)


#: What first_step returns when the coroutine finished in its first step (its return value is not kept).
FINISHED = object()

if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # implemented in C from 3.12
else:  # a Python function before 3.12 that reads this dict (C, from _asyncio): read it directly
    from asyncio.tasks import _current_tasks

    _current_task = _current_tasks.get

# How the current Task is switched, cheapest first: before 3.12 _enter_task/_leave_task only write _asyncio's dict of
# current tasks, so it is written directly; from 3.12, _swap_current_task (what asyncio's eager tasks use) swaps
# in one call; else the pair of calls.
cdef dict _by_dict = _current_tasks if sys.version_info < (3, 12) else None
cdef object _swap = getattr(asyncio.tasks, "_swap_current_task", None) if _by_dict is None else None


# Whether a first step left its context as it found it, and whether the caller's context is still the one a spare
# was made in, is decided by the values themselves (identity), never by == (a step that set a variable to an
# equal but other object, a fresh empty list, would otherwise hand that object to the next requester's handler).
# A Context's variables are an immutable map (CPython's HAMT) that a copy shares and any set replaces, so the
# same map object is the common case's one pointer compare; other maps are compared value by value. The map is
# read from the Context object's own layout, checked at import against what copies and sets do to it.
cdef extern from *:
    """
    typedef struct { PyObject_HEAD void *ctx_prev; PyObject *ctx_vars; } agentcore_context_head;
    """
    ctypedef struct agentcore_context_head:
        PyObject* ctx_vars


cdef inline PyObject* _vars_of(object context) noexcept:
    return (<agentcore_context_head*><PyObject*>context).ctx_vars


def _layout_holds():
    """Whether _vars_of reads a Context's variable map here (copies share it, a set replaces it)."""
    probe = contextvars.ContextVar("agentcore.eager.probe")
    first = contextvars.Context()
    first.run(probe.set, 1)
    second = first.copy()
    if type(first) is not contextvars.Context or _vars_of(first) == NULL or _vars_of(first) != _vars_of(second):
        return False
    if type(<object>_vars_of(first)).__name__ != "hamt":
        return False
    second.run(probe.set, 2)
    return _vars_of(first) != _vars_of(second) and type(<object>_vars_of(second)).__name__ == "hamt"


cdef bint _LAYOUT = _layout_holds()
cdef object _MISSING = object()


cdef bint _same_values(object a, object b) except -1:
    """Whether Contexts a and b hold the same variables, set to the same objects."""
    if _LAYOUT and _vars_of(a) == _vars_of(b):
        return True
    if len(a) != len(b):
        return False
    for var, value in a.items():
        if b.get(var, _MISSING) is not value:
            return False
    return True


cdef object _get_running_loop = asyncio.get_running_loop
cdef object _copy_context = contextvars.copy_context
cdef object _CancelledError = asyncio.CancelledError


# Before 3.12 asyncio keeps the running loop in a holder object in the thread state's dict, made anew each time a
# loop starts or stops running in the thread, and asking for the loop checks the holder's pid with a getpid()
# system call (170 ns here, per handler). A spare remembers the holder it last saw its own loop running under: the
# same holder in the dict (held by the spare, so no other object can take its address) means that loop still runs
# in this thread. A fork's child forgets what spares remember, as asyncio's pid check makes it do.
cdef object _RUNNING_KEY = "__asyncio_running_event_loop__"
cdef unsigned long _forks = 0


def _forked():
    global _forks
    _forks += 1


if _by_dict is not None and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


cdef inline object _loop_of(SpareFields spare):
    """Return the running loop, asked for only when the spare cannot tell (see above)."""
    cdef PyObject* holder
    if spare is None or _by_dict is None:
        return _get_running_loop()  # from 3.12 asking is cheap (no pid check)
    if spare.holder is not None and spare.forks == _forks:
        holder = PyDict_GetItem(_thread_dict(), _RUNNING_KEY)
        if holder == <PyObject*>spare.holder:
            return spare.loop
    loop = _get_running_loop()
    if loop is spare.loop:
        holder = PyDict_GetItem(_thread_dict(), _RUNNING_KEY)
        spare.holder = <object>holder if holder != NULL else None
        spare.forks = _forks
    return loop


# This thread's spare lives in the thread state's dict (what asyncio keeps its running loop in): two C calls,
# where a threading.local costs an attribute lookup through its per-thread dict on each of the four reads and
# writes per start. The dict is cleared when its thread ends, as a threading.local would be.
cdef object _SPARE_KEY = "agentcore.eager.spare"


cdef inline dict _thread_dict():
    cdef PyObject* d = PyThreadState_GetDict()
    if d == NULL:
        raise RuntimeError("no thread state to keep the spare in")
    return <dict>d


cdef inline object _slot_get():
    cdef PyObject* v = PyDict_GetItem(_thread_dict(), _SPARE_KEY)
    if v == NULL:
        return None
    return <object>v


cdef inline void _slot_set(object value) except *:
    _thread_dict()[_SPARE_KEY] = value  # None kept as a value: no delete and reinsert per start


cdef class ThreadSlot:
    """Where this thread's spare is kept (a loop runs on one thread): eager_start's local (one per thread, shared)."""

    @property
    def spare(self):
        return _slot_get()

    @spare.setter
    def spare(self, value):
        _slot_set(value)


cdef object _first_step(object loop, object task, object context, object coro):
    """first_step, called from C."""
    cdef PyObject* result = NULL
    cdef PySendResult status
    if _by_dict is not None:
        outer = _by_dict.get(loop)
        _by_dict[loop] = task
    elif _swap is not None:
        outer = _swap(loop, task)
    else:
        outer = _current_task(loop)
        if outer is not None:
            _leave_task(loop, outer)
        _enter_task(loop, task)
    try:
        PyContext_Enter(context)
        try:
            status = PyIter_Send(coro, None, &result)
        finally:
            PyContext_Exit(context)
    finally:
        if _by_dict is not None:
            if outer is None:
                _by_dict.pop(loop, None)
            else:
                _by_dict[loop] = outer
        elif _swap is not None:
            _swap(loop, outer)
        else:
            _leave_task(loop, task)
            if outer is not None:
                _enter_task(loop, outer)
    value = <object>result  # a new reference either way: the coroutine's return value or what it yielded
    Py_DECREF(value)
    if status == PYGEN_RETURN:
        return FINISHED
    return value


def first_step(loop, task, context, coro):
    """Send coro its first None as task (asyncio.current_task() is task) inside context.

    Return FINISHED when that finished it, else what it yielded (the Future it waits on); raise what it raised.
    Whatever Task was current before is current again afterwards.
    """
    return _first_step(loop, task, context, coro)


cdef class SpareFields:
    """What eager_start reads of a spare (agentcore._eager's spares derive from it)."""

    cdef public object loop, task, step, context, base
    cdef object holder  # asyncio's running-loop holder its loop was last seen running under (before 3.12)
    cdef unsigned long forks  # _forks then


def eager_start(local, make_spare, report, coro):
    """Run coro's first step as local.spare's Task (made by make_spare(loop) when there is none to use).

    Return None when the step finished it (its error, unless a cancellation, goes to report), the spare kept
    for the next coroutine when its context is unchanged; else bind coro to the spare, whose Task carries on
    with it, and return that Task. A spare is a SpareFields with loop, task, context (the Task's), base (the
    caller context it copied), step (the Task's driver: done, coro, first, gate) and retire(); agentcore._eager
    makes them.
    """
    cdef bint slot = type(local) is ThreadSlot  # the thread state's dict, read and written directly
    cdef SpareFields spare = _slot_get() if slot else local.spare
    loop = _loop_of(spare)
    if spare is None or spare.loop is not loop or spare.step.done or not _same_values(_copy_context(), spare.base):
        if spare is not None and spare.loop is loop and not spare.step.done:
            spare.retire()
        spare = make_spare(loop)
    task = spare.task
    step = spare.step
    context = spare.context
    # Taken while its step runs: a coroutine started from inside that step gets a spare of its own.
    if slot:
        _slot_set(None)
    else:
        local.spare = None
    error = None
    try:
        first = _first_step(loop, task, context, coro)
    except (KeyboardInterrupt, SystemExit):
        spare.retire()  # its Task ends instead of waiting on its gate for good
        raise
    except BaseException as exc:  # reported below, as a Task of its own would report it
        first = FINISHED
        error = exc
    if first is FINISHED:  # finished in the first step: the spare serves the next coroutine
        # Retired when its context changed, a nested start left a spare already, or the step cancelled its own
        # Task (asyncio.current_task().cancel()): that cancellation must not reach the next coroutine's handler.
        if not _same_values(context, spare.base) or (_slot_get() if slot else local.spare) is not None \
                or task.cancelling():
            spare.retire()
        elif slot:
            _slot_set(spare)
        else:
            local.spare = spare
        if error is not None and not isinstance(error, _CancelledError):
            report(error)
        return None
    # Suspended: the spare Task becomes this coroutine's Task and picks it up where the step stopped.
    step.coro = coro
    step.first = first
    gate = step.gate
    step.gate = None
    if gate is not None and not gate.done():  # the Task already parked: wake it to take over (a cancelled gate
        gate.set_result(None)                 # wakes it already, with the step's own cancellation)
    return task
