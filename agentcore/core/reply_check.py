"""What a reply to one of our requests must be before it answers it: the check run where the reply is read."""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from ..envelope import decode
from ..errors import EnvelopeError
from ..fields import CORRELATION_ID, ID, SOURCE
from ..transport.connection import Connection
from ..transport.inline import REJECT
from ..transport.settlement import pub_ack_stream

__all__ = ("ReplyCheck",)

log = logging.getLogger("agentcore.agent")


class ReplyCheck:
    """The check a reply to request_id must pass, and what it turned away.

    Only a result envelope whose correlationId is request_id (and, when the request named a target, whose
    source.id is that target) answers the request; anything else that reaches its inbox is dropped, counted in
    replies_rejected, and the request keeps waiting for its answer. accept runs where the reply is read, on the
    one decode the reply needs anyway. A JetStream publish acknowledgement (the task was stored, not answered)
    is remembered in stored: the request then fails with PersistenceError at its timeout, not at once, so a
    forged one cannot cut a request short. Replies dropped for their identity are kept in refused, newest last.
    One object per request in flight (its two lists made only when used): it lives as long as the request.
    """

    __slots__ = ("request_id", "target", "agent_id", "counters", "connection", "stored", "refused")

    def __init__(self, request_id: str, target: str | None, agent_id: str, counters: dict[str, int],
                 connection: Connection) -> None:
        self.request_id = request_id
        self.target = target
        self.agent_id = agent_id
        self.counters = counters
        self.connection = connection
        self.stored: list[str] | None = None  # the JetStream streams that acknowledged storing the request
        self.refused: list[Exception] | None = None  # IdentityErrors of the replies dropped for their identity

    def accept(self, msg: Msg) -> Any:
        """Return the decoded reply when it answers the request, else REJECT."""
        try:
            reply = decode(msg.data)
        except EnvelopeError:
            stream = pub_ack_stream(msg.data)
            if stream is not None:
                if self.stored is None:
                    self.stored = []
                self.stored.append(stream)
                return REJECT
            reply = None
        target = self.target
        if reply is None or reply.get(CORRELATION_ID) != self.request_id or (
                target is not None and reply[SOURCE][ID] != target):
            counters = self.counters
            counters["replies_rejected"] += 1
            if counters["replies_rejected"] % 1000 == 1:  # once per thousand: a flood must not flood the log too
                log.warning("agent %s dropped a reply to %s that does not answer it (correlationId or source wrong)",
                            self.agent_id, self.request_id)
            return REJECT
        verifier = self.connection.verifier
        if verifier is not None:  # the reply's identity, checked as a served message's is
            source_id = reply[SOURCE][ID]
            reason = verifier.check(msg.subject, msg.reply, msg.headers, msg.data, source_id)
            if reason is not None:  # dropped: the genuine answer may still come; said at the timeout if not
                self.counters["replies_rejected"] += 1
                if self.refused is None:
                    self.refused = []
                self.refused.append(verifier.refuse(reason, source_id, msg.subject))
                return REJECT
        return reply
