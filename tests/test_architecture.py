"""The package's shape: no import cycles, features built over the Host interface, one idea per module."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import agentcore
from agentcore import NATSAgent

PACKAGE = Path(agentcore.__file__).resolve().parent
FEATURES = ("agentcore.streaming", "agentcore.batching", "agentcore.persistence", "agentcore.negotiation",
            "agentcore.negotiation_state", "agentcore.mcp", "agentcore.a2a")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


# Parsed once, at collection: on CPython 3.11 a RecursionError caught earlier in the same process can leave
# ast.parse failing with "AST constructor recursion depth mismatch" (a CPython bug), so no test parses later.
TREES = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every agentcore module name imports, counting imports inside functions and under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(TREES[path]):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != "agentcore":
                targets.add(candidate)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = {name: path for name, path in _modules().items() if not name.startswith("agentcore._ext")}
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_features_and_core_never_import_the_agent() -> None:
    graph = _graph()
    offenders = [name for name, targets in graph.items()
                 if "agentcore.agent" in targets and name.startswith((*FEATURES, "agentcore.core", "agentcore.transport"))]
    assert offenders == []


def test_the_core_and_transport_know_no_feature() -> None:
    graph = _graph()
    offenders = {name: sorted(t for t in targets if t.startswith(FEATURES))
                 for name, targets in graph.items() if name.startswith(("agentcore.core", "agentcore.transport"))}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_transport_does_not_reach_up_into_the_core() -> None:
    graph = _graph()
    offenders = {name: sorted(t for t in targets if t.startswith("agentcore.core"))
                 for name, targets in graph.items() if name.startswith("agentcore.transport")}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_no_module_is_over_800_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > 800} == {}


def test_the_agent_has_no_mixin_bases() -> None:
    assert NATSAgent.__bases__ == (object,)


def test_demos_use_only_the_public_api() -> None:
    for path in (PACKAGE / "demos").glob("*.py"):
        for node in ast.walk(TREES[path]):
            if isinstance(node, ast.ImportFrom):
                private = [alias.name for alias in node.names if alias.name.startswith("_") and alias.name != "__future__"]
                assert not private, f"{path.name} imports {private}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                raise AssertionError(f"{path.name}:{node.lineno} reaches {node.attr}")


def test_every_public_method_of_the_agent_is_documented() -> None:
    for name, member in inspect.getmembers(NATSAgent):
        if not name.startswith("_") and callable(member):
            assert member.__doc__, name
