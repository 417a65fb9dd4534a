# cython: language_level=3
"""Run a coroutine's first step as a given Task inside a given context, as that Task's own step would (compiled core).

The step is sent with PyIter_Send (a finished coroutine returns, no StopIteration is raised and caught) inside the
context entered with PyContext_Enter (no Context.run call): what a handler that answers at once costs to start.
"""

import asyncio
import sys
from asyncio.tasks import _enter_task, _leave_task

from cpython.ref cimport PyObject, Py_DECREF

__all__ = ("FINISHED", "first_step")


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject** presult) except? PYGEN_ERROR
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1


#: What first_step returns when the coroutine finished in its first step (its return value is not kept).
FINISHED = object()

if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # implemented in C from 3.12
else:  # a Python function before 3.12 that reads this dict (C, from _asyncio): read it directly
    from asyncio.tasks import _current_tasks

    _current_task = _current_tasks.get


def first_step(loop, task, context, coro):
    """Send coro its first None as task (asyncio.current_task() is task) inside context.

    Return FINISHED when that finished it, else what it yielded (the Future it waits on); raise what it raised.
    Whatever Task was current before is current again afterwards.
    """
    cdef PyObject* result = NULL
    cdef PySendResult status
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
        _leave_task(loop, task)
        if outer is not None:
            _enter_task(loop, outer)
    value = <object>result  # a new reference either way: the coroutine's return value or what it yielded
    Py_DECREF(value)
    if status == PYGEN_RETURN:
        return FINISHED
    return value
