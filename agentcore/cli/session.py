"""The command's configuration (file, environment and options) and the agent it talks to NATS through."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator

from ..agent import NATSAgent
from ..config import AgentConfig
from ..errors import NoRespondersError

__all__ = ("OPTIONS", "config_from", "settings_from", "connected", "first_of", "no_agent", "stop_on_signals")

# option, configuration key, environment variable (as the nats CLI reads them). An option given wins over the
# variable, which wins over the --config file; NATS_URL is read by AgentConfig itself.
OPTIONS = (("server", "nats.servers", None), ("env", "nats.environment", None),
           ("subject_prefix", "nats.subject_prefix", None), ("user", "nats.user", "NATS_USER"),
           ("password", "nats.password", "NATS_PASSWORD"), ("token", "nats.token", "NATS_TOKEN"),
           ("creds", "nats.user_credentials", "NATS_CREDS"), ("nkey", "nats.nkeys_seed", "NATS_NKEY"),
           ("tls_ca", "nats.tls_ca", "NATS_CA"), ("tls_cert", "nats.tls_cert", "NATS_CERT"),
           ("tls_key", "nats.tls_key", "NATS_KEY"))


def settings_from(args: argparse.Namespace) -> dict[str, str]:
    """Return the configuration keys the options and their environment variables set."""
    settings = {}
    for option, key, variable in OPTIONS:
        value = getattr(args, option, None) or (os.environ.get(variable) if variable else None)
        if value is not None:
            settings[key] = value
    return settings


def config_from(args: argparse.Namespace) -> AgentConfig:
    """Return the configuration the command asks for: --config's file, $NATS_URL, then the options themselves."""
    config = AgentConfig.from_yaml(args.config) if args.config else AgentConfig()
    for key, value in settings_from(args).items():
        config.set(key, value)
    return config


class _Client(NATSAgent):
    """The command's own agent: it sends and listens, and serves nothing (no control subject, not in discovery)."""

    def _setup_subscriptions(self) -> None:
        pass


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace) -> AsyncIterator[NATSAgent]:
    """Connect an agent for the command (as --as ID, else a fresh cli-* id) and stop it afterwards."""
    config = config_from(args)
    config.set("agent.duplicate_id", "allow")  # --as names an id that may well be live: it is borrowed, not served
    config.set("agent.heartbeat_interval", 3600.0)
    agent = _Client(args.as_id or f"cli-{os.urandom(3).hex()}", "cli", config)
    await agent.astart()
    try:
        yield agent
    finally:
        await agent.astop()


def no_agent(agent: NATSAgent, target: str) -> NoRespondersError:
    """Return the error to show when nobody answers for target: which environment and server were asked."""
    servers = ", ".join(agent.config["nats.servers"])
    return NoRespondersError(f"no agent {target} in environment {agent.environment!r} (subject root "
                             f"{agent.topics.root!r}) on {servers}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """Give an event that the first SIGINT or SIGTERM sets (both stop a long-running command cleanly)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def first_of(*waits: Awaitable[object]) -> None:
    """Return as soon as one of waits is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
