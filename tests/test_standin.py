"""Tests of the Kibo stand-in, run against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from sidecar import standin
from sidecar.standin import (
    APP_CLAIMS,
    JWT_ALGORITHM,
    USER_CLAIMS,
    StandIn,
    StandInConfig,
    start_stand_in,
)
from sidecar.standin_faults import Faults
from sidecar.standin_payloads import format_kibo_datetime

OAUTH_PATH = "/api/platform/applications/authtickets/oauth"
APP_REFRESH_PATH = "/api/platform/applications/authtickets/refresh-ticket"
LOGIN_PATH = "/api/commerce/customer/authtickets"
CUSTOMER_REFRESH_PATH = "/api/commerce/customer/authtickets/refresh"
ANONYMOUS_PATH = "/api/commerce/customer/authtickets/anonymousshopper"
PRODUCTS_PATH = "/api/commerce/catalog/storefront/products"
CART_PATH = "/api/commerce/carts/current"
SLOW_PATH = "/api/platform/standin/slow"
STATS_PATH = "/_standin/stats"

CREDENTIALS = {
    "client_id": "demo-client",
    "client_secret": "demo-secret",
    "grant_type": "client_credentials",
}
LOGIN = {"username": "shopper@example.test", "password": "demo-password"}

# A .NET date-time with exactly seven fractional digits and an optional zone.
NET_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}(Z|[+-]\d{2}:\d{2})?$")

REPO_ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A settable replacement for time.time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


Serve = Callable[[StandIn], Awaitable[str]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start stand-ins on 127.0.0.1 and clean them all up after the test."""
    runners: list[aiohttp.web.AppRunner] = []

    async def start(stand_in: StandIn) -> str:
        runner, base_url = await start_stand_in(stand_in, "127.0.0.1", 0)
        runners.append(runner)
        return base_url

    yield start
    for runner in runners:
        await runner.cleanup()


def parse_net_date(text: str) -> datetime:
    """Parse a .NET date-time, reading a zoneless one as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def decode(stand_in: StandIn, token: str) -> dict[str, Any]:
    """Verify a JWT signature with the stand-in's key, ignoring the time claims.

    The time checks are off because test clocks are fake or skewed, and PyJWT
    2.15 rejects an `iat` ahead of the local clock as well as a past `exp`.
    """
    claims: dict[str, Any] = jwt.decode(
        token,
        stand_in.jwt_key,
        algorithms=[JWT_ALGORITHM],
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


async def get_app_ticket(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with http.post(base_url + OAUTH_PATH, json=CREDENTIALS) as response:
        assert response.status == 200, await response.text()
        ticket: dict[str, Any] = await response.json()
        return ticket


async def log_in(http: aiohttp.ClientSession, base_url: str, app_token: str) -> dict[str, Any]:
    async with http.post(base_url + LOGIN_PATH, json=LOGIN, headers=bearer(app_token)) as response:
        assert response.status == 200, await response.text()
        ticket: dict[str, Any] = await response.json()
        return ticket


async def refresh_customer(
    http: aiohttp.ClientSession, base_url: str, app_token: str, refresh_token: str
) -> tuple[int, Any]:
    params = {"refreshToken": refresh_token}
    url = base_url + CUSTOMER_REFRESH_PATH
    async with http.put(url, params=params, headers=bearer(app_token)) as response:
        return response.status, await response.json()


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


# -- application tickets


async def test_oauth_ticket_shape_and_signature(http: aiohttp.ClientSession, serve: Serve) -> None:
    """A client-credentials call returns a complete ticket with a verifiable JWT."""
    stand_in = StandIn(StandInConfig(app_lifetime=1800))
    base_url = await serve(stand_in)

    ticket = await get_app_ticket(http, base_url)

    assert ticket["token_type"] == "Bearer"
    assert ticket["expires_in"] == 1800
    assert ticket["refresh_token_expires_in"] == 86400
    assert ticket["scope"] == ""
    assert isinstance(ticket["refresh_token"], str)
    assert ticket["refresh_token"]
    claims = decode(stand_in, ticket["access_token"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(ticket["access_token"], b"k" * 32, algorithms=[JWT_ALGORITHM])
    assert claims["exp"] - claims["iat"] in (1799, 1800)
    assert claims["jti"] == ticket["jti"]
    assert claims[APP_CLAIMS]["applicationId"] == "demo-client"
    assert stand_in.stats.app_ticket_calls == 1


async def test_oauth_wrong_secret_rejected(http: aiohttp.ClientSession, serve: Serve) -> None:
    """Wrong client credentials get 401 with an error code, not invalid_token."""
    stand_in = StandIn()
    base_url = await serve(stand_in)

    body = {**CREDENTIALS, "client_secret": "wrong"}
    async with http.post(base_url + OAUTH_PATH, json=body) as response:
        status = response.status
        error = await response.json()

    assert status == 401
    assert error["errorCode"] == "UNAUTHORIZED"
    assert error["message"] != "invalid_token"
    assert stand_in.stats.app_ticket_calls == 0


async def test_oauth_bad_request_rejected(http: aiohttp.ClientSession, serve: Serve) -> None:
    """An unsupported grant type or a body that is not JSON gets 400."""
    base_url = await serve(StandIn())

    body = {**CREDENTIALS, "grant_type": "password"}
    async with http.post(base_url + OAUTH_PATH, json=body) as response:
        assert response.status == 400
        assert (await response.json())["errorCode"] == "UNSUPPORTED_GRANT_TYPE"

    async with http.post(base_url + OAUTH_PATH, data=b"not json") as response:
        assert response.status == 400
        assert (await response.json())["errorCode"] == "MISSING_OR_INVALID_PARAMETER"


async def test_app_refresh_rotates_refresh_token(http: aiohttp.ClientSession, serve: Serve) -> None:
    """Refreshing an app ticket issues new tokens and the used refresh token stops working."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    first = await get_app_ticket(http, base_url)

    body = {"refreshToken": first["refresh_token"]}
    async with http.put(base_url + APP_REFRESH_PATH, json=body) as response:
        assert response.status == 200
        second = await response.json()
    async with http.put(base_url + APP_REFRESH_PATH, json=body) as response:
        reuse_status = response.status
        reuse_body = await response.json()

    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] == 3600
    assert reuse_status == 401
    assert reuse_body == {"message": "invalid_token"}
    assert stand_in.stats.app_refresh_calls == 1
    assert stand_in.stats.refresh_rejected == 1


