"""The admin listener: Prometheus metrics, liveness and readiness.

It is kept apart from the proxy listener so that probes and scrapes never
queue behind app traffic, and so the proxy can stay bound to loopback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics
from .ticket import ManagedTicket


def make_admin_app(
    *,
    metrics: Metrics,
    tickets: Sequence[ManagedTicket],
    draining: Callable[[], bool],
) -> web.Application:
    """Build the admin application: GET /metrics, /livez and /readyz."""

    async def metrics_handler(_request: web.Request) -> web.Response:
        for ticket in tickets:
            ticket.valid_token()  # Brings kibo_sidecar_token_valid up to date.
        body = generate_latest(metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def livez(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if draining():
            return _not_ready("shutting down")
        for ticket in tickets:
            if ticket.failure is not None:
                return _not_ready(f"the {ticket.name} ticket has failed: {ticket.failure}")
            if ticket.valid_token() is None:
                return _not_ready(f"no valid {ticket.name} token")

        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app


def _not_ready(reason: str) -> web.Response:
    return web.json_response({"status": "not ready", "reason": reason}, status=503)
