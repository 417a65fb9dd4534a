"""Serve a plain agentcore capability handler as an A2A agent: an a2a-sdk ``AgentExecutor`` around it.

The handler is called as agentcore calls it, with a message dict (``id``, ``type``, ``source``, ``context.metadata``,
``payload.content``) built from the A2A message: one text part gives its text as content, one data part its JSON value,
anything else the list of parts as ProtoJSON. Its result becomes the task's one artifact (text, bytes or JSON data);
an async generator's items become chunks of that artifact as they come (``append`` after the first; the task's
``COMPLETED`` status ends it). ``CancelTask`` cancels the handler: it sees ``asyncio.CancelledError``, as with
agentcore's cancellation on the wire. A handler that raises fails the task with its error as the status message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from a2a.helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Part, TaskState
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

__all__ = ("CapabilityExecutor",)

Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


def _content(parts: list[Part]) -> Any:
    if len(parts) == 1 and parts[0].HasField("text"):
        return parts[0].text
    if len(parts) == 1 and parts[0].HasField("data"):
        return MessageToDict(parts[0].data)
    return [MessageToDict(part) for part in parts]


def _part(item: Any) -> Part:
    if isinstance(item, str):
        return Part(text=item)
    if isinstance(item, bytes):
        return Part(raw=item)
    return Part(data=ParseDict(item, Value()))


class CapabilityExecutor(AgentExecutor):
    """Run handler(message) for each A2A message; its answer is the task's artifact ``name``."""

    def __init__(self, handler: Handler, capability: str, *, name: str = "result") -> None:
        self.handler = handler
        self.capability = capability
        self.name = name

    def _message(self, context: RequestContext) -> dict[str, Any]:
        message = context.message
        return {"id": context.task_id, "type": "task", "source": {"id": context.call_context.user.user_name or None},
                "context": {"conversationId": context.context_id, "metadata": dict(context.metadata)},
                "payload": {"content": _content(list(message.parts) if message else [])},
                "capability": self.capability}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Start the task, run the handler, publish its answer (or its items as they come), complete or fail."""
        assert context.task_id is not None and context.context_id is not None
        if context.current_task is None:
            await event_queue.enqueue_event(new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                                                     history=[context.message] if context.message else []))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        try:
            result = self.handler(self._message(context))
            if inspect.isasyncgen(result):
                first = True
                async for item in result:  # each item goes out as it comes: tokens stream live
                    await updater.add_artifact([_part(item)], artifact_id=self.name, name=self.name, append=not first)
                    first = False
            else:
                if inspect.isawaitable(result):
                    result = await result
                await updater.add_artifact([_part(result)], artifact_id=self.name, name=self.name)
        except Exception as exc:  # the task fails with the handler's error, as agentcore's handler_error does
            await updater.failed(updater.new_agent_message([Part(text=f"{type(exc).__name__}: {exc}")]))
            return
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task cancelled; the SDK then cancels the running execute(), so the handler sees CancelledError."""
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()
