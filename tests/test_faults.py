"""The fault matrix: each production fault a token sidecar meets, and its expected behaviour."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
import subprocess
import sys
import time
from email.utils import formatdate

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.proxy import HOP_BY_HOP, _escapes_base, _forward_headers, _response_headers
from sidecar.standin import CUSTOMER_REFRESH_CALL, OAUTH_CALL
from tests.conftest import CUSTOMER_ENV, REPO, customer_refresh_token, wait_for
from tests.test_refresh import hammer

CART = "/api/commerce/carts/current"
PRODUCTS = "/api/commerce/catalog/storefront/products"


def calls(stand_in, endpoint: str) -> list[float]:
    return [moment for name, moment in stand_in.stats_calls if name == endpoint]


def all_valid(sidecar) -> bool:
    return all(ticket.valid_token() is not None for ticket in sidecar.tickets)


async def get_json(
    client: aiohttp.ClientSession, url: str
) -> tuple[int, dict, CIMultiDictProxy[str]]:
    async with client.get(url) as response:
        return response.status, await response.json(content_type=None), response.headers


async def metric_value(client: aiohttp.ClientSession, sidecar, line_prefix: str) -> float:
    async with client.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# Token endpoint faults


async def test_token_endpoint_5xx_at_startup(stand_in_factory, sidecar_factory, client) -> None:
    """Four 5xx responses at start-up: backoff retries, /readyz 503 until a token, then ready."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.fail_next(4, 503)
    sidecar = await sidecar_factory(url)
    admin = f"http://127.0.0.1:{sidecar.admin_port}"

    status, body, _ = await get_json(client, admin + "/readyz")
    assert status == 503
    assert body["status"] == "not ready"

    await wait_for(lambda: all_valid(sidecar), what="a token after the failures")
    status, _, _ = await get_json(client, admin + "/readyz")
    assert status == 200
    moments = calls(stand_in, OAUTH_CALL)
    assert len(moments) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    # Backoff from 0.05 s: the retries are spread out, not a tight loop.
    assert all(gap >= 0.02 for gap in gaps), gaps
    failures = await metric_value(
        client, sidecar, 'kibo_sidecar_token_refreshes_total{outcome="failure",ticket="app"}'
    )
    assert failures == 4


async def test_token_endpoint_unreachable(sidecar_factory, recording_upstream, client) -> None:
    """With no token endpoint, the process stays up, /readyz is 503 and requests get 503."""
    with_closed_port = "http://127.0.0.1:9"
    sidecar = await sidecar_factory(with_closed_port, upstream_url=recording_upstream.url)
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    await wait_for(lambda: sidecar.tickets[0].consecutive_failures >= 2, what="two failed fetches")

    status, body, _ = await get_json(client, admin + "/livez")
    assert status == 200
    status, body, _ = await get_json(client, admin + "/readyz")
    assert status == 503
    assert "app" in body["reason"]
    started = time.monotonic()
    status, body, headers = await get_json(
        client, f"http://127.0.0.1:{sidecar.proxy_port}{PRODUCTS}"
    )
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert body["error"] == "no_token"
    # While the endpoint is failing the proxy responds at once instead of waiting.
    assert time.monotonic() - started < 1.0
    assert recording_upstream.requests == []


async def test_token_endpoint_slow(stand_in_factory, sidecar_factory, client) -> None:
    """A token endpoint slower than the timeout is retried until it responds in time."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.delay = 1.0
    sidecar = await sidecar_factory(url, SIDECAR_TOKEN_TIMEOUT_SECONDS="0.3")
    await wait_for(lambda: sidecar.tickets[0].consecutive_failures >= 1, what="a timed-out fetch")

    stand_in.faults.delay = 0.0
    await wait_for(lambda: all_valid(sidecar), what="a token once the endpoint is fast")


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_honoured(stand_in_factory, sidecar_factory, status: int) -> None:
    """Retry-After in seconds is waited out, even above the backoff cap of 0.5 s."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.fail_next(1, status, retry_after="2")
    sidecar = await sidecar_factory(url)

    await wait_for(lambda: all_valid(sidecar), what="a token after Retry-After")

    first, second = calls(stand_in, OAUTH_CALL)
    assert second - first >= 2.0


