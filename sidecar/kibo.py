"""Kibo's token endpoints: the application ticket and the customer ticket.

`KiboAuthClient` makes the HTTP calls and maps every failure to a TicketError
subclass. The two fetchers decide which call to make. The application ticket
always uses client credentials. The customer ticket refreshes with the newest
refresh token and falls back to a login when the password is known.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from yarl import URL

from .config import Secret
from .dates import parse_http_date, parse_retry_after
from .errors import (
    CredentialsRejectedError,
    InvalidTicketError,
    RefreshTokenRejectedError,
    TicketError,
    TicketFailedError,
)
from .state import StateFile
from .ticket import Clock, ManagedTicket
from .token import Receipt, Token, parse_app_ticket, parse_customer_ticket

log = structlog.get_logger("sidecar.kibo")

APP_TICKET_PATH = "/api/platform/applications/authtickets/oauth"
CUSTOMER_TICKET_PATH = "/api/commerce/customer/authtickets"
CUSTOMER_REFRESH_PATH = "/api/commerce/customer/authtickets/refresh"

# An error body is read only to find Kibo's error code; a proxy's HTML error page
# or a huge body is cut here.
MAX_ERROR_BODY = 64 * 1024
MAX_TICKET_BODY = 4 * 1024 * 1024


class KiboAuthClient:
    """HTTP calls to Kibo's ticket endpoints over one pooled session."""

    def __init__(self, session: aiohttp.ClientSession, *, clock: Clock) -> None:
        self._session = session
        self._clock = clock

    async def app_ticket(self, auth_url: URL, client_id: Secret, client_secret: Secret) -> Token:
        """Get an application ticket with the client-credentials grant."""
        body = {
            "client_id": client_id.reveal(),
            "client_secret": client_secret.reveal(),
            "grant_type": "client_credentials",
        }
        return await self._call(
            "POST",
            _endpoint(auth_url, APP_TICKET_PATH),
            endpoint=f"POST {APP_TICKET_PATH}",
            parse=parse_app_ticket,
            rejected=CredentialsRejectedError,
            json_body=body,
        )

    async def customer_login(
        self,
        api_url: URL,
        app_token: Token,
        username: Secret,
        password: Secret,
        account_id: int | None,
    ) -> Token:
        """Create a customer ticket from the shopper's username and password."""
        body: dict[str, Any] = {"username": username.reveal(), "password": password.reveal()}
        if account_id is not None:
            body["accountId"] = account_id

        return await self._call(
            "POST",
            _endpoint(api_url, CUSTOMER_TICKET_PATH),
            endpoint=f"POST {CUSTOMER_TICKET_PATH}",
            parse=parse_customer_ticket,
            rejected=CredentialsRejectedError,
            json_body=body,
            bearer=app_token.access_token,
        )

    async def customer_refresh(
        self, api_url: URL, app_token: Token, refresh_token: str, account_id: int | None
    ) -> Token:
        """Exchange a customer refresh token for a new ticket, usually with a new refresh token."""
        query = {"refreshToken": refresh_token}
        if account_id is not None:
            query["accountId"] = str(account_id)

        return await self._call(
            "PUT",
            _endpoint(api_url, CUSTOMER_REFRESH_PATH).with_query(query),
            endpoint=f"PUT {CUSTOMER_REFRESH_PATH}",
            parse=parse_customer_ticket,
            rejected=RefreshTokenRejectedError,
            bearer=app_token.access_token,
        )

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        endpoint: str,
        parse: Callable[[Any, Receipt], Token],
        rejected: type[TicketError],
        json_body: Mapping[str, Any] | None = None,
        bearer: str | None = None,
    ) -> Token:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"

        sent_monotonic = self._clock.monotonic()
        sent_wall = self._clock.wall()
        try:
            async with self._session.request(
                method, url, json=json_body, headers=headers, allow_redirects=False
            ) as response:
                raw = await _read_limited(response, MAX_TICKET_BODY)
                status = response.status
                date_header = response.headers.get("Date")
                retry_after_header = response.headers.get("Retry-After")
        except TimeoutError:
            raise TicketError(f"{endpoint} timed out") from None
        except aiohttp.ClientError as error:
            # str() of aiohttp errors can include the request URL, and the customer
            # refresh URL carries the refresh token, so only the error type is kept.
            raise TicketError(f"{endpoint} failed: {_describe_client_error(error)}") from None

        if 200 <= status < 300:
            body = _decode_json(raw)
            if body is None:
                raise InvalidTicketError(
                    f"{endpoint} returned HTTP {status} with a body that is not JSON"
                )
            try:
                return parse(
                    body, Receipt(monotonic=sent_monotonic, wall=sent_wall, date_header=date_header)
                )
            except InvalidTicketError as error:
                unusable = InvalidTicketError(f"{endpoint} returned an unusable ticket: {error}")
                rotated = body.get("refreshToken") if isinstance(body, Mapping) else None
                if isinstance(rotated, str) and rotated:
                    unusable.refresh_token = rotated
                raise unusable from None

        server_now = parse_http_date(date_header) if date_header else None
        retry_after = parse_retry_after(
            retry_after_header, server_now=server_now, local_now=self._clock.wall()
        )
        code = _error_code(raw)
        detail = f"{endpoint} returned HTTP {status}" + (f" ({code})" if code else "")
        if status in (400, 401, 403):
            raise rejected(detail, retry_after=retry_after, code=code)

        raise TicketError(detail, retry_after=retry_after, code=code)


