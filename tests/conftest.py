"""Shared test configuration: Hypothesis profiles and a clean structlog per test.

Pick one with the ``HYPOTHESIS_PROFILE`` environment variable:

- ``dev`` (default): 100 examples per property, no deadline.
- ``ci``: derandomized (the same examples on every run), 200 examples, no deadline,
  and a reproduction blob printed for every failure.
- ``long``: 5000 examples, no deadline; for a nightly or a hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=5000, deadline=None)
# CI machines set CI=true; an explicit HYPOTHESIS_PROFILE always wins.
_default_profile = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or _default_profile)


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """Log with structlog's defaults during each test, then restore the configuration.

    A test that runs the ``fsm`` command configures structlog to print to a stream that
    pytest closes afterwards; the connector and the server log on every transition, so
    every test starts from the defaults.
    """
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)
