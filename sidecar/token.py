"""The Token value and the parsers that turn Kibo's ticket responses into one.

A token's expiry is read from every source the response offers (`expires_in`,
`accessTokenExpiration`, the JWT's `exp`) and the earliest wins. Absolute
dates are on the server's clock, so each is measured against the server's own
idea of "now" (its Date header, else the JWT's `iat`) and then placed on the
pod's clock. Nothing here keeps the customer account or logs a token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import structlog

from .dates import parse_http_date, parse_kibo_datetime
from .errors import InvalidTicketError

log = structlog.get_logger("sidecar.token")

# HTTP dates have one-second resolution, so the server's real "now" may be up to a
# second later than its Date header shows, so the worst case is assumed.
DATE_HEADER_RESOLUTION = 1.0
# iat and Date both have one-second resolution and Date is read with the second
# above added, so a token issued just now can look up to about two seconds old.
JWT_FRESHNESS_SLACK = 2.5


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Token:
    """A usable access token with its expiry on the pod's clocks.

    `expires_at` is on the monotonic clock (immune to wall-clock steps),
    `expires_at_wall` is unix time for metrics and logs.
    """

    access_token: str
    jwt_access_token: str | None = None
    refresh_token: str | None = None
    lifetime: float
    obtained_at: float
    expires_at: float
    expires_at_wall: float

    def __repr__(self) -> str:
        return f"Token(lifetime={self.lifetime:.1f}s, expires_at_wall={self.expires_at_wall:.0f})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """When a ticket request was sent, on both local clocks, and the response's Date header."""

    monotonic: float
    wall: float
    date_header: str | None = None


def parse_app_ticket(body: Any, receipt: Receipt) -> Token:
    """Build a Token from the OAuth client-credentials response, or raise InvalidTicketError."""
    fields = _mapping(body)
    access_token = _text(fields, "access_token")
    expires_in = _seconds(fields.get("expires_in"), "expires_in")
    lifetime = _lifetime(
        receipt,
        expires_in=expires_in,
        absolute={},
        jwt_token=access_token,
    )

    return _token(receipt, lifetime, access_token=access_token, jwt_access_token=None, refresh=None)


def parse_customer_ticket(body: Any, receipt: Receipt) -> Token:
    """Build a Token from a CustomerAuthTicket, or raise InvalidTicketError.

    Only the token fields are read; the large customerAccount object is ignored.
    """
    fields = _mapping(body)
    access_token = _text(fields, "accessToken")
    # A ticket without a refresh token is still usable; the next round logs in again.
    refresh_token = _optional_text(fields, "refreshToken")
    jwt_access_token = _optional_text(fields, "jwtAccessToken")

    absolute = {}
    expiration = fields.get("accessTokenExpiration")
    if expiration is not None:
        try:
            absolute["accessTokenExpiration"] = parse_kibo_datetime(expiration)
        except ValueError as error:
            message = f"the ticket's accessTokenExpiration is invalid: {error}"
            raise InvalidTicketError(message) from None

    lifetime = _lifetime(
        receipt,
        expires_in=None,
        absolute=absolute,
        jwt_token=jwt_access_token,
    )

    return _token(
        receipt,
        lifetime,
        access_token=access_token,
        jwt_access_token=jwt_access_token,
        refresh=refresh_token,
    )


def read_jwt_times(token: str) -> tuple[float | None, float]:
    """Return a JWT's (iat, exp) claims without checking its signature, or raise InvalidTicketError.

    The sidecar only forwards the token; Kibo checks the signature. Reading
    `exp` is what lets the sidecar refresh before Kibo would refuse it.
    """
    try:
        claims = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        # The library's message can quote parts of the token, so it is not passed on.
        raise InvalidTicketError("the access token is not a readable JWT") from None

    exp = claims.get("exp")
    iat = claims.get("iat")
    if not isinstance(exp, int | float) or not _is_number(exp):
        raise InvalidTicketError("the JWT has no numeric exp claim")
    if iat is not None and not _is_number(iat):
        raise InvalidTicketError("the JWT has a non-numeric iat claim")

    return (None if iat is None else float(iat)), float(exp)


