"""Negotiation on an open bus: a third party can neither steer, fake nor end another's negotiation.

The attacker is a plain nats-py client subscribed to the negotiation subjects, so it sees every call for proposals
(its negotiation id, its answer inbox) and every accept-proposal. It sends accept-proposal, reject-proposal and
cancel to the participant (as itself, and as the initiator without the token the participant gave only to the
initiator's inbox), proposals to the initiator's inbox, and inform-done answers to the confirmation. Each test
asserts the attack fails and that the honest negotiation still ends with both sides agreeing on the honest terms.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson

from agentcore import NATSAgent
from agentcore.envelope import decode, encode, new_message
from nats_fixtures import eventually, subscribed, within

NEGOTIATE = "agents.test.a2a.negotiate."


async def participant(make_agent: Any, agent_id: str, price: int, *, gate: asyncio.Event | None = None,
                      on_outcome: Any = None) -> NATSAgent:
    """A participant bidding price; with gate, its bid waits until gate is set (a forgery at the server first, say)."""
    async def bid(negotiation: dict[str, Any]) -> dict[str, Any]:
        if gate is not None:
            await within(gate.wait(), f"{agent_id}'s gate")
        return {"accept": True, "terms": {"price": price}}

    agent = await make_agent(agent_id, start=False)
    agent.register_a2a_handler("sale", bid, on_outcome=on_outcome)
    await agent.astart()
    return agent


async def watch_cfps(raw_nc: nats.NATS, target: str) -> asyncio.Queue[Any]:
    """Queue every call for proposals sent to target (the attacker's view of the bus)."""
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        message = decode(msg.data)
        if message["payload"]["content"].get("performative") == "cfp":
            seen.put_nowait((message, msg))

    await raw_nc.subscribe(NEGOTIATE + target, cb=on_message)
    await subscribed(raw_nc)
    return seen


async def open_round(make_agent: Any, raw_nc: nats.NATS, other_gate: asyncio.Event) -> tuple[asyncio.Future[Any], str]:
    """Start buyer negotiating with seller (already running) and other, whose bid waits for other_gate: the round
    stays open for the attack. Return the negotiation (a future) and its id, as the attacker read it off the bus."""
    await participant(make_agent, "other", 200, gate=other_gate)
    buyer = await make_agent("buyer")
    cfps = await watch_cfps(raw_nc, "seller")
    negotiation = asyncio.ensure_future(buyer.negotiate_with_agents(["seller", "other"], "sale", {"item": "x"},
                                                                    timeout=10.0, max_winners=1))
    cfp, _ = await within(cfps.get(), "the call for proposals")
    return negotiation, cfp["payload"]["content"]["negotiation"]["id"]


def cheap_offer(cfp: dict[str, Any], *, source: str, correlation: str | None) -> bytes:
    """A proposal at the attacker's price answering cfp, claiming to come from source."""
    neg = cfp["payload"]["content"]["negotiation"]
    answer = {"performative": "propose", "negotiation_id": neg["id"], "round": neg["round"], "accept": True, "terms": {"price": 1}}
    return encode(new_message("result", answer, source_id=source, correlation_id=correlation))


def performative(kind: str, nid: str, *, source: str, **fields: Any) -> bytes:
    return encode(new_message("query", {"performative": kind, "negotiation_id": nid, **fields}, source_id=source))


async def test_a_third_partys_accept_proposal_does_not_set_the_terms(make_agent: Any, raw_nc: nats.NATS) -> None:
    """The issue's hijack: a forged accept-proposal while the participant's offer is open. As a stranger, as the
    initiator without the token, as the initiator with a wrong token: each is refused with a failure, the offer
    stays open, and the initiator's own accept-proposal then confirms the offered price on both sides."""
    other_gate = asyncio.Event()
    seller = await participant(make_agent, "seller", 100)
    negotiation, nid = await open_round(make_agent, raw_nc, other_gate)
    await eventually(lambda: (seller.negotiation_status(nid) or {}).get("state") == "proposed", what="the offer")
    for source, extra in (("mallory", {}), ("buyer", {}), ("buyer", {"token": "guessed"})):
        reply = await raw_nc.request(NEGOTIATE + "seller", performative("accept-proposal", nid, source=source, round=1,
                                                                        terms={"price": 1}, **extra), timeout=5)
        assert decode(reply.data)["payload"]["content"]["performative"] == "failure"
    assert seller.negotiation_status(nid)["state"] == "proposed"
    assert seller.get_metrics()["negotiation_messages_rejected"] == 3

    other_gate.set()
    result = await within(negotiation, "the negotiation")
    assert result["state"] == "finalized" and result["agreements"] == {"seller": {"price": 100}}
    assert seller.negotiation_status(nid)["state"] == "confirmed"
    assert seller.negotiation_status(nid)["terms"] == {"price": 100}


async def test_a_fake_proposal_on_the_initiators_inbox_does_not_win(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Proposals from someone not sent the call, or not answering the call sent, are dropped: the honest offer wins."""
    forged = asyncio.Event()  # the fakes are at the server: the seller's offer reaches the buyer after them
    await participant(make_agent, "seller", 100, gate=forged)
    buyer = await make_agent("buyer")
    cfps = await watch_cfps(raw_nc, "seller")

    async def fake() -> None:
        cfp, msg = await within(cfps.get(), "the call for proposals")
        for source, correlation in (("mallory", cfp["id"]), ("seller", "not-" + cfp["id"]), ("seller", None)):
            await raw_nc.publish(msg.reply, cheap_offer(cfp, source=source, correlation=correlation))
        await subscribed(raw_nc)  # the server has routed them
        forged.set()

    attack = asyncio.ensure_future(fake())
    result = await buyer.negotiate_with_agents(["seller"], "sale", {"item": "x"}, timeout=10.0)
    await attack
    assert result["state"] == "finalized" and result["agreements"] == {"seller": {"price": 100}}
    assert result["ignored_responses"] == 3
    assert buyer.get_metrics()["replies_rejected"] == 3


async def test_a_fully_spoofed_proposal_gets_no_agreement_on_the_attackers_terms(make_agent: Any, raw_nc: nats.NATS) -> None:
    """An attacker that reads the call and spoofs the participant's id and the correlation (source.id is
    self-declared until identities are signed) gets its proposal taken first; the participant then refuses to
    confirm terms it never offered, so neither side agrees on the attacker's price."""
    forged = asyncio.Event()  # the spoof is at the server: the seller's own offer reaches the buyer after it
    seller = await participant(make_agent, "seller", 100, gate=forged)
    buyer = await make_agent("buyer")
    cfps = await watch_cfps(raw_nc, "seller")

    async def spoof() -> None:
        cfp, msg = await within(cfps.get(), "the call for proposals")
        await raw_nc.publish(msg.reply, cheap_offer(cfp, source="seller", correlation=cfp["id"]))
        await subscribed(raw_nc)  # the server has routed it
        forged.set()

    attack = asyncio.ensure_future(spoof())
    result = await buyer.negotiate_with_agents(["seller"], "sale", {"item": "x"}, timeout=10.0)
    await attack
    assert result["state"] == "failed" and result["agreements"] == {}
    assert "confirmation failed" in result["reasons"]["seller"]  # the accept-proposal lacked the seller's token
    nid = result["negotiation_id"]
    await eventually(lambda: seller.negotiation_status(nid)["state"] == "proposed", what="the seller's own offer recorded")
    assert seller.negotiation_status(nid)["terms"] == {"price": 100}  # never the attacker's price


async def test_a_spoofed_cancel_or_reject_does_not_end_a_negotiation(make_agent: Any, raw_nc: nats.NATS) -> None:
    outcomes: list[dict[str, Any]] = []
    seller_gate, other_gate = asyncio.Event(), asyncio.Event()
    seller = await participant(make_agent, "seller", 100, gate=seller_gate, on_outcome=outcomes.append)
    negotiation, nid = await open_round(make_agent, raw_nc, other_gate)
    # While the seller's handler considers the call: a stranger's cancel is ignored.
    await raw_nc.publish(NEGOTIATE + "seller", performative("cancel", nid, source="mallory", reason="spoofed"))
    # A cancel for a negotiation the seller never heard of leaves no record behind.
    await raw_nc.publish(NEGOTIATE + "seller", performative("cancel", "made-up", source="buyer", reason="spoofed"))
    await subscribed(raw_nc)
    await eventually(lambda: seller.get_metrics().get("negotiation_messages_rejected") == 2, what="both refused")
    assert seller.negotiation_status(nid)["state"] == "considering" and seller.negotiation_status("made-up") is None

    seller_gate.set()
    await eventually(lambda: seller.negotiation_status(nid)["state"] == "proposed", what="the offer")
    # Once it has offered, cancel and reject-proposal need the token only the initiator's inbox received.
    for kind, source in (("cancel", "mallory"), ("cancel", "buyer"), ("reject-proposal", "buyer"), ("reject-proposal", "mallory")):
        await raw_nc.publish(NEGOTIATE + "seller", performative(kind, nid, source=source, reason="spoofed"))
    await subscribed(raw_nc)
    await eventually(lambda: seller.get_metrics().get("negotiation_messages_rejected") == 6, what="all four refused")
    assert seller.negotiation_status(nid)["state"] == "proposed" and outcomes == []

    other_gate.set()
    result = await within(negotiation, "the negotiation")
    assert result["state"] == "finalized" and result["agreements"] == {"seller": {"price": 100}}
    assert [o["state"] for o in outcomes] == ["confirmed"] and "token" not in outcomes[0]
    # The honest initiator's own reject reaches the loser (it brings the token back).
    assert result["outcomes"]["other"] == "rejected"


async def test_confirmations_come_only_from_the_chosen_winner(make_agent: Any, raw_nc: nats.NATS) -> None:
    confirmed_forged = asyncio.Event()  # the forged confirmations are at the server: the seller's comes after them

    async def slow_outcome(record: dict[str, Any]) -> None:
        await within(confirmed_forged.wait(), "the forged confirmations to reach the server")

    seller = await participant(make_agent, "seller", 100, on_outcome=slow_outcome)
    buyer = await make_agent("buyer")
    forged = [0]

    async def on_accept(msg: Any) -> None:
        message = orjson.loads(msg.data)
        content = message["payload"]["content"]
        if content.get("performative") != "accept-proposal" or not msg.reply:
            return
        done = {"performative": "inform-done", "negotiation_id": content["negotiation_id"], "terms": {"price": 1}}
        for source, correlation in (("mallory", message["id"]), ("seller", "not-" + message["id"])):
            await raw_nc.publish(msg.reply, encode(new_message("result", done, source_id=source, correlation_id=correlation)))
            forged[0] += 1
        await subscribed(raw_nc)  # the server has routed them
        confirmed_forged.set()

    await raw_nc.subscribe(NEGOTIATE + "seller", cb=on_accept)
    await subscribed(raw_nc)
    result = await buyer.negotiate_with_agents(["seller"], "sale", {"item": "x"}, timeout=10.0)
    assert result["state"] == "finalized" and result["agreements"] == {"seller": {"price": 100}}
    assert forged[0] == 2 and buyer.get_metrics()["replies_rejected"] == 2
    assert seller.negotiation_status(result["negotiation_id"])["state"] == "confirmed"


async def test_only_the_terms_offered_can_be_confirmed(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Even the initiator itself (here a plain client that started the negotiation, so it holds the token) cannot
    confirm other terms than the participant offered; the offered ones it can."""
    seller = await participant(make_agent, "seller", 100)
    cfp = new_message("query", {"performative": "cfp", "negotiation": {"id": "n-1", "type": "sale", "proposal": {}, "round": 1}},
                      source_id="buyer")
    answer = decode((await raw_nc.request(NEGOTIATE + "seller", encode(cfp), timeout=5)).data)["payload"]["content"]
    assert answer["performative"] == "propose" and answer["terms"] == {"price": 100}
    token = answer["token"]
    cheaper = await raw_nc.request(NEGOTIATE + "seller", performative("accept-proposal", "n-1", source="buyer", round=1,
                                                                      terms={"price": 1}, token=token), timeout=5)
    refused = decode(cheaper.data)["payload"]["content"]
    assert refused["performative"] == "failure" and "not the terms" in refused["reason"]
    assert seller.negotiation_status("n-1")["state"] == "proposed"
    agreed = await raw_nc.request(NEGOTIATE + "seller", performative("accept-proposal", "n-1", source="buyer", round=1,
                                                                     terms={"price": 100}, token=token), timeout=5)
    assert decode(agreed.data)["payload"]["content"] == {"performative": "inform-done", "negotiation_id": "n-1",
                                                         "agent_id": "seller", "terms": {"price": 100}}
    assert seller.negotiation_status("n-1")["state"] == "confirmed"
