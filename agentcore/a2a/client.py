"""An a2a-sdk ``ClientTransport`` for the A2A-over-NATS binding, registered on a ``ClientFactory`` under its URI.

Existing A2A client code switches to NATS by configuration::

    factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI]))
    register(factory, nc)            # nc: a connected nats-py client
    client = factory.create(card)    # the card lists a supportedInterfaces entry with BINDING_URI

Every request carries ``A2A-Version`` and the call's service parameters as NATS headers; an answer is taken only
with the request's ``Agent-Request`` id (on the request's own inbox); a stream is read with agentcore's
``StreamReceiver`` (ordered, credit-based, bound to one producer).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import nats.errors
from a2a.client.client import ClientCallContext
from a2a.client.client_factory import ClientFactory
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.client.transports.base import ClientTransport
from a2a.types.a2a_pb2 import (
    AgentCard, CancelTaskRequest, DeleteTaskPushNotificationConfigRequest, GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest, GetTaskRequest, ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse, ListTasksRequest, ListTasksResponse, SendMessageRequest,
    SendMessageResponse, StreamResponse, SubscribeToTaskRequest, Task, TaskPushNotificationConfig,
)
from a2a.utils.proto_utils import parse_lenient
from google.protobuf.json_format import MessageToJson, ParseError
from google.protobuf.message import Message as Proto
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg

from ..errors import NoRespondersError, RequestTimeoutError, StreamError
from ..transport.frames import StreamReceiver
from ..transport.identity import H_SENDER, Signer, Verifier
from ..transport.inline import REJECT, RequestMux
from .binding import (
    BINDING_URI, H_ERROR_CODE, H_PULL, H_REQUEST, H_VERSION, PROTOCOL_VERSION, A2APayloadTooLargeError, error_class,
    error_from_body, prefix_from_url,
)
from .large import Offer, fits, pull_body

__all__ = ("NatsTransport", "register")

P = TypeVar("P", bound=Proto)


def register(factory: ClientFactory, nc: NATSClient, **options: Any) -> None:
    """Register the NATS transport on factory under BINDING_URI, every client it creates using connection nc."""
    factory.register(BINDING_URI, lambda card, url, _config: NatsTransport(nc, card, url, **options))


class NatsTransport(ClientTransport):
    """Send the A2A operations as NATS requests to the subject prefix of the card's NATS interface URL."""

    def __init__(self, nc: NATSClient, card: AgentCard | None, url: str, *, timeout: float = 30.0,
                 window: int = 16, signer: Signer | None = None, verifier: Verifier | None = None,
                 agent_id: str | None = None, max_answer_bytes: int = 64 * 1024 * 1024) -> None:
        self.nc = nc
        # Signed identities: requests (and stream credit) signed with signer; with a verifier, answers and frames are
        # taken only signed by a trusted key (bound to agent_id when given: the agent's replicas' id).
        self.signer = signer
        self.verifier = verifier
        self.agent_id = agent_id
        self.max_answer_bytes = max_answer_bytes  # an answer or one stream event beyond it: A2APayloadTooLargeError
        self.card = card
        self.prefix = prefix_from_url(url)
        self.timeout = timeout
        self.window = window
        self._mux = RequestMux(nc)  # one wildcard inbox for the unary requests
        self.rejected = 0  # answers on that inbox for no request of ours (forged or stray): dropped

    # ------------------------------------------------------------------ the wire

    def _headers(self, context: ClientCallContext | None, request_id: str) -> dict[str, str]:
        headers = {H_VERSION: PROTOCOL_VERSION}
        if context is not None and context.service_parameters:
            given = {name.lower() for name in context.service_parameters}  # names are case-insensitive: the caller's win
            headers = {name: value for name, value in headers.items() if name.lower() not in given}
            headers.update(context.service_parameters)
        headers[H_REQUEST] = request_id
        return headers

    async def _offer(self, request_id: str, data: bytes, headers: dict[str, str],
                     timeout: float) -> tuple[bytes, dict[str, str], Offer | None]:
        """A body too large for one message is offered (empty body, Agent-Pull) and pulled by the agent (§10.1)."""
        if fits(self.nc, data, headers):
            return data, headers, None
        offer = Offer(self.nc, request_id, data, timeout, self.signer, self.verifier)
        return b"", await offer.open(headers), offer

    def _signed(self, subject: str, inbox: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        return headers if self.signer is None else self.signer.headers(subject, inbox, data, headers)

    def _trusted(self, msg: Msg) -> bool:
        """With a verifier: whether an answer is signed by a key trusted for the agent (a refusal is counted)."""
        verifier = self.verifier
        if verifier is None:
            return True
        headers = msg.headers or {}
        sender = headers.get(H_SENDER)
        source_id = self.agent_id or (verifier.owner(sender) if sender is not None else None)
        reason = verifier.check(msg.subject, msg.reply or "", headers, msg.data, source_id)
        if reason is not None:
            verifier.refuse(reason, source_id, msg.subject)
            return False
        return True

    async def _call(self, operation: str, request: Proto, answer: P, context: ClientCallContext | None) -> P:
        request_id = secrets.token_hex(16)
        timeout = context.timeout if context is not None and context.timeout is not None else self.timeout
        subject = f"{self.prefix}.{operation}"
        data, headers, offer = await self._offer(request_id, MessageToJson(request, indent=None).encode(),
                                                 self._headers(context, request_id), timeout)

        async def publish(inbox: str) -> None:
            await self.nc.publish(subject, data, reply=inbox, headers=self._signed(subject, inbox, data, headers))
            if offer is not None:
                offer.start()

        def ours(msg: Msg) -> Any:  # checked where nats-py reads it: a forged or stray answer is dropped
            if (msg.headers or {}).get(H_REQUEST) != request_id or not self._trusted(msg):
                self.rejected += 1
                return REJECT
            return msg

        try:
            msg = await self._mux.request_via(publish, timeout, ours)
        except nats.errors.NoRespondersError:
            raise A2AClientError(f"no agent answers {subject} (no responders)") from None
        except nats.errors.TimeoutError:
            raise A2AClientTimeoutError(f"{operation} timed out after {timeout}s") from None
        finally:
            if offer is not None:
                await offer.close()
        code = (msg.headers or {}).get(H_ERROR_CODE)
        if code is not None:
            raise error_from_body(msg.data) or A2AClientError(f"{operation} failed: {code}")
        body = msg.data
        if H_PULL in (msg.headers or {}):  # the answer exceeds max_payload: pulled from the agent
            body = await pull_body(self.nc, msg.headers or {}, request_id, max_bytes=self.max_answer_bytes,
                                   timeout=timeout, signer=self.signer, verifier=self.verifier, source_id=self.agent_id)
        try:
            return parse_lenient(body, answer)
        except ParseError as exc:
            raise A2AClientError(f"{operation}: the answer is no ProtoJSON {type(answer).__name__}: {exc}") from None

    async def _stream(self, operation: str, request: Proto,
                      context: ClientCallContext | None) -> AsyncGenerator[StreamResponse, None]:
        request_id = secrets.token_hex(16)
        headers = self._headers(context, request_id)
        headers["Agent-Window"] = str(self.window)
        subject = f"{self.prefix}.{operation}"
        idle = context.timeout if context is not None and context.timeout is not None else self.timeout
        data, headers, offer = await self._offer(request_id, MessageToJson(request, indent=None).encode(), headers, idle)

        async def start(inbox: str) -> None:
            await self.nc.publish(subject, data, reply=inbox, headers=self._signed(subject, inbox, data, headers))
            if offer is not None:
                offer.start()

        receiver = StreamReceiver(self.nc, window=self.window, idle_timeout=idle, start=start, task_id=request_id,
                                  verifier=self.verifier, signer=self.signer, source_id=self.agent_id)
        buffered = b""
        try:
            async with receiver:
                async for chunk in receiver:
                    buffered += chunk.data  # an event spans frames until its newline: held up to one frame beyond the bound
                    *lines, buffered = buffered.split(b"\n")
                    if len(buffered) > self.max_answer_bytes or any(len(line) > self.max_answer_bytes for line in lines):
                        raise A2APayloadTooLargeError(
                            message=f"{operation}: a stream event is larger than the {self.max_answer_bytes} bytes "
                                    "allowed (max_answer_bytes)", data={"limit": str(self.max_answer_bytes)})
                    for line in lines:
                        if line.strip():
                            yield parse_lenient(line, StreamResponse())
        except NoRespondersError:
            raise A2AClientError(f"no agent answers {subject} (no responders)") from None
        except RequestTimeoutError as exc:  # StreamTimeoutError included
            raise A2AClientTimeoutError(f"{operation}: {exc}") from None
        except StreamError as exc:
            cls = error_class(exc.code)
            if cls is None:
                raise A2AClientError(f"{operation}: {exc}") from None
            raise cls(str(exc)) from None
        finally:
            if offer is not None:
                await offer.close()

    # ------------------------------------------------------------------ ClientTransport

    async def send_message(self, request: SendMessageRequest, *,
                           context: ClientCallContext | None = None) -> SendMessageResponse:
        """Send a message and return the Task or Message it produced."""
        return await self._call("SendMessage", request, SendMessageResponse(), context)

    async def send_message_streaming(self, request: SendMessageRequest, *,
                                     context: ClientCallContext | None = None) -> AsyncGenerator[StreamResponse]:
        """Send a message and yield its events until the stream ends."""
        async for event in self._stream("SendStreamingMessage", request, context):
            yield event

    async def get_task(self, request: GetTaskRequest, *, context: ClientCallContext | None = None) -> Task:
        """Return a task's current state."""
        return await self._call("GetTask", request, Task(), context)

    async def list_tasks(self, request: ListTasksRequest, *,
                         context: ClientCallContext | None = None) -> ListTasksResponse:
        """Return a page of tasks."""
        return await self._call("ListTasks", request, ListTasksResponse(), context)

    async def cancel_task(self, request: CancelTaskRequest, *, context: ClientCallContext | None = None) -> Task:
        """Cancel a task and return its state."""
        return await self._call("CancelTask", request, Task(), context)

    async def create_task_push_notification_config(
            self, request: TaskPushNotificationConfig, *,
            context: ClientCallContext | None = None) -> TaskPushNotificationConfig:
        """Create a push notification config."""
        return await self._call("CreateTaskPushNotificationConfig", request, TaskPushNotificationConfig(), context)

    async def get_task_push_notification_config(
            self, request: GetTaskPushNotificationConfigRequest, *,
            context: ClientCallContext | None = None) -> TaskPushNotificationConfig:
        """Return a push notification config."""
        return await self._call("GetTaskPushNotificationConfig", request, TaskPushNotificationConfig(), context)

    async def list_task_push_notification_configs(
            self, request: ListTaskPushNotificationConfigsRequest, *,
            context: ClientCallContext | None = None) -> ListTaskPushNotificationConfigsResponse:
        """List a task's push notification configs."""
        return await self._call("ListTaskPushNotificationConfigs", request,
                                ListTaskPushNotificationConfigsResponse(), context)

    async def delete_task_push_notification_config(
            self, request: DeleteTaskPushNotificationConfigRequest, *,
            context: ClientCallContext | None = None) -> None:
        """Delete a push notification config."""
        await self._call("DeleteTaskPushNotificationConfig", request, TaskPushNotificationConfig(), context)

    async def subscribe(self, request: SubscribeToTaskRequest, *,
                        context: ClientCallContext | None = None) -> AsyncGenerator[StreamResponse]:
        """Yield a task's events from its current state on until the stream ends."""
        async for event in self._stream("SubscribeToTask", request, context):
            yield event

    async def get_extended_agent_card(self, request: GetExtendedAgentCardRequest, *,
                                      context: ClientCallContext | None = None) -> AgentCard:
        """Return the extended Agent Card (the public one when the agent declares none)."""
        if self.card is not None and not self.card.capabilities.extended_agent_card:
            return self.card
        return await self._call("GetExtendedAgentCard", request, AgentCard(), context)

    async def close(self) -> None:
        """End the reply subscription; the NATS connection belongs to whoever registered the transport."""
        await self._mux.close()
