"""A2A negotiation over NATS: FIPA Contract Net (and its iterated variant) behind the guide's two calls.

Wire protocol (every message is an agentcore envelope on ``agents.{env}.a2a.negotiate.{agent_id}``)::

    initiator                                              participant
      cfp {negotiation: id, type, proposal, constraints, round}  ─>   handler(negotiation)
      <─  propose {accept: true, terms} | refuse {accept: false, reason[, counter_proposal]}
      (next round for counter-proposals and offers that broke the constraints, up to max_rounds)
      accept-proposal {terms}  ─>  (request)       <─  inform-done | failure
      reject-proposal / cancel ─>  (fire and forget; the participant records it)

Answers to a cfp go to a per-negotiation inbox ``{inbox}.{round}.{agent_id}``, so each answer is matched
to one target and one round: duplicates, answers to an old round and answers after the end are ignored
(and counted), and nats-server's no-responders status tells within a millisecond that a target is offline.
The state machine is in ``negotiation_state``; docs/negotiation.md describes the protocol for users.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg

from .core.records import NO_REPLY, TASK
from .envelope import decode, encode, new_id, new_message
from .errors import (
    AgentCoreError,
    EnvelopeError,
    NegotiationError,
    NoRespondersError,
    RemoteError,
    RequestTimeoutError,
)
from .negotiation_state import (
    ACCEPT_PROPOSAL,
    CANCEL,
    CFP,
    COLLECTING,
    CONFIRMING,
    FAILED,
    FAILURE,
    FINALIZED,
    INFORM_DONE,
    PARTIAL,
    PROPOSE,
    REFUSE,
    REJECT_PROPOSAL,
    REJECTED,
    TIMED_OUT,
    adopt_counter,
    check_constraints,
    select_offers,
)
from .negotiation_state import Negotiation as NegotiationRun

if TYPE_CHECKING:
    from .core.host import Host
    from .transport.identity import Verifier

__all__ = ("Negotiation",)

log = logging.getLogger("agentcore.negotiation")

NegotiationHandler = Callable[[dict[str, Any]], Any]
OutcomeCallback = Callable[[dict[str, Any]], Any]
SelectCallback = Callable[[list[dict[str, Any]]], Iterable[str]]
CounterCallback = Callable[[str, dict[str, Any], dict[str, Any]], "dict[str, Any] | None"]
CheckCallback = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]
Records = OrderedDict[str, dict[str, Any]]  # negotiation id -> record, oldest first

_RECORDS_KEPT = 4096  # participant records and finished negotiations remembered per agent (oldest dropped first)
_CLOSED = frozenset({"confirmed", "rejected", "cancelled", "failed"})
CONSIDERING = "considering"  # participant: the call for proposals reached the handler, which has not answered yet


@dataclass(eq=False, slots=True)
class _A2AHandler:
    fn: NegotiationHandler
    on_outcome: OutcomeCallback | None


@dataclass(eq=False, slots=True)
class _Round:
    number: int
    pending: set[str]
    answers: dict[str, dict[str, Any]]  # agent id -> {"kind": "answer"|"no_responder", ...}, in arrival order
    done: asyncio.Event
    asked: dict[str, str] = field(default_factory=dict)  # agent id -> the id of the cfp it was sent (its answer correlates)


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a participant record for the application (without the token it shares with the initiator)."""
    return {k: v for k, v in record.items() if k != "token"}


def _remember(records: Records, key: str, record: dict[str, Any]) -> None:
    records[key] = record
    records.move_to_end(key)
    while len(records) > _RECORDS_KEPT:
        records.popitem(last=False)



def _signed_by(verifier: Verifier, msg: Msg, source_id: str) -> bool:
    """Return whether msg carries a valid signature of source_id's key (a refusal is counted by the verifier)."""
    reason = verifier.check(msg.subject, msg.reply, msg.headers, msg.data, source_id)
    if reason is None:
        return True
    verifier.refuse(reason, source_id, msg.subject)
    return False

