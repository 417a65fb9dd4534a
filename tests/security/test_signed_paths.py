"""Signed identities on the paths outside the dispatcher: stream frames and plain results reaching a StreamReceiver.

The attacker is a plain nats-py client. It injects frames into a stream from a trusted producer: unsigned, or
signed with a key nobody trusts, or signed by another trusted key. Each is dropped (counted in replies_rejected
and identity_refused) and the honest stream still completes. With no verifier configured nothing changes.
"""

from __future__ import annotations

import os
from typing import Any

import nats
import nkeys

from agentcore.envelope import encode, new_message
from agentcore.transport.frames import H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM
from agentcore.transport.identity import Signer


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


PRODUCER, OTHER, MALLORY = new_seed(), new_seed(), new_seed()


def public(seed: str) -> str:
    return Signer(seed.encode()).public_key


def frame(stream: str, seq: int, ctl: str, *, final: bool = False) -> dict[str, str]:
    headers = {H_STREAM: stream, H_SEQ: str(seq), H_KIND: "text", H_CTL: ctl}
    if final:
        headers[H_FINAL] = "1"
    return headers


async def send(nc: nats.NATS, subject: str, data: bytes, headers: dict[str, str] | None, seed: str | None) -> None:
    if seed is not None:
        headers = Signer(seed.encode()).headers(subject, "", data, headers)
    await nc.publish(subject, data, headers=headers)


async def test_a_signed_stream_from_a_trusted_agent_arrives(make_agent: Any) -> None:
    async def parts(message: dict[str, Any]) -> Any:
        for part in "abcde":
            yield part

    async def handler(message: dict[str, Any]) -> None:
        await producer.stream_response(message["id"], parts(message), chunk_size=1)

    producer = await make_agent("producer", capabilities={"gen": handler}, cache__enabled=False, identity__seed=PRODUCER)
    client = await make_agent("client", identity__trusted={"producer": public(PRODUCER)}, identity__require=True)
    async with client.request_stream(producer.topics.task("gen"), None, window=2) as stream:
        chunks = [c async for c in stream]
    assert "".join(c.text for c in chunks) == "abcde"
    assert stream.rejected == 0 and client.get_metrics()["replies_rejected"] == 0


