"""The HTTP bridge: a2a-sdk's own HTTP apps (the Agent Card route, JSON-RPC) in front of an agent served over NATS.

``ForwardingHandler`` is an a2a-sdk ``RequestHandler`` that answers every operation through the NATS binding's client
transport, so the SDK's ``JsonRpcDispatcher`` does the HTTP side (parsing, version check, error codes, SSE) and an
HTTP-only A2A client reaches the NATS agent; ``bridge_routes`` puts the card route and the JSON-RPC route together.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from a2a.client.client import ClientCallContext
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers import RequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.types.a2a_pb2 import (
    AgentCard, CancelTaskRequest, DeleteTaskPushNotificationConfigRequest, GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest, GetTaskRequest, ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse, ListTasksRequest, ListTasksResponse, Message, SendMessageRequest,
    SubscribeToTaskRequest, Task, TaskPushNotificationConfig,
)

from .binding import H_EXTENSIONS, H_ON_BEHALF_OF, H_VERSION, event_of
from .client import NatsTransport

__all__ = ("ForwardingHandler", "bridge_routes")

#: Service parameters the bridge carries from the HTTP request to NATS (credentials included, spec §5.1).
FORWARDED = (H_VERSION, H_EXTENSIONS, "Authorization")


class ForwardingHandler(RequestHandler):
    """Answer each A2A operation by sending it over NATS with the HTTP request's service parameters."""

    def __init__(self, transport: NatsTransport) -> None:
        self.transport = transport

    @staticmethod
    def _context(context: ServerCallContext) -> ClientCallContext:
        headers = {str(k).lower(): str(v) for k, v in (context.state.get("headers") or {}).items()}
        parameters = {name: headers[name.lower()] for name in FORWARDED if name.lower() in headers}
        if context.user.is_authenticated:  # the HTTP side's user: honoured by agents that list the bridge as a delegate
            parameters[H_ON_BEHALF_OF] = context.user.user_name
        return ClientCallContext(service_parameters=parameters)

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        """GetTask over NATS."""
        return await self.transport.get_task(params, context=self._context(context))

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """ListTasks over NATS."""
        return await self.transport.list_tasks(params, context=self._context(context))

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        """CancelTask over NATS."""
        return await self.transport.cancel_task(params, context=self._context(context))

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        """SendMessage over NATS."""
        answer = await self.transport.send_message(params, context=self._context(context))
        return answer.task if answer.HasField("task") else answer.message

    async def on_message_send_stream(self, params: SendMessageRequest,
                                     context: ServerCallContext) -> AsyncGenerator[Event]:
        """SendStreamingMessage over NATS, its events handed to the SDK's SSE writer as they come."""
        async for response in self.transport.send_message_streaming(params, context=self._context(context)):
            yield event_of(response)

    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest,
                                   context: ServerCallContext) -> AsyncGenerator[Event]:
        """SubscribeToTask over NATS."""
        async for response in self.transport.subscribe(params, context=self._context(context)):
            yield event_of(response)

    async def on_create_task_push_notification_config(
            self, params: TaskPushNotificationConfig, context: ServerCallContext) -> TaskPushNotificationConfig:
        """CreateTaskPushNotificationConfig over NATS."""
        return await self.transport.create_task_push_notification_config(params, context=self._context(context))

    async def on_get_task_push_notification_config(
            self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext) -> TaskPushNotificationConfig:
        """GetTaskPushNotificationConfig over NATS."""
        return await self.transport.get_task_push_notification_config(params, context=self._context(context))

    async def on_list_task_push_notification_configs(
            self, params: ListTaskPushNotificationConfigsRequest,
            context: ServerCallContext) -> ListTaskPushNotificationConfigsResponse:
        """ListTaskPushNotificationConfigs over NATS."""
        return await self.transport.list_task_push_notification_configs(params, context=self._context(context))

    async def on_delete_task_push_notification_config(
            self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext) -> None:
        """DeleteTaskPushNotificationConfig over NATS."""
        await self.transport.delete_task_push_notification_config(params, context=self._context(context))

    async def on_get_extended_agent_card(self, params: GetExtendedAgentCardRequest,
                                         context: ServerCallContext) -> AgentCard:
        """GetExtendedAgentCard over NATS."""
        return await self.transport.get_extended_agent_card(params, context=self._context(context))


def bridge_routes(card: AgentCard, transport: NatsTransport, rpc_url: str = "/") -> list[Any]:
    """Starlette routes: the card at /.well-known/agent-card.json and JSON-RPC at rpc_url, forwarded over NATS."""
    return [*create_agent_card_routes(card), *create_jsonrpc_routes(ForwardingHandler(transport), rpc_url)]
