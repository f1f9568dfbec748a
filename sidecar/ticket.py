"""A ticket and its refresh schedule: one unit that can exist many times.

`ManagedTicket` owns one token, refreshes it in the background ahead of its
expiry, and hands out the current token without waiting while it is valid.
Every refresh first checks whether another caller already replaced the token,
then joins the fetch in flight if there is one, so a crowd of callers causes a
single fetch.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from .errors import TicketError
from .metrics import Metrics
from .schedule import MAX_RETRY_AFTER_SECONDS, backoff_delay, refresh_delay
from .token import Token

log = structlog.get_logger("sidecar.ticket")

# A token is treated as expired this long before its expiry, so a request does
# not leave with a token that dies on the way. Capped at a tenth of the lifetime
# so very short tokens stay usable.
EXPIRY_GUARD_SECONDS = 1.0


class Clock(Protocol):
    """The two clocks a ticket reads: monotonic for timing, wall for reporting."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


@dataclass(frozen=True, kw_only=True)
class RefreshPolicy:
    """When to refresh and how to retry; see `sidecar.schedule` for the rules."""

    fraction: float = 0.75
    margin: float = 300.0
    jitter: float = 0.1
    retry_initial: float = 1.0
    retry_max: float = 60.0


TokenFetcher = Callable[[], Awaitable[Token]]


