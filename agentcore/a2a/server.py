"""Serve an a2a-sdk ``RequestHandler`` (e.g. ``DefaultRequestHandler`` over an ``AgentExecutor``) on NATS.

Prototype of docs/a2a-binding.md: one subscription on ``{prefix}.*`` in a queue group (replicas share the work),
one ``ServerCallContext`` per request built from the NATS headers, answers as ProtoJSON, errors as google.rpc.Status.
Streams (SendStreamingMessage, SubscribeToTask) go out as agentcore frames under the consumer's credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import nats.errors
from a2a.extensions.common import get_requested_extensions
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import RequestHandler
from a2a.types.a2a_pb2 import (
    AgentCard, CancelTaskRequest, DeleteTaskPushNotificationConfigRequest, GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest, GetTaskRequest, ListTaskPushNotificationConfigsRequest, ListTasksRequest,
    Message, SendMessageRequest, SendMessageResponse, SubscribeToTaskRequest, Task, TaskPushNotificationConfig,
    TaskState, TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    A2A_ERROR_REASONS, A2AError, InvalidParamsError, MethodNotFoundError, TaskNotFoundError, VersionNotSupportedError,
)
from a2a.utils.proto_utils import parse_lenient, to_stream_response
from google.protobuf.json_format import MessageToJson, ParseError
from google.protobuf.message import Message as Proto
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from packaging.version import InvalidVersion, Version

from ..errors import StreamTimeoutError
from ..transport.frames import ERROR, HEADER_ROOM, JSON, FrameSender
from ..transport.identity import Signer, Verifier
from ..transport.subscriptions import confirm
from .binding import (
    CARD, H_EXTENSIONS, H_PULL, H_REQUEST, H_VERSION, OPERATIONS, PROTOCOL_VERSION, error_body, error_frame,
)
from .large import Offer, Pulls, fits
from .trust import Trust

__all__ = ("A2ANatsServer",)

log = logging.getLogger(__name__)

_REQUESTS: dict[str, type[Proto]] = {
    "SendMessage": SendMessageRequest, "SendStreamingMessage": SendMessageRequest, "GetTask": GetTaskRequest,
    "ListTasks": ListTasksRequest, "CancelTask": CancelTaskRequest, "SubscribeToTask": SubscribeToTaskRequest,
    "CreateTaskPushNotificationConfig": TaskPushNotificationConfig,
    "GetTaskPushNotificationConfig": GetTaskPushNotificationConfigRequest,
    "ListTaskPushNotificationConfigs": ListTaskPushNotificationConfigsRequest,
    "DeleteTaskPushNotificationConfig": DeleteTaskPushNotificationConfigRequest,
    "GetExtendedAgentCard": GetExtendedAgentCardRequest,
}
# A stream ends after a Message or a task that is terminal or interrupted (spec §3.1.2, §3.5.2): the frame carrying
# that event is the final one.
_ENDS = {TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED,
         TaskState.TASK_STATE_REJECTED, TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
_SUPPORTED = Version(PROTOCOL_VERSION)
_TOKEN = re.compile(r"[^.*>\s]+")  # one subject token, no wildcard
#: Which replica runs a task (its id), or None: KVTaskStore.replica_of.
Locate = Callable[[str, ServerCallContext], Awaitable[str | None]]


def _ends(event: Any) -> bool:
    return isinstance(event, Message) or (isinstance(event, Task | TaskStatusUpdateEvent) and event.status.state in _ENDS)


def _json(message: Proto) -> bytes:
    return MessageToJson(message, indent=None).encode()


class A2ANatsServer:
    """Answer the A2A operations of one agent under a subject prefix, sharing the work with replicas in a queue group."""

    def __init__(self, nc: NATSClient, handler: RequestHandler, card: AgentCard, prefix: str, *,
                 queue: str | None = None, max_concurrency: int = 64, idle_timeout: float = 30.0,
                 replica: str | None = None, locate: Locate | None = None, forward_timeout: float = 5.0,
                 signer: Signer | None = None, verifier: Verifier | None = None, delegates: tuple[str, ...] = (),
                 max_request_bytes: int = 64 * 1024 * 1024, max_pulls: int = 16, pulls_per_sender: int = 4,
                 inboxes: tuple[str, ...] = ("_INBOX.",)) -> None:
        self.nc = nc
        # Answers go only to reply inboxes: a reply subject naming anything else (a control subject, another agent's
        # operation) would make this agent a relay for whoever sent the request, signing what it relays.
        self.inboxes = inboxes
        self.relays = 0  # requests dropped for that
        self.handler = handler
        self.card = card
        self.prefix = prefix
        self.queue = queue or prefix
        self.idle_timeout = idle_timeout
        # Replicas: this one's id (it also answers PREFIX.replica.{id}.*), and how to find which replica runs a task
        # (KVTaskStore.replica_of), so that CancelTask reaches the one running it (binding §10.3).
        self.replica = replica
        self.locate = locate
        self.forward_timeout = forward_timeout
        # Signed identities (trust.py): who each request is, hence whose tasks it sees; bodies beyond max_payload are
        # pulled within these bounds (large.py).
        self.trust = Trust(signer, verifier, delegates)
        self.pulls = Pulls(max_request_bytes, max_pulls, pulls_per_sender)
        self._room = asyncio.Semaphore(max_concurrency)  # requests served at once; the rest wait in NATS' buffer
        self._subs: list[Subscription] = []
        self._running: set[asyncio.Task[None]] = set()
        self.errors: dict[str, int] = {}  # errors answered, by ErrorInfo reason (the agent's get_metrics() shows them)

    async def start(self) -> None:
        """Subscribe the operations' subjects in the queue group, and this replica's own (confirmed before returning)."""
        self._subs.append(await self.nc.subscribe(f"{self.prefix}.*", queue=self.queue, cb=self._on_request))
        if self.replica is not None:
            self._subs.append(await self.nc.subscribe(f"{self.prefix}.replica.{self.replica}.*", cb=self._on_request))
        await confirm(self.nc)  # not nc.flush(): its PING can overtake the SUB (a "no responders" right after start)

    async def leave_queue(self) -> None:
        """Take no more requests from the queue group; this replica's own subject stays (its tasks can be reached)."""
        if self._subs:
            await self._subs.pop(0).unsubscribe()

    async def stop(self) -> None:
        """Unsubscribe and wait for the requests being served."""
        while self._subs:
            await self._subs.pop().unsubscribe()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def serve(self, msg: Msg) -> None:
        """Answer one request (for a host that subscribes the subjects itself: the agent's A2A component)."""
        await self._serve(msg)

    async def refuse(self, msg: Msg, error: Exception, *, streaming: bool) -> None:
        """Answer msg with error, unserved (a bound of the host refused it): an error answer, or one final error frame."""
        request_id = (msg.headers or {}).get(H_REQUEST, "")
        if streaming:
            await self._stream_error(msg, request_id, error)
        else:
            body, headers = error_body(error)
            await self._answer(msg, body, request_id, headers)

    def _count(self, exc: Exception) -> None:
        reason = A2A_ERROR_REASONS.get(type(exc), "INTERNAL_ERROR") if isinstance(exc, A2AError) else "INTERNAL_ERROR"
        self.errors[reason] = self.errors.get(reason, 0) + 1

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def answers_to(self, reply: str) -> bool:
        """Whether reply is a subject this server answers on: a reply inbox (no wildcard); else counted, dropped."""
        if reply.startswith(self.inboxes) and _TOKEN.fullmatch(reply.replace(".", "_")):
            return True
        self.relays += 1
        return False

    async def _serve(self, msg: Msg) -> None:
        if not msg.reply:  # nobody to answer: an A2A operation is always a request
            return
        if not self.answers_to(msg.reply):
            log.debug("A2A request on %s dropped: its reply subject %r is no inbox", msg.subject, msg.reply)
            return
        async with self._room:
            operation = msg.subject.rpartition(".")[2]
            headers = dict(msg.headers or {})
            request_id = headers.get(H_REQUEST, "")
            if operation == CARD:
                await self._answer(msg, _json(self.card), request_id)
                return
            streaming = OPERATIONS.get(operation)
            try:
                if streaming is None:
                    raise MethodNotFoundError(message=f"no A2A operation {operation!r}")
                context = self._context(operation, headers)
                context.user = self.trust.user(msg, headers)  # before anything reads the store (spec §13.1)
                data = await self._body(msg, headers, request_id, context) if H_PULL in headers else msg.data
                request = _REQUESTS[operation]()
                try:
                    if data:
                        parse_lenient(data, request)
                except (ParseError, ValueError) as exc:  # ValueError: a body that is not UTF-8, or not JSON
                    raise InvalidParamsError(data={"parseError": str(exc)}) from None
                context.tenant = getattr(request, "tenant", "")
                if streaming:
                    await self._stream(msg, request_id, operation, request, context)
                    return
                if operation == "CancelTask" and await self._forwarded(msg, data, request, context):
                    return
                result = await self._unary(operation, request, context)
            except Exception as exc:  # every failure answers the requester: the A2A error, else InternalError
                self._count(exc)
                if not isinstance(exc, TaskNotFoundError | VersionNotSupportedError):
                    log.debug("A2A %s failed: %r", operation, exc)
                if streaming:
                    await self._stream_error(msg, request_id, exc)
                else:
                    body, error_headers = error_body(exc)
                    await self._answer(msg, body, request_id, error_headers)
                return
            await self._answer(msg, result, request_id)

    def _context(self, operation: str, headers: dict[str, str]) -> ServerCallContext:
        """The call's context: the service parameters as they came (state["headers"]), the requested extensions."""
        named = {name.lower(): value for name, value in headers.items()}  # service parameter names are case-insensitive
        version = named.get(H_VERSION.lower()) or "0.3"  # spec §3.6.2: an empty version is 0.3
        try:
            supported = Version(version).major == _SUPPORTED.major
        except InvalidVersion:
            supported = False
        if not supported:
            raise VersionNotSupportedError(
                message=f"A2A version '{version}' is not supported by this agent; it serves '{PROTOCOL_VERSION}'")
        return ServerCallContext(state={"headers": headers, "method": operation},
                                 requested_extensions=get_requested_extensions([named.get(H_EXTENSIONS.lower(), "")]))

    async def _body(self, msg: Msg, headers: dict[str, str], request_id: str, context: ServerCallContext) -> bytes:
        """Pull a request body offered because it exceeds max_payload (binding §10.1), within this replica's bounds."""
        user = context.user
        verifier = self.trust.verifier
        source_id = verifier.owner(headers.get("Agent-Sender", "")) if verifier is not None else None
        return await self.pulls.body(self.nc, headers, request_id, user.user_name, timeout=self.idle_timeout,
                                     signer=self.trust.signer, verifier=verifier, source_id=source_id)

    def metrics(self) -> dict[str, int]:
        """Counters of the trust checks and pulled bodies (refusals by reason, pulls in progress)."""
        counters = {f"a2a_identity_{reason}": n for reason, n in self.trust.refused.items()}
        counters["a2a_relays_refused"] = self.relays
        counters.update(self.pulls.counters)
        counters.update(self.pulls.gate.gauges())
        return counters

    async def _unary(self, operation: str, request: Any, context: ServerCallContext) -> bytes:
        handler = self.handler
        if operation == "SendMessage":
            outcome = await handler.on_message_send(request, context)
            response = SendMessageResponse(task=outcome) if isinstance(outcome, Task) else SendMessageResponse(message=outcome)
            return _json(response)
        if operation in ("GetTask", "CancelTask"):
            call = handler.on_get_task if operation == "GetTask" else handler.on_cancel_task
            task = await call(request, context)
            if task is None:
                raise TaskNotFoundError
            return _json(task)
        if operation == "ListTasks":
            # nextPageToken is always present (spec §3.1.4): print fields without presence.
            page = await handler.on_list_tasks(request, context)
            return MessageToJson(page, indent=None, always_print_fields_with_no_presence=True).encode()
        calls: dict[str, Callable[[Any, ServerCallContext], Awaitable[Any]]] = {
            "CreateTaskPushNotificationConfig": handler.on_create_task_push_notification_config,
            "GetTaskPushNotificationConfig": handler.on_get_task_push_notification_config,
            "ListTaskPushNotificationConfigs": handler.on_list_task_push_notification_configs,
            "DeleteTaskPushNotificationConfig": handler.on_delete_task_push_notification_config,
            "GetExtendedAgentCard": handler.on_get_extended_agent_card,
        }
        answer = await calls[operation](request, context)
        return b"{}" if answer is None else _json(answer)

    async def _forwarded(self, msg: Msg, data: bytes, request: Any, context: ServerCallContext) -> bool:
        """Hand CancelTask to the replica running the task and relay its answer; False: cancel here (it runs here,
        nowhere, or on a replica that is gone, which the SDK then cancels by writing the store)."""
        if self.locate is None or self.replica is None or msg.subject.startswith(f"{self.prefix}.replica."):
            return False  # a forwarded request is never forwarded again
        runner = await self.locate(request.id, context)
        if runner is None or runner == self.replica or not _TOKEN.fullmatch(runner):
            return False  # a replica id that is no subject token was not written by a replica: never a subject here
        subject = f"{self.prefix}.replica.{runner}.CancelTask"
        # With signatures, the forward is this replica's, on behalf of the requester (the runner scopes the task to
        # the same user); the requester's signature covers the subject it sent to, not this one.
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            headers = {name: value for name, value in (msg.headers or {}).items() if name != H_PULL}
            await self.nc.publish(subject, data, reply=inbox,
                                  headers=self.trust.on_behalf(subject, inbox, data, headers, context.user))
            answer = await sub.next_msg(timeout=self.forward_timeout)
        except nats.errors.TimeoutError:
            answer = None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if answer is None or (not answer.data and (answer.headers or {}).get("Status") == "503"):
            log.debug("A2A CancelTask %s: replica %s does not answer, cancelling here", request.id, runner)
            return False
        await self._answer_raw(msg, answer.data, answer.headers or {})
        return True

    async def _stream(self, msg: Msg, request_id: str, operation: str, request: Any, context: ServerCallContext) -> None:
        if operation == "SendStreamingMessage":
            events: AsyncGenerator[Any, None] = self.handler.on_message_send_stream(request, context)
        else:
            events = self.handler.on_subscribe_to_task(request, context)
        sender = FrameSender(self.nc, request_id, msg.reply, _window(msg), self.idle_timeout, self.trust.signer,
                             self.trust.verifier)
        await sender.open()
        step = (self.nc.max_payload or 1024 * 1024) - HEADER_ROOM  # an event larger than a frame spans frames
        try:
            ended = False
            async for event in events:
                ended = _ends(event)
                line = _json(to_stream_response(event)) + b"\n"
                for start in range(0, len(line), step):
                    last = start + step >= len(line)
                    if not await sender.send(JSON, line[start:start + step], final=ended and last):
                        return  # the consumer cancelled: only its stream ends, the task goes on (spec §3.5.2)
                if ended:
                    return
            await sender.send(JSON, b"", final=True)  # the handler ended the stream: say so explicitly
        except StreamTimeoutError:
            log.debug("A2A stream %s: no credit within %ss, ended", request_id, self.idle_timeout)
        except Exception as exc:
            self._count(exc)
            with contextlib.suppress(StreamTimeoutError, nats.errors.Error):  # the consumer is gone: nobody to tell
                await sender.send(ERROR, error_frame(exc), final=True)
        finally:
            await events.aclose()
            await sender.close()

    async def _stream_error(self, msg: Msg, request_id: str, exc: Exception) -> None:
        """Refuse a stream before its first event: one error frame, final."""
        sender = FrameSender(self.nc, request_id, msg.reply, None, self.idle_timeout, self.trust.signer)
        await sender.open()
        try:
            await sender.send(ERROR, error_frame(exc), final=True)
        finally:
            await sender.close()

    async def _answer(self, msg: Msg, data: bytes, request_id: str, headers: dict[str, str] | None = None) -> None:
        await self._answer_raw(msg, data, {H_REQUEST: request_id, **(headers or {})})

    async def _answer_raw(self, msg: Msg, data: bytes, headers: dict[str, str]) -> None:
        offer = None
        if not fits(self.nc, data, headers):  # offered small, pulled by the requester (binding §10.1)
            offer = Offer(self.nc, headers.get(H_REQUEST, ""), data, self.idle_timeout, self.trust.signer,
                          self.trust.verifier)
            headers, data = await offer.open(headers), b""
        try:
            await self.nc.publish(msg.reply, data, headers=self.trust.sign(msg.reply, data, headers))
            if offer is not None:
                await offer.serve()  # closes its control inbox when done
        except (nats.errors.Error, StreamTimeoutError) as exc:
            log.debug("A2A answer to %s not sent: %s", msg.reply, exc)
            if offer is not None:
                await offer.close()


def _window(msg: Msg) -> int | None:
    text = (msg.headers or {}).get("Agent-Window")
    try:
        return max(1, int(text)) if text else None
    except ValueError:
        return None
