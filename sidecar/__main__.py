"""Command line: `python -m sidecar` runs the sidecar; `demo` and `stand-in` are for trying it."""

from __future__ import annotations

import asyncio
import sys

USAGE = """\
usage: python -m sidecar            run the sidecar (configured by environment variables)
       python -m sidecar demo       run the stand-in, a sidecar and some traffic, and report
       python -m sidecar stand-in   run only the Kibo stand-in (see --help)
"""


def main(argv: list[str]) -> int:
    """Dispatch to the sidecar, the demo or the stand-in; return the exit code."""
    command = argv[0] if argv else None
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if command == "stand-in":
        from .standin import main as stand_in_main

        return stand_in_main(argv[1:])
    if command is not None:
        print(f"sidecar: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
        return 2

    return run_sidecar()


def run_sidecar() -> int:
    """Load settings from the environment and serve until SIGTERM."""
    from .config import ConfigError, load_settings
    from .logs import configure_logging
    from .service import ListenError, serve

    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"sidecar: invalid configuration: {error}", file=sys.stderr)
        return 2

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        return asyncio.run(serve(settings))
    except ListenError as error:
        print(f"sidecar: cannot start: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        # Almost always a listener that cannot bind: port in use or address not local.
        print(f"sidecar: cannot start: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
