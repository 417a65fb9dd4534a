"""Capability contracts: JSON Schemas for what a capability takes and returns, checked both ways.

``add_capability(name, handler, input_schema=..., output_schema=...)`` wraps the handler (only when a schema
is given: the default path is untouched): a task whose content does not match is answered
``invalid_message`` (InvalidMessageError) naming the field, a result that does not match is answered
``result_invalid`` (RemoteError) instead of being sent. The schemas are published in discovery
(``describe()["contracts"]``) and in the NATS service API's endpoint metadata (as JSON strings). A schema
may be given as a dict or as a pydantic model class (its ``model_json_schema()``). Validation uses the
``jsonschema`` package (the extra ``agentcore-nats[contracts]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .core.host import Host
from .core.records import Handler
from .core.registry import is_async
from .errors import ConfigError, InvalidMessageError, RemoteError

__all__ = ("Contracts", "Schema", "as_schema")

Schema = Mapping[str, Any] | type  # a JSON Schema dict, or a pydantic model class


def as_schema(schema: Schema) -> dict[str, Any]:
    """Return schema as a JSON Schema dict (a pydantic model class gives its model_json_schema())."""
    if isinstance(schema, Mapping):
        return dict(schema)
    derive = getattr(schema, "model_json_schema", None)
    if derive is None:
        raise ConfigError(f"a schema must be a JSON Schema dict or a pydantic model class, not {schema!r}")
    result: dict[str, Any] = derive()
    return result


def _checker(schema: dict[str, Any], what: str) -> Callable[[Any], str | None]:
    """Return a function that says where and how a value breaks schema (None: it matches)."""
    try:
        from jsonschema import exceptions, validators
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigError("capability schemas need the jsonschema package: pip install 'agentcore-nats[contracts]'") from None
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ConfigError(f"the {what} schema is not a valid JSON Schema: {exc.message}") from None
    validator = cls(schema)

    def check(value: Any) -> str | None:
        error = exceptions.best_match(validator.iter_errors(value))
        if error is None:
            return None
        field = error.json_path.replace("$", "content", 1)
        return f"{field}: {error.message}"

    return check


class Contracts:
    """Hold each capability's schemas and wrap its handler to check them (a Component)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.contracts: dict[str, dict[str, Any]] = {}  # capability -> {"input": schema, "output": schema, "description"}

    def wrap(self, capability: str, handler: Handler | None, input_schema: Schema | None,
             output_schema: Schema | None) -> Handler | None:
        """Return handler checked against the schemas (handler itself when there are none) and record them."""
        if input_schema is None and output_schema is None:
            self.contracts.pop(capability, None)
            return handler
        if handler is None:
            raise ConfigError(f"capability {capability!r} has a schema: give it a handler (process_message is not checked)")
        contract: dict[str, Any] = {}
        doc = (getattr(handler, "__doc__", None) or "").strip()
        if doc:
            contract["description"] = doc.splitlines()[0]
        check_in = check_out = None
        if input_schema is not None:
            contract["input"] = as_schema(input_schema)
            check_in = _checker(contract["input"], "input")
        if output_schema is not None:
            contract["output"] = as_schema(output_schema)
            check_out = _checker(contract["output"], "output")
        self.contracts[capability] = contract
        counters = self._host.metrics.counters

        def before(message: dict[str, Any]) -> None:
            if check_in is not None:
                problem = check_in(message["payload"]["content"])
                if problem is not None:
                    counters["contract_inputs_refused"] += 1
                    raise InvalidMessageError("invalid_message", f"task for {capability} does not match its input schema: {problem}")

        def after(result: Any) -> Any:
            if check_out is not None:
                problem = check_out(result)
                if problem is not None:
                    counters["contract_results_refused"] += 1
                    raise RemoteError("result_invalid", f"the result of {capability} does not match its output schema: "
                                      + problem.replace("content", "result", 1))
            return result

        if is_async(handler):
            @functools.wraps(handler)
            async def checked_async(message: dict[str, Any]) -> Any:
                before(message)
                return after(await handler(message))

            return checked_async

        @functools.wraps(handler)
        def checked(message: dict[str, Any]) -> Any:
            before(message)
            return after(handler(message))

        return checked

    def metadata(self, capability: str) -> dict[str, str]:
        """Return capability's contract as NATS service endpoint metadata (strings: JSON-encoded schemas)."""
        contract = self.contracts.get(capability)
        if not contract:
            return {}
        meta = {f"{key}_schema": orjson.dumps(contract[key]).decode() for key in ("input", "output") if key in contract}
        if "description" in contract:
            meta["description"] = contract["description"]
        return meta

    # ------------------------------------------------------------------ the Component protocol

    async def start(self) -> None:
        """Nothing to set up on the server."""

    def reconnected(self) -> None:
        """Nothing to do."""

    def drain(self) -> None:
        """Nothing held."""

    async def stop(self) -> None:
        """Nothing left to end."""

    def describe(self) -> Mapping[str, Any]:
        """Add the capabilities' contracts to discovery (only when some capability has one)."""
        return {"contracts": self.contracts} if self.contracts else {}

    def gauges(self) -> Mapping[str, float]:
        """No levels of its own."""
        return {}
