"""Pure timing rules: when to refresh a ticket and how long to back off after a failure.

Both are plain functions of their inputs (the random draw is an argument), so
a table test can pin them exactly.

Refresh rule: a ticket is refreshed once `fraction` of its lifetime has
passed, or `margin` seconds before it expires, whichever comes first. A margin
larger than half the lifetime is ignored (a 5-second token with a 5-minute
margin would otherwise be refreshed the moment it arrives), so short tickets
follow the fraction alone. The jitter draw moves the refresh earlier by up to
`jitter` of the lead time, never later, so many sidecars do not refresh in step.
"""

from __future__ import annotations

MAX_LEAD_SHARE = 0.9
# A server's Retry-After is honoured up to this many seconds. A larger value,
# such as a day or a number too large to be meant, would leave the ticket stuck.
MAX_RETRY_AFTER_SECONDS = 300.0


def refresh_delay(
    *,
    lifetime: float,
    remaining: float,
    fraction: float,
    margin: float,
    jitter: float,
    draw: float,
) -> float:
    """Return the seconds to wait before refreshing a token; 0 means refresh now.

    `lifetime` is the token's whole lifetime and `remaining` what is left of it
    now; `draw` is a random number in [0, 1).
    """
    if remaining <= 0 or lifetime <= 0:
        return 0.0

    lead = lifetime * (1.0 - fraction)
    if margin <= lifetime / 2:
        lead = max(lead, margin)
    # Capped so that at least a tenth of the lifetime passes before a refresh,
    # whatever the fraction and jitter settings add up to.
    lead = min(lead * (1.0 + jitter * draw), lifetime * MAX_LEAD_SHARE)

    return max(0.0, remaining - lead)


def backoff_delay(
    *,
    attempt: int,
    initial: float,
    maximum: float,
    draw: float,
    retry_after: float | None = None,
) -> float:
    """Return the seconds to wait before retry number `attempt` (1 for the first retry).

    Exponential from `initial`, capped at `maximum`, with "equal jitter": the
    wait is drawn from the upper half of the step, so it never collapses to
    zero. A server's Retry-After (up to five minutes) is a floor, even above the cap.
    """
    step = min(maximum, initial * 2.0 ** min(max(attempt - 1, 0), 62))
    delay = step / 2.0 + step / 2.0 * draw

    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))

    return delay