async def test_app_refresh_reusable_when_configured(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """With single-use refresh tokens off, an app refresh token works repeatedly."""
    stand_in = StandIn(StandInConfig(single_use_refresh_tokens=False))
    base_url = await serve(stand_in)
    first = await get_app_ticket(http, base_url)

    body = {"refreshToken": first["refresh_token"]}
    for _ in range(2):
        async with http.put(base_url + APP_REFRESH_PATH, json=body) as response:
            assert response.status == 200

    assert stand_in.stats.app_refresh_calls == 2


# -- customer tickets


async def test_customer_login_ticket_shape(http: aiohttp.ClientSession, serve: Serve) -> None:
    """A shopper login returns a CustomerAuthTicket with a signed JWT and matching expiry."""
    clock = FakeClock()
    stand_in = StandIn(StandInConfig(customer_lifetime=600, date_style="utc"), now=clock)
    base_url = await serve(stand_in)
    app_ticket = await get_app_ticket(http, base_url)

    ticket = await log_in(http, base_url, app_ticket["access_token"])

    assert ticket["requires2FA"] is False
    assert isinstance(ticket["accessToken"], str)
    assert ticket["accessToken"]
    assert ticket["accessToken"].count(".") == 0
    assert NET_DATE.match(ticket["accessTokenExpiration"])
    expiry = parse_net_date(ticket["accessTokenExpiration"]).timestamp()
    assert expiry == pytest.approx(clock.value + 600, abs=1e-6)
    refresh_expiry = parse_net_date(ticket["refreshTokenExpiration"]).timestamp()
    assert refresh_expiry == pytest.approx(clock.value + 86400, abs=1e-6)
    claims = decode(stand_in, ticket["jwtAccessToken"])
    assert claims["iat"] == int(clock.value)
    assert claims["exp"] == int(clock.value + 600)
    assert claims[USER_CLAIMS]["userId"] == ticket["userId"]
    assert claims[USER_CLAIMS]["accountId"] == 1042
    assert APP_CLAIMS in claims
    account = ticket["customerAccount"]
    assert account["id"] == 1042
    assert account["userId"] == ticket["userId"]
    assert account["emailAddress"] == LOGIN["username"]
    assert stand_in.stats.customer_logins == 1


async def test_customer_login_bad_password_rejected(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Bad shopper credentials get 401 with an error code, not invalid_token."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_ticket = await get_app_ticket(http, base_url)

    body = {**LOGIN, "password": "wrong"}
    headers = bearer(app_ticket["access_token"])
    async with http.post(base_url + LOGIN_PATH, json=body, headers=headers) as response:
        status = response.status
        error = await response.json()

    assert status == 401
    assert error["errorCode"] == "INVALID_CREDENTIALS"
    assert error["message"] != "invalid_token"
    assert stand_in.stats.customer_logins == 0


async def test_customer_login_needs_app_bearer(http: aiohttp.ClientSession, serve: Serve) -> None:
    """A login without an app bearer gets an error code, with an unknown one invalid_token."""
    base_url = await serve(StandIn())

    async with http.post(base_url + LOGIN_PATH, json=LOGIN) as response:
        assert response.status == 401
        assert (await response.json())["errorCode"] == "UNAUTHORIZED"

    headers = bearer("not-a-token-the-stand-in-issued")
    async with http.post(base_url + LOGIN_PATH, json=LOGIN, headers=headers) as response:
        assert response.status == 401
        assert await response.json() == {"message": "invalid_token"}


async def test_customer_login_rejects_expired_app_bearer(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """A login carrying an expired app bearer gets 401 invalid_token."""
    clock = FakeClock()
    base_url = await serve(StandIn(StandInConfig(app_lifetime=60), now=clock))
    app_ticket = await get_app_ticket(http, base_url)
    clock.advance(60)

    headers = bearer(app_ticket["access_token"])
    async with http.post(base_url + LOGIN_PATH, json=LOGIN, headers=headers) as response:
        assert response.status == 401
        assert await response.json() == {"message": "invalid_token"}


async def test_customer_refresh_rotates_refresh_token(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """A customer refresh issues a new refresh token and rejects the used one at once."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    first = await log_in(http, base_url, app_token)

    status, second = await refresh_customer(http, base_url, app_token, first["refreshToken"])
    reuse_status, reuse_body = await refresh_customer(
        http, base_url, app_token, first["refreshToken"]
    )
    third_status, _ = await refresh_customer(http, base_url, app_token, second["refreshToken"])

    assert status == 200
    assert second["refreshToken"] != first["refreshToken"]
    assert second["accessToken"] != first["accessToken"]
    assert second["userId"] == first["userId"]
    assert reuse_status == 401
    assert reuse_body["message"] == "invalid_token"
    assert third_status == 200
    assert stand_in.stats.customer_refreshes == 2
    assert stand_in.stats.refresh_rejected == 1


async def test_customer_refresh_works_after_access_expiry(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """A customer refresh token still works once the customer access token has expired."""
    clock = FakeClock()
    config = StandInConfig(app_lifetime=3600, customer_lifetime=60)
    base_url = await serve(StandIn(config, now=clock))
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)
    clock.advance(120)

    status, renewed = await refresh_customer(http, base_url, app_token, ticket["refreshToken"])

    assert status == 200
    expiry = parse_net_date(renewed["accessTokenExpiration"]).timestamp()
    assert expiry == pytest.approx(clock.value + 60, abs=1e-6)


async def test_customer_refresh_unknown_token_rejected(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """An unknown or expired customer refresh token gets 401 invalid_token."""
    clock = FakeClock()
    stand_in = StandIn(StandInConfig(refresh_token_lifetime=300), now=clock)
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)

    unknown_status, unknown_body = await refresh_customer(http, base_url, app_token, "unknown")
    clock.advance(300)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    expired_status, expired_body = await refresh_customer(
        http, base_url, app_token, ticket["refreshToken"]
    )

    assert unknown_status == 401
    assert unknown_body["message"] == "invalid_token"
    assert expired_status == 401
    assert expired_body["message"] == "invalid_token"
    assert stand_in.stats.refresh_rejected == 2


async def test_customer_refresh_checks_account_id(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """The accountId query parameter must match the ticket's account."""
    base_url = await serve(StandIn())
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)
    url = base_url + CUSTOMER_REFRESH_PATH
    headers = bearer(app_token)

    wrong = {"refreshToken": ticket["refreshToken"], "accountId": "7"}
    async with http.put(url, params=wrong, headers=headers) as response:
        assert response.status == 401
    right = {"refreshToken": ticket["refreshToken"], "accountId": "1042"}
    async with http.put(url, params=right, headers=headers) as response:
        assert response.status == 200
    invalid = {"refreshToken": "anything", "accountId": "abc"}
    async with http.put(url, params=invalid, headers=headers) as response:
        assert response.status == 400


async def test_customer_refresh_response_fields_filter(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """responseFields limits the refreshed ticket to the named top-level fields."""
    base_url = await serve(StandIn())
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)

    params = {
        "refreshToken": ticket["refreshToken"],
        "responseFields": "accessToken,refreshToken,customerAccount(id,userName)",
    }
    url = base_url + CUSTOMER_REFRESH_PATH
    async with http.put(url, params=params, headers=bearer(app_token)) as response:
        assert response.status == 200
        renewed = await response.json()

    assert set(renewed) == {"accessToken", "refreshToken", "customerAccount"}


async def test_anonymous_shopper_ticket_has_no_account(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """The anonymous shopper ticket has the token fields and no customer account."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]

    status, ticket = await get_json(http, base_url + ANONYMOUS_PATH, bearer(app_token))
    cart_headers = {**bearer(app_token), "x-vol-user-claims": ticket["accessToken"]}
    cart_status, cart = await get_json(http, base_url + CART_PATH, cart_headers)

    assert status == 200
    assert ticket["customerAccount"] is None
    assert ticket["requires2FA"] is False
    assert decode(stand_in, ticket["jwtAccessToken"])[USER_CLAIMS]["isAnonymous"] is True
    assert NET_DATE.match(ticket["accessTokenExpiration"])
    assert cart_status == 200
    assert cart["userId"] == ticket["userId"]


# -- dates and clock


def test_format_kibo_datetime_styles_same_instant() -> None:
    """The utc, naive and offset forms of one instant parse back to that instant."""
    instant = 1_800_000_123.4567891

    texts = {style: format_kibo_datetime(instant, style) for style in ("utc", "naive", "offset")}

    assert texts["utc"].endswith("Z")
    assert texts["offset"].endswith("+02:00")
    assert texts["utc"][11:13] != texts["offset"][11:13]
    for style, text in texts.items():
        assert NET_DATE.match(text), style
        assert parse_net_date(text).timestamp() == pytest.approx(instant, abs=1e-6), style


def test_format_kibo_datetime_never_later() -> None:
    """Truncating to seven digits never names an instant after the input."""
    for instant in (1_800_000_000.0, 1_800_000_000.99999999, 1_799_999_999.0000001):
        text = format_kibo_datetime(instant, "utc")
        assert parse_net_date(text).timestamp() <= instant


async def test_customer_expiration_rotates_styles(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """In rotate mode three tickets use utc, naive and offset for the same instant."""
    clock = FakeClock(1_800_000_000.25)
    base_url = await serve(StandIn(StandInConfig(date_style="rotate"), now=clock))
    app_token = (await get_app_ticket(http, base_url))["access_token"]

    texts = [(await log_in(http, base_url, app_token))["accessTokenExpiration"] for _ in range(3)]

    assert texts[0].endswith("Z")
    assert re.search(r"\.\d{7}$", texts[1])
    assert texts[2].endswith("+02:00")
    instants = {parse_net_date(text).timestamp() for text in texts}
    assert instants == {clock.value + 900}


async def test_clock_offset_in_date_header_and_iat(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """A clock offset shows in every Date header and in the JWT iat."""
    stand_in = StandIn(StandInConfig(clock_offset=7200))
    base_url = await serve(stand_in)

    async with http.post(base_url + OAUTH_PATH, json=CREDENTIALS) as response:
        date_header = response.headers["Date"]
        ticket = await response.json()
    async with http.get(base_url + "/no/such/path") as response:
        not_found_date = response.headers["Date"]

    expected = time.time() + 7200
    assert parsedate_to_datetime(date_header).timestamp() == pytest.approx(expected, abs=5)
    assert parsedate_to_datetime(not_found_date).timestamp() == pytest.approx(expected, abs=5)
    iat = decode(stand_in, ticket["access_token"])["iat"]
    assert iat == pytest.approx(expected, abs=5)
    assert stand_in.server_now() == pytest.approx(expected, abs=5)


def test_config_rejects_invalid_values() -> None:
    """StandInConfig raises ValueError for bad lifetimes, offsets and date styles."""
    bad_configs: list[dict[str, Any]] = [
        {"app_lifetime": 0},
        {"customer_lifetime": -1},
        {"refresh_token_lifetime": float("inf")},
        {"clock_offset": float("nan")},
        {"date_style": "local"},
    ]
    for values in bad_configs:
        with pytest.raises(ValueError):
            StandInConfig(**values)


def test_config_repr_hides_secrets() -> None:
    """The config repr leaves out the client secret and the password."""
    text = repr(StandInConfig(client_secret="s3cret-value", password="pa55-value"))

    assert "s3cret-value" not in text
    assert "pa55-value" not in text


# -- protected resources


async def test_products_rejects_expired_app_token(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Once the real clock passes a 1 s app token's expiry, products get invalid_token."""
    stand_in = StandIn(StandInConfig(app_lifetime=1))
    base_url = await serve(stand_in)
    headers = bearer((await get_app_ticket(http, base_url))["access_token"])

    first_status, first_body = await get_json(http, base_url + PRODUCTS_PATH, headers)
    deadline = time.monotonic() + 2.5
    status, body = first_status, first_body
    while status == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status, body = await get_json(http, base_url + PRODUCTS_PATH, headers)

    assert first_status == 200
    assert first_body["totalCount"] == len(first_body["items"])
    assert status == 401
    assert body == {"message": "invalid_token"}
    assert stand_in.stats.expired_token_requests == 1
    assert stand_in.stats.protected_ok == stand_in.stats.protected_requests - 1


async def test_products_rejects_expired_user_claims(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """An expired x-vol-user-claims token gets invalid_token even with a valid app bearer."""
    clock = FakeClock()
    stand_in = StandIn(StandInConfig(customer_lifetime=60), now=clock)
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)
    headers = {**bearer(app_token), "x-vol-user-claims": ticket["accessToken"]}

    fresh_status, _ = await get_json(http, base_url + PRODUCTS_PATH, headers)
    clock.advance(59.9)
    late_status, _ = await get_json(http, base_url + PRODUCTS_PATH, headers)
    clock.advance(0.1)
    expired_status, expired_body = await get_json(http, base_url + PRODUCTS_PATH, headers)
    app_only_status, _ = await get_json(http, base_url + PRODUCTS_PATH, bearer(app_token))

    assert fresh_status == 200
    assert late_status == 200
    assert expired_status == 401
    assert expired_body == {"message": "invalid_token"}
    assert app_only_status == 200
    assert stand_in.stats.expired_token_requests == 1


async def test_protected_missing_bearer_counted(http: aiohttp.ClientSession, serve: Serve) -> None:
    """A request without a bearer gets 401 with an error code and counts as missing."""
    stand_in = StandIn()
    base_url = await serve(stand_in)

    status, body = await get_json(http, base_url + PRODUCTS_PATH)

    assert status == 401
    assert body["errorCode"] == "UNAUTHORIZED"
    assert stand_in.stats.missing_token_requests == 1
    assert stand_in.stats.expired_token_requests == 0


async def test_cart_needs_shopper_context(http: aiohttp.ClientSession, serve: Serve) -> None:
    """The cart needs x-vol-user-claims or a customer JWT bearer beside the app token."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)

    bare_status, bare_body = await get_json(http, base_url + CART_PATH, bearer(app_token))
    claims_headers = {**bearer(app_token), "x-vol-user-claims": ticket["accessToken"]}
    claims_status, claims_cart = await get_json(http, base_url + CART_PATH, claims_headers)
    jwt_headers = bearer(ticket["jwtAccessToken"])
    jwt_status, jwt_cart = await get_json(http, base_url + CART_PATH, jwt_headers)

    assert bare_status == 401
    assert bare_body["errorCode"] == "UNAUTHORIZED"
    assert claims_status == 200
    assert claims_cart["userId"] == ticket["userId"]
    assert jwt_status == 200
    assert jwt_cart["userId"] == ticket["userId"]
    assert stand_in.stats.missing_token_requests == 1
    assert stand_in.stats.protected_ok == 2


async def test_cart_rejects_expired_customer_jwt(http: aiohttp.ClientSession, serve: Serve) -> None:
    """A customer JWT bearer past its expiry gets invalid_token at the cart."""
    clock = FakeClock()
    stand_in = StandIn(StandInConfig(customer_lifetime=30), now=clock)
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)
    clock.advance(30)

    status, body = await get_json(http, base_url + CART_PATH, bearer(ticket["jwtAccessToken"]))

    assert status == 401
    assert body == {"message": "invalid_token"}
    assert stand_in.stats.expired_token_requests == 1


async def test_slow_endpoint_waits_requested_time(
    http: aiohttp.ClientSession, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow endpoint sleeps the requested seconds, capped, and validates its parameter."""
    monkeypatch.setattr(standin, "MAX_SLOW_SECONDS", 0.3)
    base_url = await serve(StandIn())
    headers = bearer((await get_app_ticket(http, base_url))["access_token"])

    started = time.monotonic()
    status, body = await get_json(http, base_url + SLOW_PATH + "?seconds=0.2", headers)
    short_elapsed = time.monotonic() - started
    capped_status, capped_body = await get_json(
        http, base_url + SLOW_PATH + "?seconds=1000", headers
    )
    invalid_status, _ = await get_json(http, base_url + SLOW_PATH + "?seconds=soon", headers)
    negative_status, _ = await get_json(http, base_url + SLOW_PATH + "?seconds=-1", headers)

    assert status == 200
    assert body == {"sleptSeconds": 0.2}
    assert short_elapsed >= 0.2
    assert capped_status == 200
    assert capped_body == {"sleptSeconds": 0.3}
    assert invalid_status == 400
    assert negative_status == 400


# -- faults


async def test_fail_next_returns_status_and_retry_after(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """fail_next fails the next calls with the status and Retry-After, then recovers."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    stand_in.faults.fail_next(2, 429, retry_after="7")

    failures = []
    for _ in range(2):
        async with http.post(base_url + OAUTH_PATH, json=CREDENTIALS) as response:
            failures.append(
                (response.status, response.headers.get("Retry-After"), await response.json())
            )
    ticket = await get_app_ticket(http, base_url)

    for status, retry_after, body in failures:
        assert status == 429
        assert retry_after == "7"
        assert body["errorCode"] == "TOO_MANY_REQUESTS"
    assert "access_token" in ticket
    assert stand_in.faults.failed_calls == 2
    assert stand_in.stats.app_ticket_calls == 1
    assert [name for name, _ in stand_in.stats_calls] == ["oauth", "oauth", "oauth"]


async def test_fail_next_custom_body_and_date(http: aiohttp.ClientSession, serve: Serve) -> None:
    """fail_next sends a raw body and passes an HTTP-date Retry-After through unchanged."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    retry_date = "Wed, 21 Oct 2026 07:28:00 GMT"
    stand_in.faults.fail_next(
        1, 503, retry_after=retry_date, body=b"upstream down", content_type="text/plain"
    )

    headers = bearer(app_token)
    async with http.post(base_url + LOGIN_PATH, json=LOGIN, headers=headers) as response:
        status = response.status
        retry_after = response.headers["Retry-After"]
        content_type = response.content_type
        text = await response.text()

    assert status == 503
    assert retry_after == retry_date
    assert content_type == "text/plain"
    assert text == "upstream down"
    assert stand_in.stats.customer_logins == 0


def test_faults_reject_invalid_arguments() -> None:
    """Fault switches raise ValueError for a negative count or a success status."""
    faults = Faults()

    with pytest.raises(ValueError):
        faults.fail_next(-1, 503)
    with pytest.raises(ValueError):
        faults.fail_next(1, 200)
    with pytest.raises(ValueError):
        faults.garbage_next(-2)
    with pytest.raises(ValueError):
        faults.zero_lifetime_next(-1)


async def test_delay_slows_token_endpoint(http: aiohttp.ClientSession, serve: Serve) -> None:
    """faults.delay postpones each token-endpoint response by that many seconds."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    stand_in.faults.delay = 0.3

    started = time.monotonic()
    await get_app_ticket(http, base_url)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.3


async def test_garbage_next_alternates_bodies(http: aiohttp.ClientSession, serve: Serve) -> None:
    """garbage_next returns 200 with a wrong JSON object, then non-JSON, then recovers."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    stand_in.faults.garbage_next(2)

    bodies = []
    for _ in range(2):
        async with http.post(base_url + OAUTH_PATH, json=CREDENTIALS) as response:
            assert response.status == 200
            bodies.append(await response.read())
    ticket = await get_app_ticket(http, base_url)

    assert json.loads(bodies[0]) == {"oops": True}
    with pytest.raises(ValueError):
        json.loads(bodies[1])
    assert "access_token" in ticket
    assert stand_in.faults.garbage_calls == 2
    assert stand_in.stats.app_ticket_calls == 1


async def test_zero_lifetime_next_app_ticket(http: aiohttp.ClientSession, serve: Serve) -> None:
    """zero_lifetime_next issues an app ticket with expires_in 0 that is already rejected."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    stand_in.faults.zero_lifetime_next(1)

    dead = await get_app_ticket(http, base_url)
    live = await get_app_ticket(http, base_url)
    dead_status, dead_body = await get_json(
        http, base_url + PRODUCTS_PATH, bearer(dead["access_token"])
    )
    live_status, _ = await get_json(http, base_url + PRODUCTS_PATH, bearer(live["access_token"]))

    assert dead["expires_in"] == 0
    claims = decode(stand_in, dead["access_token"])
    assert claims["exp"] == claims["iat"]
    assert live["expires_in"] == 3600
    assert dead_status == 401
    assert dead_body == {"message": "invalid_token"}
    assert live_status == 200


async def test_zero_lifetime_next_customer_ticket(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """zero_lifetime_next issues a customer ticket whose expiration is already past."""
    stand_in = StandIn(StandInConfig(date_style="naive"))
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    stand_in.faults.zero_lifetime_next(1)

    headers = bearer(app_token)
    async with http.post(base_url + LOGIN_PATH, json=LOGIN, headers=headers) as response:
        server_date = parsedate_to_datetime(response.headers["Date"])
        ticket = await response.json()
    claims_headers = {**headers, "x-vol-user-claims": ticket["accessToken"]}
    claims_status, claims_body = await get_json(http, base_url + PRODUCTS_PATH, claims_headers)
    jwt_status, _ = await get_json(http, base_url + CART_PATH, bearer(ticket["jwtAccessToken"]))
    renewed_status, renewed = await refresh_customer(
        http, base_url, app_token, ticket["refreshToken"]
    )

    assert parse_net_date(ticket["accessTokenExpiration"]) < server_date
    assert claims_status == 401
    assert claims_body == {"message": "invalid_token"}
    assert jwt_status == 401
    assert renewed_status == 200
    assert parse_net_date(renewed["accessTokenExpiration"]) > server_date


async def test_revoke_refresh_tokens_rejects_customer_refresh(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """revoke_refresh_tokens invalidates earlier customer refresh tokens but not app ones."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_ticket = await get_app_ticket(http, base_url)
    app_token = app_ticket["access_token"]
    old = await log_in(http, base_url, app_token)
    stand_in.faults.revoke_refresh_tokens()
    new = await log_in(http, base_url, app_token)

    old_status, old_body = await refresh_customer(http, base_url, app_token, old["refreshToken"])
    new_status, _ = await refresh_customer(http, base_url, app_token, new["refreshToken"])
    body = {"refreshToken": app_ticket["refresh_token"]}
    async with http.put(base_url + APP_REFRESH_PATH, json=body) as response:
        app_refresh_status = response.status

    assert old_status == 401
    assert old_body["message"] == "invalid_token"
    assert new_status == 200
    assert app_refresh_status == 200


async def test_revoke_refresh_tokens_app_option(http: aiohttp.ClientSession, serve: Serve) -> None:
    """revoke_refresh_tokens(app=True) also invalidates application refresh tokens."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_ticket = await get_app_ticket(http, base_url)
    stand_in.faults.revoke_refresh_tokens(app=True)

    body = {"refreshToken": app_ticket["refresh_token"]}
    async with http.put(base_url + APP_REFRESH_PATH, json=body) as response:
        status = response.status
        error = await response.json()

    assert status == 401
    assert error == {"message": "invalid_token"}
    assert stand_in.stats.refresh_rejected == 1


async def test_expire_access_tokens_rejects_earlier_tokens(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """expire_access_tokens makes every earlier access token and JWT get invalid_token."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    old_app = (await get_app_ticket(http, base_url))["access_token"]
    old_customer = await log_in(http, base_url, old_app)
    stand_in.faults.expire_access_tokens()
    new_app = (await get_app_ticket(http, base_url))["access_token"]

    old_app_status, old_app_body = await get_json(http, base_url + PRODUCTS_PATH, bearer(old_app))
    old_claims = {**bearer(new_app), "x-vol-user-claims": old_customer["accessToken"]}
    old_claims_status, _ = await get_json(http, base_url + CART_PATH, old_claims)
    old_jwt = bearer(old_customer["jwtAccessToken"])
    old_jwt_status, _ = await get_json(http, base_url + CART_PATH, old_jwt)
    new_app_status, _ = await get_json(http, base_url + PRODUCTS_PATH, bearer(new_app))
    refresh_status, _ = await refresh_customer(
        http, base_url, new_app, old_customer["refreshToken"]
    )

    assert old_app_status == 401
    assert old_app_body == {"message": "invalid_token"}
    assert old_claims_status == 401
    assert old_jwt_status == 401
    assert new_app_status == 200
    assert refresh_status == 200
    assert stand_in.stats.expired_token_requests == 3


async def test_protected_status_overrides_resources(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """With protected_status set, protected resources return that status until it is cleared."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    stand_in.faults.protected_status = 503

    status, _ = await get_json(http, base_url + PRODUCTS_PATH, bearer(app_token))
    stand_in.faults.protected_status = None
    recovered_status, _ = await get_json(http, base_url + PRODUCTS_PATH, bearer(app_token))

    assert status == 503
    assert recovered_status == 200
    assert stand_in.stats.protected_requests == 2
    assert stand_in.stats.protected_ok == 1


# -- stats and secrets


async def test_stats_endpoint_reports_counters(http: aiohttp.ClientSession, serve: Serve) -> None:
    """GET /_standin/stats returns the counters and none of the issued secrets."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_token = (await get_app_ticket(http, base_url))["access_token"]
    ticket = await log_in(http, base_url, app_token)
    await refresh_customer(http, base_url, app_token, ticket["refreshToken"])
    await get_json(http, base_url + PRODUCTS_PATH, bearer(app_token))

    async with http.get(base_url + STATS_PATH) as response:
        text = await response.text()

    stats = json.loads(text)
    assert stats == stand_in.stats.as_dict()
    assert stats["app_ticket_calls"] == 1
    assert stats["customer_logins"] == 1
    assert stats["customer_refreshes"] == 1
    assert stats["protected_ok"] == 1
    for secret in stand_in.issued_secrets:
        assert secret not in text


async def test_issued_secrets_cover_every_token(http: aiohttp.ClientSession, serve: Serve) -> None:
    """issued_secrets contains every token issued plus the client secret and password."""
    stand_in = StandIn()
    base_url = await serve(stand_in)
    app_ticket = await get_app_ticket(http, base_url)
    customer = await log_in(http, base_url, app_ticket["access_token"])
    _, anonymous = await get_json(
        http, base_url + ANONYMOUS_PATH, bearer(app_ticket["access_token"])
    )

    expected = {
        CREDENTIALS["client_secret"],
        LOGIN["password"],
        app_ticket["access_token"],
        app_ticket["refresh_token"],
        customer["accessToken"],
        customer["jwtAccessToken"],
        customer["refreshToken"],
        anonymous["accessToken"],
        anonymous["jwtAccessToken"],
        anonymous["refreshToken"],
    }
    assert expected <= stand_in.issued_secrets


async def test_stats_calls_records_token_requests(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """stats_calls lists every token-endpoint request with its server time, in order."""
    clock = FakeClock()
    stand_in = StandIn(StandInConfig(clock_offset=-30), now=clock)
    base_url = await serve(stand_in)

    app_ticket = await get_app_ticket(http, base_url)
    app_token = app_ticket["access_token"]
    clock.advance(1)
    ticket = await log_in(http, base_url, app_token)
    await refresh_customer(http, base_url, app_token, ticket["refreshToken"])
    await refresh_customer(http, base_url, app_token, ticket["refreshToken"])
    await get_json(http, base_url + ANONYMOUS_PATH, bearer(app_token))
    async with http.put(
        base_url + APP_REFRESH_PATH, json={"refreshToken": app_ticket["refresh_token"]}
    ) as response:
        assert response.status == 200
    await get_json(http, base_url + PRODUCTS_PATH, bearer(app_token))

    names = [name for name, _ in stand_in.stats_calls]
    assert names == [
        "oauth",
        "customer-login",
        "customer-refresh",
        "customer-refresh",
        "anonymous-shopper",
        "refresh-ticket",
    ]
    assert stand_in.stats_calls[0][1] == clock.value - 1 - 30
    assert stand_in.stats_calls[1][1] == clock.value - 30


# -- command line


async def test_main_serves_until_sigterm() -> None:
    """The CLI prints one line with its URL, serves requests and exits 0 on SIGTERM."""
    code = "import sys; from sidecar.standin import main; sys.exit(main(sys.argv[1:]))"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--listen",
        "127.0.0.1:0",
        "--app-lifetime",
        "30",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        first_line = (await asyncio.wait_for(process.stderr.readline(), timeout=2.5)).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+", first_line)
        assert match, first_line
        async with aiohttp.ClientSession() as http:
            ticket = await get_app_ticket(http, match.group(0))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, rest_of_stderr = await asyncio.wait_for(process.communicate(), timeout=2.5)

    assert process.returncode == 0
    assert ticket["expires_in"] == 30
    assert rest_of_stderr == b""
    assert stdout == b""
    assert ticket["access_token"] not in first_line
