"""Payload pieces of the Kibo stand-in: .NET-style dates and placeholder records.

Nothing here keeps state. `sidecar.standin` builds tickets and responses from it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

DATE_STYLES = ("utc", "naive", "offset")
"""Zone forms of a .NET date-time: `Z`, none (meaning UTC), or a numeric offset."""

OFFSET_STYLE_ZONE = timezone(timedelta(hours=2))
"""Zone used by the "offset" date style."""


def format_kibo_datetime(instant: float, style: str) -> str:
    """Format a POSIX time the way a .NET service does, with seven fractional digits.

    The fraction is truncated to 100 ns, so the text never names a later
    instant than `instant`. `style` is one of DATE_STYLES.
    """
    if style not in DATE_STYLES:
        raise ValueError(f"style must be one of {', '.join(DATE_STYLES)}, got {style!r}")

    whole_seconds = math.floor(instant)
    ticks = int((instant - whole_seconds) * 10_000_000)
    moment = datetime.fromtimestamp(whole_seconds, tz=UTC)
    if style == "offset":
        moment = moment.astimezone(OFFSET_STYLE_ZONE)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks:07d}"

    if style == "utc":
        return text + "Z"
    if style == "naive":
        return text
    zone = moment.strftime("%z")  # such as +0200
    return f"{text}{zone[:3]}:{zone[3:]}"


def select_response_fields(ticket: dict[str, Any], response_fields: str) -> dict[str, Any]:
    """Keep only the top-level fields named in a Kibo `responseFields` list.

    A parenthesised sub-selection such as `customerAccount(id,userName)` keeps
    the whole field, because the stand-in does not filter nested objects.
    """
    names: list[str] = []
    current = ""
    depth = 0
    for char in response_fields + ",":
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            names.append(current.strip())
            current = ""
            continue
        if depth == 0 and char != ")":
            current += char

    selected_names = {name for name in names if name}
    return {key: value for key, value in ticket.items() if key in selected_names}


def sample_customer_account(user_id: str, account_id: int, username: str) -> dict[str, Any]:
    """Build a customer account shaped like Kibo's, with placeholder values.

    Real accounts carry many more fields. Clients need only the token fields
    of a ticket and must ignore the rest.
    """
    audit = {"createBy": "api", "createDate": "2025-03-01T10:00:00Z"}
    contact = {
        "accountId": account_id,
        "address": {
            "address1": "100 Example Street",
            "cityOrTown": "Springfield",
            "countryCode": "US",
        },
        "auditInfo": audit,
        "email": username,
        "firstName": "Pat",
        "id": 3,
        "lastNameOrSurname": "Example",
        "types": [{"isPrimary": True, "name": "Billing"}],
    }
    return {
        "accountType": "B2C",
        "auditInfo": audit,
        "commerceSummary": {
            "orderCount": 7,
            "totalOrderAmount": {"amount": 412.5, "currencyCode": "USD"},
        },
        "contacts": [contact],
        "emailAddress": username,
        "firstName": "Pat",
        "id": account_id,
        "isActive": True,
        "isAnonymous": False,
        "lastName": "Example",
        "notes": [],
        "segments": [{"code": "VIP", "id": 4, "name": "VIP"}],
        "userId": user_id,
        "userName": username,
    }


def _sample_product(code: str, name: str, price: float) -> dict[str, Any]:
    return {"productCode": code, "content": {"productName": name}, "price": {"price": price}}


SAMPLE_PRODUCTS = [
    _sample_product("STANDIN-MUG", "Example mug", 12.0),
    _sample_product("STANDIN-TEE", "Example T-shirt", 24.5),
    _sample_product("STANDIN-CAP", "Example cap", 15.0),
]
