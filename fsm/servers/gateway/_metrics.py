"""The gateway's Prometheus metrics, in a registry of its own (one per gateway).

Counters are updated where things happen; the session gauges are computed when
``/metrics`` is scraped, from the same counts ``/status`` shows, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fsm.core._types import ConnState, Phase, Transition

if TYPE_CHECKING:
    from fsm.servers.gateway._shared import UpstreamGate

#: The content type of ``GET /metrics``.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SessionGauges(Collector):
    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        clients: Callable[[], int],
        gate: UpstreamGate | None,
    ) -> None:
        self._counts = counts
        self._clients = clients
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "fsm_gateway_sessions",
            "Gateway sessions, by the state of their upstream connection.",
            labels=["upstream_state"],
        )
        counts = self._counts()
        for state in ConnState:
            sessions.add_metric([state.value], counts.get(state.value, 0))
        yield sessions
        yield GaugeMetricFamily(
            "fsm_gateway_clients",
            "Client connections attached to a session.",
            value=self._clients(),
        )
        gate = self._gate
        if gate is not None:  # what the sessions share of their upstream (docs/gateway.md)
            yield GaugeMetricFamily(
                "fsm_gateway_upstream_gate_in_flight",
                "Upstream dials in flight under the shared gate.",
                value=gate.in_flight,
            )
            yield GaugeMetricFamily(
                "fsm_gateway_upstream_gate_waiting",
                "Sessions backing off for a slot of the shared gate.",
                value=gate.waiting,
            )
            yield GaugeMetricFamily(
                "fsm_gateway_upstream_gate_healthy",
                "1 while the shared gate believes the upstream healthy, 0 while it probes.",
                value=1 if gate.healthy else 0,
            )


class GatewayMetrics:
    """Every metric a gateway exports; see docs/gateway.md for the list."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        clients: Callable[[], int],
        gate: UpstreamGate | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transitions = Counter(
            "fsm_gateway_upstream_transitions",
            "Upstream lifecycle transitions, by source and target state.",
            ["source", "target"],
            registry=r,
        )
        self.dials = Counter(
            "fsm_gateway_upstream_dials", "Upstream connection attempts started.", registry=r
        )
        self.refusals = Counter(
            "fsm_gateway_refusals",
            "HTTP requests and upgrades the gateway refused, by status.",
            ["status"],
            registry=r,
        )
        self.evictions = Counter(
            "fsm_gateway_evictions",
            "Sessions ended while detached: ttl (expired), max_sessions (room for a new one).",
            ["cause"],
            registry=r,
        )
        self.client_closes = Counter(
            "fsm_gateway_client_closes",
            "Client connections ended, by cause.",
            ["cause"],
            registry=r,
        )
        self.edits = Counter(
            "fsm_gateway_edit_frames", "Client edit frames (instantiate, edit) taken.", registry=r
        )
        self.requests = Counter(
            "fsm_gateway_requests", "Client requests, by outcome.", ["outcome"], registry=r
        )
        r.register(_SessionGauges(counts, clients, gate))

    def transition(self, change: Transition) -> None:
        """Count one upstream transition (and a dial when it enters DIALING)."""
        self.transitions.labels(change.source.value, change.target.value).inc()
        if change.phase is Phase.DIALING:
            self.dials.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
