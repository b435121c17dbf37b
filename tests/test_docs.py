"""The documentation: its examples run, its code compiles, its generated parts are current.

Every ``docs/examples/*.py`` runs as a script in a subprocess (they start whatever
server they need on 127.0.0.1 themselves), in the background, as many at once as
there are CPUs; each test waits for its own, bounded by ``EXAMPLE_TIMEOUT``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import fsm
from fsm.cli._main import format_schedule

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = sorted(DOCS.glob("*.md"))
EXAMPLE_TIMEOUT = 60.0
#: Examples that need an optional dependency to run: the module, and the extra it comes with.
REQUIRES = {"marimo_cells.py": ("marimo", "marimo"), "marimo_run.py": ("marimo", "marimo"),
            "testing_hypothesis.py": ("hypothesis", "test")}

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                    re.M | re.S)
_SNIPPET = re.compile(r'^\s*--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"\s*$', re.M)


def fences(page: Path, lang: str) -> list[str]:
    """The bodies of the fenced code blocks of ``page`` in language ``lang``."""
    text = page.read_text(encoding="utf-8")
    return [m["body"] for m in _FENCE.finditer(text) if m["lang"] == lang]


@pytest.fixture(scope="session")
def example_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every example, run in the background as a subprocess, as many at once as CPUs."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    def run(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(path)],
            cwd=cwd,  # hypothesis writes its .hypothesis/ folder here
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        yield {
            path.name: pool.submit(run, path, tmp_path_factory.mktemp(path.stem))
            for path in EXAMPLES
        }


def test_there_are_examples() -> None:
    """The docs have runnable examples (a glob that finds nothing would test nothing)."""
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("name", [p.name for p in EXAMPLES])
def test_example_runs(
    name: str, example_runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    """Each docs/examples/*.py runs to completion, exit status 0, within the time bound."""
    needed = REQUIRES.get(name)
    if needed is not None and importlib.util.find_spec(needed[0]) is None:
        pytest.skip(f"{name} needs {needed[0]}: pip install -e '.[{needed[1]}]'")
    try:
        result = example_runs[name].result()
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        pytest.fail(f"{name} did not finish within {EXAMPLE_TIMEOUT} s:\n{output[-4000:]}")
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-4000:]}"


def test_every_example_is_shown_in_a_page() -> None:
    """No example is orphaned: each is included by at least one page."""
    included = {m["path"] for page in PAGES for m in _SNIPPET.finditer(page.read_text())}
    for path in EXAMPLES:
        assert f"docs/examples/{path.name}" in included, f"{path.name} is in no page"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_are_examples_or_compile(page: Path) -> None:
    """A python block is an included example (whose file and section exist) or compiles."""
    for body in fences(page, "python"):
        lines = [line for line in body.splitlines() if line.strip()]
        snippets = [_SNIPPET.match(line) for line in lines]
        if lines and all(snippets):
            for match in snippets:
                assert match is not None
                source = ROOT / match["path"]
                assert source.is_file(), f"{page.name} includes a missing file {match['path']}"
                if match["section"]:
                    text = source.read_text(encoding="utf-8")
                    for marker in ("start", "end"):
                        tag = f"--8<-- [{marker}:{match['section']}]"
                        assert tag in text, f"{match['path']} has no {tag}"
            continue
        assert not any(snippets), f"{page.name}: a block mixes code and snippet lines"
        compile(body, f"{page.name} (python block)", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_snippet_includes_outside_code_resolve() -> None:
    """Every --8<-- include in the pages names a file that exists."""
    for page in PAGES:
        for match in _SNIPPET.finditer(page.read_text(encoding="utf-8")):
            assert (ROOT / match["path"]).is_file(), f"{page.name}: {match['path']}"


def test_retry_schedule_snippet_is_current() -> None:
    """The schedule table in the docs is what format_schedule(RetryPolicy()) prints now."""
    committed = (DOCS / "snippets" / "retry-schedule.md").read_text(encoding="utf-8")
    assert committed.strip() == format_schedule(fsm.RetryPolicy()).strip(), (
        "docs/snippets/retry-schedule.md is stale; regenerate it with: python -c "
        "\"from fsm.cli._main import format_schedule; from fsm import RetryPolicy; "
        "print(format_schedule(RetryPolicy()))\" > docs/snippets/retry-schedule.md"
    )
    assert '--8<-- "docs/snippets/retry-schedule.md"' in (DOCS / "retry-schedule.md").read_text()


def test_lifecycle_page_embeds_the_generated_diagrams() -> None:
    """The lifecycle page includes the committed Mermaid source and the SVG, not copies."""
    page = DOCS / "lifecycle.md"
    assert any('--8<-- "diagrams/lifecycle.mmd"' in body for body in fences(page, "mermaid"))
    assert "(img/lifecycle.svg)" in page.read_text(encoding="utf-8")


def test_lifecycle_page_names_every_state_event_guard_and_action() -> None:
    """The tables on the lifecycle page cover everything the machine declares."""
    text = (DOCS / "lifecycle.md").read_text(encoding="utf-8")
    machine = type(fsm.ConnectionLifecycle(log_transitions=False).machine)
    defined = set(dir(machine))
    names: set[str] = set()

    def walk(states: object) -> None:
        for state in states:  # type: ignore[attr-defined]
            names.add(str(state.name))
            for callbacks in (state.enter, state.exit):
                names.update(str(c) for c in callbacks if c.func in defined)
            for t in state.transitions:
                names.update(str(e.id) for e in t.events)
                names.update(str(c) for c in t.cond)
                names.update(str(c) for c in t.on if not c.is_convention or c.func in defined)
            walk(state.states)

    walk(machine.states)
    assert {"flush_edits", "can_interact", "is_not_started", "close_finished"} <= names
    missing = sorted(name for name in names if f"`{name}`" not in text and name not in text)
    assert not missing, f"docs/lifecycle.md does not mention {missing}"


def test_api_reference_covers_the_public_names() -> None:
    """Every name in fsm.__all__ appears in the API reference page."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [name for name in fsm.__all__ if f"fsm.{name}" not in text]
    assert not missing, f"docs/api.md does not document {missing}"


def test_nav_lists_every_page_and_only_existing_ones() -> None:
    """mkdocs.yml's nav names every page in docs/, and every page it names exists."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"^\s+- [^:\n]+: (\S+\.md)\s*$", config, re.M))
    assert nav == {page.name for page in PAGES}
