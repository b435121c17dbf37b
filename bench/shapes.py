"""The lifecycle's shape, built four ways, for comparing what one transition costs.

Each has the same states (CONNECTING compound where the library allows it), the same
events, guards and transition actions as ``fsm.core._machine._LifecycleMachine``, and no
wrapper: no effects, no observers, no transition records, no logging, no enter/exit
hooks. The guards and actions only touch an attempt counter, so what differs from the
real lifecycle is exactly what ``ConnectionLifecycle`` adds on top of its engine.
"""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine

MAX_ATTEMPTS = 25
MIN_UPTIME = 5.0


# -- python-statemachine, no wrapper --------------------------------------------------


class RawMachine(StateMachine):  # type: ignore[misc]
    """``_LifecycleMachine``'s states, compound state, transitions, guards and actions.

    Keep in step with fsm/core/_machine.py: the transition benchmark reports (as a row)
    whether the declared transitions still match, compared by ``shape_mismatch()``.
    """

    not_started = State("NOT_STARTED", value="NOT_STARTED", initial=True)

    class connecting(State.Compound, name="CONNECTING"):  # type: ignore[misc,call-arg]
        dialing = State("DIALING", value="DIALING", initial=True)
        backing_off = State("BACKING_OFF", value="BACKING_OFF")

    open = State("OPEN", value="OPEN")
    closing = State("CLOSING", value="CLOSING")
    closed = State("CLOSED", value="CLOSED")

    connect = (
        not_started.to(connecting, cond="is_not_started")
        | closed.to(connecting, on="start_new_cycle")
        | closing.to.itself(internal=True, on="request_reconnect")
        | connecting.backing_off.to(connecting.dialing, on="retry_now")
        | connecting.dialing.to.itself(internal=True)
        | open.to.itself(internal=True)
    )
    request = (
        not_started.to(connecting, cond="is_not_started")
        | closed.to(connecting, cond="heals_on_use", on="start_new_cycle")
        | connecting.dialing.to.itself(internal=True)
        | connecting.backing_off.to.itself(internal=True)
        | open.to.itself(internal=True, cond="can_interact")
    )
    ready = connecting.dialing.to(open, on="flush_edits")
    fail = (
        connecting.dialing.to(closed, unless="rng_ok", on="stop_on_bad_draw")
        | connecting.dialing.to(connecting.backing_off, cond="attempts_left", on="count_failure")
        | connecting.dialing.to(closed, on="count_failure")
    )
    defer = connecting.dialing.to(connecting.backing_off)
    retry = connecting.backing_off.to(connecting.dialing)
    drop = (
        open.to(closed, unless="rng_ok", on="stop_on_bad_draw")
        | open.to(connecting.backing_off, cond="stayed_up", on="reset_attempts")
        | open.to(connecting.backing_off, cond="attempts_left", on="count_failure")
        | open.to(closed, on="count_failure")
    )
    reject = connecting.dialing.to(closed) | open.to(closed)
    shutdown = connecting.dialing.to(closed) | open.to(closed)
    close = (
        not_started.to(closed)
        | connecting.to(closed, on="abandon_attempt")
        | open.to(closing, on="hang_up")
        | closing.to.itself(internal=True, on="cancel_reconnect")
        | closed.to.itself(internal=True)
    )
    close_finished = closing.to(connecting, cond="reconnect_requested", on="start_new_cycle") | (
        closing.to(closed)
    )

    def __init__(self) -> None:
        self.n_attempts = 0
        self.reconnect = False
        super().__init__()

    @property
    def is_not_started(self) -> bool:
        return self.current_state_value == "NOT_STARTED"

    @property
    def can_interact(self) -> bool:
        return True

    @property
    def reconnect_requested(self) -> bool:
        return self.reconnect

    @property
    def heals_on_use(self) -> bool:
        return True

    @property
    def rng_ok(self) -> bool:
        return True

    def attempts_left(self) -> bool:
        return self.n_attempts + 1 < MAX_ATTEMPTS

    def stayed_up(self, uptime: float = 0.0) -> bool:
        return uptime >= MIN_UPTIME

    def start_new_cycle(self) -> None:
        self.n_attempts = 0
        self.reconnect = False

    def retry_now(self) -> None:
        self.n_attempts = 0

    def stop_on_bad_draw(self) -> None:
        pass

    def request_reconnect(self) -> None:
        self.reconnect = True

    def cancel_reconnect(self) -> None:
        self.reconnect = False

    def count_failure(self) -> None:
        self.n_attempts += 1

    def reset_attempts(self) -> None:
        self.n_attempts = 0

    def flush_edits(self) -> None:
        pass

    def abandon_attempt(self) -> None:
        pass

    def hang_up(self) -> None:
        pass