async def test_retry_after_http_date_on_server_clock(stand_in_factory, sidecar_factory) -> None:
    """Retry-After as an HTTP date is measured on the server's clock, an hour ahead here."""
    stand_in, url = await stand_in_factory(clock_offset=3600.0)
    stand_in.faults.fail_next(
        1, 503, retry_after=formatdate(stand_in.server_now() + 2, usegmt=True)
    )
    sidecar = await sidecar_factory(url)

    await wait_for(lambda: all_valid(sidecar), what="a token after Retry-After")

    first, second = calls(stand_in, OAUTH_CALL)
    # The date has one-second resolution, so at least one of the two seconds is certain.
    assert 1.0 <= second - first < 10.0


async def test_refresh_failure_keeps_serving(stand_in_factory, sidecar_factory, client) -> None:
    """Refreshes fail twice while the tokens are valid: no client request fails."""
    stand_in, url = await stand_in_factory(app_lifetime=6.0, customer_lifetime=6.0)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    stand_in.faults.fail_next(2, 503)

    _ok, failures = await hammer(
        client, f"http://127.0.0.1:{sidecar.proxy_port}{CART}", clients=20, seconds=6.0
    )

    assert failures == []
    assert stand_in.faults.failed_calls == 2
    assert stand_in.stats.expired_token_requests == 0
    assert stand_in.stats.customer_refreshes + stand_in.stats.app_ticket_calls >= 3


@pytest.mark.parametrize("status", [401, 400])
async def test_rejected_credentials_retried(stand_in_factory, sidecar_factory, status: int) -> None:
    """A 401 or 400 with a JSON error body is never stored as a ticket and is retried."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.fail_next(2, status, body=b'{"errorCode": "UNAUTHORIZED", "message": "no"}')
    sidecar = await sidecar_factory(url)

    await wait_for(lambda: all_valid(sidecar), what="a token after the rejections")

    assert len(calls(stand_in, OAUTH_CALL)) == 3


async def test_garbage_ticket_never_stored(stand_in_factory, sidecar_factory, client) -> None:
    """200 responses that are not tickets are rejected and retried with backoff, not stored."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.garbage_next(3)
    sidecar = await sidecar_factory(url, SIDECAR_RETRY_INITIAL_SECONDS="0.2")
    admin = f"http://127.0.0.1:{sidecar.admin_port}"

    status, _, _ = await get_json(client, admin + "/readyz")
    assert status == 503
    await wait_for(lambda: all_valid(sidecar), what="a real ticket")

    moments = calls(stand_in, OAUTH_CALL)
    assert len(moments) == 4
    assert moments[-1] - moments[0] >= 0.2


async def test_zero_lifetime_ticket_rejected(stand_in_factory, sidecar_factory) -> None:
    """expires_in of 0 and a past expiration are errors that are retried, never a refresh loop."""
    stand_in, url = await stand_in_factory()
    stand_in.faults.zero_lifetime_next(3)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)

    await wait_for(lambda: all_valid(sidecar), what="valid tickets")

    total_calls = len(stand_in.stats_calls)
    assert total_calls <= 3 + 2 + 1  # three rejected, one app ticket, one login, one retry slack


# Refresh tokens


async def test_rejected_refresh_token_logs_in(stand_in_factory, sidecar_factory) -> None:
    """A revoked refresh token leads to a fresh login when the password is known."""
    stand_in, url = await stand_in_factory(customer_lifetime=2.0)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    stand_in.faults.revoke_refresh_tokens()
    await wait_for(lambda: stand_in.stats.customer_logins == 2, what="a second login")

    assert sidecar.tickets[1].failure is None
    await wait_for(lambda: all_valid(sidecar), what="valid tokens after the login")


