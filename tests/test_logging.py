"""Tests of transition logging: one structlog event per transition, with stable keys."""

from __future__ import annotations

import contextlib
import logging
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from fsm import (
    ConnectionLifecycle,
    InvalidTransition,
    NotConnected,
    RetryPolicy,
    Transition,
)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def stdlib_records(level: int = logging.WARNING, name: str = "fsm") -> Iterator[list[Any]]:
    """The stdlib records logger ``name`` emits at ``level`` and above, structlog unconfigured."""
    structlog.reset_defaults()
    logger = logging.getLogger(name)
    handler = _ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=False, timeout=60,
    )


def make(**kwargs: Any) -> ConnectionLifecycle:
    return ConnectionLifecycle(RetryPolicy(max_attempts=2), random.Random(0), **kwargs)


def without_level(entries: list[MutableMapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "log_level"} for e in entries]


def test_each_transition_is_one_log_event_with_stable_keys() -> None:
    """Every transition logs one event named after the lifecycle event, with stable keys."""
    lc = make()
    with capture_logs() as logs:
        lc.connect()
        lc.fail("refused")
        lc.retry()
        lc.ready()
        lc.drop(uptime=0.0, cause=ConnectionResetError("reset"))
        lc.connect()
        lc.ready()
        lc.drop(uptime=60.0)
        lc.retry()
        lc.reject("401")
        lc.connect()
        lc.shutdown("1000 SHUTDOWN")
        lc.connect()
        lc.ready()
        lc.close()
        lc.close_finished()
    # The waits are jittered (drawn from the injected RNG): each is the first wait of the
    # schedule, within its jitter; the rest of every line is exact.
    first_delay, reset_delay = logs[1]["delay"], logs[7]["delay"]
    nominal = next(iter(lc.policy.delays()))
    for delay in (first_delay, reset_delay):
        assert nominal * (1 - lc.policy.jitter) <= delay <= nominal
    assert without_level(logs) == [
        {"event": "connect", "source": "NOT_STARTED", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "fail", "source": "CONNECTING", "target": "CONNECTING", "attempt": 1,
         "phase": "BACKING_OFF", "delay": first_delay, "cause": "refused"},
        {"event": "retry", "source": "CONNECTING", "target": "CONNECTING", "attempt": 1,
         "phase": "DIALING"},
        {"event": "ready", "source": "CONNECTING", "target": "OPEN", "attempt": 1},
        {"event": "drop", "source": "OPEN", "target": "CLOSED", "attempt": 2,
         "reason": "GAVE_UP", "cause": "ConnectionResetError: reset"},
        {"event": "connect", "source": "CLOSED", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "ready", "source": "CONNECTING", "target": "OPEN", "attempt": 0},
        {"event": "drop", "source": "OPEN", "target": "CONNECTING", "attempt": 0,
         "phase": "BACKING_OFF", "delay": reset_delay},
        {"event": "retry", "source": "CONNECTING", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "reject", "source": "CONNECTING", "target": "CLOSED", "attempt": 0,
         "reason": "REJECTED", "cause": "401"},
        {"event": "connect", "source": "CLOSED", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "shutdown", "source": "CONNECTING", "target": "CLOSED", "attempt": 0,
         "reason": "SHUTDOWN", "cause": "1000 SHUTDOWN"},
        {"event": "connect", "source": "CLOSED", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "ready", "source": "CONNECTING", "target": "OPEN", "attempt": 0},
        {"event": "close", "source": "OPEN", "target": "CLOSING", "attempt": 0},
        {"event": "close_finished", "source": "CLOSING", "target": "CLOSED", "attempt": 0,
         "reason": "USER"},
    ]  # fmt: skip


def test_no_op_events_log_one_event_each() -> None:
    """connect while OPEN and close while CLOSED are transitions too: one event each."""
    lc = make()
    lc.connect()
    lc.ready()
    with capture_logs() as logs:
        lc.connect()
        lc.close()
        lc.close_finished()
        lc.close()
    assert [(e["event"], e["source"], e["target"]) for e in logs] == [
        ("connect", "OPEN", "OPEN"),
        ("close", "OPEN", "CLOSING"),
        ("close_finished", "CLOSING", "CLOSED"),
        ("close", "CLOSED", "CLOSED"),
    ]


