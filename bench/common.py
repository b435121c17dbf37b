"""Shared helpers: side-by-side timing, medians, result rows, the machine description.

Every ratio in the report is measured in one process, candidates interleaved: each
repeat times every candidate once (in a rotated order, so none always runs first),
and the ratio is the median over repeats of ``candidate / baseline`` within a repeat.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

PACKAGES = (
    "fsm",
    "python-statemachine",
    "transitions",
    "structlog",
    "trio",
    "trio-websocket",
    "wsproto",
)


@dataclass
class Row:
    """One line of the report."""

    section: str
    name: str
    value: float
    unit: str  # "s", "B", "/s", "n", "x"
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quiet_structlog() -> None:
    """Production-like logging: INFO transition lines are filtered out, warnings kept.

    Without this, structlog's default configuration pretty-prints every transition to
    stdout, which would both flood the report and measure a terminal, not the library.
    """
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


def json_null_logger() -> Any:
    """A structlog logger that renders JSON lines to /dev/null (logging *on*, no terminal)."""
    import structlog

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return structlog.wrap_logger(
        structlog.PrintLogger(sink),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
    )


# -- timing ---------------------------------------------------------------------------


@dataclass
class Case:
    """A statement to time with :mod:`timeit`; ``ops`` operations per execution."""

    stmt: str
    globals: dict[str, Any]
    ops: int = 1
    setup: str = "pass"


def _calibrate(timer: timeit.Timer, batch_time: float) -> int:
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= batch_time / 4 or number >= 1 << 24:
            break
        number *= 4 if elapsed < batch_time / 40 else 2
    return max(1, int(number * batch_time / max(elapsed, 1e-9)))


def time_side_by_side(
    cases: dict[str, Case], *, repeats: int, batch_time: float
) -> dict[str, list[float]]:
    """Seconds per operation of every case, one sample per repeat, interleaved.

    The garbage collector stays enabled (timeit disables it by default): the engines
    allocate reference cycles, and their collection is part of what an event costs.
    """
    timers: dict[str, timeit.Timer] = {}
    numbers: dict[str, int] = {}
    for name, case in cases.items():
        timer = timeit.Timer(case.stmt, "gc.enable()\n" + case.setup, globals=case.globals
                             | {"gc": gc})
        timers[name] = timer
        numbers[name] = _calibrate(timer, batch_time)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = timers[name].timeit(numbers[name])
            samples[name].append(elapsed / numbers[name] / cases[name].ops)
    return samples


def time_calls_side_by_side(
    calls: dict[str, Callable[[], float]], *, repeats: int
) -> dict[str, list[float]]:
    """Like :func:`time_side_by_side` for callables that return their own per-op time."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(calls[name]())
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over repeats of name / baseline, each pair measured in the same repeat."""
    return statistics.median(
        a / b for a, b in zip(samples[name], samples[baseline], strict=True)
    )


def stopwatch() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


# -- formatting -------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if value >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    if unit == "B":
        if value >= 1 << 20:
            return f"{value / (1 << 20):.3g} MiB"
        if value >= 1 << 10:
            return f"{value / (1 << 10):.3g} KiB"
        return f"{value:.0f} B"
    if unit == "/s":
        if value >= 1e6:
            return f"{value / 1e6:.3g} M/s"
        if value >= 1e3:
            return f"{value / 1e3:.3g} k/s"
        return f"{value:.3g} /s"
    if unit == "x":
        return f"{value:.3g}x"
    if unit == "n":
        return f"{value:.0f}"
    return f"{value:g} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.3f}x" if ratio < 10 else f"{ratio:.1f}x"


def result_word(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**missed**")


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| # | measurement | value | vs | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row.name + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.section} | {name} | {fmt_value(row.value, row.unit)} | {row.baseline} "
            f"| {fmt_ratio(row.ratio)} | {row.target} | {result_word(row.met)} |"
        )
    return "\n".join(lines)


# -- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_description() -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    memory = ""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages * page_size / (1 << 30):.1f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return {
        "CPU": f"{_cpu_model()} ({platform.machine()})",
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": memory,
        "Python": f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        "OS": platform.platform(),
        "load average (1, 5, 15 min) at start": _load(),
        "packages": ", ".join(versions),
    }
