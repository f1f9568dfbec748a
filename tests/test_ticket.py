"""ManagedTicket on its own, with a scripted fetcher in place of Kibo."""

from __future__ import annotations

import asyncio
import contextlib
import random

from sidecar.metrics import Metrics
from sidecar.ticket import ManagedTicket, RefreshPolicy, SystemClock
from sidecar.token import Token
from tests.conftest import wait_for

SECRET_IN_MESSAGE = "eyJhbGciOiJIUzI1NiJ9.secret-looking-token"


def make_token(lifetime: float) -> Token:
    now = SystemClock().monotonic()
    return Token(
        access_token="token",
        lifetime=lifetime,
        obtained_at=now,
        expires_at=now + lifetime,
        expires_at_wall=0.0,
    )


async def test_unexpected_error_retried(log_stream) -> None:
    """A fetcher bug is logged by type only and retried; the loop keeps running."""
    attempts = 0

    async def fetch() -> Token:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ValueError(SECRET_IN_MESSAGE)
        return make_token(60.0)

    ticket = ManagedTicket(
        "app",
        fetch,
        policy=RefreshPolicy(retry_initial=0.01, retry_max=0.05),
        metrics=Metrics(),
        rng=random.Random(7),
    )
    task = asyncio.create_task(ticket.run())
    try:
        await wait_for(lambda: ticket.valid_token() is not None, what="a token after the crash")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    output = log_stream.getvalue()
    assert attempts == 2
    assert "ticket.fetch_crashed" in output
    assert "ValueError" in output
    assert SECRET_IN_MESSAGE not in output


async def test_concurrent_refresh_single_fetch() -> None:
    """Fifty callers refreshing the same stale token cause one fetch."""
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.05)
        return make_token(60.0)

    ticket = ManagedTicket("app", fetch, policy=RefreshPolicy(), metrics=Metrics())
    first = await ticket.refresh(None)

    results = await asyncio.gather(*(ticket.refresh(first) for _ in range(50)))

    assert fetches == 2
    assert len({id(token) for token in results}) == 1
    assert results[0] is not first


async def test_cancelled_caller_keeps_fetch() -> None:
    """A caller cancelled mid-refresh does not cancel the fetch; its token is stored."""
    release = asyncio.Event()
    finished = False

    async def fetch() -> Token:
        nonlocal finished
        await release.wait()
        finished = True
        return make_token(60.0)

    ticket = ManagedTicket("customer", fetch, policy=RefreshPolicy(), metrics=Metrics())
    caller = asyncio.create_task(ticket.refresh(None))
    await asyncio.sleep(0)
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller

    release.set()
    await ticket.wait_idle(5.0)

    assert finished
    assert ticket.valid_token() is not None


async def test_young_rejected_token_not_refreshed() -> None:
    """A token rejected within min_age of its fetch is not refreshed; an older one is."""
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        return make_token(60.0)

    ticket = ManagedTicket("app", fetch, policy=RefreshPolicy(), metrics=Metrics())
    first = await ticket.refresh(None)

    assert await ticket.refresh_rejected(first, min_age=30.0) is None
    assert fetches == 1
    replacement = await ticket.refresh_rejected(first, min_age=0.0)
    assert replacement is not None
    assert replacement is not first
    assert fetches == 2
    # A request that used the old token gets the newer one without another fetch.
    assert await ticket.refresh_rejected(first, min_age=0.0) is replacement
    assert fetches == 2
