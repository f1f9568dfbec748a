"""The demo: the Kibo stand-in, a sidecar and concurrent app traffic in one process.

Tokens are short-lived here (seconds, not an hour), so a twenty-second run
shows several refreshes. The demo exits 0 only if every request succeeded and
the stand-in never saw an expired token.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry

from .config import load_settings
from .logs import configure_logging
from .service import Sidecar
from .standin import StandIn, StandInConfig, start_stand_in

PATHS = ("/api/commerce/carts/current", "/api/commerce/catalog/storefront/products")


@dataclass
class Traffic:
    """Counts of the demo's requests."""

    sent: int = 0
    failed: int = 0
    first_failure: str = ""


def main(argv: list[str]) -> int:
    """Parse the demo's options and run it; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m sidecar demo", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="how long to send traffic (default 20)"
    )
    parser.add_argument(
        "--clients", type=int, default=20, help="concurrent app clients (default 20)"
    )
    parser.add_argument(
        "--app-lifetime",
        type=float,
        default=12.0,
        help="application token lifetime, seconds (default 12)",
    )
    parser.add_argument(
        "--customer-lifetime",
        type=float,
        default=5.0,
        help="customer token lifetime, seconds (default 5)",
    )
    options = parser.parse_args(argv)
    if options.seconds <= 0 or options.clients < 1:
        parser.error("--seconds must be positive and --clients at least 1")
    if options.app_lifetime < 2 or options.customer_lifetime < 2:
        parser.error("token lifetimes must be at least 2 seconds")

    configure_logging(level="info", fmt="console")
    return asyncio.run(
        run_demo(options.seconds, options.clients, options.app_lifetime, options.customer_lifetime)
    )


async def run_demo(
    seconds: float, clients: int, app_lifetime: float, customer_lifetime: float
) -> int:
    """Start everything, send traffic for `seconds`, print a summary and return the exit code."""
    stand_in = StandIn(
        StandInConfig(app_lifetime=app_lifetime, customer_lifetime=customer_lifetime)
    )
    runner, kibo_url = await start_stand_in(stand_in, shutdown_timeout=1.0)
    settings = load_settings(
        {
            "KIBO_API_URL": kibo_url,
            "KIBO_AUTH_URL": kibo_url,
            "KIBO_CLIENT_ID": stand_in.config.client_id,
            "KIBO_CLIENT_SECRET": stand_in.config.client_secret,
            "KIBO_CUSTOMER_USERNAME": stand_in.config.username,
            "KIBO_CUSTOMER_PASSWORD": stand_in.config.password,
            "SIDECAR_LISTEN": "127.0.0.1:0",
            "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
            "SIDECAR_SHUTDOWN_GRACE_SECONDS": "2",
        }
    )
    sidecar = Sidecar(settings, registry=CollectorRegistry())
    await sidecar.start()
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    _say(f"Kibo stand-in at {kibo_url}; sidecar proxy at {proxy}, admin at {admin}")

    traffic = Traffic()
    try:
        async with aiohttp.ClientSession() as session:
            if not await _wait_ready(session, admin, timeout=10.0):
                _say("the sidecar did not become ready within 10 s")
                return 1
            _say(f"ready; {clients} clients send requests through the sidecar for {seconds:g} s")
            await _send_traffic(session, proxy, clients, seconds, traffic)
    finally:
        await sidecar.stop()
        await runner.cleanup()

    stats = stand_in.stats
    passed = traffic.failed == 0 and stats.expired_token_requests == 0 and traffic.sent > 0
    _say("")
    _say("demo summary")
    _say(f"  requests through the sidecar     {traffic.sent}")
    _say(f"  failed requests                  {traffic.failed}")
    _say(f"  expired tokens seen by Kibo      {stats.expired_token_requests}")
    _say(
        f"  application ticket               {_count(stats.app_ticket_calls, 'fetch', 'fetches')} "
        f"for a {app_lifetime:g} s lifetime"
    )
    _say(
        f"  customer ticket                  {_count(stats.customer_logins, 'login', 'logins')}, "
        f"{_count(stats.customer_refreshes, 'refresh', 'refreshes')} "
        f"for a {customer_lifetime:g} s lifetime"
    )
    if traffic.first_failure:
        _say(f"  first failure                    {traffic.first_failure}")
    _say(f"  result                           {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


async def _wait_ready(session: aiohttp.ClientSession, admin: str, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(admin + "/readyz") as response:
            if response.status == 200:
                return True
        await asyncio.sleep(0.1)

    return False


async def _send_traffic(
    session: aiohttp.ClientSession, proxy: str, clients: int, seconds: float, traffic: Traffic
) -> None:
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        path = PATHS[number % len(PATHS)]
        while time.monotonic() < deadline:
            async with session.get(proxy + path) as response:
                await response.read()
                traffic.sent += 1
                if response.status != 200:
                    traffic.failed += 1
                    traffic.first_failure = (
                        traffic.first_failure or f"HTTP {response.status} on {path}"
                    )

    await asyncio.gather(*(client(number) for number in range(clients)))


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
