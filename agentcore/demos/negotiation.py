"""The demo's negotiation step: a coordinator puts a job out to tender among workers, then sends it to the winner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError

if TYPE_CHECKING:
    from ..agent import NATSAgent

__all__ = ("run_negotiation_demo",)

NEGOTIATION_TYPE = "task_assignment"
CONTRACT_CAPABILITY = "contract"  # the winner is sent the job on agents.{env}.task.contract.{winner_id}


def _bidder(index: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Return a worker's negotiation handler: each quotes different terms; one is busy, one counter-proposes."""
    opening = 55 + 10 * index  # every opening bid is over the demo's budget: a second round is needed

    def bid(negotiation: dict[str, Any]) -> dict[str, Any]:
        proposal, feedback = negotiation["proposal"], negotiation.get("feedback") or {}
        terms = {"eta_s": 2 + index, "worker": "gpu" if index % 2 else "cpu"}
        if index == 2:
            return {"accept": False, "reason": "busy with another contract"}
        if index == 0:
            if proposal.get("deadline") != "4 hours":
                return {"accept": False, "reason": "need more time", "counter_proposal": {"deadline": "4 hours"}}
            return {"accept": True, "terms": {"cost": 45, **terms}}
        if feedback.get("violations"):  # told the last bid was too dear: meet the budget
            return {"accept": True, "terms": {"cost": int(negotiation["constraints"].get("max_cost", opening)) - 1, **terms}}
        return {"accept": True, "terms": {"cost": opening, **terms}}

    return bid


def _contractor(worker: NATSAgent) -> Callable[[str, dict[str, Any]], bool]:
    """Return the handler that does the job, only for a coordinator it has a confirmed agreement with.

    It is subscribed to the worker's own contract subject (not a capability: a capability's tasks are shared
    by a queue group, and the job is for the winner alone), so it answers with publish_result().
    """

    def do_job(topic: str, message: dict[str, Any]) -> bool:  # sync: inline on the loop (agent.sync_handlers)
        content = message["payload"]["content"]
        record = worker.negotiation_status(str(content.get("negotiation_id")))
        if record is None or record.get("state") != "confirmed" or record.get("initiator") != message["source"]["id"]:
            raise RemoteError("no_contract", f"{worker.agent_id} has no confirmed agreement for this job")
        words = str(content.get("text", "")).split()
        worker.publish_result(message["id"], {
            "done_by": worker.agent_id, "summary": " ".join(words[:6]) + (" ..." if len(words) > 6 else ""),
            "words": len(words), "billed": record["terms"]["cost"],
        })
        return True

    return do_job


async def run_negotiation_demo(
    coordinator: NATSAgent, workers: Sequence[NATSAgent], out: Callable[[str], None] = print
) -> dict[str, Any]:
    """Negotiate a job among workers (Contract Net), send it to the winner and return what happened."""
    for i, worker in enumerate(workers):
        await worker.asubscribe(coordinator.topics.task(CONTRACT_CAPABILITY, worker.agent_id), _contractor(worker), queue="")
        await worker.aregister_a2a_handler(NEGOTIATION_TYPE, _bidder(i))

    proposal = {"task": "summarize", "data_size": "10GB", "deadline": "2 hours"}
    constraints = {"max_cost": 50}
    ids = [w.agent_id for w in workers]
    out(f"negotiation: {coordinator.agent_id} calls for proposals from {ids}: {proposal}, constraints {constraints}")
    result = await coordinator.negotiate_with_agents(ids, NEGOTIATION_TYPE, proposal, constraints, timeout=2.0, max_winners=1)
    for entry in result["transcript"]:
        out(f"  round {entry['round']}: asked {entry['asked']}")
        for aid, response in entry["responses"].items():
            said = f"offers {response['terms']}" if response.get("accept") else f"refuses ({response.get('reason')})"
            if response.get("counter_proposal"):
                said += f" and counter-proposes {response['counter_proposal']}"
            out(f"    {aid:<14} {said}")
        for aid in entry["silent"] + entry["no_responders"]:
            out(f"    {aid:<14} did not answer")
    for aid in ids:
        reason = result["reasons"].get(aid)
        out(f"  {aid:<14} -> {result['outcomes'][aid]}" + (f" ({reason})" if reason else ""))
    out(f"negotiation {result['negotiation_id']} {result['state']} after {result['rounds']} round(s) "
        f"in {result['duration_ms']:.1f} ms; accepted: {result['accepted']}")

    job: Any = None
    winner = result["accepted"][0] if result["accepted"] else None
    if winner is not None:
        text = "agents negotiate who does a task over NATS and then the winner does the work it agreed to"
        job = await coordinator.send_task(CONTRACT_CAPABILITY, {"negotiation_id": result["negotiation_id"], "text": text},
                                          specificity=winner, timeout=5.0)
        out(f"sent the job to the winner {winner} on agreed terms {result['agreements'][winner]}: {job}")
    else:
        out("no agreement: the job stays with the coordinator")
    return {
        "negotiation_id": result["negotiation_id"],
        "state": result["state"],
        "rounds": result["rounds"],
        "winner": winner,
        "outcomes": result["outcomes"],
        "agreements": result["agreements"],
        "job": job,
        "duration_ms": result["duration_ms"],
    }
