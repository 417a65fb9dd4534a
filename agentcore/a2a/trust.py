"""Who an A2A request over NATS comes from: its signed identity, the user that owns the tasks it makes (binding §9).

With a ``Verifier`` (signed identities configured), a request's ``Agent-Sender``/``Agent-Timestamp``/``Agent-Signature``
are checked as for every agentcore message (trusted key, bound agent id, fresh, not replayed); the verified identity
(the agent id bound to the key, else the key) is the request's user, so a2a-sdk's task stores scope every task to
it, and another identity's GetTask, ListTasks, CancelTask and SubscribeToTask find nothing (TaskNotFoundError, spec
§13.1). ``Agent-On-Behalf-Of`` names another user and is honoured only from a signer listed as a delegate (a gateway
such as the HTTP bridge, or a replica forwarding CancelTask). Without a verifier every requester is the same
anonymous user: NATS permissions are then the only boundary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from a2a.auth.user import UnauthenticatedUser, User
from nats.aio.msg import Msg

from ..transport.identity import H_SENDER, H_SIGNATURE, H_TIMESTAMP, Signer, Verifier
from .binding import H_ON_BEHALF_OF, A2APermissionError

__all__ = ("ANONYMOUS", "NatsUser", "Trust")

#: The user of every request that is not signed (or when signed identities are off): tasks owned by "".
ANONYMOUS = UnauthenticatedUser()
_IDENTITY = frozenset(name.lower() for name in (H_SENDER, H_SIGNATURE, H_TIMESTAMP, H_ON_BEHALF_OF))


class NatsUser(User):
    """A user proven by a signature: an agent id bound to a key, a bare public key, or whom a delegate acts for."""

    def __init__(self, name: str, signer: str) -> None:
        self._name = name
        self.signer = signer  # the identity that signed the request (the delegate, when it acts for name)

    @property
    def is_authenticated(self) -> bool:
        """Always: the request was signed by a trusted key."""
        return True

    @property
    def user_name(self) -> str:
        """The user the request's tasks belong to."""
        return self._name


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()  # service parameters (and so these headers) are case-insensitive
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


class Trust:
    """Verify requests' signatures, name their users, and sign what this replica sends on a user's behalf."""

    def __init__(self, signer: Signer | None = None, verifier: Verifier | None = None,
                 delegates: Iterable[str] = ()) -> None:
        self.signer = signer
        self.verifier = verifier
        self.delegates = frozenset(delegates)  # identities whose Agent-On-Behalf-Of is honoured
        self.refused: Counter[str] = Counter()  # refusals by reason, for metrics

    def _refuse(self, reason: str, text: str) -> A2APermissionError:
        self.refused[reason] += 1
        return A2APermissionError(message=text, data={"reason": reason})

    def user(self, msg: Msg, headers: Mapping[str, str]) -> User:
        """Return the user msg runs for; A2APermissionError when its identity fails or it may not act for whom it names."""
        on_behalf = _header(headers, H_ON_BEHALF_OF)
        verifier = self.verifier
        sender = headers.get(H_SENDER)
        if verifier is None or sender is None:
            if verifier is not None and verifier.require:
                verifier.refuse("unsigned", None, msg.subject)
                raise self._refuse("unsigned", f"{msg.subject}: this agent requires signed requests (identity.require)")
            if on_behalf is not None:  # nobody unsigned may speak for someone else
                raise self._refuse("not_a_delegate", f"{H_ON_BEHALF_OF} is honoured only from a trusted delegate's signature")
            return ANONYMOUS
        source_id = verifier.owner(sender)
        reason = verifier.check(msg.subject, msg.reply, headers, msg.data, source_id)
        if reason is not None:
            error = verifier.refuse(reason, source_id, msg.subject)
            raise self._refuse(reason, str(error))
        identity = source_id or sender
        if on_behalf is None:
            return NatsUser(identity, identity)
        if identity not in self.delegates:
            raise self._refuse("not_a_delegate", f"{identity} may not act on behalf of another user (not a delegate)")
        if not on_behalf.strip():
            raise self._refuse("not_a_delegate", f"{H_ON_BEHALF_OF} names no user")
        return NatsUser(on_behalf, identity)

    def on_behalf(self, subject: str, reply: str, data: bytes, headers: Mapping[str, str], user: User) -> dict[str, str]:
        """Headers to send a request again for user (a forward): the caller's identity headers replaced by this
        replica's signature naming user in Agent-On-Behalf-Of; unchanged when this replica does not sign."""
        if self.signer is None:
            return dict(headers)
        kept = {name: value for name, value in headers.items() if name.lower() not in _IDENTITY}
        if user.is_authenticated:
            kept[H_ON_BEHALF_OF] = user.user_name
        return self.signer.headers(subject, reply, data, kept)

    def sign(self, subject: str, data: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers of an answer sent to subject: relayed identity headers dropped, this replica's signature added."""
        kept = {name: value for name, value in headers.items() if name.lower() not in _IDENTITY}
        return kept if self.signer is None else self.signer.headers(subject, "", data, kept)