# -- the `transitions` library ----------------------------------------------------------


class TransitionsModel:
    """The model the `transitions` machines drive (callbacks get the trigger's kwargs)."""

    state: str

    def __init__(self) -> None:
        self.n_attempts = 0
        self.reconnect = False

    def is_not_started(self, **_: Any) -> bool:
        return True

    def can_interact(self, **_: Any) -> bool:
        return True

    def reconnect_requested(self, **_: Any) -> bool:
        return self.reconnect

    def heals_on_use(self, **_: Any) -> bool:
        return True

    def rng_ok(self, **_: Any) -> bool:
        return True

    def attempts_left(self, **_: Any) -> bool:
        return self.n_attempts + 1 < MAX_ATTEMPTS

    def stayed_up(self, uptime: float = 0.0, **_: Any) -> bool:
        return uptime >= MIN_UPTIME

    def start_new_cycle(self, **_: Any) -> None:
        self.n_attempts = 0
        self.reconnect = False

    def retry_now(self, **_: Any) -> None:
        self.n_attempts = 0

    def stop_on_bad_draw(self, **_: Any) -> None:
        pass

    def request_reconnect(self, **_: Any) -> None:
        self.reconnect = True

    def cancel_reconnect(self, **_: Any) -> None:
        self.reconnect = False

    def count_failure(self, **_: Any) -> None:
        self.n_attempts += 1

    def reset_attempts(self, **_: Any) -> None:
        self.n_attempts = 0

    def flush_edits(self, **_: Any) -> None:
        pass

    def abandon_attempt(self, **_: Any) -> None:
        pass

    def hang_up(self, **_: Any) -> None:
        pass


def _transition_table(
    connecting: str, dialing: str, backing_off: str, connecting_sources: list[str]
) -> list[dict[str, Any]]:
    """The lifecycle's transitions as `transitions` dicts (dest None: internal)."""

    def t(trigger: str, source: str | list[str], dest: str | None, **kw: Any) -> dict[str, Any]:
        return {"trigger": trigger, "source": source, "dest": dest, **kw}

    return [
        t("connect", "NOT_STARTED", connecting, conditions="is_not_started"),
        t("connect", "CLOSED", connecting, after="start_new_cycle"),
        t("connect", "CLOSING", None, after="request_reconnect"),
        t("connect", backing_off, dialing, after="retry_now"),
        t("connect", dialing, None),
        t("connect", "OPEN", None),
        t("request", "NOT_STARTED", connecting, conditions="is_not_started"),
        t("request", "CLOSED", connecting, conditions="heals_on_use", after="start_new_cycle"),
        t("request", connecting_sources, None),
        t("request", "OPEN", None, conditions="can_interact"),
        t("ready", dialing, "OPEN", after="flush_edits"),
        t("fail", dialing, "CLOSED", unless="rng_ok", after="stop_on_bad_draw"),
        t("fail", dialing, backing_off, conditions="attempts_left", after="count_failure"),
        t("fail", dialing, "CLOSED", after="count_failure"),
        t("defer", dialing, backing_off),
        t("retry", backing_off, dialing),
        t("drop", "OPEN", "CLOSED", unless="rng_ok", after="stop_on_bad_draw"),
        t("drop", "OPEN", backing_off, conditions="stayed_up", after="reset_attempts"),
        t("drop", "OPEN", backing_off, conditions="attempts_left", after="count_failure"),
        t("drop", "OPEN", "CLOSED", after="count_failure"),
        t("reject", [dialing, "OPEN"], "CLOSED"),
        t("shutdown", [dialing, "OPEN"], "CLOSED"),
        t("close", "NOT_STARTED", "CLOSED"),
        t("close", connecting_sources, "CLOSED", after="abandon_attempt"),
        t("close", "OPEN", "CLOSING", after="hang_up"),
        t("close", "CLOSING", None, after="cancel_reconnect"),
        t("close", "CLOSED", None),
        t("close_finished", "CLOSING", connecting, conditions="reconnect_requested",
          after="start_new_cycle"),
        t("close_finished", "CLOSING", "CLOSED"),
    ]


