"""Errors raised while getting or refreshing a ticket, split by whether a retry can help.

Messages name the endpoint and the HTTP status or network failure, never a
token, secret or URL query (the customer refresh call carries its refresh
token in the query string).
"""

from __future__ import annotations


class TicketError(Exception):
    """Getting a ticket failed.

    `retry_after` is the server's requested wait and `code` Kibo's short error
    code (such as `invalid_token`), when the response had them.
    """

    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class InvalidTicketError(TicketError):
    """The server responded, but not with a usable ticket (bad JSON, missing fields, no expiry).

    `refresh_token` carries a rotated refresh token found in the unusable
    ticket: the old one is spent by then, so it must not be lost. It is never
    part of the message.
    """

    refresh_token: str | None = None


class CredentialsRejectedError(TicketError):
    """The client credentials or the customer password were rejected.

    Retrying is kept up (slowly) because a rotated secret or a fixed account
    can make the same call succeed later.
    """


class RefreshTokenRejectedError(TicketError):
    """The refresh token was rejected: expired, revoked or already used."""


class TicketFailedError(TicketError):
    """The ticket cannot be renewed without operator action, so retrying is pointless."""

    retryable = False