async def test_rejected_refresh_token_without_password(
    stand_in_factory, sidecar_factory, client, log_stream
) -> None:
    """Without a password a refused refresh token fails the ticket: /readyz 503, an error log."""
    stand_in, url = await stand_in_factory(customer_lifetime=2.0)
    refresh_token = await customer_refresh_token(url)
    sidecar = await sidecar_factory(url, KIBO_CUSTOMER_REFRESH_TOKEN=refresh_token)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    stand_in.faults.revoke_refresh_tokens()
    customer = sidecar.tickets[1]
    await wait_for(lambda: customer.failure is not None, what="the customer ticket to fail")

    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.admin_port}/readyz")
    assert status == 503
    assert "customer ticket has failed" in body["reason"]
    assert "KIBO_CUSTOMER_REFRESH_TOKEN" in body["reason"]
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    failed = [event for event in events if event["event"] == "ticket.failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "error"
    # No retry loop: one rejected refresh, then one check with a new application token.
    attempts = len(calls(stand_in, CUSTOMER_REFRESH_CALL))
    await wait_for(
        lambda: customer.valid_token() is None, timeout=5, what="the old token to expire"
    )
    assert len(calls(stand_in, CUSTOMER_REFRESH_CALL)) == attempts
    status, body, headers = await get_json(client, f"http://127.0.0.1:{sidecar.proxy_port}{CART}")
    assert status == 503
    assert "Retry-After" in headers


async def test_unusable_ticket_keeps_refresh_token(stand_in_factory, sidecar_factory) -> None:
    """A refresh that returns an expired ticket still rotates the refresh token, which is kept."""
    stand_in, url = await stand_in_factory(customer_lifetime=2.0)
    refresh_token = await customer_refresh_token(url)
    sidecar = await sidecar_factory(url, KIBO_CUSTOMER_REFRESH_TOKEN=refresh_token)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    refreshes = stand_in.stats.customer_refreshes

    stand_in.faults.zero_lifetime_next(1)
    await wait_for(
        lambda: stand_in.stats.customer_refreshes >= refreshes + 3, what="refreshes after it"
    )

    assert sidecar.tickets[1].failure is None
    assert stand_in.stats.refresh_rejected == 0


async def test_rejected_password_not_repeated(stand_in_factory, sidecar_factory, client) -> None:
    """A rejected shopper password fails the ticket after one login, to spare the account."""
    stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, KIBO_CUSTOMER_USERNAME="shopper@example.test", KIBO_CUSTOMER_PASSWORD="wrong"
    )
    customer = sidecar.tickets[1]
    await wait_for(lambda: customer.failure is not None, what="the customer ticket to fail")

    assert "KIBO_CUSTOMER_PASSWORD" in customer.failure
    assert len(calls(stand_in, "customer-login")) == 1
    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.admin_port}/readyz")
    assert status == 503
    assert "wrong" not in body["reason"]


async def test_state_file_resumes_after_restart(
    stand_in_factory, sidecar_factory, tmp_path
) -> None:
    """A restarted sidecar resumes from the state file's newest refresh token."""
    stand_in, url = await stand_in_factory(customer_lifetime=1.5)
    initial = await customer_refresh_token(url)
    state_file = tmp_path / "state.json"
    env = {"KIBO_CUSTOMER_REFRESH_TOKEN": initial, "SIDECAR_STATE_FILE": str(state_file)}
    first = await sidecar_factory(url, **env)
    await wait_for(lambda: stand_in.stats.customer_refreshes >= 2, what="rotations")
    await first.stop()

    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    assert initial not in state_file.read_text()
    rejected_before = stand_in.stats.refresh_rejected

    second = await sidecar_factory(url, **env)
    await wait_for(lambda: all_valid(second), what="the restarted sidecar's tokens")
    assert stand_in.stats.refresh_rejected == rejected_before
    assert second.tickets[1].failure is None
    assert not list(tmp_path.glob(".sidecar-state-*")), "temporary files left behind"