def transitions_hsm() -> TransitionsModel:
    """`transitions`' HierarchicalMachine: CONNECTING is a compound state, as in fsm."""
    from transitions.extensions import HierarchicalMachine

    model = TransitionsModel()
    states: list[Any] = [
        "NOT_STARTED",
        {"name": "CONNECTING", "children": ["DIALING", "BACKING_OFF"], "initial": "DIALING"},
        "OPEN",
        "CLOSING",
        "CLOSED",
    ]
    table = _transition_table(
        "CONNECTING", "CONNECTING_DIALING", "CONNECTING_BACKING_OFF", ["CONNECTING"]
    )
    HierarchicalMachine(
        model=model, states=states, transitions=table, initial="NOT_STARTED",
        auto_transitions=False,
    )
    return model


def transitions_flat() -> TransitionsModel:
    """`transitions`' plain Machine, with CONNECTING flattened into its two phases."""
    from transitions import Machine

    model = TransitionsModel()
    states = ["NOT_STARTED", "DIALING", "BACKING_OFF", "OPEN", "CLOSING", "CLOSED"]
    table = _transition_table("DIALING", "DIALING", "BACKING_OFF", ["DIALING", "BACKING_OFF"])
    Machine(
        model=model, states=states, transitions=table, initial="NOT_STARTED",
        auto_transitions=False,
    )
    return model


# -- a hand-written dict FSM: the limit --------------------------------------------------

_Guard = Any
_Action = Any


def _stayed_up(m: DictFSM, uptime: float = 0.0) -> bool:
    return uptime >= MIN_UPTIME


def _attempts_left(m: DictFSM, **_: Any) -> bool:
    return m.n_attempts + 1 < MAX_ATTEMPTS


def _is_not_started(m: DictFSM, **_: Any) -> bool:
    return m.state == "NOT_STARTED"


def _reconnect_requested(m: DictFSM, **_: Any) -> bool:
    return m.reconnect


def _bad_draw(m: DictFSM, **_: Any) -> bool:
    return False  # the lifecycle's `unless="rng_ok"`: a bad jitter draw ends the cycle


def _count_failure(m: DictFSM, **_: Any) -> None:
    m.n_attempts += 1


def _reset_attempts(m: DictFSM, **_: Any) -> None:
    m.n_attempts = 0


def _start_new_cycle(m: DictFSM, **_: Any) -> None:
    m.n_attempts = 0
    m.reconnect = False


def _set_reconnect(value: bool) -> _Action:
    def action(m: DictFSM, **_: Any) -> None:
        m.reconnect = value

    return action


def _nothing(m: DictFSM, **_: Any) -> None:
    pass


