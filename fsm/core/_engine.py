"""One python-statemachine engine per machine class, and a cache of its decisions.

Building an engine per lifecycle costs tens of kilobytes and a fraction of a
millisecond, and an event through it tens of microseconds. Here every lifecycle of a
machine class shares one engine, and what that engine decided is remembered:

- **The shared engine** (:class:`DecisionCache` holds it) is an ordinary instance of
  the machine class. Before an event it is given the lifecycle's configuration through
  ``current_state_value`` (python-statemachine's documented low-level way to set it)
  and the lifecycle as its owner (the machine's callbacks read and write
  ``self._owner``); ``send()`` then runs as always.
- **The decision cache.** While the shared engine runs an event, every callback group
  it invokes is recorded: the guards (their executor, the arguments the engine passed,
  the value they returned) and the actions (validators, before, exit, on, enter, after)
  in the order the engine ran them, then where the engine left the configuration, or
  its refusal (``TransitionNotAllowed``, with the events allowed there). The records
  form a tree per (configuration, event, names of the event's arguments): a guard is a
  branch on its value, python-statemachine's lazy evaluation in declaration order
  being exactly the order in which the engine called them. A later event with the same
  key walks the tree on its own owner: it evaluates the same guards, with its own
  arguments, in the order the engine did; where the values match a recorded path it
  runs the recorded actions in the recorded order (so rng draws and effects are the
  owner's own) and lands where the engine landed. A value never seen before is a miss:
  the shared engine decides, and its decision is added to the tree.

The engine is thus the authority for every decision; the cache never computes a
transition, it repeats one the engine made from an identical key. What the key leaves
out must not matter, so a decision is cached only when its record shows nothing else
can: one trigger (no internal or eventless events), no ``prepare_event`` callbacks, no
callback that reads an argument outside the event's own and the transition's ``event``,
``source``, ``target``, ``state`` and ``transition`` (in particular none that takes
``event_data``, ``machine`` or ``model``), no callback condition, no guard after an
action. Anything else goes to the shared engine every time (still correct, only not
faster). Callbacks must read their owner and their arguments, never the engine's own
configuration (which, on a cache hit, is not the owner's): ``_LifecycleMachine``'s do.
A machine class that uses what a shared engine cannot carry per owner (history
states, final states, invoked children, errors as events) gets no shared engine at
all: :func:`cache_for` returns ``None`` and the caller builds one engine per owner.

One lock serialises every decision, hits included: the shared engine is not
re-entrant, and neither is a lifecycle used from two threads at once. A callback that
sends an event to another lifecycle from inside a step (``_LifecycleMachine``'s never
do) gets a private engine for that nested event.
"""

from __future__ import annotations

import threading
from collections.abc import MutableSet
from functools import partial
from inspect import Parameter
from typing import Any, Final

from statemachine import StateChart
from statemachine.callbacks import CallbacksExecutor, allways_true
from statemachine.exceptions import TransitionNotAllowed
from statemachine.orderedset import OrderedSet

__all__ = ["DecisionCache", "Refusal", "cache_for", "config_key", "config_value"]

#: The arguments the engine adds that a cached decision can pass on unchanged: they
#: depend only on the path through the tree (the ``event`` object is the recorded one).
_PATH_ARGUMENTS: Final = frozenset({"event", "source", "target", "state", "transition"})
#: Every argument the engine adds to an event's own (EventData.extended_kwargs).
_ENGINE_ARGUMENTS: Final = _PATH_ARGUMENTS | {"event_data", "machine", "model"}
# Callback groups that may run while transitions are being selected.
_SELECTION_GROUPS: Final = ("COND@", "VALIDATOR@")

_LOCK: Final = threading.RLock()


def config_key(value: Any) -> Any:
    """A hashable key for an engine configuration value (a state value or a set of them)."""
    if isinstance(value, MutableSet):
        return tuple(value)
    return value


def config_value(key: Any) -> Any:
    """The engine configuration value a :func:`config_key` stands for."""
    if type(key) is tuple:
        return OrderedSet(key)
    return key


