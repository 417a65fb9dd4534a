"""A2A negotiation (Contract Net) between agents on separate connections to a real nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict

import pytest

from agentcore import NATSAgent, NegotiationError, RemoteError
from agentcore.envelope import decode, encode, new_message
from agentcore.negotiation_state import Negotiation, check_constraints, select_offers
from nats_fixtures import eventually, subscribed


async def worker(make_agent: Any, agent_id: str, handlers: dict[str, Any], *, capabilities: dict[str, Any] | None = None,
                 on_outcome: Any = None) -> NATSAgent:
    agent = await make_agent(agent_id, start=False, capabilities=capabilities)
    for ntype, handler in handlers.items():
        agent.register_a2a_handler(ntype, handler, on_outcome=on_outcome)
    await agent.astart()
    return agent


def offer(**terms: Any) -> Any:
    async def handle(negotiation: dict[str, Any]) -> dict[str, Any]:
        return {"accept": True, "terms": dict(terms)}

    return handle


def refuse(reason: str) -> Any:
    def handle(negotiation: dict[str, Any]) -> dict[str, Any]:  # sync: runs in the agent's thread pool
        return {"accept": False, "reason": reason}

    return handle


PROPOSAL = {"task": "analyze_data", "data_size": "10GB", "deadline": "2 hours"}


async def test_guide_example_all_accept_and_both_sides_agree(make_agent: Any) -> None:
    def can_handle_task(proposal: Dict[str, Any]) -> bool:
        return proposal.get("task") == "analyze_data"

    def handle_task_negotiation(negotiation: Dict[str, Any]) -> Dict[str, Any]:
        """Handle incoming task negotiations (the guide's handler, verbatim)."""
        proposal = negotiation.get("proposal", {})
        if can_handle_task(proposal):
            return {"accept": True, "terms": {"estimated_time": "5 minutes", "priority": "high"}}
        else:
            return {"accept": False, "reason": "Insufficient resources"}

    seen: list[dict[str, Any]] = []

    async def async_handler(negotiation: dict[str, Any]) -> dict[str, Any]:
        seen.append(negotiation)
        return {"accept": True, "terms": {"estimated_time": "3 minutes", "cost": 40}}

    w2 = await worker(make_agent, "agent-002", {"task_assignment": handle_task_negotiation})
    w3 = await worker(make_agent, "agent-003", {"task_assignment": async_handler})
    coordinator = await make_agent("coordinator", "coordinator")

    result = await coordinator.negotiate_with_agents(
        target_agents=["agent-002", "agent-003"],
        negotiation_type="task_assignment",
        proposal=PROPOSAL,
        constraints={"max_cost": 100, "required_accuracy": 0.95},
        timeout=10.0,
    )

    assert result["state"] == "finalized"
    assert result["responses"]["agent-002"]["terms"] == {"estimated_time": "5 minutes", "priority": "high"}
    assert result["responses"]["agent-003"]["accept"] is True
    assert set(result["accepted"]) == {"agent-002", "agent-003"}
    assert result["outcomes"] == {"agent-002": "accepted", "agent-003": "accepted"}
    assert result["agreements"]["agent-003"] == {"estimated_time": "3 minutes", "cost": 40}
    assert result["silent"] == [] and result["no_responders"] == []
    assert [h["state"] for h in result["history"]] == ["collecting", "confirming", "finalized"]
    nid = result["negotiation_id"]
    assert seen[0]["id"] == nid and seen[0]["initiator"] == "coordinator" and seen[0]["round"] == 1
    assert seen[0]["proposal"] == PROPOSAL and seen[0]["constraints"]["max_cost"] == 100
    # The confirmation is a request: the winners recorded it before the initiator returned.
    for w in (w2, w3):
        assert w.negotiation_status(nid)["state"] == "confirmed"
    assert coordinator.negotiation_status(nid)["state"] == "finalized"
    assert "task_assignment" in w2.describe()["negotiation_types"]


async def test_mixed_accept_and_reject_with_one_winner(make_agent: Any) -> None:
    outcomes: list[dict[str, Any]] = []
    cheap = await worker(make_agent, "cheap", {"job": offer(cost=10)}, on_outcome=outcomes.append)
    dear = await worker(make_agent, "dear", {"job": offer(cost=30)})
    await worker(make_agent, "busy", {"job": refuse("Insufficient resources")})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["dear", "busy", "cheap"], "job", {"task": "x"}, timeout=5.0, max_winners=1)

    assert result["state"] == "finalized"
    assert result["accepted"] == ["cheap"]
    assert result["outcomes"] == {"dear": "rejected", "busy": "refused", "cheap": "accepted"}
    assert result["reasons"]["busy"] == "Insufficient resources"
    assert result["reasons"]["dear"] == "another offer was selected"
    assert result["responses"]["busy"] == {"accept": False, "reason": "Insufficient resources", "round": 1}
    nid = result["negotiation_id"]
    assert cheap.negotiation_status(nid)["state"] == "confirmed"
    assert outcomes and outcomes[0]["state"] == "confirmed" and outcomes[0]["terms"] == {"cost": 10}
    # reject-proposal is one-way: the loser learns it shortly after.
    await eventually(lambda: (dear.negotiation_status(nid) or {}).get("state") == "rejected", what="dear rejected")


