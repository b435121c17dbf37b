"""A Griffe extension for the API reference: the reST in docstrings, as Markdown.

The library's docstrings use two bits of reST that mkdocstrings would show verbatim:

- Sphinx roles: ``:role:`~a.b.C``` becomes ``C`` and ``:role:`a.b.C``` becomes
  ``a.b.C``, both as inline code;
- definition lists (a term alone on its line, its definition indented below) become
  bullet items, ``- term: definition``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    return f"`{shown}`"


_TERM = re.compile(r"^``[^`]+``$")


def _definition_lists(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if _TERM.match(line) and following.startswith("    ") and following.strip():
            body = []
            i += 1
            while i < len(lines) and lines[i].startswith("    ") and lines[i].strip():
                body.append(lines[i].strip())
                i += 1
            if not out or out[-1].strip():
                out.append("")
            out.append(f"- {line}: {' '.join(body)}")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite reST roles and definition lists in every docstring Griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_code, obj.docstring.value)
            obj.docstring.value = _definition_lists(text)