async def test_stale_state_file_falls_back_to_env(
    stand_in_factory, sidecar_factory, tmp_path, log_stream
) -> None:
    """A state file left from an old session does not block a new KIBO_CUSTOMER_REFRESH_TOKEN."""
    _stand_in, url = await stand_in_factory()
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"version": 1, "customer_refresh_token": "long-dead-token"}))
    fresh = await customer_refresh_token(url)

    sidecar = await sidecar_factory(
        url, KIBO_CUSTOMER_REFRESH_TOKEN=fresh, SIDECAR_STATE_FILE=str(state_file)
    )

    await wait_for(lambda: all_valid(sidecar), what="tokens from the environment's refresh token")
    assert "long-dead-token" not in state_file.read_text()
    assert "long-dead-token" not in log_stream.getvalue()


async def test_restart_without_state_file_needs_new_token(
    stand_in_factory, sidecar_factory
) -> None:
    """Without a state file a used single-use refresh token cannot start a second sidecar."""
    stand_in, url = await stand_in_factory(customer_lifetime=1.5)
    initial = await customer_refresh_token(url)
    first = await sidecar_factory(url, KIBO_CUSTOMER_REFRESH_TOKEN=initial)
    await wait_for(lambda: stand_in.stats.customer_refreshes >= 1, what="a rotation")
    await first.stop()

    second = await sidecar_factory(url, KIBO_CUSTOMER_REFRESH_TOKEN=initial)
    await wait_for(lambda: second.tickets[1].failure is not None, what="the stale token rejected")


# Upstream faults


async def test_invalid_token_refreshes_and_replays(
    stand_in_factory, sidecar_factory, client
) -> None:
    """Kibo revokes the tokens: the next request is replayed once with new ones and succeeds."""
    stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    fetches = len(calls(stand_in, OAUTH_CALL))

    stand_in.faults.expire_access_tokens()
    async with client.get(f"http://127.0.0.1:{sidecar.proxy_port}{CART}") as response:
        assert response.status == 200

    assert len(calls(stand_in, OAUTH_CALL)) == fetches + 1
    assert stand_in.stats.expired_token_requests == 1
    assert await metric_value(client, sidecar, "kibo_sidecar_proxy_replays_total") == 1


async def test_invalid_token_crowd_one_refresh(stand_in_factory, sidecar_factory, client) -> None:
    """Thirty requests hit the revoked token at once: one refresh per ticket, all served."""
    stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    app_fetches = len(calls(stand_in, OAUTH_CALL))
    customer_refreshes = len(calls(stand_in, CUSTOMER_REFRESH_CALL))

    stand_in.faults.expire_access_tokens()

    async def one() -> int:
        async with client.get(f"http://127.0.0.1:{sidecar.proxy_port}{CART}") as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(one() for _ in range(30)))
    assert statuses == [200] * 30
    assert len(calls(stand_in, OAUTH_CALL)) == app_fetches + 1
    assert len(calls(stand_in, CUSTOMER_REFRESH_CALL)) == customer_refreshes + 1


async def test_replay_at_most_once(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """An upstream that always returns invalid_token gets the request twice, the app the 401."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, upstream_url=recording_upstream.url)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    async with client.post(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x?always401=1", data=b'{"small": true}'
    ) as response:
        body = await response.json()
        assert response.status == 401
    assert body == {"message": "invalid_token"}
    assert len(recording_upstream.requests) == 2
    assert recording_upstream.requests[0].body_sha256 == recording_upstream.requests[1].body_sha256


async def test_invalid_token_storm_bounded(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """A resource that rejects even fresh tokens does not cost a Kibo call per request."""
    stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_REPLAY_MIN_TOKEN_AGE_SECONDS="30"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    for _ in range(20):
        async with client.get(
            f"http://127.0.0.1:{sidecar.proxy_port}/api/x?always401=1"
        ) as response:
            assert response.status == 401

    assert len(calls(stand_in, OAUTH_CALL)) == 1
    assert len(recording_upstream.requests) == 20


async def test_large_body_401_passed_on(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """A body over the replay limit is streamed once; the 401 goes to the app unreplayed."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_REPLAY_BODY_LIMIT_BYTES="1024"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    async with client.post(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x?always401=1", data=b"x" * 4096
    ) as response:
        assert response.status == 401
    assert len(recording_upstream.requests) == 1
    assert recording_upstream.requests[0].body_size == 4096