class AppTicketFetcher:
    """Gets application tickets; every refresh is a fresh client-credentials call.

    Client credentials never expire the way a refresh token does, so there is
    no refresh-token state to lose or to rotate.
    """

    def __init__(
        self, client: KiboAuthClient, auth_url: URL, client_id: Secret, client_secret: Secret
    ) -> None:
        self._client = client
        self._auth_url = auth_url
        self._client_id = client_id
        self._client_secret = client_secret

    async def __call__(self) -> Token:
        return await self._client.app_ticket(self._auth_url, self._client_id, self._client_secret)


class CustomerTicketFetcher:
    """Gets customer tickets, following rotated refresh tokens.

    Only the newest refresh token is kept and sent. A rejected refresh token is
    first retried once with a new application token, because Kibo returns
    `invalid_token` for a stale bearer too. If it is rejected again, a login
    replaces it when the password is known, and otherwise the ticket fails
    for good.
    """

    def __init__(
        self,
        client: KiboAuthClient,
        app_ticket: ManagedTicket,
        *,
        api_url: URL,
        username: Secret | None,
        password: Secret | None,
        refresh_token: Secret | None,
        account_id: int | None,
        app_token_wait: float,
        state: StateFile | None = None,
    ) -> None:
        self._client = client
        self._app_ticket = app_ticket
        self._api_url = api_url
        self._username = username
        self._password = password
        self._account_id = account_id
        self._app_token_wait = app_token_wait
        self._state = state
        self._refresh_token = refresh_token.reveal() if refresh_token is not None else None
        # Tried once if the state file's token is rejected: the operator may have
        # set a new token in the environment while an old state file stayed behind.
        self._fallback_refresh_token: str | None = None
        if state is not None:
            saved = state.load()
            if saved is not None:
                # The state file is written after every rotation, so it is normally newer.
                if saved != self._refresh_token:
                    self._fallback_refresh_token = self._refresh_token
                self._refresh_token = saved
                log.info("ticket.state_loaded", ticket="customer")

    def __repr__(self) -> str:
        return f"CustomerTicketFetcher(has_refresh_token={self._refresh_token is not None})"

    async def __call__(self) -> Token:
        try:
            token = await self._fetch()
        except InvalidTicketError as error:
            if error.refresh_token is not None:
                # The old refresh token is spent; the next attempt must use this one.
                self._remember_refresh_token(error.refresh_token)
            raise

        self._remember_refresh_token(token.refresh_token)
        return token

    async def _fetch(self) -> Token:
        app_token = await self._app_token()
        if self._refresh_token is None:
            token = await self._login(app_token)
        else:
            try:
                token = await self._refresh_with_fallback(app_token)
            except RefreshTokenRejectedError as error:
                if self._password is None or self._username is None:
                    raise TicketFailedError(
                        f"{error}; the refresh token was rejected and no password is configured, "
                        "so a new KIBO_CUSTOMER_REFRESH_TOKEN is needed"
                        + (" (and the old SIDECAR_STATE_FILE removed)" if self._state else "")
                    ) from None
                log.warning(
                    "ticket.refresh_token_rejected",
                    ticket="customer",
                    error=str(error),
                    action="login",
                )
                self._refresh_token = None
                token = await self._login(await self._app_token())

        return token

    async def _refresh_with_fallback(self, app_token: Token) -> Token:
        try:
            return await self._refresh(app_token)
        except RefreshTokenRejectedError as error:
            fallback = self._fallback_refresh_token
            self._fallback_refresh_token = None
            if fallback is None:
                raise
            log.warning(
                "ticket.refresh_token_rejected",
                ticket="customer",
                error=str(error),
                action="use KIBO_CUSTOMER_REFRESH_TOKEN instead of the state file's token",
            )
            self._refresh_token = fallback
            return await self._refresh(await self._app_token())

    async def _refresh(self, app_token: Token) -> Token:
        assert self._refresh_token is not None
        try:
            return await self._client.customer_refresh(
                self._api_url, app_token, self._refresh_token, self._account_id
            )
        except RefreshTokenRejectedError:
            # Kibo returns 401 invalid_token both for a rejected refresh token and for a
            # stale application bearer; one try with a new bearer distinguishes the two.
            fresh_app_token = await self._app_ticket.refresh(app_token)
            return await self._client.customer_refresh(
                self._api_url, fresh_app_token, self._refresh_token, self._account_id
            )

    async def _login(self, app_token: Token) -> Token:
        if self._username is None or self._password is None:
            raise TicketFailedError(
                "no customer refresh token is left and no password is configured; set "
                "KIBO_CUSTOMER_REFRESH_TOKEN, or KIBO_CUSTOMER_USERNAME and KIBO_CUSTOMER_PASSWORD"
            )

        try:
            return await self._client.customer_login(
                self._api_url, app_token, self._username, self._password, self._account_id
            )
        except CredentialsRejectedError as error:
            if error.code == "invalid_token":
                # The application bearer was rejected, not the shopper: retry later
                # with a new one.
                await self._app_ticket.refresh_rejected(app_token, min_age=0.0)
                raise TicketError(str(error)) from None
            # Repeating a rejected login can lock the shopper's account, so the
            # ticket fails until an operator fixes the credentials and restarts.
            raise TicketFailedError(
                f"{error}; KIBO_CUSTOMER_USERNAME or KIBO_CUSTOMER_PASSWORD was rejected"
            ) from None

    async def _app_token(self) -> Token:
        token = await self._app_ticket.wait_valid(self._app_token_wait)
        if token is None:
            raise TicketError(
                "no valid application token yet to authorise the customer ticket call"
            )

        return token

    def _remember_refresh_token(self, refresh_token: str | None) -> None:
        self._fallback_refresh_token = None
        if refresh_token is None or refresh_token == self._refresh_token:
            return

        self._refresh_token = refresh_token
        if self._state is not None:
            self._state.save(refresh_token)


def _endpoint(base: URL, path: str) -> URL:
    # yarl keeps an empty path as "/", so a plain concatenation would give "//api/...".
    return base.with_path(base.path.rstrip("/") + path)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise InvalidTicketError(f"the response is larger than {limit} bytes")
        chunks.append(chunk)

    return b"".join(chunks)


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _error_code(raw: bytes) -> str | None:
    """Return Kibo's error code or short message from an error body, or None.

    Only short single-word values are kept: a free-text message could echo
    request data back, and it would then reach the logs.
    """
    body = _decode_json(raw[:MAX_ERROR_BODY])
    if not isinstance(body, Mapping):
        return None

    for key in ("errorCode", "message", "error"):
        value = body.get(key)
        if isinstance(value, str) and 0 < len(value) <= 64 and value.replace("_", "").isalnum():
            return value

    return None


def _describe_client_error(error: aiohttp.ClientError) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = error.os_error.strerror or type(error.os_error).__name__
        return f"cannot connect to {error.host}:{error.port} ({reason})"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"

    return type(error).__name__
