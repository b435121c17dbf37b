"""Run the fsm benchmarks and print one table of measurements, ratios and targets.

    python bench/run.py            # full run (a few minutes)
    python bench/run.py --quick    # smaller counts and fewer repeats (~30 s; no gateway part)
    python bench/run.py --section transition --section import

Each section runs in its own fresh interpreter (so one section's garbage, monkeypatches,
tracemalloc or file limits never affect another); inside a section every ratio is
measured side by side in that one process. Targets are reported, never asserted: the
exit status is 0 whether they are met or missed (1 only if a section crashed).
Not part of the test run (pytest collects tests/ only).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import Row, machine_description, markdown_table, quiet_structlog

HERE = Path(__file__).resolve().parent
SECTIONS = {
    "transition": "1. one lifecycle transition",
    "hotpaths": "2. hot paths stay out of the engine",
    "footprint": "3. construction time and memory of idle instances",
    "sockets": "4. real sockets against the reference server",
    "storm": "5. reconnect storm on MockClock",
    "import": "6. import time",
    "scale": "7. 10,000 active lifecycles in one process",
}
if (HERE / "gateway.py").exists():  # helper D's gateway benchmarks (G1, G2)
    SECTIONS["gateway"] = "8. the lazy gateway: a shared upstream in an outage, sessions at scale"
MODULES = {"import": "imports"}  # section name -> module name, where they differ
_MARK = "@@BENCH-ROWS@@"


def _worker(section: str, quick: bool) -> None:
    # fsm as installed (or on PYTHONPATH) comes first; a plain clone works too.
    sys.path.append(str(HERE.parent))
    quiet_structlog()
    module = importlib.import_module(MODULES.get(section, section))
    rows = module.run(quick)
    print(_MARK + json.dumps([row.to_dict() for row in rows]), flush=True)


def _run_section(section: str, quick: bool) -> tuple[list[Row], float, str | None]:
    command = [sys.executable, str(HERE / "run.py"), "--worker", section]
    if quick:
        command.append("--quick")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    elapsed = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            rows = [Row(**d) for d in json.loads(line[len(_MARK):])]
            return rows, elapsed, None
    detail = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
    return [], elapsed, f"exit status {proc.returncode}\n{detail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, fewer repeats")
    parser.add_argument("--section", action="append", choices=list(SECTIONS),
                        help="run only this section (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and machine as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.quick)
        return 0

    # --quick stays a smoke run of a few seconds per section: the gateway's part (about a
    # minute even when quick) runs in full runs, or when asked for with --section.
    sections = args.section or [s for s in SECTIONS if not (args.quick and s == "gateway")]
    machine = machine_description()
    mode = "quick" if args.quick else "full"
    print(f"# fsm benchmarks ({mode} run)\n")
    for key, value in machine.items():
        print(f"- {key}: {value}")
    print()
    all_rows: list[Row] = []
    failures = []
    total = time.perf_counter()
    for section in sections:
        print(f"running {SECTIONS[section]} ...", file=sys.stderr, flush=True)
        rows, elapsed, error = _run_section(section, args.quick)
        print(f"  done in {elapsed:.1f} s", file=sys.stderr, flush=True)
        if error is not None:
            failures.append(section)
            print(f"section {section!r} failed: {error}", file=sys.stderr)
        all_rows.extend(rows)
    print(markdown_table(all_rows))
    met = sum(1 for r in all_rows if r.met is True)
    missed = [r for r in all_rows if r.met is False]
    print(f"\ntargets: {met} met, {len(missed)} missed"
          + (f" ({'; '.join(f'{r.section}: {r.name}' for r in missed)})" if missed else ""))
    if failures:
        print(f"sections that failed: {', '.join(failures)}")
    print(f"total wall time {time.perf_counter() - total:.0f} s; "
          f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"mode": mode, "machine": machine, "rows": [r.to_dict() for r in all_rows]},
            indent=2,
        ) + os.linesep)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
