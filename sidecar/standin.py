"""A local stand-in for the Kibo auth and API hosts, for tests and demos.

One aiohttp application serves the application OAuth endpoints, the customer
ticket endpoints and a few protected sample resources, so KIBO_AUTH_URL and
KIBO_API_URL can both point at it. It signs real JWTs, skews its clock on
request and fails on demand through `StandIn.faults`.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import math
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

import jwt
import structlog
from aiohttp import web

from sidecar.logs import LEVELS, configure_logging
from sidecar.standin_faults import Faults
from sidecar.standin_payloads import (
    DATE_STYLES,
    SAMPLE_PRODUCTS,
    format_kibo_datetime,
    sample_customer_account,
    select_response_fields,
)

__all__ = [
    "APP_CLAIMS",
    "JWT_ALGORITHM",
    "USER_CLAIMS",
    "Faults",
    "StandIn",
    "StandInConfig",
    "StandInStats",
    "main",
    "start_stand_in",
]

log = structlog.get_logger("sidecar.standin")

JWT_ALGORITHM = "HS256"
APP_CLAIMS = "https://www.kibocommerce.com/app_claims"
USER_CLAIMS = "https://www.kibocommerce.com/user_claims"

CUSTOMER_ACCOUNT_ID = 1042
MAX_SLOW_SECONDS = 60.0

INVALID_TOKEN_BODY: Mapping[str, str] = {"message": "invalid_token"}

# Names recorded in `StandIn.stats_calls`, one per token endpoint.
OAUTH_CALL = "oauth"
APP_REFRESH_CALL = "refresh-ticket"
CUSTOMER_LOGIN_CALL = "customer-login"
CUSTOMER_REFRESH_CALL = "customer-refresh"
ANONYMOUS_SHOPPER_CALL = "anonymous-shopper"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class StandInConfig:
    """Credentials, lifetimes and clock behaviour of a stand-in. Lifetimes are in seconds."""

    client_id: str = "demo-client"
    client_secret: str = field(default="demo-secret", repr=False)
    username: str = "shopper@example.test"
    password: str = field(default="demo-password", repr=False)
    app_lifetime: float = 3600.0
    customer_lifetime: float = 900.0
    refresh_token_lifetime: float = 86400.0
    clock_offset: float = 0.0
    """Seconds added to the real clock, so a positive value puts the server clock ahead."""
    date_style: str = "rotate"
    """One of DATE_STYLES, or "rotate" to cycle through them ticket by ticket."""
    single_use_refresh_tokens: bool = True

    def __post_init__(self) -> None:
        for name in ("app_lifetime", "customer_lifetime", "refresh_token_lifetime"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

        if not math.isfinite(self.clock_offset):
            raise ValueError(
                f"clock_offset must be a finite number of seconds, got {self.clock_offset!r}"
            )

        if self.date_style not in (*DATE_STYLES, "rotate"):
            allowed = ", ".join((*DATE_STYLES, "rotate"))
            raise ValueError(f"date_style must be one of {allowed}, got {self.date_style!r}")


@dataclass
class StandInStats:
    """Request counters of a stand-in. Token counters count successful issues only."""

    app_ticket_calls: int = 0
    app_refresh_calls: int = 0
    customer_logins: int = 0
    customer_refreshes: int = 0
    refresh_rejected: int = 0
    """Refresh tokens rejected as unknown, used, expired or revoked (application and customer)."""
    protected_requests: int = 0
    protected_ok: int = 0
    expired_token_requests: int = 0
    """401 invalid_token responses at protected resources for expired, revoked or unknown tokens."""
    missing_token_requests: int = 0
    """401 responses at protected resources for a missing bearer token or shopper context."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Shopper:
    user_id: str
    account_id: int | None
    """None for an anonymous shopper."""


@dataclass(frozen=True)
class _Grant:
    """Record of one token the stand-in issued."""

    expires_at: float
    """Server-clock POSIX time from which the token is rejected."""
    generation: int
    """Revocation generation in `Faults` when the token was issued."""
    shopper: _Shopper | None = None


