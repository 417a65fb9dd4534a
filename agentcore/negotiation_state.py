"""The Contract Net state machine of a negotiation: states, per-agent outcomes, constraint checks, default selection.

Initiator side (one ``Negotiation`` per ``negotiate_with_agents`` call)::

    proposed ──> collecting ──┬──> confirming ──┬──> finalized   (agreements confirmed, every target answered)
                   ^   │      │                 ├──> partial     (agreements confirmed, some targets silent)
                   └───┘      │                 └──> failed      (winners chosen, none confirmed the agreement)
              next round      ├──> rejected                      (every target answered, no acceptable offer)
          (counter-proposals, └──> timed_out                     (no acceptable offer, some targets silent)
           offers that broke
           the constraints)

Participant side (one record per negotiation id an agent answered)::

    proposed | countered | refused ──> confirmed | rejected | cancelled | failed

The per-agent outcome the initiator reports is one of ``AGENT_OUTCOMES``; silent agents are listed as
``timeout`` and offline ones as ``no_responder``: nothing is guessed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import NegotiationError

__all__ = (
    "PROPOSED", "COLLECTING", "CONFIRMING", "FINALIZED", "PARTIAL", "REJECTED", "TIMED_OUT", "FAILED",
    "STATES", "TERMINAL_STATES", "TRANSITIONS", "AGENT_OUTCOMES",
    "CFP", "PROPOSE", "REFUSE", "ACCEPT_PROPOSAL", "REJECT_PROPOSAL", "CANCEL", "INFORM_DONE", "FAILURE",
    "Negotiation", "check_constraints", "select_offers", "adopt_counter",
)

# ---------------------------------------------------------------------------------------------- initiator states

PROPOSED = "proposed"
COLLECTING = "collecting"
CONFIRMING = "confirming"
FINALIZED = "finalized"
PARTIAL = "partial"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
FAILED = "failed"

STATES = (PROPOSED, COLLECTING, CONFIRMING, FINALIZED, PARTIAL, REJECTED, TIMED_OUT, FAILED)
TERMINAL_STATES = frozenset({FINALIZED, PARTIAL, REJECTED, TIMED_OUT, FAILED})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    PROPOSED: frozenset({COLLECTING, REJECTED}),
    COLLECTING: frozenset({COLLECTING, CONFIRMING, REJECTED, TIMED_OUT}),
    CONFIRMING: frozenset({FINALIZED, PARTIAL, FAILED}),
}

#: What the initiator reports per target agent.
AGENT_OUTCOMES = (
    "accepted",      # its offer was selected and it confirmed the agreement (inform-done)
    "rejected",      # it offered or countered, but was not selected (it was sent reject-proposal)
    "refused",       # it refused (unknown type, handler error, its own decision)
    "timeout",       # it never answered within the window (it was sent cancel)
    "no_responder",  # nobody is subscribed to its negotiation subject (offline or unknown id)
    "failed",        # it was selected but did not confirm (went away, timed out, reported failure)
)

# ---------------------------------------------------------------------------------------------- performatives (FIPA)

CFP = "cfp"
PROPOSE = "propose"
REFUSE = "refuse"
ACCEPT_PROPOSAL = "accept-proposal"
REJECT_PROPOSAL = "reject-proposal"
CANCEL = "cancel"
INFORM_DONE = "inform-done"
FAILURE = "failure"


@dataclass(eq=False)
class Negotiation:
    """The initiator's record of one negotiation; transition() enforces the state machine above."""

    id: str
    type: str
    initiator: str
    proposal: dict[str, Any]
    constraints: dict[str, Any]
    targets: list[str]
    max_rounds: int
    state: str = PROPOSED
    round: int = 0
    started: float = field(default_factory=time.monotonic)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    agreements: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)  # per round: who was asked, who said what
    ignored: int = 0
    tokens: dict[str, str] = field(default_factory=dict)  # agent id -> the token its answers carried (only it and we know it)

    def transition(self, new_state: str, **detail: Any) -> None:
        """Move to new_state, or raise NegotiationError when the state machine does not allow it."""
        if new_state not in TRANSITIONS.get(self.state, frozenset()):
            raise NegotiationError(f"negotiation {self.id}: illegal transition {self.state} -> {new_state}")
        self.state = new_state
        self.history.append({"state": new_state, "round": self.round, "t_ms": self.elapsed_ms(), **detail})

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000.0, 3)

    def set_outcome(self, agent_id: str, outcome: str, reason: str | None = None) -> None:
        self.outcomes[agent_id] = outcome
        if reason:
            self.reasons[agent_id] = reason
        else:
            self.reasons.pop(agent_id, None)

    def result(self) -> dict[str, Any]:
        """Return the outcome as the plain dict negotiate_with_agents() returns."""
        def by(outcome: str) -> list[str]:
            return [a for a in self.targets if self.outcomes.get(a) == outcome]

        return {
            "negotiation_id": self.id,
            "type": self.type,
            "initiator": self.initiator,
            "state": self.state,
            "rounds": self.round,
            "accepted": by("accepted"),
            "agreements": dict(self.agreements),
            "responses": dict(self.responses),
            "outcomes": {a: self.outcomes.get(a, "timeout") for a in self.targets},
            "reasons": dict(self.reasons),
            "silent": by("timeout"),
            "no_responders": by("no_responder"),
            "proposal": self.proposal,
            "constraints": self.constraints,
            "history": list(self.history),
            "transcript": list(self.transcript),
            "ignored_responses": self.ignored,
            "duration_ms": self.elapsed_ms(),
        }


