"""`agentcore tail`: a live, decoded view of the environment's traffic (tasks, results, events, status)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from nats.aio.msg import Msg

from .. import loops
from .._impl import validate_token
from ..envelope import decode
from ..errors import EnvelopeError
from ..topics import Topics
from ..transport.frames import H_FINAL, H_KIND, H_SEQ, H_STREAM
from .output import dumps, emit, shorten
from .session import connected, first_of, stop_on_signals

__all__ = ("tail",)

DEFAULT_KINDS = ("task", "result", "event", "status")


def tail(args: argparse.Namespace) -> int:
    """Print every message on the chosen subjects as it arrives, until Ctrl-C (or --count messages)."""
    return loops.run(_tail(args))


def _kinds(args: argparse.Namespace) -> list[str]:
    kinds = [k.strip() for given in (args.kinds or []) for k in given.split(",") if k.strip()]
    return [validate_token(k) for k in kinds] or list(DEFAULT_KINDS)


def _subjects(topics: Topics, args: argparse.Namespace, kinds: list[str]) -> list[str]:
    pattern: str | None = args.pattern
    if pattern is None:
        subjects = [f"{topics.prefix}.{kind}.>" for kind in kinds]
    elif "/" in pattern or pattern.startswith((topics.root + ".", "_INBOX.")):
        subjects = [topics.to_subject(pattern)]  # a guide topic, or a whole subject
    else:
        subjects = [topics.to_subject(f"{topics.prefix}.{pattern}")]  # below {root}.{env}
    return [*subjects, "_INBOX.>"] if args.replies else subjects


def _kind(topics: Topics, subject: str) -> str:
    if subject.startswith(topics.prefix + "."):
        return subject[len(topics.prefix) + 1 :].partition(".")[0]
    return "reply" if subject.startswith("_INBOX.") else "other"


def _about(message: dict[str, Any] | None, subject: str, agent_id: str) -> bool:
    if agent_id in subject.split("."):
        return True
    return message is not None and agent_id in (message["source"].get("id"), message.get("target"))


def _summary(kind: str, message: dict[str, Any], width: int) -> str:
    payload = message["payload"]
    source = message["source"].get("id", "?")
    target = message.get("target")
    who = f"{source} -> {target}" if target else source
    content = payload.get("content")
    if kind == "status" and isinstance(content, dict):
        load = " ".join(f"{k}={content[k]}" for k in ("in_flight", "queued", "messages_processed") if k in content)
        return f"{who}/{content.get('instance', '?')}  {content.get('status', '?')}  {load}"
    if payload.get("error"):
        error = payload["error"]
        body = f"error {error.get('code')}: {error.get('message')}" if isinstance(error, dict) else f"error {error}"
    else:
        body = content if isinstance(content, str) else dumps(content)
    ref = f"re={message['correlationId']}" if message["type"] == "result" and message.get("correlationId") else f"id={message['id']}"
    return shorten(f"{who}  {ref}  {body}", width)


def _frame(msg: Msg, width: int) -> str:
    """Describe a message that is no envelope: a stream frame (headers say which), or raw bytes."""
    headers = msg.headers or {}
    if H_SEQ in headers:
        final = " final" if headers.get(H_FINAL) == "1" else ""
        return shorten(f"stream {headers.get(H_STREAM)} #{headers[H_SEQ]} {headers.get(H_KIND, '?')}{final}  {msg.data!r}", width)
    return shorten(f"(not an envelope, {len(msg.data)} bytes) {msg.data!r}", width)


async def _tail(args: argparse.Namespace) -> int:
    kinds = _kinds(args)
    async with connected(args) as agent:
        topics = agent.topics
        subjects = _subjects(topics, args, kinds)
        only_kinds = set(kinds) if args.pattern is None or args.kinds else None
        done = asyncio.Event()
        shown = 0

        async def show(msg: Msg) -> None:
            nonlocal shown
            if done.is_set():
                return
            kind = _kind(topics, msg.subject)
            if only_kinds is not None and kind not in only_kinds and not (args.replies and kind == "reply"):
                return
            try:
                message: dict[str, Any] | None = decode(msg.data)
            except EnvelopeError:
                message = None
            if args.agent and not _about(message, msg.subject, args.agent):
                return
            if not args.agent and kind == "status" and message is not None and message["source"].get("type") == "cli":
                return  # an agentcore command announcing itself: not what anyone tails for
            now = time.time()
            if args.json:
                raw = None if message is not None else msg.data.decode("utf-8", "replace")
                emit(dumps({"time": now, "subject": msg.subject, "kind": kind, "message": message, "data": raw}))
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
                where = msg.subject[len(topics.prefix) + 1 :] if kind not in ("reply", "other") else msg.subject
                what = (_summary(kind, message, args.width) if message is not None
                        else _frame(msg, args.width))
                emit(f"{stamp}  {kind:<8} {where:<28} {what}")
            shown += 1
            if args.count is not None and shown >= args.count:
                done.set()

        nc = agent.nc
        subs = [await nc.subscribe(subject, cb=show) for subject in subjects]
        await nc.flush()
        print(f"watching {', '.join(subjects)} on {', '.join(agent.config['nats.servers'])} (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        if any(s.startswith((f"{topics.prefix}.task.", f"{topics.prefix}.>")) for s in subjects):
            print("note: while this watches tasks, a task nobody serves waits for its timeout instead of failing at once "
                  "(this subscription counts as a listener)", file=sys.stderr, flush=True)
        with stop_on_signals() as stop:
            await first_of(stop.wait(), done.wait())
        for sub in subs:
            await sub.unsubscribe()
    return 0