async def test_all_reject(make_agent: Any) -> None:
    await worker(make_agent, "w1", {"job": refuse("no capacity")})
    await worker(make_agent, "w2", {"job": refuse("on holiday")})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1", "w2"], "job", {"task": "x"}, timeout=5.0)

    assert result["state"] == "rejected"
    assert result["accepted"] == []
    assert result["outcomes"] == {"w1": "refused", "w2": "refused"}
    assert result["reasons"] == {"w1": "no capacity", "w2": "on holiday"}
    assert result["rounds"] == 1


async def test_silent_target_is_listed_as_such_and_its_late_answer_ignored(make_agent: Any) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(negotiation: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"accept": True, "terms": {"cost": 1}}

    slowpoke = await worker(make_agent, "slowpoke", {"job": slow})
    await worker(make_agent, "quick", {"job": offer(cost=5)})
    coordinator = await make_agent("coordinator")

    t0 = time.perf_counter()
    result = await coordinator.negotiate_with_agents(["quick", "slowpoke"], "job", {"task": "x"}, timeout=0.3)
    elapsed = time.perf_counter() - t0

    assert started.is_set()
    assert result["state"] == "partial"
    assert result["accepted"] == ["quick"]
    assert result["silent"] == ["slowpoke"]
    assert result["outcomes"]["slowpoke"] == "timeout"
    assert "slowpoke" not in result["responses"]  # never answered: not guessed
    assert elapsed >= 0.3  # it waited the full timeout for the silent one
    nid = result["negotiation_id"]
    # The silent agent is sent a cancel; its late offer afterwards neither reopens it nor changes the result.
    await eventually(lambda: (slowpoke.negotiation_status(nid) or {}).get("state") == "cancelled", what="cancel")
    release.set()
    await eventually(lambda: slowpoke.get_metrics().get("negotiation_proposals_sent") == 1, what="late offer sent")
    assert slowpoke.negotiation_status(nid)["state"] == "cancelled"
    assert coordinator.negotiation_status(nid)["state"] == "partial"


async def test_every_target_silent_times_out(make_agent: Any, raw_nc: Any) -> None:
    got = asyncio.Event()

    async def swallow(msg: Any) -> None:
        got.set()  # subscribed but never answers

    await raw_nc.subscribe("agents.test.a2a.negotiate.mute", cb=swallow)
    await subscribed(raw_nc)
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["mute"], "job", {"task": "x"}, timeout=0.2)

    assert got.is_set()
    assert result["state"] == "timed_out"
    assert result["silent"] == ["mute"] and result["accepted"] == []


async def test_unknown_type_is_refused_with_reason(make_agent: Any) -> None:
    await worker(make_agent, "w1", {"job": offer(cost=1)})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1"], "mystery", {"task": "x"}, timeout=5.0)

    assert result["state"] == "rejected"
    assert result["outcomes"]["w1"] == "refused"
    assert "unknown negotiation type 'mystery'" in result["reasons"]["w1"]
    assert "job" in result["responses"]["w1"]["reason"]


