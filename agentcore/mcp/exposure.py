"""What a host exposes of an MCP server: allow-lists of tools, resources (URIs and URI templates) and prompts.

With no list at all the host exposes everything the server offers. Give any of them and the host exposes only
what is listed: a kind left out exposes nothing. Whatever is not exposed is left out of list results and refused
as not found when asked for (a call, a read, a prompt, a completion that refers to it), so a caller cannot tell
it from something the server does not have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import MCPError

__all__ = ("Exposure", "template_pattern")

# RFC 6570 expressions: what each operator's expansion may contain.
_SEGMENT = r"[^/?#]*"
_EXPANSIONS = {
    "": r"[^/?#]+",                        # {var}: one path segment, at least one character
    "+": r".*",                            # {+var}: reserved characters, slashes included
    "#": r"(?:#.*)?",                      # {#var}: a fragment
    ".": rf"(?:\.{_SEGMENT})*",            # {.var}: label expansions
    "/": rf"(?:/{_SEGMENT})*",             # {/var}: path segments
    ";": rf"(?:;{_SEGMENT})*",             # {;var}: path parameters
    "?": r"(?:\?[^#]*)?",                  # {?var}: a query
    "&": r"(?:&[^#]*)?",                   # {&var}: query continuation
}
_EXPRESSION = re.compile(r"\{([+#./;?&]?)[^{}]*\}")


def template_pattern(template: str) -> re.Pattern[str]:
    """Return the pattern of the URIs a URI template (RFC 6570) expands to: literal text as is, each expression
    as what its operator may produce ({var} is one path segment, {+var} anything)."""
    parts: list[str] = []
    last = 0
    for match in _EXPRESSION.finditer(template):
        parts.append(re.escape(template[last:match.start()]))
        parts.append(_EXPANSIONS[match.group(1)])
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts), re.DOTALL)


def _names(kind: str, names: Iterable[str] | None) -> frozenset[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise MCPError(f"{kind}= takes a list of names, not the string {names!r}")
    return frozenset(str(name) for name in names)


def _not_found(kind: str, name: str) -> tuple[str, str, dict[str, str]]:
    return f"{kind}_not_found", f"Unknown {kind}: {name}", {"uri" if kind == "resource" else "name": name}


class Exposure:
    """The allow-lists of one hosted MCP server (None for a kind: everything of it is exposed)."""

    def __init__(self, tools: Iterable[str] | None = None, resources: Iterable[str] | None = None,
                 prompts: Iterable[str] | None = None) -> None:
        listed = [_names("tools", tools), _names("resources", resources), _names("prompts", prompts)]
        if any(entry is not None for entry in listed):  # an allow-list given: kinds left out expose nothing
            listed = [entry if entry is not None else frozenset() for entry in listed]
        self.tools, resource_list, self.prompts = listed
        self._uris: frozenset[str] | None = None
        self._templates: dict[str, re.Pattern[str]] | None = None
        if resource_list is not None:
            self._uris = frozenset(r for r in resource_list if not _EXPRESSION.search(r))
            self._templates = {r: template_pattern(r) for r in resource_list if _EXPRESSION.search(r)}

    def tool(self, name: str) -> bool:
        """Return whether the tool name is exposed."""
        return self.tools is None or name in self.tools

    def resource(self, uri: str) -> bool:
        """Return whether the resource uri is exposed: listed itself, or matched by a listed URI template."""
        if self._uris is None or self._templates is None:
            return True
        return uri in self._uris or any(pattern.fullmatch(uri) for pattern in self._templates.values())

    def template(self, uri_template: str) -> bool:
        """Return whether the resource template is exposed (listed as it is)."""
        return self._templates is None or uri_template in self._templates

    def prompt(self, name: str) -> bool:
        """Return whether the prompt name is exposed."""
        return self.prompts is None or name in self.prompts

    def capabilities(self, served: dict[str, Any]) -> dict[str, Any]:
        """Drop from served (initialize's capabilities) the kinds nothing of which is exposed."""
        none_of_resources = self._uris is not None and not self._uris and not self._templates
        none_of_prompts = self.prompts is not None and not self.prompts
        if none_of_resources:
            served.pop("resources", None)
        if none_of_prompts:
            served.pop("prompts", None)
        if none_of_resources and none_of_prompts:
            served.pop("completions", None)  # every completion refers to a prompt or a resource
        return served

    def refusal(self, method: str, params: Mapping[str, Any]) -> tuple[str, str, dict[str, str]] | None:
        """Return (kind, message, what) when a request asks for something not exposed, else None.

        The message is the MCP SDK server's own for a resource or prompt it does not have; what names it (uri or name).
        """
        ref: Any = params
        if method == "completion/complete":
            ref = params.get("ref")
            ref = ref if isinstance(ref, Mapping) else {}
            if ref.get("type") == "ref/prompt":
                method = "prompts/get"
            else:
                uri = str(ref.get("uri"))
                return None if self.template(uri) or self.resource(uri) else _not_found("resource", uri)
        if method == "resources/read":
            uri = str(ref.get("uri"))
            return None if self.resource(uri) else _not_found("resource", uri)
        if method == "prompts/get":
            name = str(ref.get("name"))
            return None if self.prompt(name) else _not_found("prompt", name)
        return None

    def filter(self, method: str, result: Any) -> Any:
        """Leave out of a list result what is not exposed."""
        if not isinstance(result, dict):
            return result
        if method == "resources/list" and isinstance(result.get("resources"), list):
            result["resources"] = [r for r in result["resources"] if isinstance(r, dict) and self.resource(str(r.get("uri")))]
        elif method == "resources/templates/list" and isinstance(result.get("resourceTemplates"), list):
            result["resourceTemplates"] = [t for t in result["resourceTemplates"]
                                           if isinstance(t, dict) and self.template(str(t.get("uriTemplate")))]
        elif method == "prompts/list" and isinstance(result.get("prompts"), list):
            result["prompts"] = [p for p in result["prompts"] if isinstance(p, dict) and self.prompt(str(p.get("name")))]
        return result
