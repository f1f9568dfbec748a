"""Shared fixtures: a Kibo stand-in, a recording upstream and in-process sidecars, all on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.config import load_settings
from sidecar.logs import configure_logging
from sidecar.service import Sidecar
from sidecar.standin import StandIn, StandInConfig, start_stand_in

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ENV = {
    "KIBO_CLIENT_ID": "demo-client",
    "KIBO_CLIENT_SECRET": "demo-secret",
    "SIDECAR_LISTEN": "127.0.0.1:0",
    "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
    "LOG_LEVEL": "debug",
    # Fast retries keep fault tests short; production defaults are 1 s and 60 s.
    "SIDECAR_RETRY_INITIAL_SECONDS": "0.05",
    "SIDECAR_RETRY_MAX_SECONDS": "0.5",
    # Tests revoke tokens seconds after they were issued.
    "SIDECAR_REPLAY_MIN_TOKEN_AGE_SECONDS": "0",
}
CUSTOMER_ENV = {
    "KIBO_CUSTOMER_USERNAME": "shopper@example.test",
    "KIBO_CUSTOMER_PASSWORD": "demo-password",
}


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll `condition` until it is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def log_stream() -> io.StringIO:
    """Capture every structured log line of the test in memory, at debug level."""
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream)
    return stream


@pytest.fixture
async def stand_in_factory() -> AsyncIterator[Callable[..., Awaitable[tuple[StandIn, str]]]]:
    runners: list[web.AppRunner] = []

    async def start(**config: Any) -> tuple[StandIn, str]:
        stand_in = StandIn(StandInConfig(**config))
        runner, url = await start_stand_in(stand_in, shutdown_timeout=0.5)
        runners.append(runner)
        return stand_in, url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sidecar_factory(
    log_stream: io.StringIO,
) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    started: list[Sidecar] = []

    async def start(kibo_url: str, *, upstream_url: str | None = None, **env: str) -> Sidecar:
        environ = {
            **DEMO_ENV,
            "KIBO_AUTH_URL": kibo_url,
            "KIBO_API_URL": upstream_url or kibo_url,
            **env,
        }
        sidecar = Sidecar(load_settings(environ), registry=CollectorRegistry())
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if not sidecar.draining:
            await sidecar.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@dataclass
class Recorded:
    """One request as the recording upstream saw it."""

    method: str
    raw_path: str
    raw_headers: list[tuple[bytes, bytes]]
    body_size: int
    body_sha256: str

    def header(self, name: str) -> list[str]:
        expected_name = name.lower().encode()
        return [value.decode("latin-1") for key, value in self.raw_headers if key.lower() == expected_name]


@dataclass
class RecordingUpstream:
    """An upstream that records each request and can respond with large or compressed bodies."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    kibo_url: str = ""
    """Where customer ticket calls are passed on, since they go to the API host."""
    streams_open: int = 0


@pytest.fixture
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/api/commerce/customer/authtickets") and upstream.kibo_url:
            return await _pass_to_kibo(request, upstream.kibo_url)

        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        upstream.requests.append(
            Recorded(
                method=request.method,
                raw_path=request.raw_path,
                raw_headers=list(request.raw_headers),
                body_size=size,
                body_sha256=digest.hexdigest(),
            )
        )
        query = request.rel_url.query
        if "always401" in query:
            return web.json_response({"message": "invalid_token"}, status=401)
        if "reset" in query:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        if "trickle" in query:
            # An endless slow body, to test a client that disconnects mid-stream.
            response = web.StreamResponse()
            await response.prepare(request)
            upstream.streams_open += 1
            try:
                while True:
                    await response.write(b"x" * 1024)
                    await asyncio.sleep(0.01)
            finally:
                upstream.streams_open -= 1
        if "download" in query:
            total = int(query["download"])
            response = web.StreamResponse(headers={"X-Body-Sha256": _pattern_sha256(total)})
            response.content_length = total
            await response.prepare(request)
            for piece in _pattern_chunks(total) if request.method != "HEAD" else []:
                await response.write(piece)
            await response.write_eof()
            return response
        if "gzip" in query:
            import gzip

            payload = gzip.compress(b'{"compressed": true}' * 100)
            return web.Response(
                body=payload,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if "hop" in query:
            return web.Response(
                text="ok",
                headers={
                    "Connection": "close, X-Upstream-Private",
                    "X-Upstream-Private": "secret-hop",
                    "Keep-Alive": "timeout=5",
                    "X-Kept": "yes",
                },
            )
        return web.json_response({"ok": True, "size": size})

    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield upstream
    await runner.cleanup()


async def _pass_to_kibo(request: web.BaseRequest, kibo_url: str) -> web.Response:
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() in ("authorization", "content-type")
    }
    async with aiohttp.ClientSession() as session:
        async with session.request(
            request.method, kibo_url + request.raw_path, headers=headers, data=await request.read()
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"Content-Type": answer.content_type, "Date": answer.headers["Date"]},
            )


def _pattern_chunks(total: int, chunk: int = 256 * 1024) -> list[bytes]:
    block = bytes(range(256)) * (chunk // 256)
    pieces = []
    left = total
    while left > 0:
        pieces.append(block[: min(chunk, left)])
        left -= chunk
    return pieces


def _pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern_chunks(total):
        digest.update(piece)
    return digest.hexdigest()


def pattern_chunks(total: int) -> list[bytes]:
    """Return the deterministic byte pattern the recording upstream serves and tests upload."""
    return _pattern_chunks(total)


def pattern_sha256(total: int) -> str:
    return _pattern_sha256(total)


def run_sidecar_process(
    env: dict[str, str], *, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m sidecar` to completion with exactly `env` (plus PATH) and capture output."""
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO, **env}
    return subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def customer_refresh_token(url: str) -> str:
    """Log the demo shopper in directly, as an operator would, and return the refresh token."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/api/platform/applications/authtickets/oauth",
            json={
                "client_id": "demo-client",
                "client_secret": "demo-secret",
                "grant_type": "client_credentials",
            },
        ) as response:
            app_token = (await response.json())["access_token"]
        async with session.post(
            url + "/api/commerce/customer/authtickets",
            json={"username": "shopper@example.test", "password": "demo-password"},
            headers={"Authorization": f"Bearer {app_token}"},
        ) as response:
            return str((await response.json())["refreshToken"])
