"""structlog set-up: JSON lines by default, a readable console form on request.

Filtering by level happens in the bound logger itself, so a disabled level
(the per-request line at debug) costs one no-op call on the hot path.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
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
    # Library loggers (aiohttp, asyncio) reach the same stream as structured events.
    # The access log stays off: it would print every request's full target.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LibraryLogBridge):
            root.removeHandler(handler)
    root.addHandler(_LibraryLogBridge())
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)


class _LibraryLogBridge(logging.Handler):
    """Passes standard-library log records on as `library.log` events, stripped of data.

    Only the message template is kept, never its arguments or a traceback: both
    can quote request lines, headers or URLs, and so tokens. The exception type
    and the line that raised it stay, for debugging.
    """

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {
            "logger": record.name,
            "message": record.msg if isinstance(record.msg, str) else type(record.msg).__name__,
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = type(error).__name__
            frames = traceback.extract_tb(error.__traceback__)
            if frames:
                fields["where"] = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
        structlog.get_logger("sidecar.library").log(record.levelno, "library.log", **fields)
