"""The library's logger: silent until the application configures logging.

structlog stays the event API (``log.info("connect", source=..., target=...)``), but
where a line goes is the application's choice, as with httpx or websockets:

- when the application has configured structlog (``structlog.is_configured()``), lines
  go through its configuration, like any other structlog logger of the process;
- otherwise they go to the standard library logger of the same name (``fsm``,
  ``fsm.server``, ...), which has a ``NullHandler``: nothing is printed until the
  application configures ``logging`` (``logging.basicConfig()``, say), and then only
  the levels it enables. The record's message is ``event key=value ...``; the same
  fields, as a dict, are its ``fsm`` attribute.

The choice is made on every line, so configuring either after creating a connector
still applies. Checking a level that is off costs two attribute reads and a call.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LibraryLogger", "get_logger"]

logging.getLogger("fsm").addHandler(logging.NullHandler())

_EXC_INFO_KEYS = ("exc_info", "stack_info")


class LibraryLogger:
    """A structlog-style logger (``bind``, ``debug`` ... ``exception``, ``is_enabled_for``)
    that routes each line as the module docstring says."""

    __slots__ = ("_bound", "_checked", "_context", "_name", "_proxy", "_std")

    def __init__(self, name: str = "fsm", context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context: dict[str, Any] = context if context is not None else {}
        self._std = logging.getLogger(name)
        self._proxy: Any = None
        self._bound: Any = None  # the proxy's logger, once known to be cached for good
        self._checked = False

    @property
    def name(self) -> str:
        return self._name

    def bind(self, **values: Any) -> LibraryLogger:
        """A logger that adds ``values`` to every line."""
        return LibraryLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> LibraryLogger:
        """A logger with only ``values`` as context."""
        return LibraryLogger(self._name, dict(values))

    def unbind(self, *keys: str) -> LibraryLogger:
        """A logger without ``keys`` in its context."""
        return LibraryLogger(
            self._name, {k: v for k, v in self._context.items() if k not in keys}
        )

    def _structlog(self) -> Any:
        bound = self._bound
        if bound is not None:
            return bound
        proxy = self._proxy
        if proxy is None:
            proxy = self._proxy = structlog.get_logger(self._name, **self._context)
        if not self._checked:
            # A proxy assembles a logger from the configuration on every call (~1.4 µs)
            # unless the configuration caches loggers: then its bind() is the same
            # object for good, and holding that one changes nothing but the cost.
            self._checked = True
            first = proxy.bind()
            if proxy.bind() is first:
                self._bound = first
                return first
        return proxy

    def current(self) -> Any:
        """The logger a line goes to now: the structlog one (a cached logger when the
        configuration caches them) when structlog is configured, else ``self``. For
        callers that check a level and then log, and want to resolve once."""
        if structlog.is_configured():
            bound = self._bound
            return bound if bound is not None else self._structlog()
        return self

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` (a ``logging`` level) would be emitted."""
        if structlog.is_configured():
            target = self._bound
            if target is None:
                target = self._structlog()
            check = getattr(target, "is_enabled_for", None)
            return True if check is None else bool(check(level))
        return self._std.isEnabledFor(level)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog(), method)(event, **fields)
            return
        std = self._std
        if not std.isEnabledFor(level):
            return
        exc_info: Any = fields.pop("exc_info", method == "exception")
        stack_info = bool(fields.pop("stack_info", False))
        values = {**self._context, **fields}
        std.log(
            level,
            "%s",
            _render(event, values),
            exc_info=exc_info,
            stack_info=stack_info,
            extra={"fsm": {"event": event, **values}},
            stacklevel=3,
        )

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit(logging.CRITICAL, "critical", event, fields)

    def __repr__(self) -> str:
        return f"<LibraryLogger {self._name!r} context={self._context!r}>"


def _render(event: str, values: dict[str, Any]) -> str:
    parts = [event]
    for key, value in values.items():
        text = value if isinstance(value, str) else repr(value)
        if isinstance(value, str) and (not value or any(c.isspace() or c in "'\"=" for c in value)):
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def get_logger(name: str = "fsm", **context: Any) -> LibraryLogger:
    """The library's logger ``name`` (``fsm`` or a child), with ``context`` on every line."""
    return LibraryLogger(name, context)
