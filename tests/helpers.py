"""Helpers shared by tests/core and tests/agent (importable from both: tests/conftest.py puts tests/ on sys.path).

Envelope builders, the handlers and agents several suites need (one that never finishes, one that defers its
answers), a fake clock, and the runner that reruns an agent suite on the pure-Python core.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import orjson

from agentcore import NATSAgent
from nats_fixtures import within

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
AGENT_SUITES = (TESTS / "agent", TESTS / "security")  # the suites against a real nats-server


# ---------------------------------------------------------------------------------------------------------------
# Envelopes as a plain NATS client writes them (the guide's AgentMessage).

def task_envelope(message_id: str, content: Any, *, source: str = "plain-client", capability: str = "work",
                  timeout_ms: float | None = 30000, conversation: str | None = None, **fields: Any) -> dict[str, Any]:
    """A task envelope with every field of the guide's AgentMessage; fields override top-level keys as they are."""
    message: dict[str, Any] = {
        "id": message_id,
        "timestamp": time.time(),
        "version": "1.0",
        "type": "task",
        "source": {"id": source, "type": "agent"},
        "target": None,
        "replyTo": None,
        "correlationId": None,
        "context": {"conversationId": conversation, "metadata": {}},
        "payload": {"content": content},
        "routing": {"priority": 5, "capabilities": [capability], "timeout": timeout_ms},
    }
    message.update(fields)
    return message


def task_bytes(message_id: str, content: Any, **options: Any) -> bytes:
    """task_envelope() encoded for the wire."""
    return orjson.dumps(task_envelope(message_id, content, **options))


# ---------------------------------------------------------------------------------------------------------------
# Handlers and agents.

class Never:
    """An async handler (task or batch) that never finishes on its own; counts its calls, started is set once it runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def wait_started(self, timeout: float = 30.0) -> None:
        await within(self.started.wait(), "the handler to start", timeout)


class Deferring(NATSAgent):
    """process_message takes every message and returns True without publishing a result: the answer is owed.

    taken lists the messages in arrival order. With answer_after set, each is answered that many seconds later
    from another thread (publish_result(id, answer)), as an application answering from elsewhere would.
    """

    answer_after: float | None = None
    answer: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: list[dict[str, Any]] = []

    async def process_message(self, topic: str, message: dict[str, Any]) -> bool:
        self.taken.append(message)
        if self.answer_after is not None:
            threading.Timer(self.answer_after, self.publish_result, (message["id"], self.answer)).start()
        return True

    def taken_ids(self, content: Any = ...) -> list[str]:
        """The ids of the messages taken so far (only those whose content is content, when given)."""
        return [m["id"] for m in self.taken if content is ... or m["payload"]["content"] == content]


class FakeClock:
    """A clock that tests move by hand; it counts how often it is read."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------------------------------------------------
# The agent suites on the pure-Python core.

def agent_suites() -> list[str]:
    """Every agent (and security) test file, relative to the repository root."""
    return sorted(str(path.relative_to(ROOT)) for folder in AGENT_SUITES for path in folder.glob("test_*.py"))


@dataclass
class PureRun:
    returncode: int
    output: str
    failed: list[str]  # node ids pytest reported as failed or in error
    ran: dict[str, int]  # file -> how many of its tests ran (passed, failed, skipped or xfailed)

    def failed_in(self, path: str) -> list[str]:
        """Return the failed node ids of the file at path (a collection error names the file itself)."""
        return [name for name in self.failed if name == path or name.startswith(path + "::")]

    def report(self, path: str | None = None, tail: int = 3000) -> str:
        failed = self.failed if path is None else self.failed_in(path)
        names = "\n".join(f"  {name}" for name in failed) or "  (none named: see the output)"
        return f"failed on the pure core (exit {self.returncode}):\n{names}\n--- output (tail) ---\n{self.output[-tail:]}"


_SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def run_on_pure_core(*paths: str, timeout: float = 540.0) -> PureRun:
    """Run pytest on paths in a subprocess with AGENTCORE_NO_EXTENSIONS=1, to the end (no -x).

    python -P keeps the source checkout off sys.path: the installed package is the one tested (a wheel under
    cibuildwheel, say). The failing tests are read from pytest's short summary (-rfE), the tests run per file from
    its JUnit XML report; a file that fails to import is named there, and the other files still run.
    """
    env = {**os.environ, "AGENTCORE_NO_EXTENSIONS": "1"}
    with tempfile.TemporaryDirectory(prefix="agentcore-pure-") as tmp:
        report = Path(tmp) / "junit.xml"
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header",
             "--continue-on-collection-errors", f"--junitxml={report}", *paths],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )
        cases = ElementTree.parse(report).getroot().iter("testcase") if report.exists() else iter(())
        files = {path.removesuffix(".py").replace("/", "."): path for path in paths}  # as the report names them
        ran: dict[str, int] = {}
        for case in cases:  # classname: the file's dotted path, then its class if any
            classname = case.get("classname", "")
            path = files.get(classname) or files.get(classname.rpartition(".")[0])
            if path is not None:
                ran[path] = ran.get(path, 0) + 1
    output = proc.stdout + proc.stderr
    return PureRun(proc.returncode, output, sorted(set(m.group(2) for m in _SUMMARY_LINE.finditer(proc.stdout))), ran)


# ---------------------------------------------------------------------------------------------------------------
# A stream a bystander attacks (tests/security): a producer paced by the attacker, and the attacker's view of it.

async def paced_producer(make_agent: Any, watching: asyncio.Event, injected: asyncio.Event) -> NATSAgent:
    """Streams "a" once the attacker watches the inbox, then "b" ... "e" once it has injected its frames (one frame each)."""

    async def parts(message: dict[str, Any]) -> Any:
        await within(watching.wait(), "the attacker to watch the inbox")
        yield "a"
        await within(injected.wait(), "the attacker to inject")
        for part in "bcde":
            yield part

    async def handler(message: dict[str, Any]) -> None:
        await agent.stream_response(message["id"], parts(message), chunk_size=1)

    agent = await make_agent("producer", capabilities={"gen": handler}, cache__enabled=False)
    return agent


async def watch_streams(raw_nc: Any, watching: asyncio.Event, injected: asyncio.Event, own_ctl: str,
                        inject: Any) -> None:
    """Make raw_nc see every task and its stream inbox; on the producer's first frame, await inject(task_id, inbox,
    frame headers) once, make sure the server has what it sent, and set injected. Frames carrying own_ctl (the
    attacker's own Agent-Ctl) and the attacker's own copies of frame 0 never start it."""
    from agentcore.transport.frames import H_CTL, H_SEQ
    from nats_fixtures import subscribed

    async def on_task(msg: Any) -> None:
        task_id = orjson.loads(msg.data)["id"]
        inbox = msg.reply
        started = [False]

        async def on_frame(frame_msg: Any) -> None:
            headers = frame_msg.headers or {}
            if headers.get(H_SEQ) != "0" or headers.get(H_CTL) == own_ctl or started[0]:
                return
            started[0] = True
            await inject(task_id, inbox, headers)
            await subscribed(raw_nc)  # the server has them all before the producer's next frame
            injected.set()

        await raw_nc.subscribe(inbox, cb=on_frame)
        await subscribed(raw_nc)
        watching.set()

    await raw_nc.subscribe("agents.test.task.>", cb=on_task)
    await subscribed(raw_nc)