class Refusal:
    """The engine refused the event (TransitionNotAllowed); ``allowed`` events there."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed


class _Uncacheable(Exception):
    """The record of a decision shows that its key does not determine it."""


class _Step:
    """One recorded callback group, compiled: what to call, and a guard's value.

    ``calls`` holds, per callback in the executor's order, the callable (with the path
    arguments it binds already applied), the names of the event arguments it binds,
    and the value it is compared with (``unless`` guards), as python-statemachine's
    executor would call it.
    """

    __slots__ = ("calls", "guard", "key", "value")

    def __init__(
        self, key: str, calls: tuple[tuple[Any, tuple[str, ...], Any], ...], guard: bool,
        value: Any,
    ) -> None:
        self.key = key
        self.calls = calls
        self.guard = guard
        self.value = value


class _Node:
    """Actions to run in order, then a guard to branch on, or else the outcome."""

    __slots__ = ("actions", "branches", "guard", "outcome")

    def __init__(self) -> None:
        self.actions: list[_Step] = []
        self.guard: _Step | None = None
        self.branches: dict[bool, _Node] = {}
        self.outcome: Any = None  # a configuration key, or a Refusal


def _closure(function: Any) -> dict[str, Any]:
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None) or ()
    if code is None:
        return {}
    return {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells, strict=True)}


def _compile(
    wrapper: Any, args: tuple[Any, ...], kwargs: dict[str, Any], trigger: frozenset[str]
) -> tuple[Any, tuple[str, ...], Any]:
    """How to call ``wrapper``'s callback again with another event's arguments.

    The engine resolved the callback (python-statemachine's ``callable_method`` binds
    the arguments a callable names; ``attr_method`` reads an attribute); the same
    binder tells which arguments it takes. Raises _Uncacheable when the callback takes
    anything a later event could not pass the same way.
    """
    if wrapper.condition is not allways_true or args:
        raise _Uncacheable
    callback = wrapper._callback
    qualname = getattr(callback, "__qualname__", "")
    found = _closure(callback)
    if qualname.startswith("attr_method.") and {"getter", "obj"} <= found.keys():
        return partial(found["getter"], found["obj"]), (), wrapper.expected_value
    if not qualname.startswith("callable_method.") or not (
        {"a_callable", "sig_bind_expected"} <= found.keys()
    ):
        raise _Uncacheable
    bound = found["sig_bind_expected"](**kwargs)
    parameters = bound.signature.parameters
    constants: dict[str, Any] = {}
    names: list[str] = []
    for name, value in bound.arguments.items():
        if parameters[name].kind not in (Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY):
            raise _Uncacheable
        if name in trigger:
            names.append(name)
        elif name in _PATH_ARGUMENTS:
            constants[name] = value
        else:
            raise _Uncacheable  # event_data, machine, model: not the same on a replay
    function = found["a_callable"]
    if constants:
        function = partial(function, **constants)
    return function, tuple(names), wrapper.expected_value


class _Recorder:
    """Stands in for the shared engine's callback registry and records what it runs."""

    def __init__(self, registry: Any) -> None:
        self._real = registry
        self._executors = registry._registry
        self.steps: list[_Step] | None = None
        self.trigger_kwargs: frozenset[str] = frozenset()
        self.triggers: set[int] = set()
        self.cacheable = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __contains__(self, key: str) -> bool:
        return key in self._real

    def __getitem__(self, key: str) -> Any:
        return self._real[key]

    def _record(
        self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any], on_error: Any,
        guard: bool,
    ) -> tuple[CallbacksExecutor | None, tuple[tuple[Any, tuple[str, ...], Any], ...] | None]:
        executor = self._executors.get(key)
        if executor is None or not executor.items:
            return None, None
        if self.steps is None or not self.cacheable:
            return executor, None
        trigger = getattr(kwargs.get("event_data"), "trigger_data", None)
        if trigger is None or on_error is not None or key.startswith("PREPARE@"):
            self.cacheable = False
            return executor, None
        self.triggers.add(id(trigger))
        if len(self.triggers) > 1:
            self.cacheable = False  # an internal or eventless event: not this key's alone
            return executor, None
        try:
            calls = tuple(
                _compile(wrapper, args, kwargs, self.trigger_kwargs) for wrapper in executor
            )
        except _Uncacheable:
            self.cacheable = False
            return executor, None
        return executor, calls

    def call(self, key: str, *args: Any, on_error: Any = None, **kwargs: Any) -> Any:
        executor, calls = self._record(key, args, kwargs, on_error, False)
        if executor is None:
            return []
        result = executor.call(*args, on_error=on_error, **kwargs)
        if calls is not None and self.steps is not None:
            self.steps.append(_Step(key, calls, False, None))
        return result

    def all(self, key: str, *args: Any, on_error: Any = None, **kwargs: Any) -> Any:
        executor, calls = self._record(key, args, kwargs, on_error, True)
        if executor is None:
            return True
        result = executor.all(*args, on_error=on_error, **kwargs)
        if calls is not None and self.steps is not None:
            self.steps.append(_Step(key, calls, True, result))
        return result


