"""The subject hierarchy and the guide's slash topics, both ways."""

from __future__ import annotations

import pytest

from agentcore import SubjectError, Topics


def test_every_subject_of_the_hierarchy() -> None:
    t = Topics("prod")
    assert t.control("a1") == "agents.prod.control.a1"
    assert t.status("a1") == "agents.prod.status.a1"
    assert t.task("analysis", "sentiment") == "agents.prod.task.analysis.sentiment"
    assert t.task_pattern("analysis") == "agents.prod.task.analysis.*"
    assert t.result("a1", "analysis") == "agents.prod.result.a1.analysis"
    assert t.event("deploy", "done") == "agents.prod.event.deploy.done"
    assert t.discovery_requests() == "agents.prod.discovery.requests"
    assert t.discovery_responses() == "agents.prod.discovery.responses"
    assert t.mcp_requests("files") == "agents.prod.mcp.files.requests"
    assert t.mcp_responses("a1", "r9") == "agents.prod.mcp.a1.responses.r9"
    assert t.a2a_negotiate("a1") == "agents.prod.a2a.negotiate.a1"


def test_slash_topics_map_both_ways() -> None:
    t = Topics("prod")
    assert t.to_subject("agents/task/analysis/*") == "agents.prod.task.analysis.*"
    assert t.to_subject("agents/event/>") == "agents.prod.event.>"
    assert t.to_subject("agents.prod.task.x.y") == "agents.prod.task.x.y"
    assert t.to_topic("agents.prod.task.analysis.sentiment") == "agents/task/analysis/sentiment"
    assert "task/analysis" in t.to_topic(t.task("analysis"))


@pytest.mark.parametrize("bad", ["agent.x", "a*", ">", "", "with space", "tab\t"])
def test_ids_that_would_change_routing_are_rejected(bad: str) -> None:
    t = Topics("prod")
    with pytest.raises(SubjectError):
        t.control(bad)


def test_bad_topics_and_environments() -> None:
    with pytest.raises(SubjectError):
        Topics("pr.od")
    t = Topics("prod")
    with pytest.raises(SubjectError):
        t.to_subject("agents//task")
    with pytest.raises(SubjectError):
        t.to_subject("agents/task/>/x")
    with pytest.raises(SubjectError):
        t.to_subject("agents/task/*", wildcards=False)


def test_to_topic_remembers_a_bounded_number_of_subjects() -> None:
    t = Topics("prod")
    subjects = [f"agents.prod.task.c{i}.default" for i in range(3000)]  # a stranger's spread of subjects
    assert [t.to_topic(s) for s in subjects] == [f"agents/task/c{i}/default" for i in range(3000)]
    assert t.to_topic("agents.prod.task.c7.default") == "agents/task/c7/default"  # asked again: the same answer
    # INTERNAL: the memo's size is what a flood of subjects could grow
    assert len(t._topics) <= 1024
