"""6. ``import fsm`` vs importing its dependencies alone, in fresh interpreters.

Each sample is a new ``python -c`` process (interpreter start-up excluded) that times
``import statemachine, structlog`` (what ``import fsm`` pulls in; trio is lazy) and
then ``import fsm`` with ``time.perf_counter()``: the ratio is
``(dependencies + fsm's own) / dependencies`` within one process, so both sides see the
same machine state; medians over the runs. Separately, ``import fsm`` alone and the
dependencies alone are timed in alternating processes (the first two rows). One warm-up
run first, so bytecode caches are warm: the processes run without
``PYTHONDONTWRITEBYTECODE``, so the warm-up writes ``__pycache__`` for fsm (and for any
dependency installed without it), as ``pip install`` does. Otherwise fsm, run from a
clone, would be compiled from source in every process while its dependencies load
bytecode (with the variable set, that alone made fsm's own share four times larger).
A final ``-X importtime`` run lists the modules ``import fsm`` adds on top of its
dependencies, by their own (self) time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Row, median

TIMED = (
    "import time, sys\n"
    "t0 = time.perf_counter()\n"
    "import {what}\n"
    "t1 = time.perf_counter()\n"
    "print(t1 - t0, int('trio' in sys.modules), int('trio_websocket' in sys.modules))\n"
)
FSM = "fsm"
DEPS = "statemachine, structlog"
ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter outside the repository, so that ``import fsm`` finds the same
    package as the other sections (PYTHONPATH, else the installed one, else this clone)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir(), env=env)


BOTH = (
    "import time, sys\n"
    "t0 = time.perf_counter()\n"
    "import statemachine, structlog\n"
    "t1 = time.perf_counter()\n"
    "import fsm\n"
    "t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1)\n"
)


def _paired_sample() -> tuple[float, float]:
    deps, own = _python("-c", BOTH).stdout.split()
    return float(deps), float(own)


def _sample(what: str) -> tuple[float, bool]:
    out = _python("-c", TIMED.format(what=what)).stdout.split()
    return float(out[0]), out[1] == "1" or out[2] == "1"


def _added_modules() -> list[tuple[str, float]]:
    """Modules ``import fsm`` imports beyond its dependencies, by self time (s)."""
    code = "import statemachine, structlog\nimport fsm\n"
    err = _python("-X", "importtime", "-c", code).stderr
    lines = err.splitlines()
    # Lines are printed when an import finishes; everything after the dependencies'
    # own top-level lines (one space after the bar) was imported for fsm itself.
    last_dep = max(i for i, line in enumerate(lines)
                   if re.search(r"\| (statemachine|structlog)$", line))
    added = []
    for line in lines[last_dep + 1:]:
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)$", line)
        if m:
            added.append((m.group(2), int(m.group(1)) / 1e6))
    return sorted(added, key=lambda kv: -kv[1])


def run(quick: bool) -> list[Row]:
    runs = 8 if quick else 20
    where = _python("-c", "import fsm; print(fsm.__file__)").stdout.strip()
    _sample(FSM)
    _sample(DEPS)
    fsm_times, dep_times = [], []
    pulls_trio = False
    for i in range(runs):
        order = (FSM, DEPS) if i % 2 == 0 else (DEPS, FSM)
        for what in order:
            elapsed, trio_loaded = _sample(what)
            if what == FSM:
                fsm_times.append(elapsed)
                pulls_trio = pulls_trio or trio_loaded
            else:
                dep_times.append(elapsed)
    pairs = [_paired_sample() for _ in range(runs)]
    ratio = median([(deps + own) / deps for deps, own in pairs])
    own_ms = median([own for _, own in pairs]) * 1e3
    top = ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in _added_modules()[:4])
    return [
        Row("6", f"`import fsm` (fresh interpreter, {runs} runs)", median(fsm_times), "s",
            note=f"measured: {where}"),
        Row("6", "`import statemachine, structlog`", median(dep_times), "s"),
        Row("6", "`import fsm` vs its dependencies alone, same process", ratio, "x",
            baseline="`import statemachine, structlog`", ratio=ratio, target="<= 1.10x",
            met=ratio <= 1.10,
            note=f"fsm's own modules add {own_ms:.1f} ms; largest (self time): {top}"),
        Row("6", "`import fsm` imports trio or trio_websocket", float(pulls_trio), "n",
            target="0 (lazy)", met=not pulls_trio),
    ]
