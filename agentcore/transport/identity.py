"""Signed identity: an nkey (ed25519) signature over every message an agent sends, checked by those who trust it.

On the wire, three NATS headers (the names follow the Synadia agent protocol's ``Agent-`` headers):

* ``Agent-Sender``: the sender's nkey user public key (``U...``);
* ``Agent-Timestamp``: when it was signed, Unix time in nanoseconds;
* ``Agent-Signature``: base64url (no padding) of the ed25519 signature over
  ``subject \\n reply \\n`` + every other header as ``name: value \\n`` (sorted by name) + ``\\n`` + body.

The signature covers the subject and reply subject (a signed request cannot be re-aimed or its answer
redirected), the body and the headers (a stream frame's sequence number included). A receiver configured with
trusted keys (``identity.trusted``) binds ``source.id`` to the key, refuses what is stale (outside
``identity.window``) or seen before (a replay set bounded by ``identity.replay_bytes``), and, with
``identity.require``, what is unsigned. Everything here is real crypto from nkeys/PyNaCl; nothing hand-made.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import AgentConfig
from ..errors import ConfigError, IdentityError
from ..metrics import AgentMetrics

__all__ = ("H_SENDER", "H_SIGNATURE", "H_TIMESTAMP", "Signer", "Verifier", "load_seed", "public_key_bytes", "signed_bytes")

H_SENDER = "Agent-Sender"
H_SIGNATURE = "Agent-Signature"
H_TIMESTAMP = "Agent-Timestamp"

_PREFIX_USER = 20 << 3  # nkeys' PREFIX_BYTE_USER: public keys start with "U"
_ENTRY_OVERHEAD = 120  # what one replay entry costs beyond its signature's characters (dict slot, str, int)


def load_seed(value: str) -> bytes:
    """Return the nkey user seed in value: the seed itself (``SU...``) or a file holding it (a .nk or .creds file)."""
    value = value.strip()
    if value.startswith("SU") and "/" not in value and len(value) >= 58:
        return value.encode()
    try:
        text = Path(value).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"identity.seed is neither an nkey user seed (SU...) nor a readable file: {exc}") from None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("SU"):
            return line.encode()
    raise ConfigError(f"identity.seed file {value} holds no nkey user seed (a line starting with SU)")


def public_key_bytes(public_key: str) -> bytes:
    """Return the 32 ed25519 bytes of an nkey user public key; ValueError when it is not one."""
    import nkeys

    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        raise ValueError(f"{public_key!r} is not an nkey public key") from None
    if len(raw) != 35 or raw[0] != _PREFIX_USER or nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
        raise ValueError(f"{public_key!r} is not an nkey user public key (U...)")
    return raw[1:33]


def signed_bytes(subject: str, reply: str, headers: Mapping[str, str], data: bytes) -> bytes:
    """Return what the signature covers: subject, reply, the headers but the signature, and the body."""
    parts = [subject, "\n", reply, "\n"]
    for name in sorted(headers):
        if name != H_SIGNATURE:
            parts += (name, ": ", headers[name], "\n")
    parts.append("\n")
    return "".join(parts).encode() + data


class Signer:
    """Sign what an agent sends with its nkey."""

    def __init__(self, seed: bytes) -> None:
        import nkeys

        try:
            keypair = nkeys.from_seed(bytearray(seed))
        except Exception as exc:  # nkeys raises its own errors (and binascii's) for a malformed seed
            raise ConfigError(f"identity.seed is not a valid nkey seed: {type(exc).__name__}") from None
        self.public_key: str = keypair.public_key.decode()
        if not self.public_key.startswith("U"):
            raise ConfigError("identity.seed must be an nkey user seed (SU...)")
        self._sign = keypair.sign

    def headers(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None = None) -> dict[str, str]:
        """Return headers (a new dict) with the sender, timestamp and signature of this message added."""
        signed = dict(headers) if headers else {}
        signed[H_SENDER] = self.public_key
        signed[H_TIMESTAMP] = str(time.time_ns())
        signature = self._sign(signed_bytes(subject, reply, signed, data))
        signed[H_SIGNATURE] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        return signed


def _trusted(value: Any) -> dict[str, list[str]]:
    """Validate identity.trusted: a list of public keys, or a mapping of agent id to a key (or a list of keys)."""
    if value is None:
        return {}
    entries: dict[str, list[str]] = {}
    if isinstance(value, (list, tuple)):
        entries[""] = list(value)
    elif isinstance(value, Mapping):
        for agent_id, keys in value.items():
            if not isinstance(agent_id, str) or not agent_id:
                raise ValueError("maps agent ids (non-empty strings) to public keys")
            entries[agent_id] = [keys] if isinstance(keys, str) else list(keys) if isinstance(keys, (list, tuple)) else [keys]
    else:
        raise ValueError("must be a list of nkey public keys or a mapping of agent id to public key(s)")
    for keys in entries.values():
        for key in keys:
            if not isinstance(key, str):
                raise ValueError("public keys must be strings (U...)")
            try:
                public_key_bytes(key)
            except ValueError as exc:
                raise ConfigError(f"identity.trusted: {exc}") from None
    return entries


class Verifier:
    """Check the signatures of what reaches an agent: trusted key, bound source.id, fresh, not seen before."""

    def __init__(self, agent_id: str, config: AgentConfig, metrics: AgentMetrics, own: Signer | None) -> None:
        self.agent_id = agent_id
        self.metrics = metrics
        self.require: bool = config["identity.require"]
        self.window_ns = int(config["identity.window"] * 1e9)
        self.replay_bytes: int = config["identity.replay_bytes"]
        self.bound: dict[str, frozenset[str]] = {}  # agent id -> the keys that may speak as it
        self.unbound: set[str] = set()  # keys trusted for any id not bound to other keys
        for agent_id_, keys in _trusted(config["identity.trusted"]).items():
            if agent_id_:
                self.bound[agent_id_] = frozenset(keys)
            else:
                self.unbound.update(keys)
        if own is not None:  # the agent trusts itself, as itself
            self.bound[agent_id] = self.bound.get(agent_id, frozenset()) | {own.public_key}
        self._keys: dict[str, Any] = {}  # public key -> nacl VerifyKey, made once per trusted key
        # Recent signatures (insertion order ~ arrival order) with their timestamps, bounded by replay_bytes.
        self._seen: dict[str, int] = {}
        self._seen_bytes = 0
        self._floor = 0  # a timestamp at or below it cannot be proven fresh: its entry may have been evicted

    def _verify_key(self, public_key: str) -> Any:
        key = self._keys.get(public_key)
        if key is None:
            from nacl.signing import VerifyKey

            key = self._keys[public_key] = VerifyKey(public_key_bytes(public_key))
        return key

    def owner(self, public_key: str) -> str | None:
        """Return an agent id public_key is trusted to speak as, for a message that names no source (a stream frame).

        None when the key is trusted for any id (identity.trusted as a list) or not trusted at all: check() then
        decides with the unbound keys.
        """
        if public_key in self.unbound:
            return None
        for agent_id, keys in self.bound.items():
            if public_key in keys:
                return agent_id
        return None

    def check(self, subject: str, reply: str, headers: Mapping[str, str] | None, data: bytes, source_id: Any,
              *, fresh: bool = True) -> str | None:
        """Return why the message must be refused (a reason code), or None when it may be handled.

        fresh=False skips the timestamp window and the replay set (a persisted task: stored for later, and
        redelivered by JetStream on purpose); the key and the signature are checked all the same.
        """
        sender = headers.get(H_SENDER) if headers else None
        if sender is None:
            return "unsigned" if self.require else None
        assert headers is not None
        keys = self.bound.get(source_id) if isinstance(source_id, str) else None
        if keys is not None:
            if sender not in keys:
                return "wrong_key"
        elif sender not in self.unbound:
            return "untrusted"
        try:
            stamp = int(headers.get(H_TIMESTAMP, ""))
            signature = headers.get(H_SIGNATURE, "")
            raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            from nacl.exceptions import BadSignatureError

            try:
                self._verify_key(sender).verify(signed_bytes(subject, reply, headers, data), raw)
            except BadSignatureError:
                return "bad_signature"
        except (ValueError, TypeError):
            return "bad_signature"
        if not fresh:
            return None
        now = time.time_ns()
        if abs(now - stamp) > self.window_ns:
            return "stale"
        seen = self._seen
        if signature in seen or stamp <= self._floor:
            return "replayed"
        seen[signature] = stamp
        self._seen_bytes += len(signature) + _ENTRY_OVERHEAD
        self._prune(now)
        return None

    def _prune(self, now: int) -> None:
        seen = self._seen
        oldest = now - self.window_ns
        while seen:
            signature = next(iter(seen))
            stamp = seen[signature]
            if stamp >= oldest and self._seen_bytes <= self.replay_bytes:
                return
            del seen[signature]
            self._seen_bytes -= len(signature) + _ENTRY_OVERHEAD
            if stamp >= oldest:  # evicted while still inside the window: refuse anything this old from now on
                self._floor = max(self._floor, stamp)
                self.metrics.counters["identity_replay_evicted"] += 1

    def refuse(self, reason: str, source_id: Any, subject: str) -> IdentityError:
        """Count a refusal and return the error that says why."""
        counters = self.metrics.counters
        counters["identity_refused"] += 1
        counters[f"identity_{reason}"] += 1
        text = {
            "unsigned": "is not signed and agent {me} requires signed identities (identity.require)",
            "wrong_key": "claims source.id {src} but is not signed by that agent's key",
            "untrusted": "is signed by a key agent {me} does not trust (identity.trusted)",
            "bad_signature": "has a signature that does not match its subject, headers and body",
            "stale": "was signed outside agent {me}'s identity.window",
            "replayed": "was seen already (a replayed signature)",
        }[reason].format(me=self.agent_id, src=source_id)
        return IdentityError("identity", f"message on {subject} {text}", details={"reason": reason})

    def gauges(self) -> dict[str, Any]:
        """Return the replay set's size (entries and estimated bytes) for get_metrics."""
        return {"identity_replay_entries": len(self._seen), "identity_replay_bytes": self._seen_bytes}