def _lifetime(
    receipt: Receipt,
    *,
    expires_in: float | None,
    absolute: Mapping[str, float],
    jwt_token: str | None,
) -> float:
    """Return the seconds, counted from when the request was sent, until the earliest expiry."""
    server_now = None
    if receipt.date_header:
        date = parse_http_date(receipt.date_header)
        if date is not None:
            server_now = date + DATE_HEADER_RESOLUTION

    candidates: list[float] = []
    if expires_in is not None:
        candidates.append(expires_in)

    iat: float | None = None
    unreadable_jwt: InvalidTicketError | None = None
    if jwt_token is not None:
        try:
            iat, exp = read_jwt_times(jwt_token)
        except InvalidTicketError as error:
            # Kibo's tokens are JWTs, but the other sources are enough to go on. The
            # JWT only becomes a reason to reject the ticket when nothing else is left.
            unreadable_jwt = error
        else:
            candidates.append(_jwt_remaining(exp, iat, server_now, receipt.wall))

    reference = server_now if server_now is not None else iat
    for _name, moment in absolute.items():
        # Without any server time the pod's clock is the only reference left.
        candidates.append(moment - (reference if reference is not None else receipt.wall))

    if not candidates:
        if unreadable_jwt is not None:
            raise InvalidTicketError(
                f"the ticket carries no expiry: no expires_in or expiration, and {unreadable_jwt}"
            )
        raise InvalidTicketError("the ticket carries no expiry (no expires_in, expiration or JWT)")
    if unreadable_jwt is not None:
        log.warning("token.jwt_unreadable", detail=str(unreadable_jwt))

    lifetime = min(candidates)
    if lifetime <= 0:
        raise InvalidTicketError(f"the ticket is already expired (lifetime {lifetime:.1f}s)")

    return lifetime


def _jwt_remaining(exp: float, iat: float | None, server_now: float | None, wall: float) -> float:
    """Return the seconds a JWT has left, measured on the server's clock where possible.

    exp - iat needs no clock agreement at all, since both are the server's, but
    it holds only for a token issued just now. A server may hand out a token
    it issued earlier (a cached client-credentials token), so when the Date
    header shows the token is older than the two clocks' resolution allows,
    exp is measured against that Date instead.
    """
    if iat is not None and (server_now is None or server_now - iat <= JWT_FRESHNESS_SLACK):
        return exp - iat
    if server_now is not None:
        return exp - server_now

    return exp - wall


def _token(
    receipt: Receipt,
    lifetime: float,
    *,
    access_token: str,
    jwt_access_token: str | None,
    refresh: str | None,
) -> Token:
    return Token(
        access_token=access_token,
        jwt_access_token=jwt_access_token,
        refresh_token=refresh,
        lifetime=lifetime,
        obtained_at=receipt.monotonic,
        expires_at=receipt.monotonic + lifetime,
        expires_at_wall=receipt.wall + lifetime,
    )


def _mapping(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidTicketError(f"the response is a JSON {type(body).__name__}, not an object")

    return body


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidTicketError(f"the ticket has no {name}")
    if any(ord(character) < 0x21 or ord(character) == 0x7F for character in value):
        # A token goes into an HTTP header; control characters or spaces would break it.
        raise InvalidTicketError(f"the ticket's {name} contains characters not allowed in a header")

    return value


def _optional_text(fields: Mapping[str, Any], name: str) -> str | None:
    if fields.get(name) in (None, ""):
        return None

    return _text(fields, name)


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidTicketError(f"the ticket's {name} is not a number") from None
    if not _is_number(value):
        raise InvalidTicketError(f"the ticket's {name} is not a number")

    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
