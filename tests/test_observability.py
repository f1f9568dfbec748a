"""Metrics and logs: every documented series present with sensible values, no secret anywhere."""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from tests.conftest import CUSTOMER_ENV, wait_for

CART = "/api/commerce/carts/current"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


async def test_metrics_present_and_sensible(stand_in_factory, sidecar_factory, client) -> None:
    """Expiry gauges are in the future, refreshes and requests are counted, durations observed."""
    _stand_in, url = await stand_in_factory(app_lifetime=60, customer_lifetime=30)
    sidecar = await sidecar_factory(url, **CUSTOMER_ENV)
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    for _ in range(3):
        async with client.get(proxy + CART) as response:
            assert response.status == 200
    async with client.get(proxy + "/api/does/not/exist") as response:
        assert response.status == 404
    async with client.get(URL(proxy + "/api/../escape", encoded=True)) as response:
        assert response.status == 400

    values = {}

    async def scraped_all() -> bool:
        nonlocal values
        async with client.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            values = samples(await response.text())
        # A request is counted when its handler returns, just after the client has the response.
        return values.get(("kibo_sidecar_proxy_request_duration_seconds_count", ())) == 5

    await wait_for(scraped_all, what="five requests counted")

    now = time.time()
    for ticket, lifetime in (("app", 60), ("customer", 30)):
        expiry = values[("kibo_sidecar_token_expiry_timestamp_seconds", (("ticket", ticket),))]
        assert now < expiry <= now + lifetime + 1, ticket
        refreshes = (("outcome", "success"), ("ticket", ticket))
        assert values[("kibo_sidecar_token_refreshes_total", refreshes)] == 1
        failures = (("outcome", "failure"), ("ticket", ticket))
        assert values[("kibo_sidecar_token_refreshes_total", failures)] == 0
        assert values[("kibo_sidecar_token_valid", (("ticket", ticket),))] == 1
    assert values[("kibo_sidecar_proxy_requests_total", (("code", "200"), ("method", "GET")))] == 3
    assert values[("kibo_sidecar_proxy_requests_total", (("code", "404"), ("method", "GET")))] == 1
    assert values[("kibo_sidecar_proxy_requests_total", (("code", "400"), ("method", "GET")))] == 1
    assert values[("kibo_sidecar_proxy_request_duration_seconds_count", ())] == 5
    assert values[("kibo_sidecar_proxy_request_duration_seconds_sum", ())] > 0
    assert values[("kibo_sidecar_proxy_requests_in_flight", ())] == 0


async def test_unknown_method_label_bounded(stand_in_factory, sidecar_factory, client) -> None:
    """A method outside the standard set is counted as "other", so labels stay bounded."""
    _stand_in, url = await stand_in_factory()
    sidecar = await sidecar_factory(url)
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")

    async with client.request(
        "PROPFIND", f"http://127.0.0.1:{sidecar.proxy_port}/api/x"
    ) as response:
        await response.read()

    async def counted() -> bool:
        async with client.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
            text = await response.text()
        return 'method="other"' in text and "PROPFIND" not in text

    await wait_for(counted, what="the request counted under method other")


async def test_logs_are_json_events_without_secrets(
    stand_in_factory, sidecar_factory, client, log_stream
) -> None:
    """A run with refreshes, a revoked refresh token and failures logs no token or secret."""
    stand_in, url = await stand_in_factory(app_lifetime=3, customer_lifetime=1.5)
    sidecar = await sidecar_factory(url, SIDECAR_REFRESH_JITTER="0", **CUSTOMER_ENV)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    await wait_for(lambda: stand_in.stats.customer_refreshes >= 2, what="two customer refreshes")
    stand_in.faults.revoke_refresh_tokens()
    stand_in.faults.fail_next(2, 503, retry_after="0")
    await wait_for(lambda: stand_in.stats.customer_logins >= 2, what="a login after revocation")
    async with client.get(proxy + CART + "?q=shopper-query") as response:
        assert response.status == 200
    async with client.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        metrics_text = await response.text()

    lines = log_stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = {event["event"] for event in events}
    assert {"ticket.fetched", "ticket.refreshed", "ticket.refresh_failed", "proxy.request"} <= names
    assert "ticket.refresh_token_rejected" in names
    refreshed = next(event for event in events if event["event"] == "ticket.refreshed")
    assert refreshed["expires_in_s"] > 0
    assert refreshed["next_refresh_in_s"] > 0
    captured = log_stream.getvalue() + metrics_text
    assert len(stand_in.issued_secrets) > 10
    for secret in stand_in.issued_secrets:
        assert secret not in captured
        # No prefix of a secret either: an 8-character head would already narrow it down.
        assert secret[:8] not in captured or len(secret) < 8
    assert "shopper-query" not in captured