async def test_upstream_unreachable_502(
    stand_in_factory, sidecar_factory, client, log_stream
) -> None:
    """A refused upstream connection gives a quick 502 with a JSON body; the sidecar stays ready."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, upstream_url="http://127.0.0.1:9")
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    started = time.monotonic()
    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.proxy_port}/api/x")

    assert status == 502
    assert body["error"] == "upstream_unreachable"
    assert time.monotonic() - started < 2.0
    for _ in range(5):
        await get_json(client, f"http://127.0.0.1:{sidecar.proxy_port}/api/x")

    def failure_lines() -> list[dict[str, object]]:
        events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
        return [event for event in events if event["event"] == "proxy.upstream_failed"]

    def accounted() -> int:
        # A line reports one failure; a closing line reports the ones its window dropped.
        return sum(int(event.get("suppressed", 1)) for event in failure_lines())

    # Every failure is reported: one line per second, the rest in its closing count.
    await wait_for(lambda: accounted() == 6, what="all six failures in the log")
    assert len(failure_lines()) < 6
    assert all(event["kind"] == "connect" for event in failure_lines())
    status, _, _ = await get_json(client, f"http://127.0.0.1:{sidecar.admin_port}/readyz")
    assert status == 200


async def test_upstream_reset_502(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """An upstream that resets the connection gives 502 with a JSON body."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, upstream_url=recording_upstream.url)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.proxy_port}/api/x?reset=1")

    assert status == 502
    assert body["error"] == "upstream_failed"


async def test_upstream_timeout_504(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """An upstream slower than the read timeout gives 504 quickly."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS="0.3"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    started = time.monotonic()
    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.proxy_port}/api/x?sleep=3")

    assert status == 504
    assert body["error"] == "upstream_timeout"
    assert time.monotonic() - started < 2.0


async def test_full_pool_gives_502(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """No free upstream connection within the connect timeout gives 502, not 504."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url,
        upstream_url=recording_upstream.url,
        SIDECAR_UPSTREAM_POOL_SIZE="1",
        SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS="0.3",
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}/api/x"

    holder = asyncio.create_task(get_json(client, proxy + "?sleep=2"))
    await wait_for(lambda: len(recording_upstream.requests) == 1, what="the first request upstream")
    status, body, _ = await get_json(client, proxy)

    assert status == 502
    assert body["error"] == "upstream_unreachable"
    assert (await holder)[0] == 200


async def test_slow_body_gets_current_token(
    stand_in_factory, sidecar_factory, recording_upstream
) -> None:
    """A body that arrives after the token expired is sent with the newer token."""
    _stand_in, url = await stand_in_factory(app_lifetime=2.0)
    sidecar = await sidecar_factory(url, upstream_url=recording_upstream.url)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    app = sidecar.tickets[0]
    first = app.token

    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    await wait_for(lambda: app.token is not first, what="the application token to be refreshed")
    await wait_for(lambda: first.expires_at < time.monotonic(), what="the first token to expire")
    writer.write(b"hello")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()

    assert answer.startswith(b"HTTP/1.1 200")
    sent = recording_upstream.requests[-1].header("Authorization")
    assert sent == [f"Bearer {app.token.access_token}"]
    assert sent != [f"Bearer {first.access_token}"]


