"""Failure modes of the Kibo stand-in that tests switch on at runtime.

`Faults` only records what should go wrong. `sidecar.standin.StandIn` reads it
on every token-endpoint and protected-resource request.
"""

from __future__ import annotations

import http
import json
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedFailure:
    """One queued error response for a token endpoint."""

    status: int
    retry_after: str | None
    body: bytes
    content_type: str


@dataclass(frozen=True)
class GarbageResponse:
    """A 200 response whose body is not a ticket."""

    body: bytes
    content_type: str


# Garbage responses alternate between these two, so a client meets both a JSON
# object of the wrong shape and a body that is not JSON at all.
_GARBAGE_RESPONSES = (
    GarbageResponse(b'{"oops": true}', "application/json"),
    GarbageResponse(b"<html><body>Upstream maintenance</body></html>", "text/html"),
)


def _default_error_body(status: int) -> bytes:
    """Build a Kibo-style JSON error body for an injected failure."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    error_code = phrase.upper().replace(" ", "_").replace("-", "_")
    message = f"Injected failure: {status} {phrase}"

    return json.dumps({"errorCode": error_code, "message": message}).encode()


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")


class Faults:
    """Switchable failure modes of the stand-in.

    The token endpoints are oauth, refresh-ticket, customer login, customer
    refresh and anonymous shopper. A queued failure applies first, then a
    queued garbage response. Zero-lifetime tickets apply only to calls that
    would otherwise succeed. Each queue counts down one per call it affects.
    """

    def __init__(self) -> None:
        self.delay: float = 0.0
        """Seconds every token endpoint waits before responding."""

        self.protected_status: int | None = None
        """Status that protected resources return instead of their content, if set."""

        self.failed_calls: int = 0
        """Token-endpoint calls failed by `fail_next`."""

        self.garbage_calls: int = 0
        """Token-endpoint calls given a garbage body by `garbage_next`."""

        self._failures: deque[PlannedFailure] = deque()
        self._garbage_remaining = 0
        self._garbage_served = 0
        self._zero_lifetime_remaining = 0
        self._access_generation = 0
        self._customer_refresh_generation = 0
        self._app_refresh_generation = 0

    def fail_next(
        self,
        count: int,
        status: int,
        retry_after: str | None = None,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        """Queue `count` token-endpoint error responses with `status`.

        `retry_after` is sent verbatim as the Retry-After header, so it may be
        a number of seconds or an HTTP date. Without `body` the response body
        is a JSON object with `errorCode` and `message`. Calls to this method
        append to the queue, so `fail_next(1, 503)` followed by
        `fail_next(1, 429)` fails the next call with 503 and the one after
        with 429.
        """
        _check_count(count)
        if not 300 <= status <= 599:
            raise ValueError(
                f"status must be an HTTP error or redirect status (300-599), got {status!r}"
            )

        if body is None:
            body = _default_error_body(status)
            content_type = "application/json"
        failure = PlannedFailure(status, retry_after, body, content_type)
        self._failures.extend([failure] * count)

    def garbage_next(self, count: int) -> None:
        """Make the next `count` token-endpoint calls return 200 with a non-ticket body."""
        _check_count(count)
        self._garbage_remaining += count

    def zero_lifetime_next(self, count: int) -> None:
        """Make the next `count` issued tickets arrive already expired.

        An application ticket gets `expires_in: 0` and a customer ticket gets
        an `accessTokenExpiration` one second before the moment of issue.
        """
        _check_count(count)
        self._zero_lifetime_remaining += count

    def revoke_refresh_tokens(self, *, app: bool = False) -> None:
        """Invalidate every customer refresh token issued so far.

        With `app=True` the application refresh tokens are invalidated too,
        which leaves a fresh client-credentials call as the only way back.
        """
        self._customer_refresh_generation += 1
        if app:
            self._app_refresh_generation += 1

    def expire_access_tokens(self) -> None:
        """Treat every access token and JWT issued so far as expired.

        This simulates server-side revocation. Protected resources and the
        customer endpoints return 401 `invalid_token` for these tokens,
        whatever their stated expiry.
        """
        self._access_generation += 1

    def reset(self) -> None:
        """Clear queued faults, the delay and `protected_status`.

        Counters and revocations stay, because tokens revoked earlier remain
        revoked.
        """
        self.delay = 0.0
        self.protected_status = None
        self._failures.clear()
        self._garbage_remaining = 0
        self._zero_lifetime_remaining = 0

    @property
    def access_generation(self) -> int:
        """Revocation generation of access tokens. Tokens from an earlier one count as expired."""
        return self._access_generation

    @property
    def customer_refresh_generation(self) -> int:
        """Revocation generation of customer refresh tokens."""
        return self._customer_refresh_generation

    @property
    def app_refresh_generation(self) -> int:
        """Revocation generation of application refresh tokens."""
        return self._app_refresh_generation

    def take_failure(self) -> PlannedFailure | None:
        """Consume the next queued failure, counting it in `failed_calls`."""
        if not self._failures:
            return None

        self.failed_calls += 1
        return self._failures.popleft()

    def take_garbage(self) -> GarbageResponse | None:
        """Consume one queued garbage response, counting it in `garbage_calls`."""
        if self._garbage_remaining == 0:
            return None

        self._garbage_remaining -= 1
        self.garbage_calls += 1
        response = _GARBAGE_RESPONSES[self._garbage_served % len(_GARBAGE_RESPONSES)]
        self._garbage_served += 1
        return response

    def take_zero_lifetime(self) -> bool:
        """Consume one queued zero-lifetime ticket and return whether one was queued."""
        if self._zero_lifetime_remaining == 0:
            return False

        self._zero_lifetime_remaining -= 1
        return True
