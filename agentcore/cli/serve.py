"""The long-running commands: `agentcore server` (a local nats-server) and `agentcore run module:attr` (an agent).

Both run until SIGINT (Ctrl-C) or SIGTERM (what `docker stop` sends) and then stop cleanly, exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import socket
import sys
from typing import Any

from .. import loops
from ..agent import NATSAgent
from ..errors import ServerStartError
from .output import emit
from .session import OPTIONS, config_from, first_of, stop_on_signals

__all__ = ("run", "server")


def server(args: argparse.Namespace) -> int:
    """Run a local nats-server (JetStream on unless --no-jetstream) and print its URL, until Ctrl-C or SIGTERM."""
    from ..server import NATSServer

    if args.port:  # a busy port would answer the readiness check with the other server's INFO
        with socket.socket() as probe:
            try:
                probe.bind((args.host, args.port))
            except OSError:
                raise ServerStartError(f"port {args.port} on {args.host} is in use (another nats-server?): "
                                       "--port 0 picks a free one") from None
    extra = ["-m", str(args.monitor_port)] if args.monitor_port else []
    nats = NATSServer(host=args.host, port=args.port or None, jetstream=not args.no_jetstream, store_dir=args.store,
                      user=args.user, password=args.password, token=args.token, extra_args=extra)
    nats.start()
    try:
        features = [f"JetStream store {nats.store_dir}" if nats.jetstream else "no JetStream"]
        if args.monitor_port:
            features.append(f"monitoring http://{args.host}:{args.monitor_port}")
        lines = [f"nats-server listening on {nats.url} ({'; '.join(features)})",
                 f"use it: export NATS_URL={nats.url}   (Ctrl-C stops the server)"]
        loops.run(_until_stopped(nats, lines))
    finally:
        nats.close()
    emit("nats-server stopped")
    return 0


async def _until_stopped(nats: Any, lines: list[str]) -> None:
    with stop_on_signals() as stop:
        for line in lines:  # said only once Ctrl-C is handled: whoever reads the URL may signal at once
            emit(line)
        while not stop.is_set():
            if not nats.running:
                raise ServerStartError("nats-server exited on its own")
            await first_of(stop.wait(), asyncio.sleep(0.5))


def run(args: argparse.Namespace) -> int:
    """Import module:attr, start the agent it is (or returns) and serve until Ctrl-C, SIGTERM or a shutdown command."""
    if args.server:
        os.environ["NATS_URL"] = args.server  # set before the import: a module may build its agent right away
    target = _import(args.target)
    return loops.run(_run(args, target))


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not module:attr (e.g. examples.worker:build)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules of the current folder import
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f"cannot import {module_name}: no module named {exc.name} (run from the folder that holds it)") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr}") from None
    return obj


def _overrides(args: argparse.Namespace) -> list[str]:
    """Return the options given that configure an agent (which only a function taking config= can honour)."""
    given = [f"--{option.replace('_', '-')}" for option, _key, _env in OPTIONS
             if option != "server" and getattr(args, option, None) is not None]
    return [*given, *(["--config"] if args.config else []), *(["--as"] if args.as_id else [])]


async def _agent_from(target: Any, args: argparse.Namespace) -> NATSAgent:
    if isinstance(target, NATSAgent):
        if _overrides(args):
            raise ValueError(f"{args.target} is an agent built already: {', '.join(_overrides(args))} need a function "
                             "that takes config= and returns the agent (def build(config): ...)")
        return target
    if not callable(target):
        raise TypeError(f"{args.target} is a {type(target).__name__}, not an agent or a function returning one")
    if "config" in inspect.signature(target).parameters:
        if args.as_id:
            raise ValueError("--as names the id of a command's own agent; the agent run here has its own id")
        made = target(config=config_from(args))
    elif _overrides(args):
        raise ValueError(f"{args.target} takes no config=, so {', '.join(_overrides(args))} cannot reach its agent")
    else:
        made = target()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, NATSAgent):
        raise TypeError(f"{args.target} returned a {type(made).__name__}, not a NATSAgent")
    return made


async def _run(args: argparse.Namespace, target: Any) -> int:
    agent = await _agent_from(target, args)
    with stop_on_signals() as stop:  # before starting: a SIGTERM while connecting stops it right after
        if agent.status not in ("running", "paused"):
            await agent.astart()
        info = agent.describe()
        servers = ", ".join(agent.config["nats.servers"])
        emit(f"agent {agent.agent_id} ({agent.agent_type}, instance {info['instance']}) serving "
             f"{', '.join(agent.capabilities) or 'no capabilities'} in environment {agent.environment!r} on {servers} "
             "(Ctrl-C stops it)")
        if agent.runs_own_loop:  # the module started it with start(): its loop runs in a thread of its own
            while not stop.is_set() and agent.status != "stopped":
                await first_of(stop.wait(), asyncio.sleep(0.2))
            await asyncio.to_thread(agent.stop)
        else:
            await first_of(stop.wait(), agent.wait_stopped())
            if agent.status != "stopped":
                emit(f"stopping agent {agent.agent_id} (draining its work)")
                await agent.astop()
    emit(f"agent {agent.agent_id} stopped")
    return 0
