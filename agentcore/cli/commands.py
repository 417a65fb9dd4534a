"""The commands that ask something and print the answer: discover, control, send, config check, demo."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import loops
from ..config import AgentConfig
from ..errors import ConfigError, NoRespondersError
from .output import dumps, emit, table
from .session import connected, no_agent, settings_from

__all__ = ("config_check", "control", "demo", "discover", "send")


def discover(args: argparse.Namespace) -> int:
    """List the live agents (one row per instance) with their load."""
    return loops.run(_discover(args))


async def _discover(args: argparse.Namespace) -> int:
    async with connected(args) as agent:
        found = await agent.discover(args.capability, timeout=args.timeout)
    if args.json:
        emit(dumps(found))
    elif not found:
        servers = ", ".join(agent.config["nats.servers"])
        print(f"no agents{f' with {args.capability}' if args.capability else ''} answered within {args.timeout}s in "
              f"environment {agent.environment!r} on {servers}", file=sys.stderr)
    else:
        rows = [[info.get("id"), info.get("instance"), info.get("type"), ",".join(info.get("capabilities") or []) or "-",
                 info.get("status"), info.get("in_flight"), info.get("queued"), _ms(info.get("p50_latency_ms"))]
                for info in found]
        emit(table(["ID", "INSTANCE", "TYPE", "CAPABILITIES", "STATUS", "IN-FLIGHT", "QUEUED", "P50"], rows))
    return 0


def _ms(value: Any) -> str | None:
    return f"{value:.2f} ms" if isinstance(value, (int, float)) else None


def control(args: argparse.Namespace) -> int:
    """Send a control command (ping, status, pause, resume, shutdown) to an agent and print its answer."""
    return loops.run(_control(args))


async def _control(args: argparse.Namespace) -> int:
    async with connected(args) as agent:
        t0 = time.perf_counter()
        try:
            answer = await agent.control(args.agent, args.command, timeout=args.timeout)
        except NoRespondersError:
            raise no_agent(agent, args.agent) from None
        elapsed = (time.perf_counter() - t0) * 1000
    if args.json:
        emit(dumps(answer))
    elif args.command == "ping":
        emit(f"{args.agent}: pong ({answer.get('status')}) in {elapsed:.1f} ms")
    elif args.command == "status" and isinstance(answer, dict):
        width = max(map(len, answer), default=0)
        for key, value in answer.items():
            emit(f"{key.ljust(width)}  {_shown(key, value)}")
    else:
        emit(f"{args.agent}: {answer.get('status') if isinstance(answer, dict) else answer}")
    return 0


def _shown(key: str, value: Any) -> str:
    if key.endswith("_at") and isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return value if isinstance(value, str) else dumps(value)


def _content(arg: str) -> Any:
    """Return the task content an argument names: JSON, @FILE holding JSON, or @- for standard input."""
    if arg == "@-":
        text, source = sys.stdin.read(), "standard input"
    elif arg.startswith("@"):
        try:
            text, source = Path(arg[1:]).read_text(encoding="utf-8"), arg[1:]
        except OSError as exc:
            raise ValueError(f"cannot read the task content from {arg[1:]}: {exc.strerror or exc}") from None
    else:
        text, source = arg, "the task content"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not JSON ({exc}); a string needs JSON quotes, as in '\"some text\"'") from None


def send(args: argparse.Namespace) -> int:
    """Send a task to a capability; print the result, or with --stream each chunk as it comes."""
    content = _content(args.content)
    return loops.run(_send(args, content))


async def _send(args: argparse.Namespace, content: Any) -> int:
    async with connected(args) as agent:
        try:
            if args.stream:
                await _print_stream(agent, args, content)
                return 0
            result = await agent.send_task(args.capability, content, specificity=args.specificity, timeout=args.timeout)
        except NoRespondersError:
            raise no_agent(agent, f"serves {args.capability!r}") from None
    if args.json:
        emit(dumps(result))
    else:
        emit(result if isinstance(result, str) else dumps(result, pretty=True))
    return 0


async def _print_stream(agent: Any, args: argparse.Namespace, content: Any) -> None:
    """Print each chunk as it arrives: text and bytes as they are, JSON items one per line (--json: one object each)."""
    out = sys.stdout
    open_line = False
    pending = b""  # a JSON item larger than a chunk spans chunks
    topic = agent.topics.task(args.capability, args.specificity)
    async with agent.request_stream(topic, content, capabilities=[args.capability], idle_timeout=args.timeout) as stream:
        async for chunk in stream:
            if args.json:
                data = chunk.text if chunk.kind == "text" else base64.b64encode(chunk.data).decode()
                emit(dumps({"seq": chunk.seq, "kind": chunk.kind, "data": data, "final": chunk.final}))
            elif chunk.kind == "json":
                pending += chunk.data
                *lines, pending = pending.split(b"\n")
                for line in filter(None, lines):
                    emit(("\n" if open_line else "") + dumps(json.loads(line)))
                    open_line = False
            elif chunk.data:
                out.flush()
                out.buffer.write(chunk.data)
                out.buffer.flush()
                open_line = not chunk.data.endswith(b"\n")
    if open_line:
        emit("")


def config_check(args: argparse.Namespace) -> int:
    """Load a configuration file as an agent would; print what it sets, or the first mistake in it."""
    try:
        config = AgentConfig.from_yaml(args.file, environ={})  # the file alone: $NATS_URL is no part of it
    except ConfigError as exc:
        if not args.json:
            raise
        emit(dumps({"file": args.file, "ok": False, "error": str(exc)}))
        return 1
    defaults = AgentConfig(environ={}).as_dict()
    settings = {k: v for k, v in config.as_dict(hide_secrets=True).items() if k not in defaults or defaults[k] != config[k]}
    if args.json:
        emit(dumps({"file": args.file, "ok": True, "settings": settings}))
        return 0
    emit(f"{args.file}: ok (environment {config['nats.environment']}, servers {', '.join(config['nats.servers'])})")
    for key, value in settings.items():
        emit(f"  {key} = {value if isinstance(value, str) else dumps(value)}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """Run the demo against --server, $NATS_URL, or a local nats-server it starts itself."""
    from .. import implementation
    from ..demos.demo import run_demo

    if args.server:
        os.environ["NATS_URL"] = args.server  # every agent of the demo reads it
    settings = {key: value for key, value in settings_from(args).items() if key not in ("nats.servers", "nats.environment")}
    url = os.environ.get("NATS_URL")
    server = None
    if not url:
        from ..server import NATSServer

        server = NATSServer(jetstream=True).start()  # JetStream for the persistence step
        url = server.url
        print(f"started a local nats-server at {url} (set NATS_URL to use your own)")
    try:
        print(f"agentcore core implementation: {implementation}")
        loops.run(run_demo(url, tasks=args.tasks, environment=args.env or "demo", settings=settings))
    finally:
        if server is not None:
            server.close()
            print("stopped the local nats-server")
    return 0
