"""Agents as NATS services (ADR-32), read from raw nats-py the way `nats micro ls/info/stats` reads them."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import nats
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from agentcore import AgentCoreError
from agentcore.services import VERSION
from nats_fixtures import subscribed, within


async def collect(nc: nats.NATS, subject: str, expected: int) -> list[dict[str, Any]]:
    """Request subject with a reply inbox and gather the answers (as `nats micro ls` does): once expected have come
    (at most 10 s), a little longer, so that one too many would show too."""
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def on(msg: Any) -> None:
        answers.append(json.loads(msg.data))
        if len(answers) >= expected:
            enough.set()

    sub = await nc.subscribe(inbox, cb=on)
    await subscribed(nc)
    await nc.publish(subject, b"", reply=inbox)
    await within(enough.wait(), f"{expected} answers on {subject}", 10)
    await asyncio.sleep(0.1)  # a window for an answer too many (nothing is awaited here)
    await sub.unsubscribe()
    return answers


async def test_ping_info_stats_from_raw_nats(make_agent: Any, raw_nc: nats.NATS) -> None:
    def upper(message: dict[str, Any]) -> str:
        return str(message["payload"]["content"]).upper()

    def broken(message: dict[str, Any]) -> None:
        raise ValueError("no")

    a = await make_agent("svc-a", "summarizer", capabilities={"upper": upper, "broken": broken})
    await make_agent("svc-b", "summarizer", capabilities={"upper": upper})
    await make_agent("other-1", "planner")

    pings = await collect(raw_nc, "$SRV.PING", 3)
    assert sorted((p["name"], p["id"]) for p in pings) == [("planner", "other-1"), ("summarizer", "svc-a"), ("summarizer", "svc-b")]
    for p in pings:
        assert p["type"] == "io.nats.micro.v1.ping_response" and p["version"] == VERSION
        ServicePing.from_dict(p)  # nats.micro's own parser accepts it
    assert sorted(p["id"] for p in await collect(raw_nc, "$SRV.PING.summarizer", 2)) == ["svc-a", "svc-b"]
    assert [p["id"] for p in await collect(raw_nc, "$SRV.PING.summarizer.svc-a", 1)] == ["svc-a"]

    infos = await collect(raw_nc, "$SRV.INFO.summarizer.svc-a", 1)
    assert len(infos) == 1
    info = ServiceInfo.from_dict(infos[0])
    assert info.type == "io.nats.micro.v1.info_response"
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("upper", "agents.test.task.upper.*", "upper"), ("broken", "agents.test.task.broken.*", "broken")]
    assert all(isinstance(v, str) for e in info.endpoints for v in e.metadata.values())  # ADR-32: string metadata

    for _ in range(3):
        assert await a.send_task("upper", "hi") == "HI"
    with pytest.raises(AgentCoreError):
        await a.send_task("broken", "x")

    stats_all = await collect(raw_nc, "$SRV.STATS.summarizer", 2)
    assert len(stats_all) == 2
    raw = next(s for s in stats_all if s["id"] == "svc-a")
    assert raw["type"] == "io.nats.micro.v1.stats_response"
    stats = ServiceStats.from_dict(raw)
    assert isinstance(stats.started, datetime)
    by = {e.name: e for e in stats.endpoints}
    other = next(s for s in stats_all if s["id"] == "svc-b")
    served = by["upper"].num_requests + next(e for e in other["endpoints"] if e["name"] == "upper")["num_requests"]
    assert served == 3  # the queue group shares the tasks between the two replicas
    assert by["upper"].num_errors == 0
    assert by["broken"].num_requests == 1 and by["broken"].num_errors == 1
    assert "ValueError: no" in (by["broken"].last_error or "")
    assert by["broken"].processing_time > 0 and by["broken"].average_processing_time == by["broken"].processing_time


async def test_a_paused_agent_still_answers_and_nats_request_works(make_agent: Any, raw_nc: nats.NATS) -> None:
    a = await make_agent("svc-p", "worker", capabilities={"echo": lambda m: m})
    await a.pause()
    reply = await raw_nc.request("$SRV.INFO.worker.svc-p", b"", timeout=2)
    assert json.loads(reply.data)["id"] == "svc-p"


async def test_service_name_and_disable(make_agent: Any, raw_nc: nats.NATS) -> None:
    await make_agent("svc-n", "my.type", service__name="custom")
    await make_agent("svc-off", "worker", service__enabled=False)
    pings = await collect(raw_nc, "$SRV.PING", 1)
    assert [(p["name"], p["id"]) for p in pings] == [("custom", "svc-n")]
