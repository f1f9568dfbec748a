"""Settings read from the environment: the sidecar's whole public configuration.

Every value is checked here, once, at start-up. A bad value raises ConfigError
naming the variable, so the process can exit with one line and no traceback.
Secrets are wrapped in Secret, whose repr never shows the value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from yarl import URL

DEFAULT_AUTH_URL = "https://home.mozu.com"
# aiohttp refuses to buffer a request body above 1 MiB (its client_max_size).
MAX_REPLAY_BODY_LIMIT = 1024 * 1024

CustomerAuthMode = Literal["user-claims", "jwt-bearer"]


class ConfigError(Exception):
    """An environment variable is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class Secret:
    """A credential whose repr and str are masked, so it cannot leak through logging."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class Listen:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class CustomerSettings:
    """The shopper whose customer ticket the sidecar keeps."""

    username: Secret | None
    password: Secret | None
    refresh_token: Secret | None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The validated configuration of one sidecar process."""

    api_url: URL
    auth_url: URL
    client_id: Secret
    client_secret: Secret
    customer: CustomerSettings | None
    account_id: int | None
    listen: Listen
    admin_listen: Listen
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    customer_auth_mode: CustomerAuthMode = "user-claims"
    refresh_fraction: float = 0.75
    refresh_margin: float = 300.0
    refresh_jitter: float = 0.1
    retry_initial: float = 1.0
    retry_max: float = 60.0
    token_timeout: float = 10.0
    token_wait: float = 5.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    upstream_pool_size: int = 100
    replay_body_limit: int = 64 * 1024
    replay_min_token_age: float = 5.0
    max_body_size: int = 2 * 1024**3
    max_header_size: int = 8190
    client_idle_timeout: float = 75.0
    drain_delay: float = 0.0
    shutdown_grace: float = 20.0
    state_file: str | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting, raising ConfigError on the first bad one."""
    env = _Env(os.environ if environ is None else environ)

    api_url = _required(env.url("KIBO_API_URL", None), "KIBO_API_URL")
    auth_url = env.url("KIBO_AUTH_URL", DEFAULT_AUTH_URL)
    client_id = env.secret("KIBO_CLIENT_ID", required=True)
    client_secret = env.secret("KIBO_CLIENT_SECRET", required=True)
    assert client_id is not None and client_secret is not None

    username = env.secret("KIBO_CUSTOMER_USERNAME")
    password = env.secret("KIBO_CUSTOMER_PASSWORD")
    refresh_token = env.secret("KIBO_CUSTOMER_REFRESH_TOKEN")
    if (username is None) != (password is None):
        missing = "KIBO_CUSTOMER_PASSWORD" if password is None else "KIBO_CUSTOMER_USERNAME"
        raise ConfigError(missing, "is missing; the customer username and password go together")

    customer = None
    if password is not None or refresh_token is not None:
        customer = CustomerSettings(
            username=username, password=password, refresh_token=refresh_token
        )

    account_id = env.optional_integer("KIBO_ACCOUNT_ID", minimum=1)
    mode = env.choice("SIDECAR_CUSTOMER_AUTH_MODE", "user-claims", ("user-claims", "jwt-bearer"))
    retry_initial = env.number("SIDECAR_RETRY_INITIAL_SECONDS", 1.0, minimum=0.01)
    retry_max = env.number("SIDECAR_RETRY_MAX_SECONDS", 60.0, minimum=0.01)
    if retry_max < retry_initial:
        raise ConfigError(
            "SIDECAR_RETRY_MAX_SECONDS",
            f"is {retry_max:g}, less than SIDECAR_RETRY_INITIAL_SECONDS ({retry_initial:g})",
        )

    return Settings(
        api_url=api_url,
        auth_url=_required(auth_url, "KIBO_AUTH_URL"),
        client_id=client_id,
        client_secret=client_secret,
        customer=customer,
        account_id=account_id,
        listen=env.listen("SIDECAR_LISTEN", "127.0.0.1:8080"),
        admin_listen=env.listen("SIDECAR_ADMIN_LISTEN", "0.0.0.0:9090"),
        log_format=env.choice("LOG_FORMAT", "json", ("json", "console")),
        log_level=env.choice(
            "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
        ),
        customer_auth_mode=mode,
        refresh_fraction=env.number("SIDECAR_REFRESH_FRACTION", 0.75, minimum=0.1, maximum=0.95),
        refresh_margin=env.number("SIDECAR_REFRESH_MARGIN_SECONDS", 300.0, minimum=0.0),
        refresh_jitter=env.number("SIDECAR_REFRESH_JITTER", 0.1, minimum=0.0, maximum=0.5),
        retry_initial=retry_initial,
        retry_max=retry_max,
        token_timeout=env.number("SIDECAR_TOKEN_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        token_wait=env.number("SIDECAR_TOKEN_WAIT_SECONDS", 5.0, minimum=0.0),
        upstream_connect_timeout=env.number(
            "SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1
        ),
        upstream_read_timeout=env.number(
            "SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS", 60.0, minimum=0.1
        ),
        upstream_pool_size=env.integer("SIDECAR_UPSTREAM_POOL_SIZE", 100, minimum=1),
        replay_body_limit=env.integer(
            "SIDECAR_REPLAY_BODY_LIMIT_BYTES", 65536, minimum=0, maximum=MAX_REPLAY_BODY_LIMIT
        ),
        replay_min_token_age=env.number("SIDECAR_REPLAY_MIN_TOKEN_AGE_SECONDS", 5.0, minimum=0.0),
        max_body_size=env.integer("SIDECAR_MAX_BODY_BYTES", 2 * 1024**3, minimum=0),
        max_header_size=env.integer("SIDECAR_MAX_HEADER_BYTES", 8190, minimum=1024),
        client_idle_timeout=env.number("SIDECAR_CLIENT_IDLE_TIMEOUT_SECONDS", 75.0, minimum=1.0),
        drain_delay=env.number("SIDECAR_DRAIN_DELAY_SECONDS", 0.0, minimum=0.0),
        shutdown_grace=env.number("SIDECAR_SHUTDOWN_GRACE_SECONDS", 20.0, minimum=0.0),
        state_file=_state_file(env),
    )


def _without_credentials(raw: str) -> str:
    """Return `raw` with any user:password@ part masked, for error messages."""
    scheme, separator, rest = raw.partition("://")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return raw

    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _state_file(env: _Env) -> str | None:
    path = env.text("SIDECAR_STATE_FILE")
    if path is None:
        return None

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError("SIDECAR_STATE_FILE", f"directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("SIDECAR_STATE_FILE", f"directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise ConfigError("SIDECAR_STATE_FILE", f"{path!r} is a directory")

    return path


def _required(value: URL | None, variable: str) -> URL:
    if value is None:
        raise ConfigError(variable, "is missing; set it to the tenant's API base URL")

    return value


class _Env:
    """Typed readers over an environment mapping; each raises ConfigError naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def secret(self, name: str, *, required: bool = False) -> Secret | None:
        direct = self._environ.get(name)
        path = self.text(f"{name}_FILE")
        if direct and path:
            raise ConfigError(name, f"is set together with {name}_FILE; set only one of them")

        value = direct
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    value = handle.read()
            except OSError as error:
                raise ConfigError(
                    f"{name}_FILE", f"cannot read {path!r}: {error.strerror or error}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(f"{name}_FILE", f"{path!r} is not UTF-8 text") from None

            # Secret files written by editors and `kubectl create secret --from-file`
            # often end with a newline that is not part of the secret.
            value = value.rstrip("\r\n")
            if not value.strip():
                raise ConfigError(f"{name}_FILE", f"{path!r} is empty")

        if not value:
            if required:
                raise ConfigError(name, f"is missing; set {name} or {name}_FILE")
            return None
        if not value.strip():
            raise ConfigError(name, "is blank (only white space)")

        return Secret(value)

    def url(self, name: str, default: str | None) -> URL | None:
        raw = self.text(name) or default
        if raw is None:
            return None

        masked_url = _without_credentials(raw)
        try:
            url = URL(raw)
        except ValueError as error:
            # yarl's messages name the problem ("Port out of range 0-65535"), not the URL.
            reason = _without_credentials(str(error))
            raise ConfigError(name, f"{masked_url!r} is not a valid URL: {reason}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(name, f"{masked_url!r} is not an http(s) URL with a host")
        if url.query_string or url.fragment:
            raise ConfigError(name, f"{masked_url!r} must not carry a query or fragment")
        if url.user or url.password:
            raise ConfigError(name, "must not carry credentials in the URL")

        return url.with_path(url.path.rstrip("/"))

    def listen(self, name: str, default: str) -> Listen:
        raw = self.text(name) or default
        host, separator, port_text = raw.rpartition(":")
        if not separator or not host:
            raise ConfigError(name, f"{raw!r} is not host:port (for example 127.0.0.1:8080)")

        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(name, f"{raw!r} has an invalid port {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ConfigError(name, f"{raw!r} has port {port} outside 0-65535")

        return Listen(host=host, port=port)

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float = math.inf
    ) -> float:
        raw = self.text(name)
        if raw is None:
            return default

        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a number") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            bounds = (
                f"at least {minimum:g}"
                if maximum == math.inf
                else (f"between {minimum:g} and {maximum:g}")
            )
            raise ConfigError(name, f"{raw!r} is out of range; it must be {bounds}")

        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.optional_integer(name, minimum=minimum)
        if value is None:
            return default
        if maximum is not None and value > maximum:
            raise ConfigError(name, f"{value} is out of range; it must be at most {maximum}")

        return value

    def optional_integer(self, name: str, *, minimum: int) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None

        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a whole number") from None
        if value < minimum:
            raise ConfigError(name, f"{raw!r} is out of range; it must be at least {minimum}")

        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> Any:
        raw = (self.text(name) or default).lower()
        if raw not in allowed:
            raise ConfigError(name, f"{raw!r} is invalid; expected one of {', '.join(allowed)}")

        return raw