def _run_actions(step: _Step, kwargs: dict[str, Any]) -> None:
    # CallbacksExecutor.call: every callback, in order (results unused by the engine here).
    for function, names, _expected in step.calls:
        if names:
            function(**{name: kwargs[name] for name in names})
        else:
            function()


def _run_guard(step: _Step, kwargs: dict[str, Any]) -> bool:
    # CallbacksExecutor.all: true unless a callback's value is false (after `unless`).
    for function, names, expected in step.calls:
        value = function(**{name: kwargs[name] for name in names}) if names else function()
        if expected is not None:
            value = bool(value) == expected
        if not value:
            return False
    return True


def supports(machine_class: type[StateChart[Any]]) -> bool:
    """Whether one engine can serve every owner of ``machine_class`` (see the module)."""
    if machine_class.catch_errors_as_events:
        return False
    return not any(
        state.final or state.history or state.is_history
        for state in machine_class.states_map.values()
    )


def _invokes(engine: Any) -> bool:
    """Whether any state of ``engine`` has an invoke callback registered."""
    registry = engine._callbacks._registry
    return any(
        (executor := registry.get(state.invoke.key)) is not None and executor.items
        for state in engine.states_map.values()
    )


class DecisionCache:
    """The shared engine of one machine class and the tree of its decisions."""

    def __init__(self, machine_class: type[StateChart[Any]], owner: Any = None) -> None:
        self.machine_class = machine_class
        self.engine: Any = machine_class(owner)
        self.engine._owner = None
        self.recorder = _Recorder(self.engine._callbacks)
        self.engine._callbacks = self.recorder  # type: ignore[assignment]
        self.roots: dict[tuple[Any, ...], _Node] = {}
        self.uncacheable: set[tuple[Any, ...]] = set()
        self.busy = False
        self.hits = 0
        self.misses = 0
        self.use_cache = True

    def decide(self, owner: Any, config: Any, event: str, kwargs: dict[str, Any]) -> Any:
        """Run ``event`` for ``owner`` in configuration ``config``; the outcome.

        The outcome is the new configuration key, or a :class:`Refusal`. Callbacks run
        on ``owner`` exactly as the engine runs them; exceptions they raise propagate.
        """
        key = (config, event, *kwargs)
        with _LOCK:
            if self.busy:
                return self._nested(owner, config, event, kwargs)
            self.busy = True
            engine = self.engine
            state = engine.__dict__  # not through StateChart.__setattr__: this runs per event
            state["_owner"] = owner
            try:
                node = self.roots.get(key) if self.use_cache else None
                while node is not None:
                    for step in node.actions:
                        _run_actions(step, kwargs)
                    guard = node.guard
                    if guard is None:
                        self.hits += 1
                        return node.outcome
                    node = node.branches.get(_run_guard(guard, kwargs))
                # A miss: only guards have run so far, and the engine evaluates them again.
                self.misses += 1
                return self._run(key, config, event, kwargs)
            finally:
                state["_owner"] = None
                self.busy = False

    def _run(self, key: tuple[Any, ...], config: Any, event: str, kwargs: dict[str, Any]) -> Any:
        engine = self.engine
        recorder = self.recorder
        engine.current_state_value = config_value(config)
        record = self.use_cache and key not in self.uncacheable
        recorder.steps = [] if record else None
        recorder.trigger_kwargs = frozenset(kwargs)
        recorder.triggers.clear()
        # An event argument named like one the engine adds would be overridden by it.
        recorder.cacheable = not recorder.trigger_kwargs & _ENGINE_ARGUMENTS
        try:
            engine.send(event, **kwargs)
        except TransitionNotAllowed:
            outcome: Any = Refusal([e.id for e in engine.allowed_events])
        except BaseException:
            recorder.steps = None
            raise
        else:
            outcome = config_key(engine.current_state_value)
        steps, recorder.steps = recorder.steps, None
        if steps is not None:
            if recorder.cacheable:
                try:
                    self._insert(key, steps, outcome)
                except _Uncacheable:
                    self.uncacheable.add(key)
                    self.roots.pop(key, None)
            else:
                self.uncacheable.add(key)
        return outcome

    def _insert(self, key: tuple[Any, ...], steps: list[_Step], outcome: Any) -> None:
        node = self.roots.get(key)
        if node is None:
            node = self.roots[key] = _Node()
        fresh = not node.actions and node.guard is None and node.outcome is None
        i = 0
        acted = False
        while True:
            # The node's actions: the engine must have run the same ones.
            if fresh:
                while i < len(steps) and not steps[i].guard:
                    if not steps[i].key.startswith(_SELECTION_GROUPS):
                        acted = True
                    node.actions.append(steps[i])
                    i += 1
            else:
                for action in node.actions:
                    if i >= len(steps) or steps[i].guard or steps[i].key != action.key:
                        raise _Uncacheable(key)
                    if not steps[i].key.startswith(_SELECTION_GROUPS):
                        acted = True
                    i += 1
            if i == len(steps):
                if fresh:
                    node.outcome = outcome
                elif node.guard is not None or not _same(node.outcome, outcome):
                    raise _Uncacheable(key)
                return
            step = steps[i]
            if acted:
                raise _Uncacheable(key)  # a guard after an action: a miss could not redo it
            if fresh:
                node.guard = step
            elif node.guard is None or node.guard.key != step.key:
                raise _Uncacheable(key)
            i += 1
            child = node.branches.get(step.value)
            if child is None:
                child = node.branches[step.value] = _Node()
                fresh = True
            else:
                fresh = False
            node = child

    def _nested(self, owner: Any, config: Any, event: str, kwargs: dict[str, Any]) -> Any:
        engine = self.machine_class(owner)
        engine.current_state_value = config_value(config)
        try:
            engine.send(event, **kwargs)
        except TransitionNotAllowed:
            return Refusal([e.id for e in engine.allowed_events])
        return config_key(engine.current_state_value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Refusal) or isinstance(b, Refusal):
        return isinstance(a, Refusal) and isinstance(b, Refusal) and a.allowed == b.allowed
    return bool(a == b)


_CACHES: dict[type[StateChart[Any]], DecisionCache | None] = {}


def cache_for(machine_class: type[StateChart[Any]], placeholder: Any) -> DecisionCache | None:
    """The decision cache of ``machine_class``, or None when it needs one engine per owner.

    ``placeholder`` is an owner to build the shared engine with (python-statemachine
    reads the machine's properties while it resolves callbacks); it is not kept.
    """
    try:
        return _CACHES[machine_class]
    except KeyError:
        pass
    with _LOCK:
        if machine_class not in _CACHES:
            cache = DecisionCache(machine_class, placeholder) if supports(machine_class) else None
            if cache is not None and _invokes(cache.engine):
                cache = None
            _CACHES[machine_class] = cache
        return _CACHES[machine_class]


def lock() -> threading.RLock:
    """The lock every decision runs under (per-owner engines take it too)."""
    return _LOCK
