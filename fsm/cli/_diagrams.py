"""The lifecycle diagrams, generated from the machine itself (never drawn by hand).

``fsm diagrams`` writes three files, from the structure of a fresh
:class:`~fsm.ConnectionLifecycle`'s machine (no state is highlighted: the diagram
shows the structure, not a snapshot):

- ``lifecycle.mmd``: Mermaid ``stateDiagram-v2`` source (the docs render it);
- ``lifecycle.dot``: Graphviz DOT source, with deterministic node names;
- ``lifecycle.svg``: the DOT source rendered by Graphviz's ``dot`` program.

Both sources come from python-statemachine's own extractor and renderers
(``statemachine.contrib.diagram``), with these changes to what they show (and, for
DOT, to the layout: see ``_DotRenderer``):

- events are shown by their id (``close_finished``, the method name), not their
  humanised name (``Close finished``);
- a transition's actions are shown after its guards, UML style:
  ``ready / flush_edits``, ``fail [attempts_left] / count_failure`` (the stock
  renderers show only guards);
- an internal transition (the state is not left) is listed inside its state with
  its guards and actions, even when it does nothing: ``request [can_interact]``
  in OPEN, ``connect`` in DIALING (a harmless no-op);
- the Mermaid renderer keeps every transition, also one whose source, target and
  event repeat another's with a different guard (the stock one drops it).

The DOT renderer names some helper nodes after ``id()`` of Python objects; they are
renamed after the subgraph they belong to, so the committed ``.dot`` is stable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from statemachine import State
from statemachine.contrib.diagram.extract import extract
from statemachine.contrib.diagram.model import (
    ActionType,
    DiagramAction,
    DiagramGraph,
    DiagramState,
    DiagramTransition,
)
from statemachine.contrib.diagram.renderers.mermaid import (
    MermaidRenderer,
    MermaidRendererConfig,
)

try:
    import pydot
    from statemachine.contrib.diagram.renderers.dot import (
        DotRenderer,
        DotRendererConfig,
        _escape_html,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the lifecycle diagrams need pydot ({exc}): pip install 'fsm-kernel-lifecycle[docs]' "
        "(or pip install 'python-statemachine[diagrams]')"
    ) from exc

from fsm.core._errors import LifecycleError
from fsm.core._lifecycle import ConnectionLifecycle

__all__ = ["GraphvizNotFound", "dot_source", "mermaid_source", "render_svg", "write_diagrams"]

#: The graph's title in both sources.
TITLE = "ConnectionLifecycle"

_INSTALL_HINT = (
    "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz;"
    " others: https://graphviz.org/download/), or skip the SVG with svg=False"
    " (fsm diagrams --no-svg)"
)


class GraphvizNotFound(LifecycleError):
    """The Graphviz ``dot`` program, needed for the SVG, is not on ``PATH``."""


# -- the diagram model, from the machine ----------------------------------------------


def _machine_class() -> type[Any]:
    # The structure of the machine a fresh lifecycle runs (built on first use).
    lifecycle = ConnectionLifecycle(log_transitions=False)
    return type(lifecycle.machine)


def _walk(states: Any) -> Iterator[State]:
    # The order extract() walks in: each state, then its substates, depth first.
    for state in states:
        yield state
        yield from _walk(state.states)


def _names(machine: type[Any], callbacks: Any) -> list[str]:
    # The callbacks a transition declares, without conventions the machine lacks
    # (on_transition, on_<event>, ...).
    defined = set(dir(machine))
    return [str(c) for c in callbacks if not c.is_convention or c.func in defined]


def _event_ids(transition: Any) -> str:
    return " ".join(dict.fromkeys(str(event.id) for event in transition.events))


#: What each callback of the machine does, in the domain's words: the diagrams (and the
#: gateway's page) show these, not the method names. A callback missing here is shown
#: by its name, and tests/test_diagrams.py fails until it gets words.
ACTION_LABELS: dict[str, str] = {
    "on_enter_dialing": "dial",
    "on_enter_backing_off": "start back-off timer",
    "on_exit_open": "requeue unacked edits",
    "on_enter_closed": "record close reason",
    "on_exit_closed": "clear close reason",
    "flush_edits": "flush edits",
    "count_failure": "count failure",
    "reset_attempts": "reset attempts",
    "start_new_cycle": "new cycle",
    "retry_now": "cancel timer and dial now",
    "stop_on_bad_draw": "close with ERROR",
    "request_reconnect": "reconnect when closed",
    "cancel_reconnect": "cancel reconnect",
    "abandon_attempt": "abandon attempt",
    "hang_up": "hang up",
}

#: Guards, in the domain's words. ``can_interact`` and ``is_not_started`` keep their
#: names: they are the contract's (DESIGN section 3), and the API's properties.
GUARD_LABELS: dict[str, str] = {
    "can_interact": "can_interact",
    "is_not_started": "is_not_started",
    "attempts_left": "attempts left",
    "stayed_up": "stayed up min_uptime",
    "reconnect_requested": "reconnect requested",
    "heals_on_use": "gave up or shut down",
    "!rng_ok": "bad jitter draw",
    "rng_ok": "good jitter draw",
}


def _action_label(name: str) -> str:
    return ACTION_LABELS.get(name, name)


def _guard_label(name: str) -> str:
    return GUARD_LABELS.get(name, name)


def _label(event: str, guards: list[str], actions: list[str]) -> str:
    """``event [guard, ...] / action, ...``: the UML label of a transition."""
    parts = [event] if event else []
    if guards:
        parts.append(f"[{', '.join(guards)}]")
    if actions:
        parts.append(f"/ {', '.join(actions)}")
    return " ".join(parts)


def _graph() -> DiagramGraph:
    machine = _machine_class()
    graph = extract(machine)  # the class: no state is highlighted as active
    graph.name = TITLE

    declared = [t for state in _walk(machine.states) for t in state.transitions]
    if len(declared) != len(graph.transitions):  # pragma: no cover - a library change
        raise RuntimeError("python-statemachine's extractor walks transitions differently")
    internal: dict[str, list[str]] = {}
    for source, shown in zip(declared, graph.transitions, strict=True):
        if shown.source != source.source.id:  # pragma: no cover - a library change
            raise RuntimeError("python-statemachine's extractor walks transitions differently")
        shown.event = _event_ids(source)
        shown.actions = [_action_label(name) for name in _names(machine, source.on)]
        shown.guards = [_guard_label(guard) for guard in shown.guards]
        if shown.is_internal:
            line = _label(shown.event, shown.guards, shown.actions)
            internal.setdefault(shown.source, []).append(line)

    def relabel(states: list[DiagramState]) -> None:
        for state in states:
            kept = [
                DiagramAction(a.type, _action_label(a.body))
                for a in state.actions
                if a.type is not ActionType.INTERNAL
            ]
            bodies = internal.get(state.id, [])
            state.actions = kept + [DiagramAction(ActionType.INTERNAL, b) for b in bodies]
            state.is_active = False
            relabel(state.children)

    relabel(graph.states)
    return graph


# -- Mermaid ---------------------------------------------------------------------------


class _MermaidRenderer(MermaidRenderer):
    """The stock renderer, plus actions on transition labels.

    The stock renderer also drops a transition whose source, target and event repeat
    an earlier one, even with another guard (OPEN --drop [attempts_left]--> BACKING_OFF
    after OPEN --drop [stayed_up]--> BACKING_OFF): here the whole label counts.
    """

    def _render_scope_transitions(
        self,
        transitions: list[DiagramTransition],
        scope_ids: set[str],
        lines: list[str],
        indent: int,
    ) -> None:
        shown = [
            DiagramTransition(
                source=t.source,
                targets=t.targets,
                event=_label(t.event, t.guards, t.actions),
                is_internal=t.is_internal,
                is_initial=t.is_initial,
            )
            for t in transitions
        ]
        super()._render_scope_transitions(shown, scope_ids, lines, indent)


def mermaid_source() -> str:
    """The lifecycle as Mermaid ``stateDiagram-v2`` source (deterministic)."""
    renderer = _MermaidRenderer(MermaidRendererConfig(direction="TB"))
    text: str = renderer.render(_graph())
    return text


# -- DOT -------------------------------------------------------------------------------


def _state_ids(states: list[DiagramState]) -> Iterator[str]:
    for state in states:
        yield state.id
        yield from _state_ids(state.children)


def _owner(node: str) -> str:
    # The state a DOT node stands for (a compound's edges end on its anchor nodes).
    for suffix in ("_anchor_in", "_anchor_out", "_anchor"):
        if node.endswith(suffix):
            return node.removesuffix(suffix)
    return node


# Helper node names that embed the id() of the pydot graph they were made for.
_ID_NAME = re.compile(r"(?<=__initial_)\d+|(?<=cluster___atomic_)\d+")


class _DotRenderer(DotRenderer):
    """The stock renderer, changed for a readable, stable drawing.

    - Every edge is written after every node. The stock renderer writes an inner
      state's edges inside its cluster, before the states outside are declared, and
      Graphviz then places those states (OPEN, CLOSED) inside the cluster.
    - The transitions between the same two nodes share one edge whose label has one
      line per transition, ``event [guards] / actions`` (the stock renderer shows no
      actions, and draws one edge per transition).
    - An edge against the order in which states are declared (``retry``, ``drop``,
      ``connect`` from CLOSED, ...) is written from its target to its source with
      ``dir=back``: the arrow is the same, and Graphviz ranks the states top to
      bottom in declaration order, NOT_STARTED first and CLOSED last.
    - The top-level states are not wrapped in an invisible cluster (which made
      Graphviz ignore their edges when ranking them).
    - ``scopes`` records which graph each ``id()`` in a helper node's name stands
      for, so that :func:`dot_source` can rename them deterministically.
    """

    def __init__(self, config: DotRendererConfig) -> None:
        super().__init__(config)
        self._edges: dict[tuple[str, str, str, str], list[str]] = {}
        self.scopes: dict[str, str] = {}

    def render(self, graph: DiagramGraph) -> pydot.Dot:
        self._edges = {}
        self.scopes = {}
        order = {state_id: n for n, state_id in enumerate(_state_ids(graph.states))}
        dot: pydot.Dot = super().render(graph)
        for (source, target, ltail, lhead), lines in self._edges.items():
            rest = "".join(f"<br/>{_escape_html(line)}" for line in lines[1:])
            attrs: dict[str, Any] = {"label": self._build_edge_label(lines[0], rest, 0)}
            attrs["minlen"] = 2 if ltail or lhead else 1
            if order[_owner(target)] < order[_owner(source)]:
                source, target, ltail, lhead = target, source, lhead, ltail
                attrs["dir"] = "back"
            if ltail:
                attrs["ltail"] = ltail
            if lhead:
                attrs["lhead"] = lhead
            dot.add_edge(pydot.Edge(source, target, **attrs))
        return dot

    def _render_states(
        self,
        states: list[DiagramState],
        transitions: list[DiagramTransition],
        parent_graph: pydot.Dot | pydot.Subgraph,
        extra_nodes: list[pydot.Node] | None = None,
    ) -> None:
        root = isinstance(parent_graph, pydot.Dot)
        name = "root" if root else str(parent_graph.get_name()).removeprefix("cluster_")
        self.scopes[str(id(parent_graph))] = name
        super()._render_states(states, transitions, parent_graph, extra_nodes)
        if root:
            for sub in parent_graph.get_subgraph_list():
                if str(sub.get_name()).startswith("cluster___atomic_"):
                    sub.set_name("top_level_states")
                    sub.get_attributes().pop("cluster", None)

    def _add_transitions_for_state(
        self,
        state: DiagramState,
        all_transitions: list[DiagramTransition],
        graph: pydot.Dot | pydot.Subgraph,
    ) -> None:
        # Collected here, written by render() once every node is declared.
        for transition in all_transitions:
            if transition.source != state.id or transition.is_internal or transition.is_initial:
                continue
            label = _label(transition.event, transition.guards, transition.actions)
            targets: list[str | None] = list(transition.targets) or [None]
            for target in targets:
                source, dest, extra = self._resolve_edge_endpoints(transition, target)
                key = (source, dest, extra.get("ltail", ""), extra.get("lhead", ""))
                self._edges.setdefault(key, []).append(label)


_DOT_CONFIG = DotRendererConfig(
    graph_rankdir="TB",
    font_name="Helvetica",
    state_font_size="11",
    transition_font_size="9",
    graph_attrs={"nodesep": "0.5", "ranksep": "0.5", "pad": "0.2"},
)


def dot_source() -> str:
    """The lifecycle as Graphviz DOT source, with deterministic node names."""
    renderer = _DotRenderer(_DOT_CONFIG)
    text = str(renderer.render(_graph()).to_string())

    def rename(match: re.Match[str]) -> str:
        name = renderer.scopes.get(match.group(0))
        if name is None:  # pragma: no cover - a library change
            raise RuntimeError(f"unexpected id-based name in the DOT output: {match.group(0)}")
        return name

    return _ID_NAME.sub(rename, text)


# -- files -----------------------------------------------------------------------------


def render_svg(source: str) -> bytes:
    """Render DOT ``source`` to SVG with Graphviz; raises GraphvizNotFound without it."""
    program = shutil.which("dot")
    if program is None:
        raise GraphvizNotFound(f"the Graphviz 'dot' program is not on PATH: {_INSTALL_HINT}")
    completed = subprocess.run(
        [program, "-Tsvg"], input=source.encode(), capture_output=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        error = completed.stderr.decode(errors="replace").strip()
        raise LifecycleError(f"Graphviz failed with exit code {completed.returncode}: {error}")
    return completed.stdout


def write_diagrams(out: str | Path = "diagrams", *, svg: bool = True) -> list[Path]:
    """Write ``lifecycle.mmd``, ``lifecycle.dot`` and (with ``svg``) ``lifecycle.svg`` to ``out``.

    Returns the paths written. The SVG needs Graphviz's ``dot`` program: without it,
    :class:`GraphvizNotFound` is raised before anything is written (pass
    ``svg=False`` to write only the two sources, which need no Graphviz).
    """
    folder = Path(out)
    mermaid = mermaid_source()
    dot = dot_source()
    image = render_svg(dot) if svg else None
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "lifecycle.mmd", folder / "lifecycle.dot"]
    written[0].write_text(mermaid, encoding="utf-8")
    written[1].write_text(dot, encoding="utf-8")
    if image is not None:
        written.append(folder / "lifecycle.svg")
        written[2].write_bytes(image)
    return written