async def test_client_disconnect_cancels_upstream(
    stand_in_factory, sidecar_factory, recording_upstream
) -> None:
    """A client that leaves mid-stream ends the upstream request; nothing is left in flight."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, upstream_url=recording_upstream.url)
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(b"GET /api/x?trickle=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.read(4096)
    await wait_for(lambda: recording_upstream.streams_open == 1, what="the upstream stream")
    writer.transport.abort()

    await wait_for(lambda: recording_upstream.streams_open == 0, what="the upstream stream to end")
    await wait_for(lambda: not sidecar._proxy._active, what="no proxy handler left")
    connector = sidecar._sessions[1].connector
    assert connector is not None
    await wait_for(lambda: not connector._acquired, what="no connection held")


async def test_drain_readyz_off_requests_served(stand_in_factory, sidecar_factory, client) -> None:
    """On stop, /readyz turns 503 at once, requests are served during the drain delay, then rejected."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, SIDECAR_DRAIN_DELAY_SECONDS="1.5")
    await wait_for(lambda: all_valid(sidecar), what="first tokens")
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}{PRODUCTS}"

    stopping = asyncio.create_task(sidecar.stop())
    await wait_for(lambda: sidecar.draining, what="draining")
    status, body, _ = await get_json(client, f"http://127.0.0.1:{sidecar.admin_port}/readyz")
    assert status == 503
    assert body["reason"] == "shutting down"
    async with client.get(proxy) as response:
        assert response.status == 200

    await stopping
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(proxy) as response:
                await response.read()


# Misuse


async def test_body_over_limit_rejected(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """A declared body over SIDECAR_MAX_BODY_BYTES gets 413 and is not forwarded."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_MAX_BODY_BYTES="1000"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    async with client.post(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x", data=b"x" * 2000
    ) as response:
        body = await response.json()
        assert response.status == 413
    assert body["error"] == "body_too_large"
    assert recording_upstream.requests == []


async def test_chunked_body_over_limit_cut(
    stand_in_factory, sidecar_factory, recording_upstream, client
) -> None:
    """A chunked body that passes SIDECAR_MAX_BODY_BYTES is cut off, never delivered whole."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_MAX_BODY_BYTES="100000"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    async def body():
        for _ in range(20):
            yield b"y" * 65536

    async with client.post(f"http://127.0.0.1:{sidecar.proxy_port}/api/x", data=body()) as response:
        answer = await response.json()
        assert response.status == 413
    assert answer["error"] == "body_too_large"
    # The upstream may have received the start of the body, never all of it.
    assert all(request.body_size < 20 * 65536 for request in recording_upstream.requests)


async def test_oversized_header_rejected(
    stand_in_factory, sidecar_factory, recording_upstream, client, log_stream
) -> None:
    """A header over SIDECAR_MAX_HEADER_BYTES is rejected with a 4xx before forwarding."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(
        url, upstream_url=recording_upstream.url, SIDECAR_MAX_HEADER_BYTES="2048"
    )
    await wait_for(lambda: all_valid(sidecar), what="first tokens")

    async with client.get(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x",
        headers={"Authorization": "Bearer eyJsecret" + "z" * 4096},
    ) as response:
        body = await response.json()
        assert 400 <= response.status < 500
    assert body["error"] == "bad_request"
    assert "SIDECAR_MAX_HEADER_BYTES" in body["message"]
    assert recording_upstream.requests == []
    output = log_stream.getvalue()
    assert "proxy.bad_request" in output
    assert "eyJsecret" not in output


async def test_slow_client_connection_closed(stand_in_factory, sidecar_factory) -> None:
    """A client that never finishes its request head is disconnected after the idle timeout."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url, SIDECAR_CLIENT_IDLE_TIMEOUT_SECONDS="1")

    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    started = time.monotonic()
    leftover = await asyncio.wait_for(reader.read(), 10)

    assert leftover == b""
    assert time.monotonic() - started < 5
    writer.close()


async def test_exposed_listener_warns(stand_in_factory, sidecar_factory, log_stream) -> None:
    """Binding the proxy beyond loopback logs a warning naming the risk."""
    _stand_in, url = await stand_in_factory()
    await sidecar_factory(url, SIDECAR_LISTEN="0.0.0.0:0")

    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    warning = next(event for event in events if event["event"] == "proxy.exposed")
    assert warning["level"] == "warning"
    assert "configured Kibo identity" in warning["detail"]


async def test_full_run_output_has_no_secrets(stand_in_factory) -> None:
    """All output of a `python -m sidecar` run with failures and rotations contains no secret."""
    stand_in, url = await stand_in_factory(app_lifetime=3.0, customer_lifetime=1.5)
    stand_in.faults.fail_next(2, 503, retry_after="0")
    stand_in.faults.garbage_next(1)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": REPO,
        "KIBO_API_URL": url,
        "KIBO_AUTH_URL": url,
        "KIBO_CLIENT_ID": "demo-client",
        "KIBO_CLIENT_SECRET": "demo-secret",
        "SIDECAR_LISTEN": "127.0.0.1:0",
        "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
        "SIDECAR_RETRY_INITIAL_SECONDS": "0.05",
        "LOG_LEVEL": "debug",
        **CUSTOMER_ENV,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: stand_in.stats.customer_refreshes >= 2, what="refreshes")
        stand_in.faults.revoke_refresh_tokens()
        await wait_for(lambda: stand_in.stats.customer_logins >= 2, what="a login after revocation")
    finally:
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 30)

    text = output.decode()
    assert process.returncode == 0, text
    assert "ticket.refresh_failed" in text
    assert "ticket.refresh_token_rejected" in text
    for secret in stand_in.issued_secrets:
        assert secret not in text
    for secret in ("demo-secret", "demo-password"):
        assert secret not in text


