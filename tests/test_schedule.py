"""The refresh schedule and the retry backoff, pinned by tables."""

from __future__ import annotations

import pytest

from sidecar.schedule import backoff_delay, refresh_delay

HOUR = 3600.0


@pytest.mark.parametrize(
    ("case", "lifetime", "remaining", "margin", "draw", "expected"),
    [
        # One-hour token, 5-minute margin: the fraction (75 %) wins, refresh at 45 min.
        ("fresh hour-long token", HOUR, HOUR, 300.0, 0.0, 2700.0),
        # A 2-hour lifetime at 75 % leaves 30 min, more than the margin: fraction wins.
        ("long token", 2 * HOUR, 2 * HOUR, 300.0, 0.0, 5400.0),
        # Margin larger than a quarter of the lifetime: the margin wins.
        ("margin wins", 1000.0, 1000.0, 400.0, 0.0, 600.0),
        # Half-way through an hour: 1800 left, lead 900.
        ("half used", HOUR, 1800.0, 300.0, 0.0, 900.0),
        # Past the refresh point but still valid: refresh now.
        ("refresh point passed", HOUR, 600.0, 300.0, 0.0, 0.0),
        ("already expired", HOUR, -5.0, 300.0, 0.0, 0.0),
        ("expires right now", HOUR, 0.0, 300.0, 0.0, 0.0),
        # 5-second token with a 5-minute margin: the margin is ignored, 75 % of 5 s.
        ("lifetime shorter than margin", 5.0, 5.0, 300.0, 0.0, 3.75),
        ("lifetime equal to margin", 300.0, 300.0, 300.0, 0.0, 225.0),
        # The margin applies up to half the lifetime and is ignored above it.
        ("margin ignored when over half", 100.0, 100.0, 60.0, 0.0, 75.0),
        ("margin used at exactly half", 100.0, 100.0, 50.0, 0.0, 50.0),
        # Jitter moves the refresh earlier by up to jitter (10 %) of the lead.
        ("full jitter draw", HOUR, HOUR, 300.0, 1.0, HOUR - 900.0 * 1.1),
        ("half jitter draw", 5.0, 5.0, 300.0, 0.5, 5.0 - 1.25 * 1.05),
        ("zero lifetime", 0.0, 0.0, 300.0, 0.0, 0.0),
    ],
)
def test_refresh_delay_table(
    case: str, lifetime: float, remaining: float, margin: float, draw: float, expected: float
) -> None:
    """The delay before a refresh follows the documented fraction/margin/jitter rule."""
    delay = refresh_delay(
        lifetime=lifetime,
        remaining=remaining,
        fraction=0.75,
        margin=margin,
        jitter=0.1,
        draw=draw,
    )

    assert delay == pytest.approx(expected), case


def test_refresh_delay_lead_capped() -> None:
    """Extreme fraction and jitter settings still leave a tenth of the lifetime first."""
    delay = refresh_delay(
        lifetime=3600.0, remaining=3600.0, fraction=0.1, margin=0.0, jitter=0.5, draw=0.999
    )

    assert delay == pytest.approx(360.0)


def test_refresh_delay_always_before_expiry() -> None:
    """For any valid token the refresh happens strictly before it expires."""
    for lifetime in (0.5, 1.0, 5.0, 30.0, 600.0, HOUR, 24 * HOUR):
        for margin in (0.0, 10.0, 300.0, 7200.0):
            for draw in (0.0, 0.5, 0.999):
                delay = refresh_delay(
                    lifetime=lifetime,
                    remaining=lifetime,
                    fraction=0.75,
                    margin=margin,
                    jitter=0.5,
                    draw=draw,
                )
                assert 0 < delay < lifetime, (lifetime, margin, draw)


@pytest.mark.parametrize(
    ("attempt", "draw", "retry_after", "expected"),
    [
        (1, 0.0, None, 0.5),
        (1, 1.0, None, 1.0),
        (2, 0.0, None, 1.0),
        (3, 1.0, None, 4.0),
        (7, 1.0, None, 60.0),
        (50, 0.0, None, 30.0),
        (10_000, 1.0, None, 60.0),
        # Retry-After is a floor, even above the cap.
        (1, 0.0, 7.0, 7.0),
        (10, 1.0, 120.0, 120.0),
        # ... up to five minutes: a day, or infinity, would leave the ticket stuck.
        (1, 0.0, 86400.0, 300.0),
        (1, 0.0, float("inf"), 300.0),
        (3, 1.0, 2.0, 4.0),
    ],
)
def test_backoff_delay_table(
    attempt: int, draw: float, retry_after: float | None, expected: float
) -> None:
    """Backoff doubles from 1 s, caps at 60 s, keeps half the step, honours Retry-After up to 300 s."""
    delay = backoff_delay(
        attempt=attempt, initial=1.0, maximum=60.0, draw=draw, retry_after=retry_after
    )

    assert delay == pytest.approx(expected)
