"""The `agentcore` command: `agentcore demo` runs agents over NATS (starting a local nats-server when NATS_URL is unset)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import implementation

__all__ = ("main",)


def _demo(args: argparse.Namespace) -> int:
    from .demos.demo import run_demo

    url = os.environ.get("NATS_URL")
    server = None
    if not url:
        from .server import NATSServer

        server = NATSServer(jetstream=True).start()  # JetStream for the persistence step
        url = server.url
        print(f"started a local nats-server at {url} (set NATS_URL to use your own)")
    try:
        print(f"agentcore core implementation: {implementation}")
        asyncio.run(run_demo(url, tasks=args.tasks))
    finally:
        if server is not None:
            server.close()
            print("stopped the local nats-server")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the agentcore command line."""
    parser = argparse.ArgumentParser(prog="agentcore", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run worker agents and a coordinator over NATS and print what happened")
    demo.add_argument("--tasks", type=int, default=200, help="tasks per phase (default 200)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
