"""The subject hierarchy agents.{env}.{message_type}.{domain}.{specificity}, built and validated in one place.

The root ("agents") is configurable (nats.subject_prefix), so two products, or another protocol that also uses
"agents.", can share one NATS without hearing each other. Guide topics ("agents/task/x") keep "agents/" as their root.
"""

from __future__ import annotations

from ._impl import validate_subject, validate_token
from .errors import SubjectError

__all__ = ("Topics",)


_TOPICS_KEPT = 1024  # subjects to_topic remembers


class Topics:
    """Build every subject of the guide's topic hierarchy for one environment."""

    __slots__ = ("env", "root", "prefix", "_topics")

    def __init__(self, environment: str, root: str = "agents") -> None:
        self.env = validate_token(environment)
        self.root = validate_subject(root, wildcards=False)
        self.prefix = f"{root}.{environment}"
        self._topics: dict[str, str] = {}  # to_topic's answers: the dispatcher asks once per message of the guide's style

    def control(self, agent_id: str) -> str:
        """Return the control subject of an agent."""
        return f"{self.prefix}.control.{validate_token(agent_id)}"

    def status(self, agent_id: str) -> str:
        """Return the status (heartbeat) subject of an agent."""
        return f"{self.prefix}.status.{validate_token(agent_id)}"

    def status_all(self) -> str:
        """Return the pattern that matches every agent's status subject."""
        return f"{self.prefix}.status.*"

    def task(self, capability: str, specificity: str = "default") -> str:
        """Return the subject a task for a capability is sent to."""
        return f"{self.prefix}.task.{validate_token(capability)}.{validate_token(specificity)}"

    def task_pattern(self, capability: str) -> str:
        """Return the pattern that matches every task of a capability."""
        return f"{self.prefix}.task.{validate_token(capability)}.*"

    def result(self, agent_id: str, task_type: str) -> str:
        """Return the result subject for results addressed to an agent."""
        return f"{self.prefix}.result.{validate_token(agent_id)}.{validate_token(task_type)}"

    def result_prefix(self) -> str:
        """Return the prefix of every result subject (agents.{env}.result.): where a replyTo may always point."""
        return f"{self.prefix}.result."

    def mcp_responses_any(self) -> str:
        """Return the pattern of every MCP response subject (the replyTo of agentcore's MCP calls)."""
        return f"{self.prefix}.mcp.*.responses.*"

    def event(self, event_type: str, detail: str) -> str:
        """Return the subject of a system event."""
        return f"{self.prefix}.event.{validate_token(event_type)}.{validate_token(detail)}"

    def discovery_requests(self) -> str:
        """Return the discovery request subject."""
        return f"{self.prefix}.discovery.requests"

    def discovery_responses(self) -> str:
        """Return the discovery response subject."""
        return f"{self.prefix}.discovery.responses"

    def mcp_requests(self, server_id: str) -> str:
        """Return the subject MCP requests for a server id are sent to."""
        return f"{self.prefix}.mcp.{validate_token(server_id)}.requests"

    def mcp_responses(self, agent_id: str, request_id: str) -> str:
        """Return the subject an MCP response for a caller's request goes to."""
        return f"{self.prefix}.mcp.{validate_token(agent_id)}.responses.{validate_token(request_id)}"

    def mcp_responses_all(self, agent_id: str) -> str:
        """Return the pattern that matches every MCP response addressed to a caller."""
        return f"{self.prefix}.mcp.{validate_token(agent_id)}.responses.*"

    def mcp_cancel(self, server_id: str) -> str:
        """Return the subject cancellations of calls to an MCP server id go to (every host hears them)."""
        return f"{self.prefix}.mcp.{validate_token(server_id)}.cancel"

    def task_cancel(self) -> str:
        """Return the subject every agent hears cancellations of the tasks it serves on."""
        return f"{self.prefix}.lifecycle.cancel"

    def task_status(self) -> str:
        """Return the subject every agent answers status queries about the tasks it serves on."""
        return f"{self.prefix}.lifecycle.status"

    def a2a_negotiate(self, agent_id: str) -> str:
        """Return the negotiation subject of an agent."""
        return f"{self.prefix}.a2a.negotiate.{validate_token(agent_id)}"

    def to_subject(self, topic: str, *, wildcards: bool = True) -> str:
        """Map a guide topic ("agents/task/analysis/*") or a NATS subject to a validated NATS subject."""
        if "/" in topic:
            parts = topic.split("/")
            if parts[0] == "agents":
                parts = parts[1:]
            subject = ".".join([self.prefix, *parts])
        else:
            subject = topic
        try:
            valid: str = validate_subject(subject, wildcards=wildcards)
            return valid
        except SubjectError as exc:
            raise SubjectError(f"topic {topic!r}: {exc}") from None

    def to_topic(self, subject: str) -> str:
        """Map a NATS subject of this environment to the guide's slash topic ("agents/task/analysis/x")."""
        topic = self._topics.get(subject)
        if topic is None:
            if subject.startswith(self.prefix + "."):
                topic = "agents/" + subject[len(self.prefix) + 1 :].replace(".", "/")
            else:
                topic = subject.replace(".", "/")
            if len(self._topics) >= _TOPICS_KEPT:  # subjects come off the wire (wildcards): the memo stays small
                self._topics.clear()
            self._topics[subject] = topic
        return topic
