"""The optional state file: the newest customer refresh token, kept across restarts.

When the customer identity is a rotating refresh token with no password, the
token from the environment stops working after its first use. This file lets
a restarted sidecar resume from the newest one. It is written owner-only and
replaced atomically (write a temporary file, fsync, rename), so a crash leaves
either the old token or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile

import structlog

log = structlog.get_logger("sidecar.state")

STATE_VERSION = 1


class StateFile:
    """Reads and writes the refresh token at `path`; failures are logged, never raised."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"StateFile({self.path!r})"

    def load(self) -> str | None:
        """Return the saved refresh token, or None when there is no usable file."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("state.load_failed", path=self.path, error=type(error).__name__)
            return None

        token = data.get("customer_refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            log.warning(
                "state.load_failed", path=self.path, error="no customer_refresh_token field"
            )
            return None

        return token

    def save(self, refresh_token: str) -> None:
        """Replace the file with one holding `refresh_token`, readable by the owner only."""
        directory = os.path.dirname(os.path.abspath(self.path))
        payload = json.dumps({"version": STATE_VERSION, "customer_refresh_token": refresh_token})
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=".sidecar-state-", dir=directory)
        except OSError as error:
            log.error(
                "state.save_failed", path=self.path, error=error.strerror or type(error).__name__
            )
            return

        try:
            # mkstemp creates the file with mode 0600 already; chmod guards odd umasks.
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as error:
            log.error(
                "state.save_failed", path=self.path, error=error.strerror or type(error).__name__
            )
            try:
                os.unlink(temporary)
            except OSError:
                pass