class Negotiation:
    """The agent's negotiation component: register_a2a_handler and negotiate_with_agents (Contract Net over NATS).

    The negotiation subscription is a *system* subscription: it is never queued behind tasks and stays up
    while the agent is paused, so agreements in flight can still be confirmed or rejected; a paused agent
    refuses new calls for proposals with the reason "paused".
    """

    def __init__(self, host: Host) -> None:
        self._host = host
        self._handlers: dict[str, _A2AHandler] = {}  # negotiation type -> what answers its calls for proposals
        self._participations: Records = OrderedDict()  # negotiations this agent answered, as participant
        self._initiated: Records = OrderedDict()  # results of the negotiations this agent started
        self._subscribed = False  # the negotiation subject is registered with the core
        self._rounds: set[_Round] = set()  # rounds collecting answers now (ended early when the agent stops)

    # ================================================================== lifecycle (Component)

    async def start(self) -> None:
        """Register this agent's negotiation subject (the core makes the subscription right after)."""
        self._subscribe()

    def reconnected(self) -> None:
        """Nothing to do: nats-py restores the answer inboxes of negotiations in flight itself."""

    def drain(self) -> None:
        """Nothing is held for the handlers being drained: negotiations in flight finish or time out."""

    async def stop(self) -> None:
        """Nothing to end: a round still collecting when the agent stops times out as its window ends."""

    def describe(self) -> Mapping[str, Any]:
        """Return the negotiation types this agent answers, once it has started or registered one."""
        if not self._handlers and self._host.status == "created":
            return {}
        return {"negotiation_types": sorted(self._handlers)}

    def gauges(self) -> Mapping[str, float]:
        """Report nothing: a negotiation's events are counted as they happen."""
        return {}

    # ================================================================== participant side

    def register_a2a_handler(
        self, negotiation_type: str, handler: NegotiationHandler, *, on_outcome: OutcomeCallback | None = None
    ) -> None:
        """Answer calls for proposals of negotiation_type with handler(negotiation) -> {"accept": ..., ...}.

        handler (sync: run as agent.sync_handlers says; async: run on the loop) receives a dict with id,
        type, initiator, proposal, constraints, round, max_rounds and feedback, and returns
        ``{"accept": True, "terms": {...}}`` or ``{"accept": False, "reason": "..."}``, optionally with
        ``"counter_proposal": {...}`` to ask for another round. If it raises, the initiator gets a refusal
        carrying the error. on_outcome(record), if given, learns the end of each negotiation this agent
        took part in (state "confirmed", "rejected" or "cancelled"); raising on "confirmed" withdraws the
        offer (the initiator sees a failure).
        """
        if not isinstance(negotiation_type, str) or not negotiation_type:
            raise NegotiationError("negotiation_type must be a non-empty string")
        if not callable(handler):
            raise NegotiationError("handler must be callable")
        self._handlers[negotiation_type] = _A2AHandler(handler, on_outcome)
        if self._subscribe() and self._host.connection.usable:
            self._host.schedule_sync()

    def _subscribe(self) -> bool:
        """Serve this agent's negotiation subject (once); return True when it was newly registered.

        Every agent serves it, handlers or not, so a call for proposals of a type it does not know is
        refused with a reason instead of looking like an offline agent.
        """
        if self._subscribed:
            return False
        host = self._host
        self._subscribed = True
        host.register(host.topics.a2a_negotiate(host.agent_id), self._on_negotiate, kind=TASK, system=True)
        return True

    async def aregister_a2a_handler(
        self, negotiation_type: str, handler: NegotiationHandler, *, on_outcome: OutcomeCallback | None = None
    ) -> None:
        """Register like register_a2a_handler() and return once the server routes calls for proposals here."""
        self.register_a2a_handler(negotiation_type, handler, on_outcome=on_outcome)
        await self._host.sync()  # returns once the server has the subscription

    def unregister_a2a_handler(self, negotiation_type: str) -> None:
        """Stop answering negotiation_type (its calls for proposals are then refused as unknown)."""
        self._handlers.pop(negotiation_type, None)

    def negotiation_status(self, negotiation_id: str) -> dict[str, Any] | None:
        """Return this agent's record of a negotiation: the result it initiated, or its participant record."""
        initiated = self._initiated.get(negotiation_id)
        if initiated is not None:
            return dict(initiated)
        record = self._participations.get(negotiation_id)
        return _shown(record) if record is not None else None

    async def _call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        result = await self._host.call_handler(fn, arg)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _event(self, detail: str, content: dict[str, Any]) -> None:
        try:
            await self._host.publish(self._host.topics.event("negotiation", detail), content)
        except (AgentCoreError, nats.errors.Error) as exc:
            log.debug("agent %s could not publish negotiation event %s: %s", self._host.agent_id, detail, exc)

    async def _on_negotiate(self, message: dict[str, Any]) -> Any:
        content = message["payload"]["content"]
        performative = content.get("performative") if isinstance(content, dict) else None
        initiator = str(message["source"]["id"])
        if performative == CFP and isinstance(content.get("negotiation"), dict):
            return await self._answer_cfp(initiator, content["negotiation"])
        if performative == ACCEPT_PROPOSAL and isinstance(content.get("negotiation_id"), str):
            return await self._confirm(initiator, content)
        if performative in (REJECT_PROPOSAL, CANCEL) and isinstance(content.get("negotiation_id"), str):
            await self._close(initiator, content, performative)
            return NO_REPLY
        raise RemoteError("invalid_message", f"not a negotiation message (performative {performative!r})")

    async def _answer_cfp(self, initiator: str, negotiation: dict[str, Any]) -> dict[str, Any]:
        counters = self._host.metrics.counters
        counters["negotiation_cfps_received"] += 1
        nid = str(negotiation.get("id"))
        ntype = str(negotiation.get("type"))
        rnd = negotiation.get("round", 1)
        view = {
            "id": nid,
            "type": ntype,
            "initiator": initiator,
            "proposal": negotiation.get("proposal") or {},
            "constraints": negotiation.get("constraints") or {},
            "round": rnd,
            "max_rounds": negotiation.get("max_rounds", 1),
            "feedback": negotiation.get("feedback"),
        }
        record = self._participations.get(nid)
        if record is not None and record["initiator"] != initiator:
            # A negotiation id belongs to the initiator that first sent it: another sender cannot reopen or steer it.
            counters["negotiation_messages_rejected"] += 1
            return {"performative": REFUSE, "negotiation_id": nid, "round": rnd, "accept": False,
                    "reason": f"negotiation {nid} was started by another initiator"}
        if record is None:
            # Kept while the handler runs, so the initiator's cancel can close it meanwhile. The token goes only to the
            # initiator's answer inbox: its accept-proposal and reject-proposal must bring it back.
            record = {"negotiation_id": nid, "role": "participant", "type": ntype, "initiator": initiator, "state": CONSIDERING,
                      "round": rnd, "proposal": view["proposal"], "terms": None, "reason": None, "token": secrets.token_hex(16),
                      "updated": time.time()}
            _remember(self._participations, nid, record)
        handlers = self._handlers
        entry = handlers.get(ntype)
        if record["state"] in _CLOSED:
            answer: dict[str, Any] = {"accept": False, "reason": f"negotiation {nid} is already {record['state']} here"}
        else:
            record.update(state=CONSIDERING, round=rnd, proposal=view["proposal"], updated=time.time())
            if self._host.status == "paused":
                answer = {"accept": False, "reason": f"agent {self._host.agent_id} is paused"}
            elif entry is None:
                answer = {"accept": False, "reason": f"unknown negotiation type {ntype!r}; this agent handles {sorted(handlers)}"}
            else:
                try:
                    answer = self._normalize(await self._call(entry.fn, view))
                except Exception as exc:
                    log.warning("agent %s: negotiation handler for %r raised on %s", self._host.agent_id, ntype, nid, exc_info=True)
                    answer = {"accept": False, "reason": f"handler error: {type(exc).__name__}: {exc}", "error": type(exc).__name__}
        if answer["accept"]:
            state, performative = "proposed", PROPOSE
            counters["negotiation_proposals_sent"] += 1
        else:
            state, performative = ("countered" if "counter_proposal" in answer else "refused"), REFUSE
            counters["negotiation_counters_sent" if state == "countered" else "negotiation_refusals_sent"] += 1
        if record["state"] not in _CLOSED:  # else the initiator closed it while the handler ran: keep what both sides agreed
            record.update(state=state, terms=answer.get("terms"), reason=answer.get("reason"), updated=time.time())
        await self._event(state, {"negotiation_id": nid, "role": "participant", "agent_id": self._host.agent_id,
                                  "initiator": initiator, "type": ntype, "round": rnd, "state": state})
        return {"performative": performative, "negotiation_id": nid, "round": rnd, **answer, "token": record["token"]}

    @staticmethod
    def _normalize(raw: Any) -> dict[str, Any]:
        if raw is True or raw is False:
            raw = {"accept": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("accept"), bool):
            return {"accept": False, "reason": f"handler returned {type(raw).__name__}, not {{'accept': bool, ...}}"}
        answer = dict(raw)
        if answer["accept"]:
            terms = answer.get("terms")
            answer["terms"] = dict(terms) if isinstance(terms, Mapping) else {}
            answer.pop("counter_proposal", None)  # an acceptance is an offer; counters go with accept=False
        else:
            answer["reason"] = str(answer.get("reason") or ("counter-proposal" if answer.get("counter_proposal") else "declined"))
            counter = answer.get("counter_proposal")
            if counter is not None and not isinstance(counter, Mapping):
                answer.pop("counter_proposal")
            elif counter is not None:
                answer["counter_proposal"] = dict(counter)
        return answer

    def _from_initiator(self, initiator: str, content: dict[str, Any], performative: str) -> dict[str, Any] | None:
        """Return the record of the negotiation content names if the initiator of that negotiation sent it, else None.

        The sender must be the negotiation's initiator (source.id: self-declared unless identities are signed (identity.seed and identity.trusted, docs/security.md)) and,
        once this agent has answered, bring back the token that went only to the initiator's answer inbox; a
        cancel may come without it while the handler still considers the call. Refusals are counted.
        """
        record = self._participations.get(content["negotiation_id"])
        token_needed = record is not None and (performative != CANCEL or record["state"] != CONSIDERING)
        if record is None or record["initiator"] != initiator or (token_needed and content.get("token") != record["token"]):
            self._host.metrics.counters["negotiation_messages_rejected"] += 1
            log.warning("agent %s ignored a %s for negotiation %s: not from its initiator", self._host.agent_id,
                        performative, content["negotiation_id"])
            return None
        return record

    async def _confirm(self, initiator: str, content: dict[str, Any]) -> dict[str, Any]:
        nid = content["negotiation_id"]
        record = self._from_initiator(initiator, content, ACCEPT_PROPOSAL)
        done = {"performative": INFORM_DONE, "negotiation_id": nid, "agent_id": self._host.agent_id}
        if record is None:
            reason = f"agent {self._host.agent_id} made no offer in negotiation {nid}"
            return {"performative": FAILURE, "negotiation_id": nid, "reason": reason}
        if record["state"] == "confirmed":
            return {**done, "terms": record["terms"]}  # a repeated accept-proposal: same answer
        if record["state"] != "proposed":
            return {"performative": FAILURE, "negotiation_id": nid, "reason": f"negotiation {nid} is {record['state']} here"}
        if content.get("terms", record["terms"]) != record["terms"] or content.get("round", record["round"]) != record["round"]:
            # Only the offer made is confirmed: accepting other terms (a forged proposal's, say) is no agreement.
            self._host.metrics.counters["negotiation_messages_rejected"] += 1
            return {"performative": FAILURE, "negotiation_id": nid,
                    "reason": f"the terms accepted are not the terms agent {self._host.agent_id} offered in round {record['round']}"}
        record.update(state="confirmed", updated=time.time())
        try:
            await self._outcome(record)
        except Exception as exc:
            record.update(state="failed", reason=f"{type(exc).__name__}: {exc}")
            await self._event("failed", {"negotiation_id": nid, "role": "participant", "agent_id": self._host.agent_id})
            return {"performative": FAILURE, "negotiation_id": nid, "reason": f"withdrawn: {type(exc).__name__}: {exc}"}
        self._host.metrics.counters["negotiations_confirmed"] += 1
        await self._event("confirmed", {"negotiation_id": nid, "role": "participant", "agent_id": self._host.agent_id,
                                        "initiator": initiator, "terms": record["terms"]})
        return {**done, "terms": record["terms"]}

    async def _close(self, initiator: str, content: dict[str, Any], performative: str) -> None:
        nid = content["negotiation_id"]
        record = self._from_initiator(initiator, content, performative)
        if record is None or record["state"] in _CLOSED:
            return
        state = "rejected" if performative == REJECT_PROPOSAL else "cancelled"
        record.update(state=state, reason=content.get("reason"), updated=time.time())
        self._host.metrics.counters["negotiations_lost"] += 1
        try:
            await self._outcome(record)
        except Exception:
            log.warning("agent %s: on_outcome raised for %s", self._host.agent_id, nid, exc_info=True)
        await self._event(state, {"negotiation_id": nid, "role": "participant", "agent_id": self._host.agent_id,
                                  "initiator": initiator, "reason": record["reason"]})

    async def _outcome(self, record: dict[str, Any]) -> None:
        ntype = record.get("type")
        entry = self._handlers.get(ntype) if isinstance(ntype, str) else None  # None: closed before its cfp came
        if entry is not None and entry.on_outcome is not None:
            await self._call(entry.on_outcome, _shown(record))

    # ================================================================== initiator side

    async def negotiate_with_agents(
        self,
        target_agents: Iterable[str] | None,
        negotiation_type: str,
        proposal: dict[str, Any],
        constraints: dict[str, Any] | None = None,
        timeout: float = 10.0,
        *,
        capability: str | None = None,
        max_rounds: int = 3,
        max_winners: int | None = None,
        select: SelectCallback | None = None,
        counter: CounterCallback | None = None,
        check: CheckCallback | None = None,
        confirm_timeout: float | None = None,
        discovery_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Negotiate proposal with target agents (or those offering capability) and return the outcome.

        timeout bounds the collection of proposals over all rounds; confirming the winners adds at most
        confirm_timeout (default min(timeout, 5 s)). Offers are checked against constraints by check
        (default ``check_constraints``); select(offers) -> agent ids overrides the default choice (every
        offer within the constraints, cheapest first, at most max_winners). Counter-proposals and offers
        that broke the constraints go to another round (up to max_rounds); counter(agent_id,
        counter_proposal, negotiation) -> revised proposal or None overrides adopting a counter that
        fits the constraints. The result has state, responses, outcomes, accepted, agreements, reasons,
        silent, no_responders, negotiation_id and history; see docs/negotiation.md.
        """
        host = self._host
        nc = host.connection.require()
        if not isinstance(negotiation_type, str) or not negotiation_type:
            raise NegotiationError("negotiation_type must be a non-empty string")
        if not isinstance(proposal, Mapping):
            raise NegotiationError("proposal must be a dict")
        if timeout <= 0 or max_rounds < 1 or (max_winners is not None and max_winners < 1):
            raise NegotiationError("timeout must be > 0, max_rounds >= 1 and max_winners >= 1")
        if isinstance(target_agents, str):
            target_agents = [target_agents]
        targets = list(dict.fromkeys(target_agents or ()))
        for aid in targets:
            host.topics.a2a_negotiate(aid)  # validates the id as a subject token (SubjectError)
        if capability is not None:
            found = await host.discover(capability, timeout=discovery_timeout)
            targets.extend(info["id"] for info in found if info["id"] not in targets)
        neg = NegotiationRun(new_id(), negotiation_type, host.agent_id, dict(proposal), dict(constraints or {}), targets, max_rounds)
        counters = host.metrics.counters
        counters["negotiations_started"] += 1
        if not targets:
            if capability is None:
                raise NegotiationError("no target agents given")
            neg.transition(REJECTED, reason=f"no agent offers capability {capability!r}")
            return await self._finish(neg)
        await self._event("started", {"negotiation_id": neg.id, "role": "initiator", "agent_id": host.agent_id,
                                      "type": negotiation_type, "targets": targets})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        confirm_timeout = confirm_timeout if confirm_timeout is not None else min(timeout, 5.0)
        check_fn = check or check_constraints
        current: dict[str, dict[str, Any]] = {aid: neg.proposal for aid in targets}
        feedback: dict[str, dict[str, Any]] = {}
        holder: list[_Round | None] = [None]
        inbox = nc.new_inbox()
        prefix_len = len(inbox) + 1

        async def on_answer(msg: Msg) -> None:
            self._collect(neg, holder[0], msg.subject[prefix_len:], msg)

        sub = await nc.subscribe(inbox + ".>", cb=on_answer)
        try:
            winners: list[str] = []
            offers: list[dict[str, Any]] = []
            counters_seen: dict[str, dict[str, Any]] = {}
            while True:
                neg.round += 1
                counters["negotiation_rounds"] += 1
                rnd = _Round(neg.round, set(current), {}, asyncio.Event())
                holder[0] = rnd
                self._rounds.add(rnd)
                neg.transition(COLLECTING, targets=sorted(current))
                if neg.round > 1:
                    await self._event("round", {"negotiation_id": neg.id, "role": "initiator", "round": neg.round,
                                                "targets": sorted(current)})
                window = max(deadline - loop.time(), 0.0)
                for aid, prop in current.items():
                    rnd.asked[aid] = await self._send_cfp(neg, aid, prop, feedback.get(aid), window, f"{inbox}.{neg.round}.{aid}")
                if rnd.pending:
                    try:
                        await asyncio.wait_for(rnd.done.wait(), max(deadline - loop.time(), 0.0))
                    except asyncio.TimeoutError:
                        pass  # the window is over: whoever did not answer is silent, not guessed
                holder[0] = None
                self._rounds.discard(rnd)
                offers, counters_seen = self._evaluate(neg, rnd, current, check_fn)
                winners = self._select(neg, offers, select, max_winners)
                if winners:
                    break
                current, feedback = self._next_round(neg, offers, counters_seen, current, counter, check_fn)
                if not current or neg.round >= max_rounds or loop.time() >= deadline:
                    break
            # Everyone who offered or countered and was not chosen is told so (FIPA reject-proposal).
            losers = [a for a in targets if neg.outcomes.get(a) == "rejected" and a not in winners]
            for aid in losers:
                reason = neg.reasons.get(aid) or ("another offer was selected" if winners else "no agreement reached")
                neg.set_outcome(aid, "rejected", reason)
                await self._notify(neg, aid, REJECT_PROPOSAL, reason)
            for aid in [a for a in targets if neg.outcomes.get(a) == "timeout"]:
                await self._notify(neg, aid, CANCEL, "no answer in time")
            if winners:
                neg.transition(CONFIRMING, winners=winners)
                terms = {o["agent_id"]: o["terms"] for o in offers}
                confirmed = await asyncio.gather(*(self._confirm_winner(neg, aid, terms.get(aid, {}), confirm_timeout)
                                                   for aid in winners))
                if not any(confirmed):
                    neg.transition(FAILED)
                elif any(o == "timeout" for o in neg.outcomes.values()):
                    neg.transition(PARTIAL)
                else:
                    neg.transition(FINALIZED)
            else:
                silent = any(o == "timeout" for o in neg.outcomes.values())
                neg.transition(TIMED_OUT if silent else REJECTED)
        finally:
            if holder[0] is not None:
                self._rounds.discard(holder[0])
            holder[0] = None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass
        return await self._finish(neg)

    async def _finish(self, neg: NegotiationRun) -> dict[str, Any]:
        result = neg.result()
        counters = self._host.metrics.counters
        counters[f"negotiations_{neg.state}"] += 1
        counters["negotiation_responses_ignored"] += neg.ignored
        _remember(self._initiated, neg.id, {**result, "role": "initiator"})
        event = {"negotiation_id": neg.id, "role": "initiator", "agent_id": self._host.agent_id, "type": neg.type,
                 "state": neg.state, "rounds": neg.round, "accepted": result["accepted"], "outcomes": result["outcomes"]}
        await self._event(neg.state, event)
        return result

    async def _send_cfp(self, neg: NegotiationRun, aid: str, proposal: dict[str, Any], feedback: dict[str, Any] | None,
                        window: float, reply: str) -> str:
        """Send aid the call for proposals of this round, answered on reply; return its message id."""
        body = {"performative": CFP, "negotiation": {
            "id": neg.id, "type": neg.type, "proposal": proposal, "constraints": neg.constraints,
            "round": neg.round, "max_rounds": neg.max_rounds, "feedback": feedback,
        }}
        host = self._host
        message = new_message("query", body, source_id=host.agent_id, source_type=host.agent_type, target=aid,
                              conversation_id=neg.id, timeout_ms=window * 1000.0)
        data = encode(message)
        host.connection.check_size(data)
        await host.connection.publish(host.topics.a2a_negotiate(aid), data, reply)
        return str(message["id"])

    def _collect(self, neg: NegotiationRun, rnd: _Round | None, tail: str, msg: Msg) -> None:
        round_token, _, aid = tail.partition(".")
        if rnd is None or round_token != str(rnd.number) or aid not in rnd.pending:
            neg.ignored += 1  # a duplicate, an answer to an earlier round, or one after the window closed
            return
        if msg.headers and msg.headers.get("Status") == "503":
            answer: dict[str, Any] = {"kind": "no_responder"}
        else:
            try:
                reply = decode(msg.data)
            except EnvelopeError as exc:
                answer = {"kind": "answer", "content": {"accept": False, "reason": f"invalid answer: {exc}"}}
            else:
                verifier = self._host.connection.verifier
                if reply["source"]["id"] != aid or reply.get("correlationId") != rnd.asked.get(aid) or (
                        verifier is not None and not _signed_by(verifier, msg, aid)):
                    # Only the target itself answers for it (signed by its key, when identities are verified), and
                    # only to the call it was sent.
                    neg.ignored += 1
                    self._host.metrics.counters["replies_rejected"] += 1
                    return
                error = reply["payload"].get("error")
                content = reply["payload"].get("content")
                if error is not None:
                    answer = {"kind": "answer", "content": {"accept": False, "reason": f"{error.get('code')}: {error.get('message')}"}}
                elif not isinstance(content, dict) or content.get("negotiation_id") != neg.id or content.get("round") != rnd.number:
                    neg.ignored += 1
                    return
                else:
                    answer = {"kind": "answer", "content": content}
        rnd.answers[aid] = answer
        rnd.pending.discard(aid)
        if not rnd.pending:
            rnd.done.set()

    def _evaluate(self, neg: NegotiationRun, rnd: _Round, current: dict[str, dict[str, Any]], check_fn: CheckCallback
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        counters = self._host.metrics.counters
        offers: list[dict[str, Any]] = []
        countered: dict[str, dict[str, Any]] = {}
        for order, (aid, answer) in enumerate(rnd.answers.items()):
            if answer["kind"] == "no_responder":
                counters["negotiation_no_responders"] += 1
                neg.set_outcome(aid, "no_responder", f"nobody is subscribed to {self._host.topics.a2a_negotiate(aid)}")
                continue
            content = answer["content"]
            response = {k: v for k, v in content.items() if k not in ("performative", "negotiation_id", "token")}
            if isinstance(content.get("token"), str):
                neg.tokens[aid] = content["token"]  # brought back in accept-proposal, reject-proposal and cancel
            response.setdefault("round", rnd.number)
            neg.responses[aid] = response
            if content.get("accept") is True:
                counters["negotiation_offers_received"] += 1
                terms = content.get("terms") if isinstance(content.get("terms"), dict) else {}
                violations = list(check_fn(terms, neg.constraints))
                offers.append({"agent_id": aid, "terms": terms, "round": rnd.number, "order": order,
                               "violations": violations, "acceptable": not violations, "proposal": current[aid]})
                neg.set_outcome(aid, "rejected", ("terms violate the constraints: " + "; ".join(violations)) if violations else None)
            elif isinstance(content.get("counter_proposal"), dict):
                counters["negotiation_counters_received"] += 1
                countered[aid] = content["counter_proposal"]
                neg.set_outcome(aid, "rejected")
            else:
                counters["negotiation_refusals_received"] += 1
                neg.set_outcome(aid, "refused", str(content.get("reason") or "refused"))
        for aid in rnd.pending:
            counters["negotiation_silent_agents"] += 1
            neg.set_outcome(aid, "timeout", f"no answer in round {rnd.number} before the deadline")
        neg.transcript.append({
            "round": rnd.number,
            "asked": sorted(current),
            "responses": {aid: neg.responses[aid] for aid in rnd.answers if aid in neg.responses and rnd.answers[aid]["kind"] == "answer"},
            "silent": sorted(rnd.pending),
            "no_responders": sorted(a for a, ans in rnd.answers.items() if ans["kind"] == "no_responder"),
        })
        return offers, countered

    def _select(self, neg: NegotiationRun, offers: list[dict[str, Any]], select: SelectCallback | None,
                max_winners: int | None) -> list[str]:
        if not offers:
            return []
        if select is None:
            return select_offers(offers, max_winners)
        offered = {o["agent_id"] for o in offers}
        chosen = list(dict.fromkeys(str(a) for a in (select([dict(o) for o in offers]) or ())))
        stray = [a for a in chosen if a not in offered]
        if stray:
            log.warning("negotiation %s: select() chose agents that made no offer: %s (ignored)", neg.id, stray)
        return [a for a in chosen if a in offered]

    def _next_round(self, neg: NegotiationRun, offers: list[dict[str, Any]], countered: dict[str, dict[str, Any]],
                    current: dict[str, dict[str, Any]], counter: CounterCallback | None, check_fn: CheckCallback,
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        nxt: dict[str, dict[str, Any]] = {}
        feedback: dict[str, dict[str, Any]] = {}
        for offer in offers:  # no offer was chosen: those that broke the constraints may bid again
            if offer["violations"]:
                nxt[offer["agent_id"]] = current[offer["agent_id"]]
                feedback[offer["agent_id"]] = {"previous_terms": offer["terms"], "violations": offer["violations"]}
        for aid, cp in countered.items():
            if counter is not None:
                revised = counter(aid, dict(cp), {"id": neg.id, "type": neg.type, "proposal": current[aid],
                                                  "constraints": neg.constraints, "round": neg.round})
            elif check_fn(cp, neg.constraints):
                revised = None
            else:
                revised = adopt_counter(current[aid], cp, {})
            if revised is None:
                neg.set_outcome(aid, "rejected", "counter-proposal not acceptable")
            else:
                nxt[aid] = dict(revised)
                feedback[aid] = {"counter_proposal": cp, "counter_adopted": True}
        return nxt, feedback

    async def _notify(self, neg: NegotiationRun, aid: str, performative: str, reason: str) -> None:
        host = self._host
        body = {"performative": performative, "negotiation_id": neg.id, "reason": reason}
        if aid in neg.tokens:
            body["token"] = neg.tokens[aid]
        message = new_message("event", body,
                              source_id=host.agent_id, source_type=host.agent_type, target=aid, conversation_id=neg.id)
        try:
            await host.connection.publish(host.topics.a2a_negotiate(aid), encode(message))
        except (AgentCoreError, nats.errors.Error) as exc:
            log.debug("negotiation %s: could not send %s to %s: %s", neg.id, performative, aid, exc)

    async def _confirm_winner(self, neg: NegotiationRun, aid: str, terms: dict[str, Any], timeout: float) -> bool:
        body = {"performative": ACCEPT_PROPOSAL, "negotiation_id": neg.id, "round": neg.round, "terms": terms}
        if aid in neg.tokens:
            body["token"] = neg.tokens[aid]
        try:
            reply = await self._host.request_message(self._host.topics.a2a_negotiate(aid), body, type="query",
                                                     timeout=timeout, target=aid, conversation_id=neg.id)
            content = reply["payload"]["content"]
        except NoRespondersError:
            content = {"performative": FAILURE, "reason": "went offline before confirming"}
        except RequestTimeoutError:
            content = {"performative": FAILURE, "reason": f"no confirmation within {timeout}s"}
        except RemoteError as exc:
            content = {"performative": FAILURE, "reason": str(exc)}
        if isinstance(content, dict) and content.get("performative") == INFORM_DONE and content.get("terms", terms) != terms:
            content = {"performative": FAILURE, "reason": f"confirmed other terms than those accepted: {content.get('terms')!r}"}
        if isinstance(content, dict) and content.get("performative") == INFORM_DONE:
            neg.set_outcome(aid, "accepted")
            neg.agreements[aid] = terms
            return True
        reason = content.get("reason") if isinstance(content, dict) else None
        neg.set_outcome(aid, "failed", f"confirmation failed: {reason or content!r}")
        return False
