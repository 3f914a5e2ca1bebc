"""Every module imports only downward: the import graph of dszoo, drawn from the source (imports
inside functions included, since a deferred import is still a dependency), has no cycle, and no
module imports one of a higher layer. A failure names the modules."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("dszoo.blocks", "dszoo.configs", "dszoo.errors", "dszoo.files", "dszoo.preprocessing", "dszoo.profile",
     "dszoo.quiet"),
    ("dszoo.config", "dszoo.plan", "dszoo.builder", "dszoo.reparameterize", "dszoo.weights", "dszoo.checkpoints", "dszoo.registry"),
    ("dszoo.audio", "dszoo.deployment", "dszoo.pretrained"),
    ("dszoo.training",),
    ("dszoo.measurement",),
    ("dszoo.commands", "dszoo.__main__"),
    ("dszoo",),
)
"""Lowest first: the blocks and leaf helpers, the model library, then the jobs built on it, the
commands over everything, and the package's front (``dszoo/__init__.py``) last. A module's
layer is that of the longest prefix listed."""


def _package_dirs() -> dict[str, Path]:
    """setup.cfg's ``package_dir``: import name -> folder (dszoo is models/, dszoo.blocks is blocks/)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pairs = [line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines()]
    return {name.strip(): ROOT / folder.strip() for name, folder in pairs}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[0] in ("blocks", "configs") and package == "dszoo":
                continue  # their own package_dir entries name them
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the dszoo modules it imports (``from pkg import name`` counts as the submodule
    ``pkg.name`` where there is one, else as ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                subs = {f"{module}.{a.name}" for a in node.names} & modules.keys()
                targets |= subs or ({module} & modules.keys())
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names} & modules.keys()
        graph[name] = targets - {name}
    return graph


def layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of LAYERS; add it"
    return rank


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path that ends where it starts, or [] where there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_graph_sees_the_library() -> None:
    graph = import_graph()
    assert {"dszoo.registry", "dszoo.blocks.mobile", "dszoo.audio.spot", "dszoo.commands.train"} <= graph.keys()
    assert "dszoo.builder" in graph["dszoo.registry"]
    assert "dszoo.weights" in graph["dszoo.checkpoints"]


def test_no_module_imports_in_a_circle() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_every_import_goes_downward() -> None:
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_find_cycle_finds_circles(graph: dict[str, set[str]], cycle: list[str]) -> None:
    assert find_cycle(graph) == cycle
