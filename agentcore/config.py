"""AgentConfig: dotted keys with defaults, YAML files and environment overrides, validated on the way in."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ("AgentConfig", "CONTROL_COMMANDS")

#: The commands an agent answers on its control subject (agentcore.core.control).
CONTROL_COMMANDS = ("ping", "status", "pause", "resume", "shutdown")


def _servers(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [s for s in (part.strip() for part in value.split(",")) if s]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, str) and s for s in value):
        raise ValueError("must be a non-empty list of server URLs")
    for url in value:
        if "://" not in url:
            raise ValueError(f"server URL {url!r} needs a scheme such as nats://")
    return list(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("must be a number > 0")
    return float(value)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError("must be a number >= 0")
    return float(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError("must be a boolean")


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _token(value: Any) -> str:
    # Imported late: the subject validator lives in the compiled core, which imports errors only.
    from ._impl import validate_token

    if not isinstance(value, str):
        raise ValueError("must be a string")
    validate_token(value)
    return value


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):  # "a, b" (an environment variable, say)
        value = [s for s in (part.strip() for part in value.split(",")) if s]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise ValueError("must be a list of non-empty strings")
    return list(value)


def _agent_ids(value: Any) -> list[str]:
    from ._impl import validate_token

    ids = _str_list(value)
    for agent_id in ids:
        validate_token(agent_id)
    return ids


def _subject_patterns(value: Any) -> list[str]:
    from ._impl import validate_subject

    patterns = _str_list(value)
    for pattern in patterns:
        validate_subject(pattern, wildcards=True)
    return patterns


def _control_commands(value: Any) -> list[str]:
    commands = _str_list(value)
    unknown = [c for c in commands if c not in CONTROL_COMMANDS]
    if unknown:
        raise ValueError(f"names unknown control commands {unknown}; the commands are {', '.join(CONTROL_COMMANDS)}")
    return commands


def _optional_token(value: Any) -> str | None:
    return None if value is None else _token(value)


def _subject_root(value: Any) -> str:
    from ._impl import validate_subject

    if not isinstance(value, str):
        raise ValueError("must be a string")
    validate_subject(value, wildcards=False)  # one or more tokens, such as "agents" or "acme.agents"
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return check


def _trusted_keys(value: Any) -> Any:
    # A list of nkey public keys, or a mapping of agent id -> key (or list of keys); the keys themselves are
    # decoded (checksum and all) when the agent builds its verifier.
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        keys = list(value)
    elif isinstance(value, Mapping):
        if not all(isinstance(k, str) and k for k in value):
            raise ValueError("must map agent ids (non-empty strings) to public keys")
        keys = [k for v in value.values() for k in ([v] if isinstance(v, str) else v if isinstance(v, (list, tuple)) else [v])]
        value = dict(value)
    else:
        raise ValueError("must be a list of nkey public keys or a mapping of agent id to public key(s)")
    if not all(isinstance(k, str) and k.startswith("U") for k in keys):
        raise ValueError("must hold nkey user public keys (strings starting with U)")
    return value


def _connect_options(value: Any) -> dict[str, Any]:
    # Everything else nats.connect() takes (JWT callbacks, nkeys_seed_str, an SSLContext, dont_randomize, ...).
    import inspect

    from nats.aio.client import Client

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of nats.connect() keyword arguments")
    known = set(inspect.signature(Client.connect).parameters) - {"self", "servers"}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        guesses = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = [f"{k!r} (did you mean {g[0]!r}?)" if g else repr(k) for k, g in guesses.items()]
        hint = " (use nats.servers)" if "servers" in unknown else ""
        raise ValueError(f"has options nats.connect() does not take: {', '.join(hints)}{hint}")
    not_callable = sorted(k for k, v in value.items() if k.endswith("_cb") and v is not None and not callable(v))
    if not_callable:
        raise ValueError(f"has callbacks that are not callable: {', '.join(not_callable)}")
    return dict(value)


def _provider(value: Any) -> str:
    if value != "nats":
        raise ValueError("only the 'nats' provider is supported")
    return "nats"


# key -> (default, validator). A key under one of these sections that is not listed is a ConfigError (a typo such as
# nats.enviroment would otherwise leave the default in force); keys of other sections are the application's own.
_SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "messaging.provider": ("nats", _provider),
    "nats.servers": (["nats://127.0.0.1:4222"], _servers),
    "nats.environment": ("dev", _token),
    "nats.subject_prefix": ("agents", _subject_root),  # the root of every subject: {prefix}.{env}.{message_type}...
    "nats.name": (None, _optional_str),
    "nats.batch_size": (10, _positive_int),
    "nats.batch_timeout": (1.0, _positive_float),
    "nats.connect_timeout": (2.0, _positive_float),
    "nats.allow_reconnect": (True, _bool),
    "nats.max_reconnect_attempts": (-1, _int),
    "nats.reconnect_time_wait": (0.5, _non_negative_float),
    "nats.ping_interval": (20.0, _positive_float),
    "nats.drain_timeout": (5.0, _positive_float),
    "nats.user": (None, _optional_str),
    "nats.password": (None, _optional_str),
    "nats.token": (None, _optional_str),
    "nats.user_credentials": (None, _optional_str),
    "nats.nkeys_seed": (None, _optional_str),
    "nats.tls_ca": (None, _optional_str),
    "nats.tls_cert": (None, _optional_str),
    "nats.tls_key": (None, _optional_str),
    "nats.tls_hostname": (None, _optional_str),
    "nats.options": ({}, _connect_options),  # passed to nats.connect() as they are, after the keys above
    "agent.heartbeat_interval": (5.0, _positive_float),
    "agent.instance": (None, _optional_token),  # what tells replicas sharing an id apart; None: random per start-up
    # Another live agent with this id at start: "warn" (replicas sharing work may mean it), "error" refuses to start.
    "agent.duplicate_id": ("warn", _choice("warn", "error", "allow")),
    "agent.max_concurrency": (64, _positive_int),
    "agent.max_queued": (10000, _positive_int),
    # Memory a stranger can fill is bounded by bytes (docs/limits.md): over a bound, the requester gets a typed error.
    "agent.max_queued_bytes": (64 * 1024 * 1024, _positive_int),  # the payloads waiting in the queue, at most
    "agent.max_request_bytes": (64 * 1024 * 1024, _positive_int),  # a request (or result) pulled as a stream, at most
    "agent.pull_idle_timeout": (5.0, _positive_float),  # a pulled request whose producer sends nothing this long is dropped
    "agent.max_pulls": (64, _positive_int),  # offered requests being pulled (or waiting for their first frame) at once
    "agent.pulls_per_sender": (4, _positive_int),  # of which from one source.id
    "agent.sync_workers": (16, _positive_int),
    # Where sync handlers run (agentcore.core.sync_calls): "auto" inline until one is seen to hold the loop longer
    # than agent.sync_block_threshold seconds, then that handler in the thread pool; "inline" always; "thread" always
    # in the pool (agent.sync_workers threads).
    "agent.sync_handlers": ("auto", _choice("auto", "inline", "thread")),
    "agent.sync_block_threshold": (0.05, _positive_float),
    # The agent's own loop (start()), the command line, the demo and `agentcore bench` use uvloop when it is
    # installed (extra "fast"); False (or AGENTCORE_NO_UVLOOP=1) keeps asyncio's loop.
    "agent.uvloop": (True, _bool),
    "agent.request_timeout": (30.0, _positive_float),
    # Event-loop lag (agentcore.core.watchdog): a loop held longer than this (a blocking call inside an async handler)
    # is logged once per episode with the code that held it; seconds, 0 turns the watchdog off.
    "agent.loop_lag_warn": (0.25, _non_negative_float),
    "agent.discovery_timeout": (0.5, _positive_float),
    # The NATS service API (ADR-32, agentcore.services): $SRV.PING/INFO/STATS answered as service service.name (default: the agent type).
    "service.enabled": (True, _bool),
    "service.name": (None, _optional_str),
    # Subjects a message's replyTo may name besides reply inboxes, agents.{env}.result.> and agentcore's MCP responses.
    "agent.reply_subjects": ([], _subject_patterns),
    # Who may pause, resume and shut the agent down (source ids; the agent itself always may), and which commands
    # anyone may send.
    "control.allow": ([], _agent_ids),
    "control.open": (["ping", "status"], _control_commands),
    # Signed identity (agentcore.transport.identity, needs the nkeys package: extra "identity"): identity.seed (an
    # nkey user seed or a file holding one) signs everything the agent sends; identity.trusted (public keys, or
    # agent id -> key) and identity.require make it verify what it receives.
    "identity.seed": (None, _optional_str),
    "identity.trusted": ([], _trusted_keys),
    "identity.require": (False, _bool),
    "identity.window": (30.0, _positive_float),  # seconds a signature's timestamp may be off from the receiver's clock
    "identity.replay_bytes": (4 * 1024 * 1024, _positive_int),  # memory for recently seen signatures
    # Lifecycle records of the tasks this agent serves (status queries, cancellation): finished ones are dropped
    # oldest first beyond this many bytes.
    "tasks.max_status_bytes": (4 * 1024 * 1024, _positive_int),
    # OpenTelemetry spans (agentcore.tracing, extra "otel"), with the global tracer provider; trace headers are passed
    # through either way.
    "tracing.enabled": (False, _bool),
    "cache.enabled": (True, _bool),
    "cache.ttl": (60.0, _positive_float),
    "cache.max_entries": (4096, _positive_int),
    "cache.max_bytes": (64 * 1024 * 1024, _positive_int),  # results kept, counted as their encoded answers
    "cache.duplicate_bytes": (16 * 1024 * 1024, _positive_int),  # the duplicate-answer store (ids seen, answers to replay)
    "cache.replay_max_bytes": (256 * 1024, _positive_int),  # a larger answer is kept for duplicates as a marker only
    # JetStream persistence of tasks (agentcore.persistence): off unless enabled; the stream defaults to AGENTS_{ENV}.
    "jetstream.enabled": (False, _bool),
    "jetstream.stream": (None, _optional_str),
    "jetstream.create_stream": (True, _bool),
    "jetstream.ack_wait": (30.0, _positive_float),
    "jetstream.max_deliver": (5, _positive_int),
    "jetstream.max_ack_pending": (1000, _positive_int),
    "jetstream.max_age": (86400.0, _non_negative_float),  # 0: tasks are kept until answered
    "jetstream.duplicate_window": (120.0, _positive_float),
    "jetstream.replicas": (1, _positive_int),
    "jetstream.pull_expires": (1.0, _positive_float),  # how long one pull request lingers: what a pause may wait
    # Kept results, task status and large payloads (agentcore.keeping, transport.taskstore): buckets beside the stream.
    "jetstream.result_ttl": (3600.0, _positive_float),  # how long results and task status are kept
    "jetstream.results_max_bytes": (256 * 1024 * 1024, _positive_int),  # the results bucket's bound (and the status one's)
    "jetstream.objects_max_bytes": (1024 * 1024 * 1024, _positive_int),  # the object bucket's bound (large tasks, results)
    "jetstream.track_status": (True, _bool),  # record each persisted task's status (two more JetStream writes a task)
    # The A2A protocol served over NATS (agent.serve_a2a, agentcore.a2a.component; bounds in docs/limits.md).
    "a2a.store": ("auto", _choice("auto", "memory", "jetstream")),  # auto: JetStream when jetstream.enabled
    "a2a.max_concurrency": (64, _positive_int),  # unary requests (SendMessage, GetTask, ...) served at once
    "a2a.max_queued": (256, _positive_int),  # unary requests waiting for one of those; beyond: refused OVERLOADED
    "a2a.max_queued_bytes": (64 * 1024 * 1024, _positive_int),  # the unary requests admitted (served and waiting)
    "a2a.max_request_bytes": (64 * 1024 * 1024, _positive_int),  # a request's body and headers; beyond: INVALID_REQUEST
    "a2a.max_streams": (64, _positive_int),  # open SendStreamingMessage/SubscribeToTask streams; beyond: OVERLOADED
    "a2a.streams_per_sender": (8, _positive_int),  # of which for one sender (its signed key, else its inbox's connection)
    "a2a.max_store_bytes": (64 * 1024 * 1024, _positive_int),  # the in-memory task store (finished tasks evicted LRU)
    "a2a.idle_timeout": (30.0, _positive_float),  # a stream with no credit this long is ended
    "a2a.jetstream_max_bytes": (256 * 1024 * 1024, _positive_int),  # the KV bucket of tasks, and the event stream
    "a2a.task_ttl": (86400.0, _non_negative_float),  # JetStream: how long the KV bucket keeps a task (0: for ever)
    "a2a.events_ttl": (3600.0, _positive_float),  # JetStream: how long the event stream keeps a task's events
    "a2a.max_pulls": (16, _positive_int),  # request bodies beyond max_payload pulled at once; beyond: OVERLOADED
    "a2a.pulls_per_sender": (4, _positive_int),  # of which from one user (its signed identity; unsigned: all one user)
    "a2a.delegates": ([], _agent_ids),  # signed identities whose Agent-On-Behalf-Of is honoured (gateways, replicas)
}

# Values never shown in reprs or errors (nats.options may hold nkeys_seed_str or a JWT callback's secrets).
_SECRET_KEYS = frozenset(("nats.password", "nats.token", "nats.nkeys_seed", "nats.options", "identity.seed"))

# The YAML file of the guide puts some keys at the top level; they belong under "nats.".
_YAML_ALIASES = {"environment": "nats.environment", "batch_size": "nats.batch_size", "batch_timeout": "nats.batch_timeout"}


_SECTIONS = frozenset(key.partition(".")[0] for key in _SCHEMA)


def _unknown_key(key: str) -> str | None:
    """Return why key is no setting when it looks like a mistake; None for the application's own keys."""
    section, _, name = key.partition(".")
    if section in _SECTIONS:
        names = [k.partition(".")[2] for k in _SCHEMA if k.startswith(section + ".")]
        match = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if match:
            return f"unknown configuration key {key!r} (did you mean '{section}.{match[0]}'?)"
        return f"unknown configuration key {key!r} (the {section} settings are {', '.join(f'{section}.{n}' for n in names)})"
    # Other sections are the application's own, unless the key is a near miss of ours ("nast.servers", "enviroment").
    match = difflib.get_close_matches(key, [*_SCHEMA, *_YAML_ALIASES], n=1, cutoff=0.8)
    return f"unknown configuration key {key!r} (did you mean {match[0]!r}?)" if match else None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"configuration keys must be strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in _SCHEMA:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


