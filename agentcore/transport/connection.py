"""The agent's one nats-py connection: connect options, event callbacks, publishing, size limits and requests."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg

from ..config import AgentConfig
from ..errors import ConfigError, NotConnectedError, PayloadTooLargeError, PermissionDeniedError, SlowConsumerError
from ..metrics import AgentMetrics
from .async_errors import Denials
from .identity import Signer, Verifier, load_seed
from .inline import Accept, RequestMux, forget_connection, send_now
from .subscriptions import confirm as confirm_sent
from .tracecontext import CURRENT, Tracer, with_trace

__all__ = ("Connection",)

log = logging.getLogger("agentcore.agent")

_EVENT_CALLBACKS = frozenset(("error_cb", "disconnected_cb", "closed_cb", "reconnected_cb", "discovered_server_cb",
                              "lame_duck_mode_cb"))
_DEFAULT_MAX_PAYLOAD = 1024 * 1024


def _chain(first: Callable[..., Awaitable[None]] | None, then: Callable[..., Any], name: str) -> Callable[..., Awaitable[None]]:
    async def both(*args: Any) -> None:
        if first is not None:
            await first(*args)
        try:
            result = then(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # raised into nats-py, it would stop the read loop or the close
            log.exception("the %s given in nats.options raised", name)

    return both


def _abandon(connecting: asyncio.Future[NATSClient]) -> None:
    """Cancel a connect attempt without waiting for it; close the client if it connects after all."""

    def settle(fut: asyncio.Future[NATSClient]) -> None:
        if fut.cancelled():
            return
        if fut.exception() is None:
            asyncio.ensure_future(fut.result().close())

    connecting.cancel()
    connecting.add_done_callback(settle)


def _reason(exc: Exception, timeout: float, plaintext: bool) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no nats-server listens there)"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {timeout}s (nats.connect_timeout): the host is unreachable or the server hangs"
    text = str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__
    if isinstance(exc, ssl.SSLError):
        text = f"TLS: {text}"
        if plaintext:  # nats-py upgrades to TLS when the server requires it, verifying against the system's CAs
            text += " (the server requires TLS: use a tls:// URL and set nats.tls_ca to the CA that signed its certificate)"
    elif isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
        text = "Authorization Violation: the server refused the credentials (nats.user/password, token, nkey or creds)"
    return text


def _tls_file(key: str, path: str | None) -> str | None:
    """Return path when it names a readable file; ConfigError naming the key and the file otherwise."""
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{key}: no such file {path!r}")
    return path


def header_size(headers: dict[str, str]) -> int:
    """Return the bytes of the header block nats-py writes for headers (at most: it strips keys and values)."""
    return 12 + sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())


class Connection:
    """Own the nats-py client: connect it, publish through it (typed errors), and multiplex requests over it."""

    def __init__(self, agent_id: str, config: AgentConfig, metrics: AgentMetrics, *,
                 closing: Callable[[], bool], reconnected: Callable[[], None]) -> None:
        self.agent_id = agent_id
        self.config = config
        self.metrics = metrics
        self.nc: NATSClient | None = None
        self._mux: RequestMux | None = None
        self._closing = closing  # whether a disconnect is our own close, not an outage
        self._reconnected = reconnected
        self._first_errors: list[Exception] | None = None  # while connecting the first time: each attempt's failure
        self._gave_up: asyncio.Event | None = None  # set once every server has failed its first attempt
        self.denials = Denials()  # permission violations the server reported, for callers confirming a send
        self._server_id: str | None = None  # the server we are connected to (a cut-off tells itself by it)
        self._cut: tuple[str | None, list[str]] | None = None  # at a disconnect: (server id, requests waiting then)
        self._checked: set[str] = set()  # subjects publish_checked() confirmed since the last denial
        self._checked_mark = 0
        self._warned: dict[str, int] = {}  # per kind of async error: how many were logged (a flood must not flood the log)
        # Signed identity, opt-in: None (the default) keeps every send on its unsigned path, one `is None` test.
        seed = config["identity.seed"]
        self.signer: Signer | None = Signer(load_seed(seed)) if seed else None
        self.verifier: Verifier | None = (
            Verifier(agent_id, config, metrics, self.signer) if config["identity.trusted"] or config["identity.require"] else None
        )
        # A tracer (agentcore.tracing) opens spans for sends and handler runs; None: trace headers are passed through.
        self.tracer: Tracer | None = None
        # No signer and no tracer: a send needs headers only when a traced handler makes it (one test on the hot path).
        self.bare = self.signer is None

    # ------------------------------------------------------------------ connecting

    def options(self) -> dict[str, Any]:
        """Return the keyword arguments for nats.connect() that the config asks for."""
        cfg = self.config
        options: dict[str, Any] = {
            "servers": cfg["nats.servers"],
            "name": cfg["nats.name"] or self.agent_id,
            "connect_timeout": cfg["nats.connect_timeout"],
            "allow_reconnect": cfg["nats.allow_reconnect"],
            "max_reconnect_attempts": cfg["nats.max_reconnect_attempts"],
            "reconnect_time_wait": cfg["nats.reconnect_time_wait"],
            "ping_interval": cfg["nats.ping_interval"],
            "drain_timeout": cfg["nats.drain_timeout"],
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        for key, option in (("nats.user", "user"), ("nats.password", "password"), ("nats.token", "token"),
                            ("nats.user_credentials", "user_credentials"), ("nats.nkeys_seed", "nkeys_seed"),
                            ("nats.tls_hostname", "tls_hostname")):
            if cfg[key] is not None:
                options[option] = cfg[key]
        if cfg["nats.tls_ca"] or cfg["nats.tls_cert"]:
            ca, cert, key_file = (_tls_file(name, cfg[name]) for name in ("nats.tls_ca", "nats.tls_cert", "nats.tls_key"))
            try:
                context = ssl.create_default_context(cafile=ca)
                if cert:
                    context.load_cert_chain(cert, key_file)
            except (ssl.SSLError, OSError) as exc:  # a file that is no PEM, a key that does not match its certificate
                files = ", ".join(f"{k}={v!r}" for k, v in (("nats.tls_ca", ca), ("nats.tls_cert", cert), ("nats.tls_key", key_file)) if v)
                raise ConfigError(f"TLS files unusable ({files}): {exc}") from exc
            options["tls"] = context
        for name, value in cfg["nats.options"].items():
            if name in _EVENT_CALLBACKS:
                # nats-py takes coroutine functions only; the agent's own callbacks (counting disconnects and
                # reconnects) keep running before yours, and an exception of yours is logged, not raised into nats-py.
                if value is not None:
                    options[name] = _chain(options.get(name), value, name)
            else:
                options[name] = value  # signature_cb, user_jwt_cb and the like return values: passed as they are
        return options

    async def connect(self) -> NATSClient:
        """Connect (bounded in time) and return the client; NotConnectedError says why not, once each server failed."""
        options = self.options()
        # nats-py retries a first connect that fails without end, reporting each failure to error_cb: one failed
        # attempt per server decides here (and is the reason given), and a time bound covers a server that hangs.
        bound = options["connect_timeout"] * len(options["servers"]) + 1.0
        errors = self._first_errors = []
        gave_up = self._gave_up = asyncio.Event()
        connecting = asyncio.ensure_future(nats.connect(**options))
        failing = asyncio.ensure_future(gave_up.wait())
        try:
            # Not wait_for: a cancelled nats.connect() can stay "cancelling" (seen with a refused password under
            # load), and on Python 3.11 wait_for then waits for it forever.
            await asyncio.wait({connecting, failing}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            _abandon(connecting)
            raise
        finally:
            failing.cancel()
            self._first_errors = self._gave_up = None
        if not connecting.done():
            _abandon(connecting)
            self.nc = None
            reason = self._reason(errors[0], options) if errors else f"no connection within {bound:.1f}s"
            raise NotConnectedError(f"agent {self.agent_id} cannot connect to {', '.join(options['servers'])}: {reason}")
        try:
            self.nc = connecting.result()
        except Exception as exc:
            self.nc = None
            raise NotConnectedError(f"agent {self.agent_id} cannot connect to {', '.join(options['servers'])}: "
                                    f"{self._reason(exc, options)}") from exc
        self._server_id = self.nc._server_info.get("server_id") if isinstance(getattr(self.nc, "_server_info", None), dict) else None
        return self.nc

    @staticmethod
    def _reason(exc: Exception, options: dict[str, Any]) -> str:
        plaintext = "tls" not in options and all(not s.startswith("tls://") for s in options["servers"])
        return _reason(exc, options["connect_timeout"], plaintext)

    async def _on_error(self, exc: Exception) -> None:
        errors = self._first_errors
        if errors is not None:  # a failed first attempt: connect() reports it, once, as the reason
            errors.append(exc)
            if len(errors) >= len(self.config["nats.servers"]) and self._gave_up is not None:
                self._gave_up.set()
            return
        # Permission violations and slow-consumer drops arrive only here (nats-py does not raise them): each goes
        # to the requests it concerns, at once, and to callers confirming a send (publish(confirm=True), sync()).
        self.metrics.async_errors += 1
        denial = self.denials.record(exc)
        mux = self._mux
        if denial is not None:
            error = denial.error(self.agent_id)
            failed = 0
            if mux is not None:
                if denial.operation == "publish":
                    failed = mux.fail_subject(denial.subject, error)
                elif denial.operation == "reply":
                    failed = mux.fail_inbox(denial.subject, error)
                elif mux.covers(denial.subject):  # our reply inbox itself is denied: no request can get its answer
                    failed = mux.fail_tokens(mux.tokens(), error)
            self.metrics.counters["permission_denied"] += 1
            self._warn("permission", error, f" ({failed} waiting requests failed)" if failed else "")
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.metrics.counters["slow_consumer_dropped"] += 1
            dropped = SlowConsumerError(
                f"agent {self.agent_id}: nats-py dropped a message on {exc.subject} (sid {exc.sid}): the subscription's "
                "pending limits were full", subject=exc.subject, sid=exc.sid, side="client")
            if mux is not None and mux.covers("", exc.sid):  # a reply to one of our requests: it fails now
                mux.fail_inbox(exc.subject, dropped)
            self._warn("slow", dropped)
            return
        self._warn("other", f"agent {self.agent_id}: NATS error: {exc}")

    def _warn(self, kind: str, what: object, more: str = "") -> None:
        count = self._warned[kind] = self._warned.get(kind, 0) + 1
        if count <= 10 or count % 1000 == 0:  # the first ten, then one in a thousand: a flood must not flood the log
            log.warning("%s%s%s", what, more, "" if count <= 10 else f" ({count} of this kind so far)")

    async def _on_disconnected(self) -> None:
        if self._closing():
            return  # our own close, not an outage
        self.metrics.disconnects += 1
        mux = self._mux
        self._cut = (self._server_id, mux.tokens() if mux is not None else [])
        log.warning("agent %s disconnected from NATS", self.agent_id)

    async def _on_reconnected(self) -> None:
        self.metrics.reconnects += 1
        nc = self.nc
        info = getattr(nc, "_server_info", None)
        server_id = info.get("server_id") if isinstance(info, dict) else None
        cut, self._cut, self._server_id = self._cut, None, server_id
        if cut is not None and cut[0] is not None and cut[0] == server_id:
            self._cut_off(cut[1])
        self._reconnected()
        log.info("agent %s reconnected to %s", self.agent_id, nc.connected_url.netloc if nc and nc.connected_url else "?")

    def _cut_off(self, tokens: list[str]) -> None:
        """The server that dropped us took us back at once: it cut this client off, as it does a slow consumer."""
        # nats-server closes a slow consumer without an -ERR (nats-py sees only EOF or a reset); a server that restarts
        # comes back with a new server id. What it held for us is gone, replies to our waiting requests among it.
        self.metrics.counters["slow_consumer_disconnects"] += 1
        error = SlowConsumerError(
            f"agent {self.agent_id}: the NATS server cut this connection off without an error and took it back at once "
            "(what it does to a slow consumer: max_pending exceeded or a write deadline missed); messages it held for "
            "this agent, replies among them, are lost", side="server")
        failed = self._mux.fail_tokens(tokens, error) if self._mux is not None and tokens else 0
        log.warning("%s; %d waiting requests failed", error, failed)

    # ------------------------------------------------------------------ using it

    def require(self) -> NATSClient:
        """Return the client; NotConnectedError when the agent has none or it is closed."""
        nc = self.nc
        if nc is None or nc.is_closed:
            raise NotConnectedError(f"agent {self.agent_id} is not connected")
        return nc

    @property
    def usable(self) -> bool:
        """Whether there is a client that is not closed."""
        return self.nc is not None and not self.nc.is_closed

    def max_payload(self) -> int:
        """Return the largest message body the server takes."""
        nc = self.nc
        return nc.max_payload if nc is not None and nc.max_payload else _DEFAULT_MAX_PAYLOAD

    def fits(self, data: bytes) -> bool:
        """Return whether data goes as one message with the headers a send from here adds (trace context, signature)."""
        trace = CURRENT.get()
        room = header_size(trace) if trace else 0
        if not self.bare:
            room += 1024  # a signature's or a tracer's own headers
        return len(data) + room <= self.max_payload()

    def check_size(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Raise PayloadTooLargeError when data (with headers) does not fit in one message."""
        limit = self.max_payload()
        size = len(data) if headers is None else len(data) + header_size(headers)
        if size > limit:
            raise PayloadTooLargeError(size, limit)

    def inbox_prefixes(self) -> tuple[str, ...]:
        """Return the subject prefixes a reply inbox may have here (nats-py's default and a configured one)."""
        prefix = self.config["nats.options"].get("inbox_prefix")
        if isinstance(prefix, bytes):
            prefix = prefix.decode()
        return ("_INBOX.", f"{prefix}.") if prefix else ("_INBOX.",)

    async def publish(self, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None,
                      *, confirm: bool = False) -> None:
        """Publish through nats-py's buffer; a refusal is NotConnectedError with its reason.

        confirm: return only once the server has processed it (one round trip), raising PermissionDeniedError
        when the server denied it.
        """
        nc = self.require()
        if self.tracer is not None:
            headers = self.tracer.send(subject, data, headers)
        else:
            headers = with_trace(headers)
        if self.signer is not None:
            headers = self.signer.headers(subject, reply, data, headers)
        if headers:  # nats-py checks the body alone; the server counts the headers too, and closes the connection
            self.check_size(data, headers)
        mark = self.denials.count
        try:
            await nc.publish(subject, data, reply=reply, headers=headers)
            if confirm:
                await confirm_sent(nc)
        except nats.errors.Error as exc:
            raise NotConnectedError(f"agent {self.agent_id} could not publish on {subject}: {exc or type(exc).__name__}") from exc
        if confirm:
            self.raise_denied(mark, "publish", subject)
            if reply:
                self.raise_denied(mark, "reply", reply)
        self.metrics.published += 1

    async def publish_checked(self, subject: str, data: bytes) -> None:
        """Publish; the first time on each subject confirmed with a round trip, so a denied subject raises
        PermissionDeniedError (and keeps raising it: a subject the server denied is confirmed every time)."""
        if self.denials.count != self._checked_mark:  # something was denied since: confirm every subject afresh
            self._checked_mark = self.denials.count
            self._checked.clear()
        confirm = subject not in self._checked
        await self.publish(subject, data, confirm=confirm)
        if confirm and len(self._checked) < 4096:
            self._checked.add(subject)

    def raise_denied(self, mark: int, operation: str | None = None, subject: str | None = None) -> None:
        """Raise PermissionDeniedError for the first violation of operation on subject reported since mark."""
        denied = self.denials.since(mark, operation, subject)
        if denied:
            error: PermissionDeniedError = denied[0].error(self.agent_id)
            raise error

    def traced(self, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Return headers with the trace context this send carries (for sends that bypass publish: JetStream)."""
        return self.tracer.send(subject, data, headers) if self.tracer is not None else with_trace(headers)

    def trace_with(self, tracer: Tracer | None) -> None:
        """Let tracer open the spans of sends and handler runs (None: pass trace headers through again)."""
        self.tracer = tracer
        self.bare = self.signer is None and tracer is None

    def requests(self, nc: NATSClient) -> RequestMux:
        """Return the request multiplexer over nc (one wildcard inbox, replies resolved inline)."""
        mux = self._mux
        if mux is None or mux.nc is not nc:
            mux = self._mux = RequestMux(nc)
        return mux

    async def request(self, subject: str, data: bytes, timeout: float, accept: Accept | None = None,
                      inbox: list[str] | None = None) -> Any:
        """Publish data and return the reply, or what accept made of it (nats-py's NoRespondersError or TimeoutError otherwise)."""
        mux = self.requests(self.require())
        if self.bare:
            return await mux.request(subject, data, timeout, accept, CURRENT.get(), inbox=inbox)
        return await mux.request_via(lambda to: self.publish(subject, data, to), timeout, accept, subject, inbox)  # with headers: no direct write

    async def request_via(self, publish: Callable[[str], Awaitable[None]], timeout: float, accept: Accept | None = None,
                          subject: str = "") -> Any:
        """Call publish(inbox) and return the reply that reaches that inbox within timeout (accept as in request;
        a permission violation on subject, where publish sends, fails it at once)."""
        return await self.requests(self.require()).request_via(publish, timeout, accept, subject)

    # ------------------------------------------------------------------ closing

    async def end_requests(self) -> None:
        """End our own requests still waiting: they fail now, typed, not at their timeouts."""
        if self._mux is not None:
            await self._mux.close()
            self._mux = None

    async def close(self) -> None:
        """Drain and close the client, bounded even when the server stalls."""
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        # nats-py's drain is bounded by its drain_timeout, but a stalled server can hold its flushes for 10 s more.
        try:
            await asyncio.wait_for(nc.drain(), self.config["nats.drain_timeout"] + 1.0)
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("agent %s: draining the connection failed (%s); closing it", self.agent_id, exc or type(exc).__name__)
            if nc.is_reconnecting or nc.is_connecting:
                # The server is away: what nats-py still buffers cannot be sent, and its close would write it to the
                # transport already lost (CPython 3.12 raises TypeError there, and the close stops half-way).
                if nc._pending_data_size:
                    log.warning("agent %s: %d buffered bytes dropped, the server being away at close",
                                self.agent_id, nc._pending_data_size)
                nc._pending, nc._pending_data_size = [], 0
            try:
                await asyncio.wait_for(nc.close(), 1.0)
            except (asyncio.TimeoutError, nats.errors.Error, OSError):
                pass

    def forget(self) -> None:
        """Drop the client from the direct writer's bookkeeping (its loop may close first)."""
        if self.nc is not None:
            forget_connection(self.nc)
