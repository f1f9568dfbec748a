"""Tickets kept fresh under load, against the Kibo stand-in on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest

from sidecar.standin import CUSTOMER_REFRESH_CALL, OAUTH_CALL
from tests.conftest import CUSTOMER_ENV, customer_refresh_token, wait_for

CART = "/api/commerce/carts/current"


async def hammer(
    client: aiohttp.ClientSession, url: str, *, clients: int, seconds: float
) -> tuple[int, list[str]]:
    """Send requests from `clients` concurrent loops for `seconds`; return (ok count, failures)."""
    deadline = time.monotonic() + seconds
    ok = 0
    failures: list[str] = []

    async def loop() -> None:
        nonlocal ok
        while time.monotonic() < deadline:
            async with client.get(url) as response:
                body = await response.read()
                if response.status == 200:
                    ok += 1
                else:
                    failures.append(f"{response.status} {body[:100]!r}")

    await asyncio.gather(*(loop() for _ in range(clients)))
    return ok, failures


def call_times(stand_in, endpoint: str) -> list[float]:
    return [moment for name, moment in stand_in.stats_calls if name == endpoint]


async def test_customer_ticket_survives_lifetimes_under_load(
    stand_in_factory, sidecar_factory, client
) -> None:
    """24 clients across four customer-ticket lifetimes: no failure, no expired token upstream."""
    lifetime = 2.5
    stand_in, url = await stand_in_factory(app_lifetime=5.0, customer_lifetime=lifetime)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")

    ok, failures = await hammer(client, proxy + CART, clients=24, seconds=4 * lifetime)

    stats = stand_in.stats
    assert failures == []
    assert ok > 100
    assert stats.expired_token_requests == 0
    assert stats.missing_token_requests == 0
    # Rotation followed: every refresh used the newest refresh token, so no re-login.
    assert stats.refresh_rejected == 0
    assert stats.customer_logins == 1
    assert stats.customer_refreshes >= 4


async def test_one_refresh_call_per_round(stand_in_factory, sidecar_factory, client) -> None:
    """Successive refresh calls for a ticket are a refresh interval apart, never bunched."""
    lifetime = 2.0
    stand_in, url = await stand_in_factory(app_lifetime=4.0, customer_lifetime=lifetime)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")

    _ok, failures = await hammer(client, proxy + CART, clients=30, seconds=3 * lifetime)

    assert failures == []
    for endpoint, ticket_lifetime in ((CUSTOMER_REFRESH_CALL, lifetime), (OAUTH_CALL, 4.0)):
        moments = call_times(stand_in, endpoint)
        gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
        # The schedule refreshes at 75 % of the measured lifetime, which can be a second
        # shorter than the nominal one because the Date header has whole-second
        # resolution. Duplicate calls in one round would show as gaps of milliseconds.
        assert all(gap > 0.5 * (ticket_lifetime - 1.0) for gap in gaps), (endpoint, gaps)
    assert len(call_times(stand_in, CUSTOMER_REFRESH_CALL)) >= 3


@pytest.mark.parametrize("skew", [-3600.0, -900.0, 900.0, 3600.0])
async def test_clock_skew_handled(stand_in_factory, sidecar_factory, client, skew: float) -> None:
    """A server clock 15 or 60 minutes off: no expired token sent and no refresh loop."""
    lifetime = 2.0
    stand_in, url = await stand_in_factory(
        app_lifetime=4.0, customer_lifetime=lifetime, clock_offset=skew
    )
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")

    _ok, failures = await hammer(client, proxy + CART, clients=20, seconds=2.5 * lifetime)

    assert failures == []
    assert stand_in.stats.expired_token_requests == 0
    # About one refresh per 1.5 s over 5 s: a loop would make hundreds.
    assert 2 <= stand_in.stats.customer_refreshes <= 6
    customer = sidecar.tickets[1].token
    assert customer is not None
    assert lifetime - 1.5 <= customer.lifetime <= lifetime


async def test_readyz_false_before_first_token(stand_in_factory, sidecar_factory, client) -> None:
    """/readyz is 503 until every ticket has a token, then 200."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.delay = 0.5
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    admin = f"http://127.0.0.1:{sidecar.admin_port}"

    async with client.get(admin + "/readyz") as response:
        body = await response.json()
        assert response.status == 503
        assert "no valid" in body["reason"]

    async def ready() -> bool:
        async with client.get(admin + "/readyz") as response:
            return response.status == 200

    await wait_for(ready, what="/readyz 200")
    async with client.get(admin + "/livez") as response:
        assert response.status == 200


async def test_jwt_bearer_mode(stand_in_factory, sidecar_factory, client) -> None:
    """The jwt-bearer switch sends the customer JWT as the bearer instead of user claims."""
    stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, SIDECAR_CUSTOMER_AUTH_MODE="jwt-bearer", **CUSTOMER_ENV)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")

    async with client.get(proxy + CART) as response:
        assert response.status == 200
    assert stand_in.stats.protected_ok == 1


async def test_refresh_token_start_without_password(
    stand_in_factory, sidecar_factory, client
) -> None:
    """Starting from a customer refresh token alone works and follows its rotation."""
    stand_in, url = await stand_in_factory(customer_lifetime=1.5)
    refresh_token = await customer_refresh_token(url)

    sidecar = await sidecar_factory(url, KIBO_CUSTOMER_REFRESH_TOKEN=refresh_token)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: stand_in.stats.customer_refreshes >= 3, what="three refreshes")

    async with client.get(proxy + CART) as response:
        assert response.status == 200
    assert stand_in.stats.refresh_rejected == 0
    assert stand_in.stats.customer_logins == 1
