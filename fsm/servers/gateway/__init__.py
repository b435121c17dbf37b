"""The lazy gateway: the lifecycle core embedded in a server (DESIGN.md section 10).

``fsm gateway --upstream URL`` runs it; in code, ``Gateway(upstream=...)`` with
``await nursery.start(gateway.serve)``. See docs/gateway.md.
"""

from __future__ import annotations

from fsm.servers.gateway._server import Gateway
from fsm.servers.gateway._shared import GatePolicy, UpstreamGate

__all__ = ["GatePolicy", "Gateway", "UpstreamGate"]