async def test_agent_without_negotiation_handlers_refuses_rather_than_looking_offline(make_agent: Any) -> None:
    await make_agent("plain-worker")  # never registered a negotiation handler
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["plain-worker"], "job", {"task": "x"}, timeout=5.0)

    assert result["outcomes"]["plain-worker"] == "refused"
    assert "unknown negotiation type 'job'" in result["reasons"]["plain-worker"]
    assert result["no_responders"] == []


async def test_handler_error_is_a_refusal_carrying_the_error(make_agent: Any) -> None:
    def broken(negotiation: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("boom")

    async def nonsense(negotiation: dict[str, Any]) -> Any:
        return "sure, why not"

    await worker(make_agent, "w1", {"job": broken})
    await worker(make_agent, "w2", {"job": nonsense})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1", "w2"], "job", {"task": "x"}, timeout=5.0)

    assert result["state"] == "rejected"
    assert result["outcomes"] == {"w1": "refused", "w2": "refused"}
    assert result["reasons"]["w1"] == "handler error: ValueError: boom"
    assert "handler returned str" in result["reasons"]["w2"]


async def test_offline_or_unknown_target_reported_fast_as_no_responder(make_agent: Any) -> None:
    await worker(make_agent, "w1", {"job": offer(cost=1)})
    coordinator = await make_agent("coordinator")

    t0 = time.perf_counter()
    result = await coordinator.negotiate_with_agents(["w1", "ghost"], "job", {"task": "x"}, timeout=5.0)
    elapsed = time.perf_counter() - t0

    assert elapsed < 1.0  # not the 5 s timeout
    assert result["state"] == "finalized"
    assert result["outcomes"] == {"w1": "accepted", "ghost": "no_responder"}
    assert result["no_responders"] == ["ghost"]

    result = await coordinator.negotiate_with_agents(["ghost"], "job", {"task": "x"}, timeout=5.0)
    assert result["state"] == "rejected" and result["no_responders"] == ["ghost"]


async def test_constraints_filter_a_too_expensive_offer(make_agent: Any) -> None:
    await worker(make_agent, "dear", {"job": offer(cost=150, accuracy=0.99)})
    await worker(make_agent, "sloppy", {"job": offer(cost=20, accuracy=0.9)})
    await worker(make_agent, "fair", {"job": offer(cost=80, accuracy=0.97)})
    coordinator = await make_agent("coordinator")
    constraints = {"max_cost": 100, "required_accuracy": 0.95}

    result = await coordinator.negotiate_with_agents(["dear", "sloppy", "fair"], "job", {"task": "x"}, constraints,
                                                     timeout=5.0, max_rounds=1)

    assert result["state"] == "finalized"
    assert result["accepted"] == ["fair"]
    assert result["outcomes"]["dear"] == "rejected"
    assert "cost 150 exceeds max_cost 100" in result["reasons"]["dear"]
    assert "accuracy 0.9 is below required_accuracy 0.95" in result["reasons"]["sloppy"]


async def test_selection_callback_overrides_the_default_choice(make_agent: Any) -> None:
    await worker(make_agent, "a", {"job": offer(cost=10, quality=1)})
    await worker(make_agent, "b", {"job": offer(cost=50, quality=9)})
    coordinator = await make_agent("coordinator")
    offered: list[dict[str, Any]] = []

    def best_quality(offers: list[dict[str, Any]]) -> list[str]:
        offered.extend(offers)
        return [max(offers, key=lambda o: o["terms"]["quality"])["agent_id"]]

    result = await coordinator.negotiate_with_agents(["a", "b"], "job", {}, {"max_cost": 100}, timeout=5.0, select=best_quality)

    assert result["accepted"] == ["b"] and result["outcomes"]["a"] == "rejected"
    assert {o["agent_id"] for o in offered} == {"a", "b"} and all(o["acceptable"] for o in offered)


async def test_counter_proposal_round(make_agent: Any) -> None:
    rounds: list[dict[str, Any]] = []

    async def wants_more_time(negotiation: dict[str, Any]) -> dict[str, Any]:
        rounds.append(negotiation)
        if negotiation["proposal"].get("deadline") == "4 hours":
            return {"accept": True, "terms": {"cost": 60}}
        return {"accept": False, "reason": "too tight", "counter_proposal": {"deadline": "4 hours"}}

    bids: list[int] = []

    async def haggler(negotiation: dict[str, Any]) -> dict[str, Any]:
        # Lowers its price when told its last offer broke the constraints (iterated Contract Net).
        cost = 140 if negotiation["feedback"] is None else 95
        bids.append(cost)
        return {"accept": True, "terms": {"cost": cost}}

    w = await worker(make_agent, "w1", {"job": wants_more_time})
    await worker(make_agent, "w2", {"job": haggler})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1", "w2"], "job", PROPOSAL, {"max_cost": 100}, timeout=5.0)

    assert result["state"] == "finalized"
    assert result["rounds"] == 2
    assert set(result["accepted"]) == {"w1", "w2"}
    assert result["agreements"] == {"w1": {"cost": 60}, "w2": {"cost": 95}}
    assert bids == [140, 95]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["proposal"] == {**PROPOSAL, "deadline": "4 hours"}
    assert rounds[1]["feedback"]["counter_adopted"] is True
    assert w.negotiation_status(result["negotiation_id"])["state"] == "confirmed"


async def test_rounds_are_bounded(make_agent: Any) -> None:
    calls = 0

    async def stubborn(negotiation: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"accept": False, "reason": "more", "counter_proposal": {"budget": 10 * negotiation["round"]}}

    await worker(make_agent, "w1", {"job": stubborn})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1"], "job", {}, timeout=5.0, max_rounds=3)

    assert calls == 3 and result["rounds"] == 3
    assert result["state"] == "rejected"
    assert result["outcomes"]["w1"] == "rejected"
    assert result["responses"]["w1"]["counter_proposal"] == {"budget": 30}


async def test_capability_based_targets(make_agent: Any) -> None:
    async def analyse(message: dict[str, Any]) -> str:
        return "done"

    await worker(make_agent, "analyst-1", {"job": offer(cost=3)}, capabilities={"analysis": analyse})
    await worker(make_agent, "analyst-2", {"job": offer(cost=2)}, capabilities={"analysis": analyse})
    await worker(make_agent, "writer", {"job": offer(cost=1)}, capabilities={"writing": analyse})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(None, "job", {"task": "x"}, timeout=5.0, capability="analysis",
                                                     discovery_timeout=0.3, max_winners=1)

    assert sorted(result["outcomes"]) == ["analyst-1", "analyst-2"]
    assert result["accepted"] == ["analyst-2"]  # the cheaper one
    assert await coordinator.send_task("analysis", {"x": 1}) == "done"

    result = await coordinator.negotiate_with_agents(None, "job", {}, timeout=5.0, capability="nobody", discovery_timeout=0.1)
    assert result["state"] == "rejected" and result["outcomes"] == {}


async def test_twenty_concurrent_negotiations_between_the_same_agents_stay_separate(make_agent: Any) -> None:
    async def echo(negotiation: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # interleave with the other negotiations
        return {"accept": True, "terms": {"n": negotiation["proposal"]["n"], "id": negotiation["id"]}}

    def echo_sync(negotiation: dict[str, Any]) -> dict[str, Any]:
        return {"accept": True, "terms": {"n": negotiation["proposal"]["n"], "id": negotiation["id"]}}

    w1 = await worker(make_agent, "w1", {"job": echo})
    w2 = await worker(make_agent, "w2", {"job": echo_sync})
    coordinator = await make_agent("coordinator")

    results = await asyncio.gather(*(
        coordinator.negotiate_with_agents(["w1", "w2"], "job", {"n": n}, timeout=5.0) for n in range(20)
    ))

    assert len({r["negotiation_id"] for r in results}) == 20
    for n, result in enumerate(results):
        assert result["state"] == "finalized", result
        for aid in ("w1", "w2"):
            assert result["agreements"][aid] == {"n": n, "id": result["negotiation_id"]}
        assert result["ignored_responses"] == 0
    for w in (w1, w2):
        assert all(w.negotiation_status(r["negotiation_id"])["state"] == "confirmed" for r in results)
        assert w.get_metrics()["negotiations_confirmed"] == 20
    assert coordinator.get_metrics()["negotiations_finalized"] == 20


async def test_duplicate_answers_are_ignored(make_agent: Any, raw_nc: Any) -> None:
    # A plain NATS client plays a participant that answers every call for proposals twice.
    async def twice(msg: Any) -> None:
        cfp = decode(msg.data)
        content = cfp["payload"]["content"]
        if content["performative"] != "cfp":
            if msg.reply:
                done = {"performative": "inform-done", "negotiation_id": content["negotiation_id"]}
                await raw_nc.publish(msg.reply, encode(new_message("result", done, source_id="echo", correlation_id=cfp["id"])))
            return
        neg = content["negotiation"]
        for cost in (7, 99):
            answer = {"performative": "propose", "negotiation_id": neg["id"], "round": neg["round"], "accept": True,
                      "terms": {"cost": cost}}
            await raw_nc.publish(msg.reply, encode(new_message("result", answer, source_id="echo", correlation_id=cfp["id"])))
        # and one claiming to come from someone else
        forged = {"performative": "propose", "negotiation_id": neg["id"], "round": neg["round"], "accept": True, "terms": {}}
        await raw_nc.publish(msg.reply, encode(new_message("result", forged, source_id="mallory", correlation_id=cfp["id"])))

    await raw_nc.subscribe("agents.test.a2a.negotiate.echo", cb=twice)
    await subscribed(raw_nc)
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["echo"], "job", {}, timeout=5.0)

    assert result["state"] == "finalized"
    assert result["agreements"] == {"echo": {"cost": 7}}
    assert result["ignored_responses"] == 2


async def test_events_and_metrics(make_agent: Any, raw_nc: Any) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    finished = asyncio.Event()

    async def observe(msg: Any) -> None:
        content = decode(msg.data)["payload"]["content"]
        events.append((msg.subject, content))
        if content.get("role") == "initiator" and content.get("state") == "finalized":
            finished.set()

    await raw_nc.subscribe("agents.test.event.negotiation.>", cb=observe)
    await subscribed(raw_nc)
    w = await worker(make_agent, "w1", {"job": offer(cost=1)})
    await worker(make_agent, "w2", {"job": refuse("no")})
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1", "w2"], "job", {}, timeout=5.0)
    await asyncio.wait_for(finished.wait(), 5.0)

    subjects = [s for s, _ in events]
    for detail in ("started", "proposed", "refused", "confirmed", "finalized"):
        assert f"agents.test.event.negotiation.{detail}" in subjects
    assert all(c["negotiation_id"] == result["negotiation_id"] for _, c in events)
    m = coordinator.get_metrics()
    assert m["negotiations_started"] == 1 and m["negotiations_finalized"] == 1
    assert m["negotiation_offers_received"] == 1 and m["negotiation_refusals_received"] == 1
    assert w.get_metrics()["negotiation_cfps_received"] == 1 and w.get_metrics()["negotiations_confirmed"] == 1


async def test_withdrawn_offer_fails_confirmation(make_agent: Any) -> None:
    def withdraw(record: dict[str, Any]) -> None:
        if record["state"] == "confirmed":
            raise RuntimeError("capacity gone")

    w = await worker(make_agent, "w1", {"job": offer(cost=1)}, on_outcome=withdraw)
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents(["w1"], "job", {}, timeout=5.0)

    assert result["state"] == "failed"
    assert result["outcomes"]["w1"] == "failed" and "capacity gone" in result["reasons"]["w1"]
    assert w.negotiation_status(result["negotiation_id"])["state"] == "failed"


async def test_paused_agent_refuses_new_negotiations(make_agent: Any) -> None:
    w = await worker(make_agent, "w1", {"job": offer(cost=1)})
    coordinator = await make_agent("coordinator")
    await w.pause()

    result = await coordinator.negotiate_with_agents(["w1"], "job", {}, timeout=5.0)

    assert result["outcomes"]["w1"] == "refused" and "paused" in result["reasons"]["w1"]


async def test_handler_registered_on_a_running_agent(make_agent: Any) -> None:
    w = await make_agent("w1")
    await w.aregister_a2a_handler("job", offer(cost=1))
    coordinator = await make_agent("coordinator")

    result = await coordinator.negotiate_with_agents("w1", "job", {}, timeout=5.0)

    assert result["state"] == "finalized"


async def test_bad_arguments(make_agent: Any) -> None:
    coordinator = await make_agent("coordinator")
    with pytest.raises(NegotiationError):
        await coordinator.negotiate_with_agents([], "job", {})
    with pytest.raises(NegotiationError):
        await coordinator.negotiate_with_agents(["w1"], "job", {}, timeout=0)
    with pytest.raises(ValueError):
        await coordinator.negotiate_with_agents(["a.b"], "job", {})
    with pytest.raises(NegotiationError):
        coordinator.register_a2a_handler("", offer())


def test_check_constraints() -> None:
    assert check_constraints({"cost": 100}, {"max_cost": 100}) == []
    assert check_constraints({"cost": 101}, {"max_cost": 100}) == ["cost 101 exceeds max_cost 100"]
    assert check_constraints({"workers": 1}, {"min_workers": 2}) == ["workers 1 is below min_workers 2"]
    assert check_constraints({"region": "eu"}, {"region": "us"}) == ["region 'eu' != region 'us'"]
    assert check_constraints({"format": "csv"}, {"required_format": "csv"}) == []
    assert check_constraints({"cost": "cheap"}, {"max_cost": 1}) == ["cost 'cheap' is not comparable with max_cost 1"]
    assert check_constraints({"estimated_time": "5 minutes"}, {"max_cost": 100}) == []  # unmentioned: unchecked


def test_default_selection_and_state_machine() -> None:
    offers = [
        {"agent_id": "a", "terms": {"cost": 5}, "order": 0, "violations": []},
        {"agent_id": "b", "terms": {"price": 3}, "order": 1, "violations": []},
        {"agent_id": "c", "terms": {"cost": 1}, "order": 2, "violations": ["cost 1 exceeds nothing"]},
        {"agent_id": "d", "terms": {}, "order": 3, "violations": []},
    ]
    assert select_offers(offers) == ["b", "a", "d"]
    assert select_offers(offers, 1) == ["b"]
    neg = Negotiation("n1", "job", "me", {}, {}, ["a"], 3)
    with pytest.raises(NegotiationError):
        neg.transition("finalized")
    neg.transition("collecting")
    neg.transition("confirming")
    neg.transition("finalized")
    with pytest.raises(NegotiationError):
        neg.transition("collecting")


async def test_negotiation_demo_sends_the_job_to_the_winner(make_agent: Any) -> None:
    from agentcore.demos.negotiation import run_negotiation_demo

    workers = [await make_agent(f"summarizer-{i}") for i in (1, 2, 3)] + [await make_agent("analyst-1")]
    coordinator = await make_agent("coordinator", "coordinator")
    lines: list[str] = []

    summary = await run_negotiation_demo(coordinator, workers, lines.append)

    assert summary["state"] == "finalized" and summary["rounds"] == 2, lines
    assert summary["winner"] == "summarizer-1"
    assert summary["outcomes"] == {"summarizer-1": "accepted", "summarizer-2": "rejected", "summarizer-3": "refused",
                                   "analyst-1": "rejected"}, lines
    assert summary["job"]["done_by"] == "summarizer-1" and summary["job"]["billed"] == 45
    assert any("counter-proposes" in line for line in lines) and any("sent the job" in line for line in lines), lines
    # A worker without a confirmed agreement refuses the job.
    with pytest.raises(RemoteError, match="no_contract") as refused:
        await coordinator.send_task("contract", {"negotiation_id": summary["negotiation_id"]}, specificity="summarizer-2", timeout=5.0)
    assert refused.value.code == "no_contract"
