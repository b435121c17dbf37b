"""The package's layout: public paths, no import circles, layers that only look down.

The import graph is read from the source (``ast``), not from ``sys.modules``: every
``import`` and ``from ... import`` of an ``fsm`` module counts, at module level and
inside functions alike (a function-level import is still a dependency, only a later
one). Imports under ``if TYPE_CHECKING:`` are left out of the layer checks: they never
run, and annotations may name a type of a higher layer without depending on it. They
count for circles all the same: a part that names its owner's type to annotate it is
written against an interface of its own instead (a ``Protocol`` its owner satisfies).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsm

ROOT = Path(fsm.__file__).resolve().parent

#: Every public module path, and the modules that define what it re-exports.
PUBLIC = {
    "fsm.lifecycle": ["fsm.core._lifecycle"],
    "fsm.connector": [
        "fsm.driver._connector",
        "fsm.driver._link",
        "fsm.driver._streams",
        "fsm.driver._transport",
    ],
    "fsm.aio": ["fsm.driver._aio"],
    "fsm.protocols": ["fsm.adapters._base", "fsm.adapters._reference"],
    "fsm.marimo": ["fsm.adapters._marimo", "fsm.cli._marimo"],
    "fsm.server": ["fsm.servers.reference"],
    "fsm.gateway": ["fsm.servers.gateway"],
}

#: What each layer may import at run time (besides itself). The public path modules
#: at the top (``fsm/lifecycle.py``, ...) and ``fsm/__init__.py`` only re-export.
LAYERS = {
    "fsm.core": set(),
    "fsm.adapters": {"fsm.core"},
    "fsm.driver": {"fsm.core", "fsm.adapters"},
    "fsm.servers": {"fsm.core", "fsm.adapters", "fsm.driver"},
    "fsm.cli": {"fsm.core", "fsm.adapters", "fsm.driver", "fsm.servers"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``; ``if TYPE_CHECKING:`` bodies only if ``typing``."""
    for child in ast.iter_child_nodes(node):
        if not typing and isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other, typing)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child, typing)


def imported_modules(name: str, *, typing: bool = False) -> set[str]:
    """The ``fsm`` modules that module ``name`` imports (explicitly) when it runs, and with
    ``typing`` also those it imports for type checkers only."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8")), typing):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from a import b`` imports module a.b when there is one, else a.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}
#: The same, counting imports under ``if TYPE_CHECKING:`` too.
TYPED_GRAPH = {name: imported_modules(name, typing=True) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> str | None:
    return next((top for top in LAYERS if name == top or name.startswith(f"{top}.")), None)


def test_the_graph_sees_the_known_edges() -> None:
    """The graph finds top-level, multi-line and function-level imports, and skips
    TYPE_CHECKING ones (so the checks below would fail on a real circle)."""
    assert "fsm.core._effects" in GRAPH["fsm.core._machine"]  # top level
    assert "fsm.core._machine" in GRAPH["fsm.core._lifecycle"]  # inside a function
    assert "fsm.driver._connector" in GRAPH["fsm.connector"]  # parenthesised, multi-line
    assert "fsm.driver._host" not in GRAPH["fsm.driver._attempt"]  # TYPE_CHECKING only
    assert "fsm.driver._host" in TYPED_GRAPH["fsm.driver._attempt"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import circle of any length among fsm's modules."""
    assert cycles(GRAPH) == []


def test_no_circle_even_through_imports_for_type_checkers() -> None:
    """Counting ``if TYPE_CHECKING:`` imports too, no module imports one that imports it
    back: the parts of the connector, the machine and the servers' sessions name the
    interface they use of their owner, not the owner's module."""
    assert cycles(TYPED_GRAPH) == []


def test_layers_only_import_layers_below() -> None:
    """The core imports nothing else of fsm; adapters only the core; the driver the core
    and the adapters; the servers everything but the command line."""
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if (own := layer(name)) is not None
        for target in sorted(targets)
        if not (own == "fsm.cli" and target == "fsm")  # the command shows fsm.__version__
        if (other := layer(target)) is None or (other != own and other not in LAYERS[own])
    ]
    assert wrong == []


def test_the_reference_server_shares_no_code_with_the_client() -> None:
    """The reference server tests the client: it imports neither the driver nor the
    adapters (only the core's frames and logger, and the servers' HTTP)."""
    server = [name for name in GRAPH if name.startswith("fsm.servers.reference")]
    assert server
    used = {target for name in server for target in GRAPH[name]}
    assert {layer(target) for target in used} <= {"fsm.core", "fsm.servers"}
    assert not any(t.startswith("fsm.servers.gateway") for t in used)


def test_every_module_sits_in_a_layer_or_is_a_public_path() -> None:
    """Outside the layer packages there are only ``fsm/__init__.py``, ``__main__`` and the
    public paths, which re-export."""
    loose = {name for name in MODULES if layer(name) is None}
    assert loose == {"fsm", "fsm.__main__", *PUBLIC}


@pytest.mark.parametrize("public", sorted(PUBLIC))
def test_public_paths_reexport_the_same_objects(public: str) -> None:
    """Every name a public module exports is the very object its defining module holds."""
    if public == "fsm.marimo":
        pytest.importorskip(
            "httpx", reason="fsm.marimo needs the marimo extra: pip install -e '.[marimo]'"
        )
    module = importlib.import_module(public)
    sources = [importlib.import_module(name) for name in PUBLIC[public]]
    assert module.__all__, public
    for name in module.__all__:
        owners = [source for source in sources if name in getattr(source, "__all__", ())]
        assert len(owners) == 1, (public, name)
        assert getattr(module, name) is getattr(owners[0], name), (public, name)


def test_top_level_names_are_the_public_modules_objects() -> None:
    """``fsm.X`` is the same object as the public module's ``X`` (lazy names included)."""
    import fsm.connector
    import fsm.lifecycle
    import fsm.protocols

    for name in fsm.__all__:
        value = getattr(fsm, name)
        homes = [m for m in (fsm.lifecycle, fsm.connector, fsm.protocols) if name in m.__all__]
        for home in homes:
            assert getattr(home, name) is value, name


def test_the_console_script_entry_point_resolves() -> None:
    """pyproject's ``fsm`` script names a callable that exists."""
    text = (ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("fsm = "))
    module, _, attr = line.split('"')[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_importing_the_core_and_the_adapters_interface_does_not_import_trio() -> None:
    """``fsm``, ``fsm.lifecycle`` and the adapters' interface load without trio."""
    code = (
        "import sys, fsm, fsm.lifecycle, fsm.adapters._base, fsm.adapters._reference; "
        "print(sorted(m for m in ('trio', 'trio_websocket') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_where_things_are_page_matches_the_tree() -> None:
    """docs/layout.md names every module file of the package, and only files that exist."""
    import re

    page = (ROOT.parent / "docs" / "layout.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w./])(_{0,2}[a-z][a-z_]*\.py)\b", page))
    files = {p.name for p in ROOT.rglob("*.py")}
    assert files - named == set()
    assert named - files == set()
    folders = {p.parent.name for p in ROOT.rglob("__init__.py") if p.parent != ROOT}
    assert {f for f in folders if f"{f}/" not in page} == set()
