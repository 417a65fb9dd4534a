"""The executor the A2A benchmarks serve: it answers each SendMessage with one Message echoing the text, at once
(no task), so a round trip measures the binding and the SDK, not the executor. Needs the extra a2a."""

from __future__ import annotations

from typing import Any


def message_echo() -> Any:
    """Return an a2a-sdk AgentExecutor answering every message with a Message of the same text."""
    from a2a.helpers import new_text_message
    from a2a.server.agent_execution import AgentExecutor, RequestContext
    from a2a.server.events import EventQueue
    from a2a.types.a2a_pb2 import Role

    class Echo(AgentExecutor):
        async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
            await event_queue.enqueue_event(new_text_message(context.get_user_input(), role=Role.ROLE_AGENT,
                                                             context_id=context.context_id))

        async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
            return None

    return Echo()