# Regression: the engine passes its BoundEvent (a str subclass) as the event name.
def test_log_event_names_are_plain_strings() -> None:
    """The logged event is a plain str, so every renderer prints just the event name."""
    lc = make()
    with capture_logs() as logs:
        lc.connect()
        lc.fail()
    assert [type(e["event"]) for e in logs] == [str, str]
    line = structlog.processors.KeyValueRenderer()(None, "info", dict(logs[0]))
    assert "event='connect'" in line


def test_giving_up_and_rejection_are_warnings() -> None:
    """Entering CLOSED(GAVE_UP) or CLOSED(REJECTED) logs at warning level, other steps at info."""
    lc = make()
    with capture_logs() as logs:
        lc.connect()
        lc.fail()
        lc.retry()
        lc.fail()
        lc.connect()
        lc.reject()
        lc.connect()
        lc.shutdown()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("connect", "info"),
        ("fail", "info"),
        ("retry", "info"),
        ("fail", "warning"),
        ("connect", "info"),
        ("reject", "warning"),
        ("connect", "info"),
        ("shutdown", "info"),
    ]


def test_a_cycle_ended_by_an_error_in_the_client_is_a_warning() -> None:
    """Entering CLOSED(ERROR) (an rng whose draw is outside [0, 1)) logs at warning level."""

    class Broken:
        def random(self) -> float:
            return 2.0

    lc = ConnectionLifecycle(RetryPolicy(), Broken())  # type: ignore[arg-type]
    with capture_logs() as logs:
        lc.connect()
        lc.fail("refused")
    closing = [e for e in logs if e["event"] == "fail"]
    assert closing == [closing[0]] and closing[0]["reason"] == "ERROR"
    assert closing[0]["log_level"] == "warning"


def test_refused_events_log_nothing() -> None:
    """An invalid event, a request while CLOSED or a stale retry logs nothing."""
    lc = make()
    with capture_logs() as logs:
        with pytest.raises(InvalidTransition):
            lc.ready()
        lc.close()
        with pytest.raises(NotConnected):
            lc.request()
        assert lc.retry() == []  # a retry from a cancelled timer: ignored, not an error
    assert [e["event"] for e in logs] == ["close"]


def test_edits_and_acks_log_nothing() -> None:
    """Edits and acks are not transitions and log nothing, in any state."""
    lc = make()
    with capture_logs() as logs:
        lc.edit("a", "x")
        lc.ack(1)
    assert logs == []
    lc.connect()
    lc.ready()
    with capture_logs() as logs:
        sent = lc.edit("a", "y")
        assert sent is not None
        lc.ack(sent.seq)
    assert logs == []


def test_causes_are_redacted() -> None:
    """A cause carrying a secret is logged with the secret masked."""
    lc = make()
    lc.connect()
    with capture_logs() as logs:
        lc.fail("HTTP 503 for ws://h/ws?session_id=s&token=hunter2")
    assert "hunter2" not in logs[0]["cause"]
    assert "503" in logs[0]["cause"]


def test_a_given_logger_is_used_with_its_bindings() -> None:
    """A logger passed to the lifecycle logs the transitions with its bound keys."""
    with capture_logs() as logs:
        lc = make(logger=structlog.get_logger("app").bind(session_id="s-1"))
        lc.connect()
    assert logs[0]["session_id"] == "s-1"
    assert logs[0]["event"] == "connect"


def test_logging_can_be_turned_off() -> None:
    """With log_transitions=False nothing is logged, and observers still see every change."""
    seen: list[Transition] = []
    with capture_logs() as logs:
        lc = make(log_transitions=False, observers=[seen.append])
        lc.connect()
        lc.ready()
    assert logs == []
    assert [t.event for t in seen] == ["connect", "ready"]


