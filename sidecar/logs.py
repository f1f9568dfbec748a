"""structlog set-up: JSON lines by default, a readable console form on request.

Filtering by level happens in the bound logger itself, so a disabled level
(the per-request line at debug) costs one no-op call on the hot path.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_logging(
    *, level: str = "info", fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Send structured events to `stream` (stderr by default) at `level` and above."""
    output = sys.stderr if stream is None else stream
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    # aiohttp's own loggers: keep their warnings (bad requests, protocol errors) but
    # not the access log, which would print every request's full target.
    logging.basicConfig(
        stream=output, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)