class AgentConfig:
    """Hold an agent's settings under dotted keys such as "nats.servers", with defaults and validation."""

    def __init__(self, values: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, Any] = {key: default for key, (default, _) in _SCHEMA.items()}
        for key, value in _flatten(values or {}):
            self.set(key, value)
        env = os.environ if environ is None else environ
        if env.get("NATS_URL"):
            # NATS_URL wins over files and code so one deployment setting points every agent at the cluster.
            self.set("nats.servers", env["NATS_URL"])

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> AgentConfig:
        """Load a configuration file in the guide's config/nats_config.yaml shape."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration file {path} must hold a mapping, got {type(data).__name__}")
        try:
            return cls(data, environ=environ)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def set(self, key: str, value: Any) -> None:
        """Set one dotted key, validating known keys; a key under agentcore's sections must be one of them."""
        key = _YAML_ALIASES.get(key, key)
        spec = _SCHEMA.get(key)
        if spec is None:
            problem = _unknown_key(key)
            if problem is not None:
                raise ConfigError(problem)
        else:
            try:
                value = spec[1](value)
            except ValueError as exc:
                shown = "(hidden)" if key in _SECRET_KEYS else repr(value)  # an error message must not leak a secret
                raise ConfigError(f"invalid value for {key!r}: {shown} {exc}") from None
        self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of a dotted key, or default when it is not set."""
        return self._values.get(key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"no configuration key {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def as_dict(self, *, hide_secrets: bool = False) -> dict[str, Any]:
        """Return a copy of all settings as a flat dotted-key dict (secrets as "***" with hide_secrets)."""
        if hide_secrets:
            return {k: ("***" if k in _SECRET_KEYS and v else v) for k, v in self._values.items()}
        return dict(self._values)

    def __repr__(self) -> str:
        return f"AgentConfig({self.as_dict(hide_secrets=True)!r})"
