"""The notebook page the gateway serves at ``GET /``: one self-contained HTML document.

The page's CSS, JavaScript and the lifecycle diagram are inlined, so loading it is one
request (the only one that needs the token) and nothing comes from a CDN or needs a build
step. The assets live in ``fsm/servers/gateway/static/`` and ship in the wheel:

* ``page.html``: the document, with three markers replaced by the assets below;
* ``page.css`` and ``page.js``: the page's style and its client of the gateway's ``/ws``
  (DESIGN.md sections 6 and 10); the client's behaviour is described in ``docs/page.md``;
* ``lifecycle.svg``: a copy of ``diagrams/lifecycle.svg``, generated from the machine by
  ``fsm diagrams`` (a test fails when the two differ); the page highlights the node whose
  ``<title>`` names the current state.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["render_page"]

_CSS_MARKER = "/*__CSS__*/"
_JS_MARKER = "/*__JS__*/"
_SVG_MARKER = "<!--__SVG__-->"

# Everything before the <svg> element (XML declaration, DOCTYPE, generator comments) is not
# allowed or not wanted inside an HTML document.
_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Graphviz sizes the drawing in points; without them the viewBox lets it fit its column.
_SVG_SIZE = re.compile(r'(<svg\b[^>]*?)\s+width="[^"]*"\s+height="[^"]*"', re.DOTALL)


def _asset(name: str) -> str:
    static = resources.files("fsm.servers.gateway").joinpath("static")
    return static.joinpath(name).read_text(encoding="utf-8")


def inline_svg(svg: str) -> str:
    """``svg`` (a Graphviz SVG file) as an element to embed in HTML."""
    body = _COMMENT.sub("", _SVG_PROLOGUE.sub("", svg, count=1))
    return _SVG_SIZE.sub(r"\1", body, count=1).strip()


@functools.cache
def render_page() -> bytes:
    """The page served at ``GET /``, as UTF-8 bytes (built once from the package's assets)."""
    css, js = _asset("page.css"), _asset("page.js")
    # An inlined asset must not end its own element early.
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("fsm/servers/gateway/static: an inlined asset closes its own element")
    html = _asset("page.html")
    for marker, text in (
        (_CSS_MARKER, css),
        (_JS_MARKER, js),
        (_SVG_MARKER, inline_svg(_asset("lifecycle.svg"))),
    ):
        if html.count(marker) != 1:
            raise RuntimeError(f"fsm/servers/gateway/static/page.html: expected one {marker}")
        html = html.replace(marker, text)
    return html.encode("utf-8")
