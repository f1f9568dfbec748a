"""Reading Kibo dates and ticket responses: every date form, every expiry source, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from email.utils import formatdate

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.dates import parse_http_date, parse_kibo_datetime, parse_retry_after
from sidecar.errors import InvalidTicketError
from sidecar.token import Receipt, parse_app_ticket, parse_customer_ticket, read_jwt_times

INSTANT = 1794547916.1234567  # 2026-11-13T05:31:56.1234567Z


def make_jwt(iat: float, exp: float) -> str:
    return jwt.encode(
        {"iat": int(iat), "exp": int(exp), "sub": "test"}, "k" * 32, algorithm="HS256"
    )


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-13T05:31:56.1234567Z",
        "2026-11-13T05:31:56.1234567",
        "2026-11-13T07:31:56.1234567+02:00",
        "2026-11-13T00:31:56.1234567-05:00",
        "2026-11-13T07:31:56.1234567+0200",
        "2026-11-13 05:31:56.1234567z",
    ],
)
def test_kibo_datetime_forms_same_instant(text: str) -> None:
    """Seven fractional digits, no zone (UTC), an offset: all name the same instant."""
    assert parse_kibo_datetime(text) == pytest.approx(INSTANT, abs=1e-6)


def test_kibo_datetime_wcf_form() -> None:
    """The WCF /Date(ms)/ form is read as milliseconds since the epoch."""
    assert parse_kibo_datetime("/Date(1794547916123+0100)/") == pytest.approx(1794547916.123)


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-13T25:00:00", "2026-11-13T05:31:56+25:00"],
)
def test_kibo_datetime_rejects_garbage(text: str) -> None:
    """Invalid dates raise ValueError with the value quoted."""
    with pytest.raises(ValueError):
        parse_kibo_datetime(text)


def test_zoneless_date_ignores_tz_variable() -> None:
    """A zoneless date is UTC even when the process runs with TZ set to another zone."""
    code = (
        "import time; time.tzset(); from sidecar.dates import parse_kibo_datetime; "
        "print(parse_kibo_datetime('2026-11-13T05:31:56.1234567'))"
    )
    for zone in ("America/New_York", "Asia/Kolkata", "Pacific/Chatham"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            check=True,
        )
        assert float(result.stdout) == pytest.approx(INSTANT, abs=1e-6), zone


@given(st.text(max_size=60))
def test_kibo_datetime_fuzz_value_or_valueerror(text: str) -> None:
    """Arbitrary text gives a number or ValueError, never another exception."""
    try:
        value = parse_kibo_datetime(text)
    except ValueError:
        return
    assert isinstance(value, float)


@given(
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones()
    )
)
def test_kibo_datetime_roundtrip_property(moment) -> None:
    """Any aware datetime written in ISO form reads back as the same instant."""
    text = moment.isoformat()
    assert parse_kibo_datetime(text) == pytest.approx(moment.timestamp(), abs=1e-5)


def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After is read as seconds or as an HTTP date on the server's clock."""
    server_now = 1_800_000_000.0
    later = formatdate(server_now + 30, usegmt=True)

    assert parse_retry_after("12", server_now=None, local_now=0) == 12.0
    assert parse_retry_after(later, server_now=server_now, local_now=0) == pytest.approx(30.0)
    assert parse_retry_after("soon", server_now=None, local_now=0) is None
    assert parse_retry_after(None, server_now=None, local_now=0) is None


@given(st.text(max_size=40))
def test_http_date_fuzz_value_or_none(text: str) -> None:
    """Arbitrary Date or Retry-After values never raise."""
    parse_http_date(text)
    parse_retry_after(text, server_now=None, local_now=time.time())


def receipt(date_header: str | None = None, wall: float = INSTANT) -> Receipt:
    return Receipt(monotonic=1000.0, wall=wall, date_header=date_header)


def test_app_ticket_earliest_source_wins() -> None:
    """expires_in and the JWT's exp - iat are both read; the shorter lifetime wins."""
    token = make_jwt(INSTANT, INSTANT + 600)
    ticket = parse_app_ticket({"access_token": token, "expires_in": 3599}, receipt())

    assert ticket.lifetime == pytest.approx(600.0)
    assert ticket.expires_at == pytest.approx(1600.0)
    assert ticket.access_token == token


def test_app_ticket_expires_in_only() -> None:
    """An opaque token with expires_in alone is accepted."""
    ticket = parse_app_ticket({"access_token": "opaque", "expires_in": "120"}, receipt())

    assert ticket.lifetime == 120.0


@pytest.mark.parametrize("skew", [-3600.0, -900.0, 0.0, 900.0, 3600.0])
def test_customer_ticket_server_clock_skew(skew: float) -> None:
    """An absolute expiry is measured against the server's Date header, not the pod's clock."""
    server_now = INSTANT + skew
    body = {
        "accessToken": "opaque-access",
        "refreshToken": "opaque-refresh",
        "accessTokenExpiration": _iso(server_now + 300),
        "jwtAccessToken": make_jwt(server_now, server_now + 300),
        "customerAccount": {"huge": ["x"] * 1000},
    }
    ticket = parse_customer_ticket(body, receipt(formatdate(server_now, usegmt=True)))

    # One second is given up for the Date header's resolution.
    assert 298.0 <= ticket.lifetime <= 300.0
    assert ticket.refresh_token == "opaque-refresh"
    assert ticket.jwt_access_token == body["jwtAccessToken"]