class ManagedTicket:
    """One token kept fresh by a background task.

    `fetch` gets a new token (a login or a refresh, the fetcher decides) and
    raises TicketError on failure; a non-retryable error marks the ticket failed.
    """

    def __init__(
        self,
        name: str,
        fetch: TokenFetcher,
        *,
        policy: RefreshPolicy,
        metrics: Metrics,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._policy = policy
        self._metrics = metrics
        self._clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._token: Token | None = None
        self._draw = 0.0
        self._in_flight: asyncio.Task[Token] | None = None
        self._changed = asyncio.Event()
        self._valid = asyncio.Event()
        self.failure: str | None = None
        self.consecutive_failures = 0
        metrics.ticket_created(name)

    def __repr__(self) -> str:
        return f"ManagedTicket({self.name!r}, valid={self.valid_token() is not None})"

    @property
    def token(self) -> Token | None:
        """The newest token, which may have expired."""
        return self._token

    def valid_token(self) -> Token | None:
        """Return the current token if it is still usable, else None. Never waits."""
        token = self._token
        if token is None:
            return None

        guard = min(EXPIRY_GUARD_SECONDS, token.lifetime / 10)
        if self._clock.monotonic() >= token.expires_at - guard:
            if self._valid.is_set():
                self._valid.clear()
                self._metrics.token_valid.labels(ticket=self.name).set(0)
            return None

        return token

    async def wait_valid(self, timeout: float) -> Token | None:
        """Return a usable token, waiting up to `timeout` seconds for one to arrive."""
        token = self.valid_token()
        if token is not None or timeout <= 0 or self.failure is not None:
            return token
        if self.consecutive_failures:
            # The token endpoint is failing right now, so a wait would most likely
            # end the same way. A quick 503 serves the caller better.
            return None

        deadline = self._clock.monotonic() + timeout
        while token is None:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._valid.wait(), remaining)
            except TimeoutError:
                return None
            token = self.valid_token()
            if token is None:
                # The event was set for a token that has expired since; wait for the next.
                await asyncio.sleep(0)

        return token

    async def refresh(self, stale: Token | None) -> Token:
        """Replace `stale` with a new token, unless another caller already did.

        Callers that arrive while a fetch is running share it. The fetch runs in
        its own task, so a caller that is cancelled (a client that disconnects,
        a shutdown) does not cancel it: a rotated refresh token is never dropped
        half-way. Raises TicketError when the fetch fails; the current token
        stays in use.
        """
        current = self._token
        if current is not stale and self.valid_token() is not None:
            assert current is not None
            return current

        fetch = self._in_flight
        if fetch is None:
            fetch = asyncio.create_task(self._fetch_and_store(current), name=f"fetch-{self.name}")
            fetch.add_done_callback(self._fetch_done)
            self._in_flight = fetch

        return await asyncio.shield(fetch)

    async def refresh_rejected(self, rejected: Token, *, min_age: float) -> Token | None:
        """Return a token to replay with after the upstream rejected `rejected`, or None.

        A newer token is returned as it is. The rejected token is replaced only if
        it is at least `min_age` seconds old: a brand-new token that is rejected
        points at a permission problem, and refreshing for every such request
        would make each one cost a call to Kibo.
        """
        current = self._token
        if current is not rejected:
            return self.valid_token()
        if self._clock.monotonic() - rejected.obtained_at < min_age:
            return None

        return await self.refresh(rejected)

    async def wait_idle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a running fetch to finish, so its result is kept."""
        fetch = self._in_flight
        if fetch is not None:
            await asyncio.wait([fetch], timeout=timeout)

    def _fetch_done(self, fetch: asyncio.Task[Token]) -> None:
        if self._in_flight is fetch:
            self._in_flight = None
        if not fetch.cancelled():
            # Retrieved here so that a failure no caller awaited is not reported as lost.
            fetch.exception()

    async def _fetch_and_store(self, current: Token | None) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._fetch()
        except TicketError as error:
            self._metrics.token_refreshes.labels(ticket=self.name, outcome="failure").inc()
            if not error.retryable:
                self.failure = str(error)
            raise
        except Exception as error:
            # A bug must not end the refresh loop for good. Only the type is kept:
            # the message of an unknown error could quote a token or a URL query.
            self._metrics.token_refreshes.labels(ticket=self.name, outcome="failure").inc()
            frame = traceback.extract_tb(error.__traceback__)[-1]
            log.error(
                "ticket.fetch_crashed",
                ticket=self.name,
                error=type(error).__name__,
                where=f"{os.path.basename(frame.filename)}:{frame.lineno}",
            )
            raise TicketError(f"unexpected {type(error).__name__} while fetching") from None

        self._store(token)
        self._metrics.token_refreshes.labels(ticket=self.name, outcome="success").inc()
        finished = self._clock.monotonic()
        fields = {
            "ticket": self.name,
            "expires_in_s": round(token.lifetime, 3),
            "next_refresh_in_s": round(self._next_refresh_delay(), 3),
            "duration_s": round(finished - started, 3),
        }
        if current is None:
            log.info("ticket.fetched", **fields)
        else:
            # How much life the replaced token still had: positive means refreshed ahead.
            left = current.expires_at - finished
            log.info("ticket.refreshed", previous_expires_in_s=round(left, 3), **fields)
        return token

    async def run(self) -> None:
        """Keep the token fresh until cancelled or until the ticket fails for good."""
        retry_at = 0.0

        while self.failure is None:
            now = self._clock.monotonic()
            failures = self.consecutive_failures
            delay = retry_at - now if failures else self._next_refresh_delay()
            if delay > 0:
                await self._wait_for_change(delay)
                if self._changed.is_set():
                    # Someone else refreshed (a replay after invalid_token): start a new round.
                    self._changed.clear()
                    self.consecutive_failures = 0
                continue

            try:
                await self.refresh(self._token)
            except TicketError as error:
                if not error.retryable:
                    log.error("ticket.failed", ticket=self.name, error=str(error))
                    return
                failures += 1
                self.consecutive_failures = failures
                wait = self._retry_delay(failures, error)
                retry_at = self._clock.monotonic() + wait
                log.warning(
                    "ticket.refresh_failed",
                    ticket=self.name,
                    error=str(error),
                    attempt=failures,
                    delay_s=round(wait, 3),
                    has_valid_token=self.valid_token() is not None,
                )
            else:
                self.consecutive_failures = 0
                self._changed.clear()

    def _store(self, token: Token) -> None:
        self._token = token
        self._draw = self._rng.random()
        self.failure = None
        self.consecutive_failures = 0
        self._valid.set()
        self._changed.set()
        self._metrics.token_expiry.labels(ticket=self.name).set(token.expires_at_wall)
        self._metrics.token_valid.labels(ticket=self.name).set(1)

    def _next_refresh_delay(self) -> float:
        token = self._token
        if token is None:
            return 0.0

        policy = self._policy
        return refresh_delay(
            lifetime=token.lifetime,
            remaining=token.expires_at - self._clock.monotonic(),
            fraction=policy.fraction,
            margin=policy.margin,
            jitter=policy.jitter,
            draw=self._draw,
        )

    def _retry_delay(self, attempt: int, error: TicketError) -> float:
        policy = self._policy
        delay = backoff_delay(
            attempt=attempt,
            initial=policy.retry_initial,
            maximum=policy.retry_max,
            draw=self._rng.random(),
            retry_after=error.retry_after,
        )

        # While a token is still valid, retry well before it runs out rather than
        # sleeping through its expiry; a server's Retry-After still wins.
        token = self.valid_token()
        if token is not None:
            half_left = (token.expires_at - self._clock.monotonic()) / 2
            retry_after = min(error.retry_after or 0.0, MAX_RETRY_AFTER_SECONDS)
            delay = min(delay, max(half_left, policy.retry_initial / 2, retry_after))

        return delay

    async def _wait_for_change(self, delay: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), delay)
        except TimeoutError:
            pass