# ---------------------------------------------------------------------------------------------- constraints


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_constraints(terms: Mapping[str, Any], constraints: Mapping[str, Any]) -> list[str]:
    """Return the ways terms violate constraints (empty: acceptable).

    ``max_X`` needs ``terms[X] <= limit``, ``min_X`` and numeric ``required_X`` need ``terms[X] >= limit``,
    a non-numeric ``required_X`` or any other key needs ``terms[X] == value``. A constraint whose term the
    offer does not mention is not checked (the guide's own example offers terms without a cost).
    """
    violations: list[str] = []
    for key, limit in constraints.items():
        if key.startswith("max_"):
            name, op = key[4:], "<="
        elif key.startswith("min_"):
            name, op = key[4:], ">="
        elif key.startswith("required_"):
            name, op = key[9:], ">=" if _number(limit) is not None else "=="
        else:
            name, op = key, "=="
        if name not in terms:
            continue
        value = terms[name]
        if op == "==":
            if value != limit:
                violations.append(f"{name} {value!r} != {key} {limit!r}")
            continue
        v, lim = _number(value), _number(limit)
        if v is None or lim is None:
            violations.append(f"{name} {value!r} is not comparable with {key} {limit!r}")
        elif op == "<=" and v > lim:
            violations.append(f"{name} {value!r} exceeds {key} {limit!r}")
        elif op == ">=" and v < lim:
            violations.append(f"{name} {value!r} is below {key} {limit!r}")
    return violations


def _cost(offer: Mapping[str, Any]) -> float:
    terms = offer.get("terms") or {}
    for key in ("cost", "price"):
        n = _number(terms.get(key))
        if n is not None:
            return n
    return math.inf


def select_offers(offers: Iterable[Mapping[str, Any]], max_winners: int | None = None) -> list[str]:
    """Return the agent ids of the offers to accept: those within the constraints, cheapest first, then earliest."""
    acceptable = [o for o in offers if not o.get("violations")]
    acceptable.sort(key=lambda o: (_cost(o), o.get("order", 0)))
    chosen = [str(o["agent_id"]) for o in acceptable]
    return chosen if max_winners is None else chosen[:max_winners]


def adopt_counter(
    proposal: Mapping[str, Any], counter_proposal: Mapping[str, Any], constraints: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Return the revised proposal for the next round (the counter merged over ours), or None if it breaks the constraints."""
    if check_constraints(counter_proposal, constraints):
        return None
    return {**proposal, **counter_proposal}
