"""MkDocs hooks: publish the generated lifecycle SVG from ``diagrams/`` as ``img/lifecycle.svg``.

The diagrams are generated from the machine into ``diagrams/`` at the repository root
(``fsm diagrams``), outside ``docs/``; this hook adds the SVG to the site so pages can
link to it, without a second copy in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {"img/lifecycle.svg": ROOT / "diagrams" / "lifecycle.svg"}


def on_files(files: Files, config: Any) -> Files:
    for uri, source in PUBLISHED.items():
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: run `fsm diagrams` to generate it")
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