def test_old_jwt_measured_against_date() -> None:
    """A JWT issued 50 minutes before the Date header has 10 minutes left, not its full hour."""
    server_now = INSTANT
    token = make_jwt(server_now - 3000, server_now + 600)

    ticket = parse_app_ticket({"access_token": token}, receipt(formatdate(server_now, usegmt=True)))

    assert 598.0 <= ticket.lifetime <= 600.0


def test_customer_ticket_without_date_uses_iat() -> None:
    """With no Date header the JWT's iat replaces the server's clock."""
    server_now = INSTANT + 3600
    body = {
        "accessToken": "a",
        "refreshToken": "r",
        "accessTokenExpiration": _iso(server_now + 120),
        "jwtAccessToken": make_jwt(server_now, server_now + 900),
    }
    ticket = parse_customer_ticket(body, receipt(None))

    assert ticket.lifetime == pytest.approx(120.0, abs=1.0)


def test_ticket_repr_hides_tokens() -> None:
    """A Token's repr shows its lifetime, never a token."""
    ticket = parse_app_ticket({"access_token": "sekrit-token", "expires_in": 60}, receipt())

    assert "sekrit" not in repr(ticket)
    assert "sekrit" not in str(ticket)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"access_token": "abc"}, "no expiry"),
        ({"access_token": "abc", "expires_in": 0}, "already expired"),
        ({"access_token": "abc", "expires_in": -5}, "already expired"),
        ({"access_token": "abc", "expires_in": "soon"}, "not a number"),
        ({"access_token": "abc", "expires_in": True}, "not a number"),
        ({"expires_in": 60}, "no access_token"),
        ({"access_token": "", "expires_in": 60}, "no access_token"),
        ({"access_token": "a b", "expires_in": 60}, "not allowed in a header"),
        (["not", "an", "object"], "not an object"),
        ("just a string", "not an object"),
        ({"errorCode": "UNAUTHORIZED", "message": "nope"}, "no access_token"),
    ],
)
def test_app_ticket_rejects_bad_responses(body: object, message: str) -> None:
    """Malformed tickets raise InvalidTicketError with a clear message."""
    with pytest.raises(InvalidTicketError, match=message):
        parse_app_ticket(body, receipt())


@pytest.mark.parametrize(
    "body",
    [
        {"accessToken": "a", "refreshToken": "r", "jwtAccessToken": "not.a.jwt"},
        {"accessToken": "a", "refreshToken": "r", "accessTokenExpiration": "tomorrow"},
        {"accessToken": "a", "refreshToken": "r"},
        {"accessToken": "a", "jwtAccessToken": "x"},
        {"accessToken": "a", "refreshToken": "r", "jwtAccessToken": 42},
        {
            "accessToken": "a",
            "accessTokenExpiration": "2099-01-01T00:00:00Z",
            "jwtAccessToken": "x\r\ny",
        },
    ],
)
def test_customer_ticket_rejects_bad_answers(body: object) -> None:
    """A JWT that is not a JWT, a bad date or missing fields raise InvalidTicketError."""
    with pytest.raises(InvalidTicketError):
        parse_customer_ticket(body, receipt())


def test_customer_ticket_unreadable_jwt_tolerated() -> None:
    """An unreadable jwtAccessToken is tolerated when accessTokenExpiration gives the expiry."""
    body = {
        "accessToken": "a",
        "refreshToken": "r",
        "jwtAccessToken": "opaque-not-a-jwt",
        "accessTokenExpiration": _iso(INSTANT + 90),
    }

    ticket = parse_customer_ticket(body, receipt(formatdate(INSTANT, usegmt=True)))

    assert 88.0 <= ticket.lifetime <= 90.0


def test_customer_ticket_without_refresh_token() -> None:
    """A ticket without a refreshToken is usable; it just cannot be refreshed."""
    body = {"accessToken": "a", "accessTokenExpiration": _iso(INSTANT + 90)}

    ticket = parse_customer_ticket(body, receipt(formatdate(INSTANT, usegmt=True)))

    assert ticket.refresh_token is None


def test_jwt_reader_hides_token_in_error() -> None:
    """The error for an unreadable JWT does not quote any of it."""
    with pytest.raises(InvalidTicketError) as caught:
        read_jwt_times("eyJzZWNyZXQiOiJ4In0.c2VjcmV0LXBheWxvYWQ.sig")

    assert "c2VjcmV0" not in str(caught.value)


ticket_fields = st.dictionaries(
    st.sampled_from(
        [
            "access_token",
            "expires_in",
            "accessToken",
            "refreshToken",
            "accessTokenExpiration",
            "jwtAccessToken",
            "other",
        ]
    ),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=30),
        st.lists(st.integers(), max_size=3),
    ),
)


@given(ticket_fields)
def test_ticket_parsers_fuzz(body: dict[str, object]) -> None:
    """Arbitrary ticket-shaped JSON gives a token with a positive lifetime or InvalidTicketError."""
    for parse in (parse_app_ticket, parse_customer_ticket):
        try:
            ticket = parse(body, receipt())
        except InvalidTicketError:
            continue
        assert ticket.lifetime > 0


def _iso(moment: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
    return f"{seconds}.{int((moment % 1) * 10**7):07d}Z"