def test_logs_agree_with_observer_records() -> None:
    """Each log event carries the same source, target, attempt and event as the Transition."""
    seen: list[Transition] = []
    with capture_logs() as logs:
        lc = make(observers=[seen.append])
        lc.connect()
        lc.fail()
        lc.retry()
        lc.ready()
        lc.drop(uptime=1.0)
    assert len(logs) == len(seen) == 5
    for entry, change in zip(logs, seen, strict=True):
        assert entry["event"] == change.event
        assert entry["source"] == change.source.value
        assert entry["target"] == change.target.value
        assert entry["attempt"] == change.attempt
        assert entry.get("phase") == (change.phase.value if change.phase else None)
        assert entry.get("reason") == (change.reason.value if change.reason else None)


def test_import_does_not_configure_structlog() -> None:
    """Importing and using fsm in a fresh interpreter leaves structlog unconfigured."""
    code = (
        "import random, structlog\n"
        "before = structlog.get_config()\n"
        "import fsm, fsm.lifecycle\n"
        "assert not structlog.is_configured(), 'configured by import'\n"
        "lc = fsm.ConnectionLifecycle(rng=random.Random(0))\n"
        "lc.connect(); lc.fail(); lc.close()\n"
        "assert not structlog.is_configured(), 'configured by use'\n"
        "assert structlog.get_config() == before\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_a_lazy_logger_follows_structlog_configured_later() -> None:
    """Without cache_logger_on_first_use, each line uses structlog's configuration of the
    moment: a capture configured after the first transition sees the next one."""
    lc = make()
    lc.connect()  # the first line: the logger is settled here
    with capture_logs() as logs:
        lc.fail("refused")
    assert [e["event"] for e in logs] == ["fail"]


def test_a_cached_lazy_logger_is_kept_like_structlog_keeps_it() -> None:
    """With cache_logger_on_first_use, the logger assembled for the first line is the one
    every later line goes to, as with structlog's own proxy: filtering still applies;
    once structlog is reset to its defaults, lines go to stdlib logging instead."""
    seen: list[dict[str, Any]] = []

    def keep(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event_dict))
        raise structlog.DropEvent

    structlog.configure(
        processors=[keep],
        wrapper_class=structlog.make_filtering_bound_logger(30),  # WARNING and above
        cache_logger_on_first_use=True,
    )
    lc = make()
    lc.connect()
    lc.fail("refused")  # INFO: filtered
    lc.retry()
    lc.fail("refused again")  # the last allowed attempt failed: GAVE_UP is a warning
    assert [(e["event"], e["reason"], e["cause"]) for e in seen] == [
        ("fail", "GAVE_UP", "refused again"),
    ]
    structlog.reset_defaults()  # the application no longer configures structlog
    with stdlib_records() as records:
        lc.connect()
        lc.fail("refused")
        lc.retry()
        lc.fail("refused at last")
    assert len(seen) == 1
    assert [(r.fsm["event"], r.fsm["cause"]) for r in records] == [
        ("fail", "refused at last"),
    ]


# A connector against a real server: dials, a refused handshake, a give-up (a warning),
# a recovery, a close. Every kind of line the library writes, debug to warning.
_SCENE = """
import random, trio, fsm
from fsm.server import KernelServer

async def main():
    server = KernelServer(cells={"c1": "x = 1"})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        policy = fsm.RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02)
        async with fsm.open_connector(server.url, policy=policy, rng=random.Random(0),
                                      session_id="s-log") as conn:
            conn.edit("c1", "x = 2")
            server.faults.refuse_handshakes = 10
            try:
                await conn.connect()
            except fsm.ConnectionFailed:
                pass
            server.faults.refuse_handshakes = 0
            await conn.connect()
            await conn.wait_acked()
        await server.shutdown()
        nursery.cancel_scope.cancel()
    print("done")

trio.run(main)
"""


