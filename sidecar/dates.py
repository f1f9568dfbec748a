"""Readers for the date forms Kibo and HTTP use, all returning unix seconds in UTC.

Kibo's .NET services write up to seven fractional digits, sometimes an offset
and sometimes no zone at all. A zoneless date means UTC, never local time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

_ISO = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    [Tt\ ]
    (?P<hour>\d{2}):(?P<minute>\d{2})
    (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?
    \s*
    (?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?
    """,
    re.VERBOSE,
)
# The WCF JSON form, /Date(1731000000000)/ or /Date(1731000000000+0100)/: milliseconds
# since the epoch in UTC. The offset only names the zone it was written for.
_WCF = re.compile(r"/Date\((?P<millis>-?\d+)(?:[+-]\d{4})?\)/")


def parse_kibo_datetime(text: str) -> float:
    """Parse a Kibo date-time string into unix seconds, raising ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"expected a date-time string, got {type(text).__name__}")

    text = text.strip()
    wcf = _WCF.fullmatch(text)
    if wcf:
        return int(wcf.group("millis")) / 1000.0

    match = _ISO.fullmatch(text)
    if not match:
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 date-time")

    fraction = match["fraction"] or "0"
    try:
        moment = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"] or 0),
            tzinfo=_zone(match["zone"]),
        )
    except ValueError as error:
        raise ValueError(f"{text[:40]!r} is not a valid date-time: {error}") from None

    return moment.timestamp() + int(fraction) / 10.0 ** len(fraction)


def _zone(text: str | None) -> timezone:
    if text is None or text in ("Z", "z"):
        return UTC

    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a valid UTC offset")

    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_http_date(text: str) -> float | None:
    """Parse an HTTP date (RFC 9110 section 5.6.7) into unix seconds, or None if invalid."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.timestamp()


def parse_retry_after(
    text: str | None, *, server_now: float | None, local_now: float
) -> float | None:
    """Turn a Retry-After value (seconds or an HTTP date) into seconds to wait, or None.

    An HTTP date is measured against the server's own clock when its Date header
    is known, so a skewed server clock does not stretch or cut the wait.
    """
    if not text:
        return None

    text = text.strip()
    # str.isdigit() also accepts characters such as '²', which float() rejects.
    if text.isascii() and text.isdigit():
        return float(text)

    moment = parse_http_date(text)
    if moment is None:
        return None

    reference = local_now if server_now is None else server_now
    return max(0.0, moment - reference)