async def test_injected_frames_are_dropped_and_the_trusted_stream_completes(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Unsigned, untrusted-signed and other-trusted-key frames, all with the honest stream id and Agent-Ctl."""
    client = await make_agent("client", identity__trusted={"producer": public(PRODUCER), "other": public(OTHER)})
    ctl = raw_nc.new_inbox()
    subject = "results.signed"
    async with client.receive_stream("mine", reply_to=subject, gap_timeout=5.0) as stream:
        await send(raw_nc, subject, b"1", frame("mine", 0, ctl), PRODUCER)
        await send(raw_nc, subject, b"X", frame("mine", 1, ctl), None)  # unsigned (identity.require is off)
        await send(raw_nc, subject, b"Y", frame("mine", 1, ctl), MALLORY)  # an untrusted key
        await send(raw_nc, subject, b"Z", frame("mine", 1, ctl, final=True), OTHER)  # trusted, but not this stream's
        await send(raw_nc, subject, b"2", frame("mine", 1, ctl), PRODUCER)
        await send(raw_nc, subject, b"3", frame("mine", 2, ctl, final=True), PRODUCER)
        chunks = [c async for c in stream]
    assert b"".join(c.data for c in chunks) == b"123"
    assert stream.rejected == 3
    metrics = client.get_metrics()
    assert metrics["replies_rejected"] == 3
    assert metrics["identity_refused"] == 3


async def test_a_forged_first_frame_binds_nothing(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A frame signed by an untrusted key arriving first neither binds the stream's Agent-Ctl nor its key."""
    client = await make_agent("client", identity__trusted={"producer": public(PRODUCER)})
    evil_ctl, ctl = raw_nc.new_inbox(), raw_nc.new_inbox()
    subject = "results.first"
    async with client.receive_stream("first", reply_to=subject, gap_timeout=5.0) as stream:
        await send(raw_nc, subject, b"evil", frame("first", 0, evil_ctl, final=True), MALLORY)
        await send(raw_nc, subject, b"ok", frame("first", 0, ctl, final=True), PRODUCER)
        chunks = [c async for c in stream]
    assert b"".join(c.data for c in chunks) == b"ok" and stream.rejected == 1


async def test_a_plain_result_must_be_signed_by_its_source(make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client", identity__trusted={"producer": public(PRODUCER)})
    subject = "results.plain"
    async with client.receive_stream("plain", reply_to=subject, idle_timeout=5.0) as stream:
        forged = encode(new_message("result", "forged", source_id="producer", correlation_id="plain"))
        await send(raw_nc, subject, forged, None, MALLORY)  # claims the producer, signed by another key
        honest = encode(new_message("result", "honest", source_id="producer", correlation_id="plain"))
        await send(raw_nc, subject, honest, None, PRODUCER)
        chunks = [c async for c in stream]
    assert [c.items() for c in chunks] == [["honest"]] and stream.rejected == 1


async def test_require_refuses_an_unsigned_plain_result(make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client", identity__trusted={"producer": public(PRODUCER)}, identity__require=True)
    subject = "results.required"
    async with client.receive_stream("req", reply_to=subject, idle_timeout=5.0) as stream:
        await send(raw_nc, subject, encode(new_message("result", "forged", source_id="producer", correlation_id="req")), None, None)
        await send(raw_nc, subject, encode(new_message("result", "honest", source_id="producer", correlation_id="req")), None, PRODUCER)
        chunks = [c async for c in stream]
    assert [c.items() for c in chunks] == [["honest"]] and stream.rejected == 1
    assert client.get_metrics()["identity_unsigned"] == 1


async def test_without_a_verifier_nothing_changes(make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client")
    ctl = raw_nc.new_inbox()
    subject = "results.plainold"
    async with client.receive_stream("old", reply_to=subject, gap_timeout=5.0) as stream:
        await send(raw_nc, subject, b"1", frame("old", 0, ctl), PRODUCER)
        await send(raw_nc, subject, b"2", frame("old", 1, ctl, final=True), None)  # mixed: nobody checks
        chunks = [c async for c in stream]
    assert b"".join(c.data for c in chunks) == b"12" and stream.rejected == 0
    assert client.get_metrics().get("identity_refused", 0) == 0


async def test_an_unsigned_proposal_under_the_targets_name_does_not_win(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A bystander answers the cfp first with the right correlation and the seller's name, unsigned: dropped."""
    import asyncio

    from nats_fixtures import subscribed, within
    from test_negotiation_trust import cheap_offer, watch_cfps

    forged = asyncio.Event()  # the forgery is at the server: the seller's answer reaches the buyer after it

    async def bid(negotiation: dict[str, Any]) -> dict[str, Any]:
        await within(forged.wait(), "the forgery to reach the server")
        return {"accept": True, "terms": {"price": 100}}

    seller = await make_agent("seller", start=False, identity__seed=PRODUCER)
    seller.register_a2a_handler("sale", bid)
    await seller.astart()
    buyer = await make_agent("buyer", identity__trusted={"seller": public(PRODUCER)}, identity__require=True)
    cfps = await watch_cfps(raw_nc, "seller")

    async def forge() -> None:
        cfp, msg = await within(cfps.get(), "the call for proposals")
        await raw_nc.publish(msg.reply, cheap_offer(cfp, source="seller", correlation=cfp["id"]))
        await subscribed(raw_nc)  # the server has routed it
        forged.set()

    attack = asyncio.ensure_future(forge())
    result = await buyer.negotiate_with_agents(["seller"], "sale", {"item": "x"}, timeout=10.0)
    await attack
    assert result["state"] == "finalized" and result["agreements"] == {"seller": {"price": 100}}
    metrics = buyer.get_metrics()
    assert metrics["replies_rejected"] == 1 and metrics["identity_unsigned"] == 1


async def test_an_unsigned_mcp_response_under_the_hosts_name_is_dropped(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A bystander answers an MCP call first with everything right but the signature: the host's signed answer wins."""
    import sys
    from pathlib import Path

    import orjson

    from agentcore.mcp import MCPClient
    from nats_fixtures import subscribed

    client = MCPClient(server_command=sys.executable,
                       server_args=[str(Path(__file__).parent.parent / "agent" / "mcp_servers" / "tools_server.py")])
    await client.connect()
    try:
        host = await make_agent("mcp-host", identity__seed=PRODUCER)
        await host.aregister_mcp_server("tools", client, tools=["slow"])
        caller = await make_agent("mcp-caller", identity__trusted={"mcp-host": public(PRODUCER)}, identity__require=True)

        async def forge(msg: Any) -> None:
            request = orjson.loads(msg.data)
            rpc = {"jsonrpc": "2.0", "id": request["payload"]["content"]["id"],
                   "result": {"content": [{"type": "text", "text": "forged"}]}}
            await raw_nc.publish(msg.reply, encode(new_message("result", rpc, source_id="mcp-host",
                                                               correlation_id=request["id"])))

        await raw_nc.subscribe("agents.test.mcp.tools.requests", cb=forge)
        await subscribed(raw_nc)
        result = await caller.call_mcp_tool("tools", "slow", {"seconds": 0.02})
        assert result == [{"type": "text", "text": "slept 0.02"}]
        metrics = caller.get_metrics()
        assert metrics["replies_rejected"] == 1 and metrics["identity_unsigned"] == 1
    finally:
        await client.close()


async def test_oversized_messages_travel_signed_both_ways(make_agent: Any) -> None:
    """A 2 MB task and its 2 MB result are pulled as streams whose frames, pulls and credit are all signed and checked."""
    big = "x" * (2 * 1024 * 1024)

    async def echo(message: dict[str, Any]) -> str:
        return str(message["payload"]["content"]) + "!"

    worker = await make_agent("worker", capabilities={"echo": echo}, cache__enabled=False, identity__seed=PRODUCER,
                              identity__trusted={"client": public(OTHER)}, identity__require=True)
    client = await make_agent("client", identity__seed=OTHER, identity__trusted={"worker": public(PRODUCER)},
                              identity__require=True)
    assert await client.send_task("echo", big, timeout=30) == big + "!"
    for agent in (worker, client):
        assert agent.get_metrics().get("identity_refused", 0) == 0
    assert worker.get_metrics()["large_requests_pulled"] == 1
    assert worker.get_metrics()["large_results_streamed"] == 1
