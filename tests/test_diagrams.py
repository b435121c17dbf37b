"""The lifecycle diagrams: generated from the machine, committed, and kept in step with it."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip(
    "pydot",
    reason="the diagrams need pydot: pip install 'fsm-kernel-lifecycle[docs]' (it brings pydot)",
)

import fsm
from fsm.cli import _diagrams
from fsm.cli._diagrams import (
    ACTION_LABELS,
    GUARD_LABELS,
    GraphvizNotFound,
    dot_source,
    mermaid_source,
    write_diagrams,
)
from fsm.cli._main import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DIAGRAMS = ROOT / "diagrams"
REGENERATE = "the committed diagrams are stale: run `fsm diagrams` and commit diagrams/"
GUARDS = ("can_interact", "is_not_started", "attempts_left", "stayed_up", "reconnect_requested")


def normalise(text: str) -> str:
    """Line endings and trailing blanks do not count as a change."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def machine_class() -> type:
    """The class of the machine a fresh ConnectionLifecycle runs."""
    return type(fsm.ConnectionLifecycle(log_transitions=False).machine)


def declared_transitions() -> list[tuple[str, str, str, list[str], list[str]]]:
    """(source, target, event, guards, actions) of every transition that leaves its state."""
    machine = machine_class()
    defined = set(dir(machine))
    found = []

    def walk(states: object) -> None:
        for state in states:  # type: ignore[attr-defined]
            for t in state.transitions:
                if t.internal or not t.events:
                    continue
                actions = [str(c) for c in t.on if not c.is_convention or c.func in defined]
                event = " ".join(str(e.id) for e in t.events)
                for target in t.targets:
                    found.append((state.id, target.id, event, [str(c) for c in t.cond], actions))
            walk(state.states)

    walk(machine.states)
    return found


def test_committed_mermaid_matches_the_machine() -> None:
    """diagrams/lifecycle.mmd is exactly what the machine generates now."""
    committed = (DIAGRAMS / "lifecycle.mmd").read_text(encoding="utf-8")
    assert normalise(committed) == normalise(mermaid_source()), REGENERATE


def test_committed_dot_matches_the_machine() -> None:
    """diagrams/lifecycle.dot is exactly what the machine generates now."""
    committed = (DIAGRAMS / "lifecycle.dot").read_text(encoding="utf-8")
    assert normalise(committed) == normalise(dot_source()), REGENERATE


def test_committed_svg_is_an_svg_of_the_lifecycle() -> None:
    """diagrams/lifecycle.svg, which the docs publish, is an SVG showing the flush action."""
    root = ET.parse(DIAGRAMS / "lifecycle.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(root.itertext())
    assert "flush edits" in text and "NOT_STARTED" in text


def test_sources_are_deterministic() -> None:
    """Generating twice gives the same text, and no id()-based node name survives."""
    assert mermaid_source() == mermaid_source()
    assert dot_source() == dot_source()
    assert not re.search(r"\d{6,}", dot_source())
    assert "__initial_root" in dot_source() and "__initial_connecting" in dot_source()


@pytest.mark.parametrize("render", [mermaid_source, dot_source], ids=["mermaid", "dot"])
def test_guards_and_flush_action_are_shown(render: object) -> None:
    """Both sources show every guard, and the flush action on the ready transition."""
    source = render()  # type: ignore[operator]
    for guard in GUARDS:
        assert f"[{GUARD_LABELS[guard]}]" in source, guard
    assert "ready / flush edits" in source


def test_mermaid_draws_every_transition_with_its_label() -> None:
    """Every transition that leaves its state is one Mermaid arrow labelled with it."""
    source = mermaid_source()
    for src, dst, event, guards, actions in declared_transitions():
        if src == "connecting" and not event:
            continue  # the initial arrow into DIALING
        label = event
        if guards:
            label += f" [{', '.join(GUARD_LABELS[g] for g in guards)}]"
        if actions:
            label += f" / {', '.join(ACTION_LABELS[a] for a in actions)}"
        assert f"{src} --> {dst} : {label}\n" in source, label


def test_internal_transitions_are_listed_in_their_state() -> None:
    """Events handled without leaving the state are listed inside it, guards included."""
    source = mermaid_source()
    assert "open : request [can_interact]\n" in source
    assert "closing : connect / reconnect when closed\n" in source
    assert "closing : close / cancel reconnect\n" in source


def test_labels_are_the_domains_words_not_callback_names() -> None:
    """Every action and guard of the machine has words of its own, and the diagrams show
    those words: no on_enter_/on_exit_ callback or other method name is drawn."""
    machine = machine_class()
    defined = set(dir(machine))
    actions, guards = set(), set()

    def walk(states: object) -> None:
        for state in states:  # type: ignore[attr-defined]
            for t in state.transitions:
                actions.update(str(c) for c in t.on if not c.is_convention or c.func in defined)
                guards.update(str(c) for c in t.cond)
            for callbacks in (state.enter, state.exit):
                actions.update(str(c) for c in callbacks if c.func in defined)
            walk(state.states)

    walk(machine.states)
    assert actions - set(ACTION_LABELS) == set(), "give these actions words in ACTION_LABELS"
    assert guards - set(GUARD_LABELS) == set(), "give these guards words in GUARD_LABELS"
    for source in (mermaid_source(), dot_source()):
        for name in actions:
            assert not re.search(rf"\b{re.escape(name)}\b", source), name
        assert "on_enter_" not in source and "on_exit_" not in source


def test_no_state_is_highlighted() -> None:
    """The diagram shows the structure, not a snapshot: no state is marked active."""
    assert "classDef active" not in mermaid_source()
    assert "turquoise" not in dot_source()


def test_cli_writes_the_sources_without_svg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fsm diagrams --out DIR --no-svg` writes the two sources and no SVG."""
    assert cli_main(["diagrams", "--out", str(tmp_path / "out"), "--no-svg"]) == 0
    out = tmp_path / "out"
    assert (out / "lifecycle.mmd").read_text(encoding="utf-8") == mermaid_source()
    assert (out / "lifecycle.dot").read_text(encoding="utf-8") == dot_source()
    assert not (out / "lifecycle.svg").exists()
    assert str(out / "lifecycle.mmd") in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_write_diagrams_renders_a_valid_svg(tmp_path: Path) -> None:
    """With Graphviz, write_diagrams also writes lifecycle.svg, a well-formed SVG."""
    written = write_diagrams(tmp_path, svg=True)
    assert [p.name for p in written] == ["lifecycle.mmd", "lifecycle.dot", "lifecycle.svg"]
    root = ET.parse(tmp_path / "lifecycle.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "flush edits" in " ".join(root.itertext())


def test_missing_graphviz_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without dot, asking for the SVG fails before writing anything, and says how to fix it."""
    monkeypatch.setattr(_diagrams.shutil, "which", lambda name: None)
    with pytest.raises(GraphvizNotFound, match=r"install Graphviz.*--no-svg"):
        write_diagrams(tmp_path / "a", svg=True)
    assert not (tmp_path / "a").exists()
    assert cli_main(["diagrams", "--out", str(tmp_path / "b")]) == 1
    assert "apt-get install graphviz" in capsys.readouterr().err
    assert len(write_diagrams(tmp_path / "c", svg=False)) == 2
