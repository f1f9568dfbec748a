"""Configuration from the environment: defaults, *_FILE secrets, and one-line errors."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, Secret, load_settings
from tests.conftest import run_sidecar_process

BASE = {
    "KIBO_API_URL": "https://t1234.sandbox.mozu.com",
    "KIBO_CLIENT_ID": "client-id-value",
    "KIBO_CLIENT_SECRET": "client-secret-value",
}


def test_defaults() -> None:
    """Only the required variables set: documented defaults apply."""
    settings = load_settings(BASE)

    assert str(settings.auth_url) == "https://home.mozu.com"
    assert str(settings.listen) == "127.0.0.1:8080"
    assert str(settings.admin_listen) == "0.0.0.0:9090"
    assert settings.customer is None
    assert settings.log_format == "json"
    assert settings.customer_auth_mode == "user-claims"


def test_secret_file_read_and_trimmed(tmp_path) -> None:
    """A *_FILE secret is read from the file, without its trailing newline."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    env = {**BASE, "KIBO_CLIENT_SECRET": "", "KIBO_CLIENT_SECRET_FILE": str(secret_file)}

    settings = load_settings(env)

    assert settings.client_secret.reveal() == "from-file"


def test_settings_repr_masks_secrets() -> None:
    """The repr of the settings never shows a secret."""
    env = {**BASE, "KIBO_CUSTOMER_USERNAME": "shopper", "KIBO_CUSTOMER_PASSWORD": "hunter2-pw"}

    text = repr(load_settings(env))

    assert "client-secret-value" not in text
    assert "hunter2-pw" not in text
    assert "client-id-value" not in text
    assert repr(Secret("x")) == "Secret('********')"


@pytest.mark.parametrize(
    ("override", "variable", "fragment"),
    [
        ({"KIBO_API_URL": ""}, "KIBO_API_URL", "missing"),
        ({"KIBO_API_URL": "ftp://example"}, "KIBO_API_URL", "not an http(s) URL"),
        ({"KIBO_API_URL": "https://x/?a=1"}, "KIBO_API_URL", "query"),
        ({"KIBO_CLIENT_SECRET": ""}, "KIBO_CLIENT_SECRET", "missing"),
        ({"KIBO_CLIENT_SECRET_FILE": "/nonexistent/secret"}, "KIBO_CLIENT_SECRET", "set only one"),
        ({"SIDECAR_LISTEN": "8080"}, "SIDECAR_LISTEN", "host:port"),
        ({"SIDECAR_LISTEN": "127.0.0.1:99999"}, "SIDECAR_LISTEN", "outside"),
        ({"SIDECAR_ADMIN_LISTEN": "0.0.0.0:http"}, "SIDECAR_ADMIN_LISTEN", "invalid port"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "expected one of"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "expected one of"),
        ({"SIDECAR_REFRESH_FRACTION": "1.5"}, "SIDECAR_REFRESH_FRACTION", "between"),
        (
            {"SIDECAR_REFRESH_MARGIN_SECONDS": "5m"},
            "SIDECAR_REFRESH_MARGIN_SECONDS",
            "not a number",
        ),
        (
            {"SIDECAR_REFRESH_MARGIN_SECONDS": "nan"},
            "SIDECAR_REFRESH_MARGIN_SECONDS",
            "out of range",
        ),
        ({"SIDECAR_UPSTREAM_POOL_SIZE": "0"}, "SIDECAR_UPSTREAM_POOL_SIZE", "at least 1"),
        ({"KIBO_ACCOUNT_ID": "abc"}, "KIBO_ACCOUNT_ID", "whole number"),
        ({"KIBO_CLIENT_SECRET": "   "}, "KIBO_CLIENT_SECRET", "blank"),
        (
            {"SIDECAR_REPLAY_BODY_LIMIT_BYTES": "5000000"},
            "SIDECAR_REPLAY_BODY_LIMIT_BYTES",
            "at most",
        ),
        (
            {"SIDECAR_STATE_FILE": "/nonexistent-dir/state.json"},
            "SIDECAR_STATE_FILE",
            "does not exist",
        ),
        ({"SIDECAR_STATE_FILE": "/"}, "SIDECAR_STATE_FILE", "is a directory"),
        ({"KIBO_CUSTOMER_USERNAME": "only-user"}, "KIBO_CUSTOMER_PASSWORD", "missing"),
        ({"SIDECAR_CUSTOMER_AUTH_MODE": "cookie"}, "SIDECAR_CUSTOMER_AUTH_MODE", "expected one of"),
        (
            {"SIDECAR_RETRY_INITIAL_SECONDS": "10", "SIDECAR_RETRY_MAX_SECONDS": "5"},
            "SIDECAR_RETRY_MAX_SECONDS",
            "less than",
        ),
    ],
)
def test_invalid_value_names_variable(
    override: dict[str, str], variable: str, fragment: str
) -> None:
    """Each invalid value raises ConfigError naming the variable and the problem."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **override})

    assert caught.value.variable.startswith(variable)
    assert fragment in str(caught.value)


def test_url_error_hides_credentials() -> None:
    """A URL with user:password@ is quoted in errors with the credentials masked."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "KIBO_API_URL": "http://user:pa55word@127.0.0.1:99999"})

    assert "pa55word" not in str(caught.value)
    assert "***@" in str(caught.value)
    assert "Port out of range" in str(caught.value)


