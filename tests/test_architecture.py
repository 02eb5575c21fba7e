"""The import graph: no circle, the floors read upward, no command imports another, and puzzle kinds are
compared nowhere outside their registry. Imports inside functions count like any other."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

#: the floors, lowest first; a module imports only from lower floors or from its own package
FLOORS = {"common": 0, "data": 1, "privacy": 1, "models": 2, "pow": 2, "attacks": 3, "server": 3, "extraction": 4,
          "parameters": 5, "commands": 6, "main": 7,
          "main_model_extraction": 8, "jacobian": 8}  # the thin entry scripts call main
SKIP = {"tests", "benchmarks", ".git", ".venv", "MixMatch-pytorch", "dfme", "scripts", "experiments", "docs"}
PUZZLE_NAMES = {"hashcash", "sha1", "sha256", "scrypt"}


def modules(root: Path = ROOT) -> dict:
    """{dotted name: path} of the project's own modules."""
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict) -> set:
    """The project modules `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            named.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    found = set()
    for target in named:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict) -> list:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def command_modules() -> set:
    """The modules main.py dispatches to (main.COMMANDS), each a command."""
    import main

    return {module for module, _, _ in main.COMMANDS.values()}


def floor_violations(edges: dict) -> list:
    """(module, import) pairs that reach a floor as high as the module's own, or higher, in another package."""
    return sorted((name, target) for name, targets in edges.items() for target in targets
                  if name.split(".")[0] in FLOORS and target.split(".")[0] != name.split(".")[0]
                  and FLOORS.get(target.split(".")[0], 99) >= FLOORS[name.split(".")[0]])


def command_violations(edges: dict, dispatched: set) -> list:
    """(module, command) pairs where a commands.* module imports a command other than itself."""
    return sorted((name, target) for name, targets in edges.items() if name.startswith("commands.")
                  for target in targets if target in dispatched and target != name)


def test_the_checks_see_what_they_must():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert floor_violations({"pow.x": {"server.y", "common.z", "pow.w"}, "data.a": {"privacy.b"}}) == [
        ("data.a", "privacy.b"), ("pow.x", "server.y")], "up and sideways are both caught"
    assert command_violations({"commands.a": {"commands.b", "commands.s"}, "commands.s": {"commands.a"}},
                              {"commands.a", "commands.b"}) == [("commands.a", "commands.b"),
                                                                ("commands.s", "commands.a")]
    edges = graph()
    assert "pow.kinds" in edges["pow.timing"], "a module-level import is seen"
    assert "commands.grid" in edges["commands.report"], "an import inside a function is seen"
    assert {"commands.reproduce", "commands.serve", "commands.sybil", "commands.extract"} <= command_modules()
    assert not {"commands.grid", "commands.report", "commands.streams"} & command_modules(), "services, not commands"


def test_no_module_imports_itself_back_in_a_circle():
    assert cycles(graph()) == []


def test_every_floor_imports_only_from_the_floors_below_it():
    assert floor_violations(graph()) == []


def test_no_command_imports_another_command_and_no_shared_service_imports_a_command():
    assert command_violations(graph(), command_modules()) == []


def test_puzzle_kinds_are_compared_only_inside_their_registry():
    compared = []
    for name, path in modules().items():
        if name == "pow.kinds":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(v, ast.Constant) and v.value in PUZZLE_NAMES
                                                     for v in (node.left, *node.comparators)):
                compared.append(f"{name}:{node.lineno}")
    assert compared == [], f"compare kinds through pow.kinds instead: {compared}"
