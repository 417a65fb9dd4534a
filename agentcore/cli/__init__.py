"""The `agentcore` command: run, watch, query and control agents over NATS.

The parser imports nothing heavy; each command's module (and nats-py with it) loads only when that command runs,
so `agentcore --version` and `--help` start fast. Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from .. import __version__

__all__ = ("main",)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

_EPILOG = """\
connection: --server (default $NATS_URL, else nats://127.0.0.1:4222), --env (default: the config file's, else dev),
credentials --user/--password, --token, --creds FILE, --nkey SEEDFILE, TLS --tls-ca/--tls-cert/--tls-key
(defaults $NATS_USER, $NATS_PASSWORD, $NATS_TOKEN, $NATS_CREDS, $NATS_NKEY, $NATS_CA, $NATS_CERT, $NATS_KEY).
"""


def _common() -> argparse.ArgumentParser:
    """Return the options every command that talks to NATS takes."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("-s", "--server", metavar="URL", help="NATS server URL(s), comma-separated (default $NATS_URL)")
    group.add_argument("-e", "--env", metavar="ENV", help="the agents' environment (default: the config file's, else dev)")
    group.add_argument("--subject-prefix", metavar="ROOT", help="the subject root (default: the config file's, else agents)")
    group.add_argument("-c", "--config", metavar="FILE", help="an agent configuration file (YAML, the guide's shape)")
    group.add_argument("--as", dest="as_id", metavar="ID", help="the agent id this command uses (one control.allow lists)")
    group.add_argument("--user", help="user name ($NATS_USER)")
    group.add_argument("--password", help="password ($NATS_PASSWORD)")
    group.add_argument("--token", help="auth token ($NATS_TOKEN)")
    group.add_argument("--creds", metavar="FILE", help="user credentials file ($NATS_CREDS)")
    group.add_argument("--nkey", metavar="FILE", help="nkey seed file ($NATS_NKEY)")
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate to verify the server with ($NATS_CA)")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate ($NATS_CERT)")
    group.add_argument("--tls-key", metavar="FILE", help="client key ($NATS_KEY)")
    return common


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print data as JSON")