def test_object_reprs_hide_secrets() -> None:
    """The repr of settings and fetchers shows no credential."""
    from sidecar.config import load_settings

    settings = load_settings(
        {
            "KIBO_API_URL": "https://t1.example.test",
            "KIBO_CLIENT_ID": "id-value-123",
            "KIBO_CLIENT_SECRET": "secret-value-456",
            "KIBO_CUSTOMER_REFRESH_TOKEN": "refresh-value-789",
        }
    )
    text = repr(settings) + str(settings)

    for secret in ("id-value-123", "secret-value-456", "refresh-value-789"):
        assert secret not in text


# Header handling under arbitrary input

header_names = st.one_of(
    st.sampled_from([*sorted(HOP_BY_HOP), "Host", "Authorization", "X-Vol-Tenant", "Accept"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(st.lists(st.tuples(header_names, header_values), max_size=20))
def test_header_filter_fuzz(pairs: list[tuple[str, str]]) -> None:
    """Any header list filters to one without hop-by-hop, connection-named or replaced headers."""
    incoming = CIMultiDictProxy(CIMultiDict(pairs))

    forwarded = _forward_headers(incoming)
    answered = _response_headers(incoming)

    named = {
        token.strip().lower()
        for value in incoming.getall("Connection", [])
        for token in value.split(",")
    }
    for name in forwarded:
        assert name.lower() not in HOP_BY_HOP
        assert name.lower() not in named
        assert name.lower() not in ("host", "authorization", "x-vol-user-claims")
    for name in answered:
        assert name.lower() not in HOP_BY_HOP
        assert name.lower() not in named


@given(st.text(max_size=60))
def test_path_check_fuzz(path: str) -> None:
    """The dot-segment check returns a bool for any input and catches every decoded '..'."""
    from urllib.parse import unquote

    escapes = _escapes_base(path)

    assert isinstance(escapes, bool)
    if ".." in unquote(path).replace("\\", "/").split("/"):
        assert escapes
