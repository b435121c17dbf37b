"""``python -m fsm``: the same as the ``fsm`` command."""

from __future__ import annotations

import sys

from fsm.cli import main

if __name__ == "__main__":
    sys.exit(main())
