"""The sans-IO core: the lifecycle, decided by one python-statemachine machine.

No trio, no sockets, no clock, no global RNG: a driver reports what happened by calling
an event method of :class:`~fsm.ConnectionLifecycle`, and carries out the effects it
returns. Nothing here imports a module outside this package, so ``import fsm`` never
imports trio. The modules, from the bottom up:

- ``_value``, ``_types``, ``_errors``: immutable records, the enums and
  :class:`~fsm.Transition`, the exceptions;
- ``_frames``: the wire frame (JSON text) and its limits; ``_buffer``: the edit buffer
  and flush batches; ``_policy``: the retry policy and its jitter;
- ``_effects``: what the lifecycle tells its driver to do (``Dial``, ``Backoff``, ...);
- ``_machine``: the declarative machine (states, events, guards, actions);
  ``_engine``: the one shared engine and the cache of its decisions;
- ``_lifecycle``: :class:`~fsm.ConnectionLifecycle`, the public face (its docstring is
  the theory of operation);
- ``_logging``, ``_redact``: the library's silent-by-default logger, and what keeps
  secrets out of log lines.

The public path is :mod:`fsm.lifecycle` (and ``fsm`` itself).
"""