def test_empty_secret_file_named(tmp_path) -> None:
    """A *_FILE holding only a newline is reported as empty, under the *_FILE variable."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("\n")

    with pytest.raises(ConfigError, match=r"KIBO_CLIENT_SECRET_FILE: .* is empty"):
        load_settings(
            {**BASE, "KIBO_CLIENT_SECRET": "", "KIBO_CLIENT_SECRET_FILE": str(secret_file)}
        )


def test_unreadable_secret_file_named(tmp_path) -> None:
    """A *_FILE that cannot be read is reported under the *_FILE variable."""
    env = {**BASE, "KIBO_CLIENT_SECRET": "", "KIBO_CLIENT_SECRET_FILE": str(tmp_path / "absent")}

    with pytest.raises(ConfigError, match="KIBO_CLIENT_SECRET_FILE: cannot read"):
        load_settings(env)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "KIBO_API_URL"),
        ({**BASE, "SIDECAR_REFRESH_FRACTION": "lots"}, "SIDECAR_REFRESH_FRACTION"),
        ({**BASE, "KIBO_CLIENT_SECRET": ""}, "KIBO_CLIENT_SECRET"),
    ],
)
def test_process_exits_with_one_line(env: dict[str, str], variable: str) -> None:
    """`python -m sidecar` with bad configuration exits 2 with one line and no traceback."""
    result = run_sidecar_process(env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert "client-secret-value" not in result.stderr
    assert result.stdout == ""


def test_port_in_use_exits_with_one_line() -> None:
    """A listener that cannot bind gives one line and exit 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **BASE,
            "KIBO_API_URL": "http://127.0.0.1:9",
            "KIBO_AUTH_URL": "http://127.0.0.1:9",
            "SIDECAR_LISTEN": "127.0.0.1:0",
            "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{port}",
        }
        result = run_sidecar_process(env)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot start" in last
    assert "SIDECAR_ADMIN_LISTEN" in last


def test_foreign_listen_address_named() -> None:
    """An address this host does not own exits 1 naming SIDECAR_LISTEN, before any Kibo call."""
    env = {
        **BASE,
        "KIBO_API_URL": "http://127.0.0.1:9",
        "KIBO_AUTH_URL": "http://127.0.0.1:9",
        # 192.0.2.0/24 is reserved for documentation, so no interface here has it.
        "SIDECAR_LISTEN": "192.0.2.1:0",
        "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
    }

    result = run_sidecar_process(env)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("sidecar: cannot start: SIDECAR_LISTEN: cannot listen on")
    assert "ticket." not in result.stderr