def _command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, run: str, help: str,
             parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help, parents=parents)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the `agentcore` command."""
    parser = argparse.ArgumentParser(prog="agentcore", description="Run, watch, query and control agents over NATS.",
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"agentcore-nats {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log at INFO (-vv: DEBUG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]

    server = _command(commands, "server", "agentcore.cli.serve:server", "run a local nats-server (JetStream on) until Ctrl-C", [])
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("-p", "--port", type=int, default=4222, help="client port (default 4222; 0: a free one)")
    server.add_argument("--monitor-port", type=int, metavar="PORT", help="HTTP monitoring port (e.g. 8222)")
    server.add_argument("--no-jetstream", action="store_true", help="run without JetStream")
    server.add_argument("--store", metavar="DIR", help="JetStream store folder (default: a temporary one)")
    server.add_argument("--user", help="require this user name (with --password)")
    server.add_argument("--password", help="the password --user needs")
    server.add_argument("--token", help="require this auth token")

    discover = _command(commands, "discover", "agentcore.cli.commands:discover", "list the live agents", common)
    discover.add_argument("capability", nargs="?", help="only agents with this capability")
    discover.add_argument("-t", "--timeout", type=float, default=0.5, help="how long to collect answers (default 0.5 s)")
    _json_flag(discover)

    for name, what in (("ping", "check that an agent answers"), ("status", "show what an agent says about itself"),
                       ("pause", "make an agent stop taking work"), ("resume", "make a paused agent take work again"),
                       ("shutdown", "stop an agent (it drains its work first)")):
        control = _command(commands, name, "agentcore.cli.commands:control", what, common)
        control.add_argument("agent", help="the agent's id")
        control.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
        _json_flag(control)

    send = _command(commands, "send", "agentcore.cli.commands:send", "send a task to a capability and print its result", common)
    send.add_argument("capability", help="the capability to send the task to")
    send.add_argument("content", help="the task's content: JSON, @FILE holding JSON, or @- for standard input")
    send.add_argument("--stream", action="store_true", help="print the streamed answer's chunks as they come")
    send.add_argument("--specificity", default="default", help="the task subject's last token (default: default)")
    send.add_argument("-t", "--timeout", type=float, default=30.0,
                      help="seconds to wait for the result (streams: between chunks) (default 30)")
    _json_flag(send)

    tail = _command(commands, "tail", "agentcore.cli.tail:tail",
                    "watch tasks, results, events and status on the environment's subjects, decoded", common)
    tail.add_argument("pattern", nargs="?", help="a subject pattern below {root}.{env} (task.summarize.*), a full subject "
                                                 "or a guide topic (agents/task/*); default: every kind given by --type")
    tail.add_argument("--type", dest="kinds", action="append", metavar="KIND",
                      help="message kinds to show: task, result, event, status, control, discovery, mcp, a2a "
                           "(repeat or comma-separate; default task,result,event,status)")
    tail.add_argument("--agent", help="only messages from, to or about this agent id")
    tail.add_argument("--replies", action="store_true", help="also show replies to request inboxes (_INBOX.>)")
    tail.add_argument("-n", "--count", type=int, help="exit after this many messages")
    tail.add_argument("--width", type=int, default=100, help="shorten content to this many characters (0: never)")
    _json_flag(tail)

    run = _command(commands, "run", "agentcore.cli.serve:run",
                   "run an agent (module:attr: an agent, or a function returning one) until Ctrl-C or SIGTERM", common)
    run.add_argument("target", metavar="module:attr", help="e.g. examples.worker:build (a function may take config=)")

    schema = _command(commands, "schema", "agentcore.cli.schema:schema",
                      "write the AsyncAPI 3 document of the environment's capabilities (or, with --tools, the "
                      "capabilities as LLM tool definitions), from live discovery or from --app module:attr", common)
    schema.add_argument("capability", nargs="?", help="only agents with this capability (live discovery)")
    schema.add_argument("--app", metavar="module:attr", help="describe the agent this builds (not started) instead of "
                                                             "asking the live environment")
    schema.add_argument("--tools", nargs="?", const="mcp", choices=("mcp", "openai", "anthropic"), metavar="STYLE",
                        help="print the capabilities as tool definitions: mcp (default), openai or anthropic")
    schema.add_argument("--format", choices=("json", "yaml"), default="json", help="output format (default json)")
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    schema.add_argument("--title", help="the AsyncAPI document's info.title")
    schema.add_argument("-t", "--timeout", type=float, default=0.5, help="how long to collect discovery answers (default 0.5 s)")

    config = _command(commands, "config", "", "work with configuration files", [])
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = _command(config_commands, "check", "agentcore.cli.commands:config_check",
                     "check a configuration file: unknown keys, bad values", [])
    check.add_argument("file", help="the YAML file")
    _json_flag(check)

    demo = _command(commands, "demo", "agentcore.cli.commands:demo",
                    "run worker agents and a coordinator over NATS and print what happened "
                    "(starts a local nats-server unless --server or $NATS_URL names one)", common)
    demo.add_argument("--tasks", type=int, default=200, help="tasks per phase (default 200)")

    bench = _command(commands, "bench", "agentcore.cli.bench:bench",
                     "measure agentcore against raw nats-py in the same run (round trips, throughput, streams, uvloop "
                     "against asyncio, RSS over many tasks) and print the ratios and targets (starts a local "
                     "nats-server unless --server or $NATS_URL names one)", [])
    bench.add_argument("-s", "--server", metavar="URL", help="a NATS server to use (default $NATS_URL, else a local one)")
    bench.add_argument("--quick", action="store_true", help="a seconds-long smoke with tiny sizes (no real measurement)")
    bench.add_argument("--blocks", type=int, metavar="N", help="blocks per loop, interleaved (default 3; --quick 1)")
    bench.add_argument("--suite", dest="suites", action="append", metavar="NAME",
                       help="roundtrip, throughput, stream, uvloop, rss (repeat or comma-separate; default all)")
    bench.add_argument("--loop", dest="loops", action="append", choices=("uvloop", "asyncio"),
                       help="event loops of the suites roundtrip, throughput and stream (repeat; default uvloop, when installed, and asyncio)")
    bench.add_argument("--rss-tasks", type=int, metavar="N", help="small tasks of the suite rss (default 1,000,000; --quick 2,000)")
    bench.add_argument("--json", metavar="FILE", help="save the results, with machine and version info, to FILE")
    bench.add_argument("--compare", metavar="FILE", help="flag every ratio more than 10%% worse than in a saved run")
    bench.add_argument("--load", metavar="FILE", help="show a saved run (agentcore bench --json, or the pytest-benchmark "
                       "history in benchmarks/results/history/) instead of measuring; with --compare: compare the two")
    bench.add_argument("--fail-on-regression", action="store_true", help="with --compare: exit 3 when a ratio is flagged")
    return parser


def _one_line(exc: BaseException) -> str:
    """Return an error as one line (a nats-server log tail keeps only its error lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    errors = [line.split("] ", 1)[-1] for line in lines[1:] if "[FTL]" in line or "[ERR]" in line]
    return " ".join([lines[0], *errors] if errors else lines)


def main(argv: list[str] | None = None) -> int:
    """Run the agentcore command line and return its exit code."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    module_name, _, name = args.run.partition(":")
    try:
        command: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), name)
        return command(args)
    except KeyboardInterrupt:
        print("agentcore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `agentcore tail | head`
        sys.stderr.close()
        return 0
    except Exception as exc:  # a command's failure is one line, never a traceback (-vv shows it)
        if args.verbose > 1:
            logging.getLogger("agentcore.cli").exception("%s failed", args.command)
        print(f"agentcore: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
