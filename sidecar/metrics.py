"""Prometheus metrics, registered on an injected registry so tests stay isolated.

Label values are bounded: ticket names, a fixed set of HTTP methods, status
codes and outcome words. Never a path, a query or a token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)

# Buckets from 5 ms to 60 s: a proxied Kibo call is usually tens of milliseconds,
# but catalog exports and slow searches reach tens of seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The sidecar's metric families, with cached children for the proxy's hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.token_expiry = Gauge(
            "kibo_sidecar_token_expiry_timestamp_seconds",
            "Unix time at which the ticket's current access token expires.",
            ["ticket"],
            registry=self.registry,
        )
        self.token_valid = Gauge(
            "kibo_sidecar_token_valid",
            "1 while the ticket holds an unexpired access token, else 0.",
            ["ticket"],
            registry=self.registry,
        )
        self.token_refreshes = Counter(
            "kibo_sidecar_token_refreshes",
            "Ticket fetches and refreshes, by outcome (success or failure).",
            ["ticket", "outcome"],
            registry=self.registry,
        )
        self.proxy_requests = Counter(
            "kibo_sidecar_proxy_requests",
            "Proxied requests by method and the status code returned to the client.",
            ["method", "code"],
            registry=self.registry,
        )
        self.proxy_duration = Histogram(
            "kibo_sidecar_proxy_request_duration_seconds",
            "Time from receiving a request to sending the end of its response.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.proxy_replays = Counter(
            "kibo_sidecar_proxy_replays",
            "Requests replayed once after the upstream rejected the token as invalid_token.",
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "kibo_sidecar_upstream_errors",
            "Proxied requests that failed before an upstream response, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kibo_sidecar_proxy_requests_in_flight",
            "Proxied requests currently being served.",
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Counter] = {}

    def count_request(self, method: str, code: int) -> None:
        """Count one proxied request; the label child is looked up once per pair."""
        key = (method, code)
        child = self._request_children.get(key)
        if child is None:
            label = method if method in KNOWN_METHODS else "other"
            child = self.proxy_requests.labels(method=label, code=str(code))
            self._request_children[key] = child
        child.inc()

    def ticket_created(self, ticket: str) -> None:
        """Make a ticket's series exist at zero before its first refresh."""
        for outcome in ("success", "failure"):
            self.token_refreshes.labels(ticket=ticket, outcome=outcome)
        self.token_valid.labels(ticket=ticket).set(0)