_CONNECTING = ("DIALING", "BACKING_OFF")
# (state, event) -> ((guard, target, action), ...), tried in order; target None: internal.
_TABLE: dict[tuple[str, str], tuple[tuple[_Guard, str | None, _Action], ...]] = {
    ("NOT_STARTED", "connect"): ((_is_not_started, "DIALING", None),),
    ("CLOSED", "connect"): ((None, "DIALING", _start_new_cycle),),
    ("CLOSING", "connect"): ((None, None, _set_reconnect(True)),),
    ("OPEN", "connect"): ((None, None, None),),
    ("NOT_STARTED", "request"): ((_is_not_started, "DIALING", None),),
    ("OPEN", "request"): ((None, None, None),),
    ("DIALING", "ready"): ((None, "OPEN", _nothing),),
    ("DIALING", "fail"): (
        (_bad_draw, "CLOSED", _nothing),
        (_attempts_left, "BACKING_OFF", _count_failure),
        (None, "CLOSED", _count_failure),
    ),
    ("BACKING_OFF", "retry"): ((None, "DIALING", None),),
    ("OPEN", "drop"): (
        (_bad_draw, "CLOSED", _nothing),
        (_stayed_up, "BACKING_OFF", _reset_attempts),
        (_attempts_left, "BACKING_OFF", _count_failure),
        (None, "CLOSED", _count_failure),
    ),
    ("DIALING", "reject"): ((None, "CLOSED", None),),
    ("OPEN", "reject"): ((None, "CLOSED", None),),
    ("DIALING", "shutdown"): ((None, "CLOSED", None),),
    ("OPEN", "shutdown"): ((None, "CLOSED", None),),
    ("NOT_STARTED", "close"): ((None, "CLOSED", None),),
    ("OPEN", "close"): ((None, "CLOSING", _nothing),),
    ("CLOSING", "close"): ((None, None, _set_reconnect(False)),),
    ("CLOSED", "close"): ((None, None, None),),
    ("CLOSING", "close_finished"): (
        (_reconnect_requested, "DIALING", _start_new_cycle),
        (None, "CLOSED", None),
    ),
}
_TABLE[("DIALING", "connect")] = ((None, None, None),)
_TABLE[("BACKING_OFF", "connect")] = ((None, "DIALING", _reset_attempts),)
_TABLE[("CLOSED", "request")] = ((None, "DIALING", _start_new_cycle),)
_TABLE[("DIALING", "defer")] = ((None, "BACKING_OFF", None),)
for _phase in _CONNECTING:
    _TABLE[(_phase, "request")] = ((None, None, None),)
    _TABLE[(_phase, "close")] = ((None, "CLOSED", _nothing),)


class DictFSM:
    """A transition table in a dict and a loop: the fastest a Python FSM gets."""

    __slots__ = ("n_attempts", "reconnect", "state")

    def __init__(self) -> None:
        self.state = "NOT_STARTED"
        self.n_attempts = 0
        self.reconnect = False

    def send(self, event: str, **kwargs: Any) -> None:
        try:
            options = _TABLE[(self.state, event)]
        except KeyError:
            raise ValueError(f"{event} not allowed in {self.state}") from None
        for guard, target, action in options:
            if guard is None or guard(self, **kwargs):
                if action is not None:
                    action(self, **kwargs)
                if target is not None:
                    self.state = target
                return
        raise ValueError(f"{event}: no guard passed in {self.state}")


def declared_shape(machine_class: type) -> list[tuple[Any, ...]]:
    """(events, source, target, guards, actions, internal) of every declared transition."""
    shape = []
    for state in machine_class.states_map.values():  # type: ignore[attr-defined]
        for t in state.transitions:
            if t.initial:
                continue
            shape.append((
                ",".join(e.id for e in t.events), t.source.id, t.target.id,
                tuple(str(c) for c in t.cond), tuple(str(c) for c in t.on), t.internal,
            ))
    return sorted(shape)


def shape_mismatch() -> list[tuple[Any, ...]]:
    """Transitions declared on only one of RawMachine and fsm's _LifecycleMachine."""
    from fsm.core._machine import _LifecycleMachine

    return sorted(set(declared_shape(RawMachine)) ^ set(declared_shape(_LifecycleMachine)))