class _Rejection(Exception):
    """An error response raised inside a handler and sent by `_rejection_middleware`."""

    def __init__(self, status: int, body: Mapping[str, Any], reason: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.reason = reason or str(body.get("message", ""))
        """Why the request was rejected, for the debug log. It never contains a token."""


def _unauthorized(message: str) -> _Rejection:
    return _Rejection(401, {"errorCode": "UNAUTHORIZED", "message": message})


def _bad_request(message: str) -> _Rejection:
    return _Rejection(400, {"errorCode": "MISSING_OR_INVALID_PARAMETER", "message": message})


@web.middleware
async def _rejection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Rejection as rejection:
        # Rejections are the stand-in doing its job, so they log at debug only.
        log.debug(
            "standin.request.rejected",
            method=request.method,
            path=request.path,
            status=rejection.status,
            reason=rejection.reason,
        )
        return web.json_response(dict(rejection.body), status=rejection.status)


def _random_token() -> str:
    return secrets.token_urlsafe(32)


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request("The request body must be a JSON object.") from None

    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object.")
    return body


def _required_string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _bad_request(f"Field {name!r} is missing or not a non-empty string.")
    return value


def _parse_account_id(raw: Any) -> int | None:
    """Parse an optional accountId from a JSON body or a query string."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise _bad_request(f"accountId must be an integer, got {raw!r}.")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise _bad_request(f"accountId must be an integer, got {raw!r}.") from None


class StandIn:
    """State and request handlers of one stand-in instance.

    Tokens are checked against the server clock, `server_now()`. Every
    expiry the stand-in states is at or before the instant from which it
    rejects the token. JWT `exp` and `accessTokenExpiration` are truncated,
    and `expires_in` counts whole seconds from the moment of issue, so only
    network latency can make a client that trusts them late.

    NOTE: every issued token stays in memory for the life of the instance,
    which suits tests and demos but not a long soak run.
    """

    def __init__(
        self, config: StandInConfig | None = None, *, now: Callable[[], float] = time.time
    ) -> None:
        self.config = config if config is not None else StandInConfig()
        self.stats = StandInStats()
        self.faults = Faults()
        self.stats_calls: list[tuple[str, float]] = []
        """(endpoint name, server time) of every token-endpoint request, including failed ones."""
        self.issued_secrets: set[str] = {self.config.client_secret, self.config.password}
        """Every token the stand-in issued, plus the client secret and password."""
        self.jwt_key = secrets.token_bytes(32)
        """HS256 key that signs every JWT this instance issues."""

        self._now = now
        self._registered_user = _Shopper(
            user_id=secrets.token_hex(16), account_id=CUSTOMER_ACCOUNT_ID
        )
        self._app_access: dict[str, _Grant] = {}
        self._app_refresh: dict[str, _Grant] = {}
        self._customer_access: dict[str, _Grant] = {}
        self._customer_jwt: dict[str, _Grant] = {}
        self._customer_refresh: dict[str, _Grant] = {}
        self._tickets_dated = 0

    def server_now(self) -> float:
        """Return the server clock: the real clock plus `config.clock_offset`."""
        return self._now() + self.config.clock_offset

    def make_app(self) -> web.Application:
        """Build the aiohttp application serving both Kibo hosts."""
        app = web.Application(middlewares=[_rejection_middleware])
        app.on_response_prepare.append(self._set_date_header)

        auth = "/api/platform/applications/authtickets"
        customer = "/api/commerce/customer/authtickets"
        app.router.add_post(f"{auth}/oauth", self._handle_oauth)
        app.router.add_put(f"{auth}/refresh-ticket", self._handle_app_refresh)
        app.router.add_post(customer, self._handle_customer_login)
        app.router.add_put(f"{customer}/refresh", self._handle_customer_refresh)
        app.router.add_get(f"{customer}/anonymousshopper", self._handle_anonymous_shopper)

        app.router.add_get("/api/commerce/catalog/storefront/products", self._handle_products)
        app.router.add_get("/api/commerce/carts/current", self._handle_current_cart)
        app.router.add_get("/api/platform/standin/slow", self._handle_slow)
        app.router.add_get("/_standin/stats", self._handle_stats)
        return app

    # -- plumbing shared by all endpoints

    async def _set_date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        # aiohttp fills in Date from the real clock only when the header is absent.
        response.headers["Date"] = email.utils.formatdate(self.server_now(), usegmt=True)

    def _is_live(self, grant: _Grant | None, generation: int) -> TypeGuard[_Grant]:
        """Return whether `grant` exists, is unexpired on the server clock and is not revoked."""
        return (
            grant is not None
            and grant.generation == generation
            and self.server_now() < grant.expires_at
        )

    def _require_app_bearer(self, request: web.Request) -> None:
        token = _bearer_token(request)
        if token is None:
            raise _unauthorized(
                "Missing Authorization: Bearer header with an application access token."
            )

        if not self._is_live(self._app_access.get(token), self.faults.access_generation):
            raise _Rejection(
                401, INVALID_TOKEN_BODY, "application bearer token unknown, expired or revoked"
            )

    async def _answer_token_request(
        self, endpoint: str, request: web.Request, issue: Handler
    ) -> web.StreamResponse:
        """Record the call, apply the delay and queued faults, then run `issue`."""
        self.stats_calls.append((endpoint, self.server_now()))
        if self.faults.delay > 0:
            await asyncio.sleep(self.faults.delay)

        failure = self.faults.take_failure()
        if failure is not None:
            log.debug("standin.fault.failed_call", endpoint=endpoint, status=failure.status)
            headers = {"Content-Type": failure.content_type}
            if failure.retry_after is not None:
                headers["Retry-After"] = failure.retry_after
            return web.Response(status=failure.status, body=failure.body, headers=headers)

        garbage = self.faults.take_garbage()
        if garbage is not None:
            log.debug("standin.fault.garbage_body", endpoint=endpoint)
            headers = {"Content-Type": garbage.content_type}
            return web.Response(status=200, body=garbage.body, headers=headers)

        return await issue(request)

    # -- application tickets

    async def _handle_oauth(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_token_request(
            OAUTH_CALL, request, self._issue_app_ticket_for_credentials
        )

    async def _handle_app_refresh(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_token_request(APP_REFRESH_CALL, request, self._refresh_app_ticket)

    async def _issue_app_ticket_for_credentials(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json_object(request)
        grant_type = _required_string(body, "grant_type")
        if grant_type != "client_credentials":
            message = f"grant_type {grant_type!r} is not supported, use 'client_credentials'."
            raise _Rejection(400, {"errorCode": "UNSUPPORTED_GRANT_TYPE", "message": message})

        client_id = _required_string(body, "client_id")
        client_secret = _required_string(body, "client_secret")
        if client_id != self.config.client_id or not secrets.compare_digest(
            client_secret, self.config.client_secret
        ):
            raise _unauthorized("Invalid client credentials")

        self.stats.app_ticket_calls += 1
        return web.json_response(self._issue_app_ticket())

    async def _refresh_app_ticket(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json_object(request)
        refresh_token = _required_string(body, "refreshToken")

        grant = self._app_refresh.get(refresh_token)
        if not self._is_live(grant, self.faults.app_refresh_generation):
            self.stats.refresh_rejected += 1
            reason = "application refresh token unknown, used, expired or revoked"
            raise _Rejection(401, INVALID_TOKEN_BODY, reason)

        if self.config.single_use_refresh_tokens:
            del self._app_refresh[refresh_token]
        self.stats.app_refresh_calls += 1
        return web.json_response(self._issue_app_ticket())

    def _issue_app_ticket(self) -> dict[str, Any]:
        now = self.server_now()
        lifetime = 0.0 if self.faults.take_zero_lifetime() else self.config.app_lifetime
        expires_at = now + lifetime
        jti = secrets.token_hex(8)
        claims = {
            "iat": int(now),
            "exp": int(expires_at),
            "jti": jti,
            APP_CLAIMS: {"applicationId": self.config.client_id, "isStandIn": True},
        }
        access_token = jwt.encode(claims, self.jwt_key, algorithm=JWT_ALGORITHM)
        refresh_token = _random_token()

        generation = self.faults.access_generation
        self._app_access[access_token] = _Grant(expires_at, generation)
        refresh_expires_at = now + self.config.refresh_token_lifetime
        self._app_refresh[refresh_token] = _Grant(
            refresh_expires_at, self.faults.app_refresh_generation
        )
        self.issued_secrets.update((access_token, refresh_token))
        log.debug("standin.app_ticket.issued", jti=jti, expires_in_s=int(lifetime))

        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": int(lifetime),
            "refresh_token": refresh_token,
            "refresh_token_expires_in": int(self.config.refresh_token_lifetime),
            "scope": "",
            "jti": jti,
        }

    # -- customer tickets

    async def _handle_customer_login(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_token_request(CUSTOMER_LOGIN_CALL, request, self._log_in_customer)

    async def _handle_customer_refresh(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_token_request(
            CUSTOMER_REFRESH_CALL, request, self._refresh_customer_ticket
        )

    async def _handle_anonymous_shopper(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_token_request(
            ANONYMOUS_SHOPPER_CALL, request, self._issue_anonymous_ticket
        )

    async def _log_in_customer(self, request: web.Request) -> web.StreamResponse:
        self._require_app_bearer(request)
        body = await _read_json_object(request)
        username = _required_string(body, "username")
        password = _required_string(body, "password")
        account_id = _parse_account_id(body.get("accountId"))

        known_user = username == self.config.username and secrets.compare_digest(
            password, self.config.password
        )
        if not known_user or account_id not in (None, CUSTOMER_ACCOUNT_ID):
            raise _Rejection(
                401, {"errorCode": "INVALID_CREDENTIALS", "message": "Invalid username or password"}
            )

        self.stats.customer_logins += 1
        return web.json_response(self._issue_customer_ticket(self._registered_user))

    async def _refresh_customer_ticket(self, request: web.Request) -> web.StreamResponse:
        self._require_app_bearer(request)
        refresh_token = request.query.get("refreshToken", "")
        if not refresh_token:
            raise _bad_request("Query parameter 'refreshToken' is missing.")
        account_id = _parse_account_id(request.query.get("accountId"))

        grant = self._customer_refresh.get(refresh_token)
        shopper = grant.shopper if grant is not None else None
        if not self._is_live(grant, self.faults.customer_refresh_generation) or shopper is None:
            self.stats.refresh_rejected += 1
            reason = "customer refresh token unknown, used, expired or revoked"
            raise _Rejection(401, INVALID_TOKEN_BODY, reason)

        if account_id not in (None, shopper.account_id):
            self.stats.refresh_rejected += 1
            reason = f"refresh token belongs to account {shopper.account_id}, not {account_id}"
            raise _Rejection(401, INVALID_TOKEN_BODY, reason)

        if self.config.single_use_refresh_tokens:
            del self._customer_refresh[refresh_token]
        self.stats.customer_refreshes += 1
        ticket = self._issue_customer_ticket(shopper)

        response_fields = request.query.get("responseFields", "")
        if response_fields:
            ticket = select_response_fields(ticket, response_fields)
        return web.json_response(ticket)

    async def _issue_anonymous_ticket(self, request: web.Request) -> web.StreamResponse:
        self._require_app_bearer(request)
        shopper = _Shopper(user_id=secrets.token_hex(16), account_id=None)
        return web.json_response(self._issue_customer_ticket(shopper))

    def _next_date_style(self) -> str:
        if self.config.date_style != "rotate":
            return self.config.date_style

        style = DATE_STYLES[self._tickets_dated % len(DATE_STYLES)]
        self._tickets_dated += 1
        return style

    def _issue_customer_ticket(self, shopper: _Shopper) -> dict[str, Any]:
        now = self.server_now()
        if self.faults.take_zero_lifetime():
            expires_at = now - 1.0
        else:
            expires_at = now + self.config.customer_lifetime
        refresh_expires_at = now + self.config.refresh_token_lifetime

        claims = {
            "iat": int(now),
            "exp": int(expires_at),
            "jti": secrets.token_hex(8),
            APP_CLAIMS: {"applicationId": self.config.client_id, "isStandIn": True},
            USER_CLAIMS: {
                "userId": shopper.user_id,
                "accountId": shopper.account_id,
                "isAnonymous": shopper.account_id is None,
            },
        }
        jwt_access_token = jwt.encode(claims, self.jwt_key, algorithm=JWT_ALGORITHM)
        access_token = _random_token()
        refresh_token = _random_token()

        generation = self.faults.access_generation
        self._customer_access[access_token] = _Grant(expires_at, generation, shopper)
        self._customer_jwt[jwt_access_token] = _Grant(expires_at, generation, shopper)
        refresh_generation = self.faults.customer_refresh_generation
        self._customer_refresh[refresh_token] = _Grant(
            refresh_expires_at, refresh_generation, shopper
        )
        self.issued_secrets.update((access_token, jwt_access_token, refresh_token))
        log.debug(
            "standin.customer_ticket.issued",
            user_id=shopper.user_id,
            expires_in_s=int(expires_at - now),
        )

        style = self._next_date_style()
        account = None
        if shopper.account_id is not None:
            account = sample_customer_account(
                shopper.user_id, shopper.account_id, self.config.username
            )
        return {
            "accessToken": access_token,
            "accessTokenExpiration": format_kibo_datetime(expires_at, style),
            "customerAccount": account,
            "jwtAccessToken": jwt_access_token,
            "refreshToken": refresh_token,
            "refreshTokenExpiration": format_kibo_datetime(refresh_expires_at, style),
            "requires2FA": False,
            "userId": shopper.user_id,
        }

    # -- protected sample resources

    def _authorize_resource(
        self, request: web.Request, *, require_shopper: bool
    ) -> _Shopper | None:
        """Check the bearer token and shopper context of a protected request and return the shopper.

        The bearer may be an application access token or a customer
        `jwtAccessToken`, because the latter carries application claims too.
        """
        self.stats.protected_requests += 1
        if self.faults.protected_status is not None:
            status = self.faults.protected_status
            raise _Rejection(
                status,
                {"errorCode": "INJECTED_FAILURE", "message": f"Injected failure: status {status}"},
            )

        token = _bearer_token(request)
        if token is None:
            self.stats.missing_token_requests += 1
            raise _unauthorized("Missing Authorization: Bearer header.")

        generation = self.faults.access_generation
        shopper: _Shopper | None = None
        jwt_grant = self._customer_jwt.get(token)
        if self._is_live(jwt_grant, generation):
            shopper = jwt_grant.shopper
        elif not self._is_live(self._app_access.get(token), generation):
            self.stats.expired_token_requests += 1
            reason = "bearer token unknown, expired or revoked"
            raise _Rejection(401, INVALID_TOKEN_BODY, reason)

        user_claims = request.headers.get("x-vol-user-claims")
        if user_claims is not None:
            claims_grant = self._customer_access.get(user_claims)
            if not self._is_live(claims_grant, generation):
                self.stats.expired_token_requests += 1
                reason = "x-vol-user-claims token unknown, expired or revoked"
                raise _Rejection(401, INVALID_TOKEN_BODY, reason)
            shopper = claims_grant.shopper

        if require_shopper and shopper is None:
            self.stats.missing_token_requests += 1
            raise _unauthorized(
                "This resource needs a shopper. Send x-vol-user-claims with a customer"
                " accessToken, or a customer jwtAccessToken as the bearer token."
            )
        return shopper

    async def _handle_products(self, request: web.Request) -> web.StreamResponse:
        self._authorize_resource(request, require_shopper=False)
        self.stats.protected_ok += 1
        page = {
            "startIndex": 0,
            "pageSize": 20,
            "pageCount": 1,
            "totalCount": len(SAMPLE_PRODUCTS),
            "items": SAMPLE_PRODUCTS,
        }
        return web.json_response(page)

    async def _handle_current_cart(self, request: web.Request) -> web.StreamResponse:
        shopper = self._authorize_resource(request, require_shopper=True)
        assert shopper is not None  # guaranteed by require_shopper=True
        self.stats.protected_ok += 1
        cart: dict[str, Any] = {
            "id": f"cart-{shopper.user_id}",
            "userId": shopper.user_id,
            "customerAccountId": shopper.account_id,
            "items": [],
            "subtotal": 0.0,
            "total": 0.0,
        }
        return web.json_response(cart)

    async def _handle_slow(self, request: web.Request) -> web.StreamResponse:
        self._authorize_resource(request, require_shopper=False)
        raw_seconds = request.query.get("seconds", "")
        try:
            seconds = float(raw_seconds)
        except ValueError:
            raise _bad_request(
                f"Query parameter 'seconds' must be a number, got {raw_seconds!r}."
            ) from None
        if not math.isfinite(seconds) or seconds < 0:
            raise _bad_request(
                f"Query parameter 'seconds' must be zero or positive, got {raw_seconds!r}."
            )

        seconds = min(seconds, MAX_SLOW_SECONDS)
        await asyncio.sleep(seconds)
        self.stats.protected_ok += 1
        return web.json_response({"sleptSeconds": seconds})

    async def _handle_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats.as_dict())


async def start_stand_in(
    stand_in: StandIn, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 5.0
) -> tuple[web.AppRunner, str]:
    """Start serving `stand_in` and return the runner and the base URL.

    The caller owns the runner and must await `runner.cleanup()`.
    `shutdown_timeout` bounds how long cleanup waits for requests still in
    flight, such as calls to the slow endpoint, before cancelling them.
    """
    # The access log is off because the customer refresh URL carries the
    # refresh token in its query string.
    runner = web.AppRunner(stand_in.make_app(), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise

    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}"


def _parse_listen_address(text: str) -> tuple[str, int]:
    host, separator, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen must be HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host, int(port_text)


def _build_parser() -> argparse.ArgumentParser:
    defaults = StandInConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sidecar stand-in",
        description="Serve a local stand-in for the Kibo auth and API hosts on one port.",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8900",
        metavar="HOST:PORT",
        help="address to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=tuple(LEVELS),
        default="warning",
        help="minimum level of log events on stderr, debug shows every ticket issued and"
        " request rejected (default: %(default)s)",
    )

    credentials = parser.add_argument_group("accepted credentials")
    credentials.add_argument(
        "--client-id", default=defaults.client_id, help="OAuth client ID (default: %(default)s)"
    )
    credentials.add_argument(
        "--client-secret", default=defaults.client_secret, help="OAuth client secret"
    )
    credentials.add_argument(
        "--username", default=defaults.username, help="shopper username (default: %(default)s)"
    )
    credentials.add_argument("--password", default=defaults.password, help="shopper password")

    tokens = parser.add_argument_group("tokens")
    tokens.add_argument(
        "--app-lifetime",
        type=float,
        default=defaults.app_lifetime,
        metavar="S",
        help="application access token lifetime in seconds (default: %(default)s)",
    )
    tokens.add_argument(
        "--customer-lifetime",
        type=float,
        default=defaults.customer_lifetime,
        metavar="S",
        help="customer access token lifetime in seconds (default: %(default)s)",
    )
    tokens.add_argument(
        "--refresh-token-lifetime",
        type=float,
        default=defaults.refresh_token_lifetime,
        metavar="S",
        help="refresh token lifetime in seconds (default: %(default)s)",
    )
    tokens.add_argument(
        "--reusable-refresh-tokens",
        action="store_true",
        help="keep refresh tokens valid after use instead of rotating them",
    )

    dates = parser.add_argument_group("server clock and dates")
    dates.add_argument(
        "--clock-offset",
        type=float,
        default=defaults.clock_offset,
        metavar="S",
        help="seconds added to the real clock, positive puts the server clock ahead"
        " (default: %(default)s)",
    )
    dates.add_argument(
        "--date-style",
        choices=(*DATE_STYLES, "rotate"),
        default=defaults.date_style,
        help="zone style of accessTokenExpiration dates (default: %(default)s)",
    )
    return parser


async def _serve_until_signal(stand_in: StandIn, host: str, port: int) -> int:
    try:
        runner, base_url = await start_stand_in(stand_in, host, port)
    except OSError as exc:
        print(
            f"error: cannot listen on {host}:{port}: {exc}. Choose another address with --listen.",
            file=sys.stderr,
        )
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    print(
        f"Kibo stand-in listening on {base_url} (use it for both KIBO_AUTH_URL and KIBO_API_URL)",
        file=sys.stderr,
    )

    try:
        await stop.wait()
    finally:
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signal_number)
        await runner.cleanup()
    return 0


def main(argv: list[str]) -> int:
    """Run the stand-in from the command line until SIGINT or SIGTERM."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = _parse_listen_address(args.listen)
        config = StandInConfig(
            client_id=args.client_id,
            client_secret=args.client_secret,
            username=args.username,
            password=args.password,
            app_lifetime=args.app_lifetime,
            customer_lifetime=args.customer_lifetime,
            refresh_token_lifetime=args.refresh_token_lifetime,
            clock_offset=args.clock_offset,
            date_style=args.date_style,
            single_use_refresh_tokens=not args.reusable_refresh_tokens,
        )
    except ValueError as exc:
        # StandInConfig names its fields; the command line user knows the flags.
        message = str(exc)
        for field_name in (
            "app_lifetime",
            "customer_lifetime",
            "refresh_token_lifetime",
            "clock_offset",
            "date_style",
        ):
            message = message.replace(field_name, "--" + field_name.replace("_", "-"))
        parser.error(message)

    configure_logging(level=args.log_level, fmt="console")
    return asyncio.run(_serve_until_signal(StandIn(config), host, port))