def test_the_library_prints_nothing_until_logging_is_configured() -> None:
    """Unconfigured, a whole scene (debug lines to a give-up warning) prints nothing at all."""
    result = run_python(_SCENE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert result.stderr == ""


def test_lines_go_to_stdlib_logging_when_structlog_is_not_configured() -> None:
    """With only logging.basicConfig, lines reach stdlib loggers fsm and fsm.server as
    'event key=value' messages at the levels the application enabled."""
    result = run_python(
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout,\n"
        "                    format='%(name)s %(levelname)s %(message)s')\n"
        + _SCENE
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "fsm INFO connect session_id=s-log source=NOT_STARTED target=CONNECTING attempt=0 " \
        "phase=DIALING" in lines
    assert any(line.startswith("fsm WARNING fail session_id=s-log ") and "reason=GAVE_UP" in line
               for line in lines)
    assert any(line.startswith("fsm.server INFO ") for line in lines)
    assert not any(" DEBUG " in line for line in lines)  # INFO and above, as configured
    assert result.stderr == ""


def test_stdlib_records_carry_the_fields_as_a_dict() -> None:
    """A stdlib record's ``fsm`` attribute holds the event and its fields."""
    with stdlib_records(logging.INFO) as records:
        lc = make()
        lc.connect()
        lc.fail("refused")
    assert [r.fsm for r in records] == [
        {"event": "connect", "source": "NOT_STARTED", "target": "CONNECTING", "attempt": 0,
         "phase": "DIALING"},
        {"event": "fail", "source": "CONNECTING", "target": "CONNECTING", "attempt": 1,
         "phase": "BACKING_OFF", "delay": records[1].fsm["delay"], "cause": "refused"},
    ]
    assert [(r.name, r.levelno) for r in records] == [("fsm", logging.INFO)] * 2


def test_a_level_that_is_off_is_not_rendered() -> None:
    """A stdlib logger set to WARNING gets no INFO record (the line is not even built)."""
    with stdlib_records(logging.WARNING) as records:
        lc = make()
        lc.connect()
        lc.fail()
        lc.retry()
    assert records == []
    assert not fsm_logger().is_enabled_for(logging.INFO)


def fsm_logger() -> Any:
    from fsm.core._logging import get_logger

    return get_logger("fsm")


def test_the_applications_structlog_configuration_is_followed() -> None:
    """When the application configured structlog, library lines go through its processors
    (and not to stdlib logging), with the connector's bound session_id."""
    result = run_python(
        "import logging, sys, structlog\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "structlog.configure(processors=[structlog.processors.add_log_level,\n"
        "    structlog.processors.JSONRenderer()],\n"
        "    logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
        + _SCENE
    )
    assert result.returncode == 0, result.stderr
    import json

    events = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    assert {"event": "connector_opened", "level": "debug", "session_id": "s-log"} in [
        {k: e.get(k) for k in ("event", "level", "session_id")} for e in events
    ]
    assert any(e["event"] == "fail" and e.get("reason") == "GAVE_UP" and e["level"] == "warning"
               and e["session_id"] == "s-log" for e in events)
    # Nothing went to stdlib logging as well (python-statemachine's own debug lines do).
    assert not [line for line in result.stderr.splitlines() if ":fsm" in line]


def test_logger_none_means_the_library_logger_and_false_transitions_mean_none() -> None:
    """logger=None logs to the library logger ``fsm``; log_transitions=False logs nothing."""
    with stdlib_records(logging.INFO) as records:
        make(logger=None).connect()
        make(log_transitions=False).connect()
    assert [(r.name, r.fsm["event"]) for r in records] == [("fsm", "connect")]


def test_the_cli_logs_to_stderr_and_prints_results_to_stdout() -> None:
    """fsm demo --json: narration and summary on stdout, the library's log lines on stderr."""
    import json

    result = subprocess.run(
        [sys.executable, "-m", "fsm", "demo", "--json", "--failures", "3"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    err = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["event"] for e in out} == {"narration", "summary"}
    assert out[-1]["event"] == "summary" and out[-1]["ok"] is True
    assert any("no edit lost" in e.get("text", "") for e in out)
    assert {"connect", "ready", "fail", "retry"} <= {e["event"] for e in err}
    assert not any(e.get("logger") == "fsm.server" for e in err)
