"""Tests of transition logging: one structlog event per transition, with stable keys."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import MutableMapping
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


def make(**kwargs: Any) -> ConnectionLifecycle:
    return ConnectionLifecycle(RetryPolicy(max_attempts=2), random.Random(0), **kwargs)


def without_level(entries: list[MutableMapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "log_level"} for e in entries]


def test_each_transition_is_one_log_event_with_stable_keys() -> None:
    """Every transition logs one event named after the lifecycle event, with stable keys."""
    lc = make()
    policy, mirror = lc.policy, random.Random(0)
    with capture_logs() as logs:
        lc.connect()
        lc.fail("refused")
        first_delay = round(policy.backoff(1, mirror), 6)
        lc.retry()
        lc.ready()
        lc.drop(uptime=0.0, cause=ConnectionResetError("reset"))
        lc.connect()
        lc.ready()
        lc.drop(uptime=60.0)
        reset_delay = round(policy.backoff(1, mirror), 6)
        lc.retry()
        lc.reject("401")
        lc.connect()
        lc.shutdown("1000 SHUTDOWN")
        lc.connect()
        lc.ready()
        lc.close()
        lc.close_finished()
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


def test_refused_events_log_nothing() -> None:
    """An invalid event or a request while CLOSED logs nothing."""
    lc = make()
    with capture_logs() as logs:
        with pytest.raises(InvalidTransition):
            lc.ready()
        lc.close()
        with pytest.raises(NotConnected):
            lc.request()
        with pytest.raises(InvalidTransition):
            lc.retry()
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
    every later line goes to, as with structlog's own proxy: filtering still applies."""
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
    structlog.reset_defaults()  # a cached logger no longer reads the configuration
    lc.connect()
    lc.fail("refused")
    lc.retry()
    lc.fail("refused at last")
    assert [(e["event"], e["reason"], e["cause"]) for e in seen] == [
        ("fail", "GAVE_UP", "refused again"),
        ("fail", "GAVE_UP", "refused at last"),
    ]
