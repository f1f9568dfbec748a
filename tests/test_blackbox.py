"""`python -m sidecar` run as users run it, against a second, independent Kibo fake.

The fake differs from the bundled stand-in on purpose. Both hosts sit under a
path prefix and the server clock runs 40 minutes behind. The application JWT
has no `iat` and the response no `expires_in`. The customer ticket has no JWT,
an offset date and a single-use refresh token. Only the documented contract
(variables, endpoints, metric names) is used.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.conftest import REPO, wait_for

SKEW = -40 * 60.0
APP_LIFETIME = 4.0
CUSTOMER_LIFETIME = 2.5


@dataclass
class OtherKibo:
    """A minimal Kibo written independently of the bundled stand-in."""

    url: str = ""
    app_tokens: dict[str, float] = field(default_factory=dict)
    access_tokens: dict[str, float] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    served: int = 0
    expired_seen: int = 0
    rejected_refreshes: int = 0
    logins: int = 0

    def now(self) -> float:
        return time.time() + SKEW

    def headers(self) -> dict[str, str]:
        return {"Date": formatdate(self.now(), usegmt=True)}

    def app_token_valid(self, request: web.Request) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.app_tokens.get(token, 0) > self.now()

    def customer_ticket(self) -> dict[str, object]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        expiry = self.now() + CUSTOMER_LIFETIME
        self.access_tokens[access] = expiry
        self.refresh_tokens.add(refresh)
        offset = timezone(timedelta(hours=-5))
        written = datetime.fromtimestamp(expiry, UTC).astimezone(offset)
        return {
            "accessToken": access,
            "accessTokenExpiration": written.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0-05:00",
            "refreshToken": refresh,
            "userId": "u1",
        }

    async def oauth(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("client_secret") != "other-secret":
            return web.json_response({"errorCode": "UNAUTHORIZED"}, status=401)
        expiry = self.now() + APP_LIFETIME
        token = jwt.encode({"exp": int(expiry), "sub": "app"}, "key" * 11, algorithm="HS256")
        self.app_tokens[token] = int(expiry)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer"}, headers=self.headers()
        )

    async def login(self, request: web.Request) -> web.Response:
        if not self.app_token_valid(request):
            return web.json_response({"message": "invalid_token"}, status=401)
        self.logins += 1
        return web.json_response(self.customer_ticket(), headers=self.headers())

    async def refresh(self, request: web.Request) -> web.Response:
        token = request.query.get("refreshToken", "")
        if not self.app_token_valid(request) or token not in self.refresh_tokens:
            self.rejected_refreshes += 1
            return web.json_response({"message": "invalid_token"}, status=401)
        self.refresh_tokens.discard(token)
        return web.json_response(self.customer_ticket(), headers=self.headers())

    async def resource(self, request: web.Request) -> web.Response:
        claims = request.headers.get("x-vol-user-claims", "")
        if not self.app_token_valid(request) or self.access_tokens.get(claims, 0) <= self.now():
            self.expired_seen += 1
            return web.json_response({"message": "invalid_token"}, status=401)
        self.served += 1
        return web.json_response({"path": request.path}, headers=self.headers())


@pytest.fixture
async def other_kibo() -> AsyncIterator[OtherKibo]:
    kibo = OtherKibo()
    app = web.Application()
    app.router.add_post("/home/api/platform/applications/authtickets/oauth", kibo.oauth)
    app.router.add_post("/tenant/api/commerce/customer/authtickets", kibo.login)
    app.router.add_put("/tenant/api/commerce/customer/authtickets/refresh", kibo.refresh)
    app.router.add_get("/tenant/api/commerce/orders", kibo.resource)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    kibo.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield kibo
    await runner.cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_blackbox_other_kibo(other_kibo: OtherKibo) -> None:
    """The sidecar process serves 20 clients over several lifetimes of a different Kibo."""
    proxy_port, admin_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": REPO,
        "KIBO_AUTH_URL": other_kibo.url + "/home",
        "KIBO_API_URL": other_kibo.url + "/tenant/",
        "KIBO_CLIENT_ID": "other-client",
        "KIBO_CLIENT_SECRET": "other-secret",
        "KIBO_CUSTOMER_USERNAME": "someone",
        "KIBO_CUSTOMER_PASSWORD": "other-password",
        "SIDECAR_LISTEN": f"127.0.0.1:{proxy_port}",
        "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    failures: list[int] = []
    try:
        async with aiohttp.ClientSession() as client:

            async def ready() -> bool:
                try:
                    async with client.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(ready, timeout=15, what="/readyz 200")
            deadline = time.monotonic() + 3 * CUSTOMER_LIFETIME

            async def loop() -> None:
                while time.monotonic() < deadline:
                    url = f"http://127.0.0.1:{proxy_port}/api/commerce/orders?page=1"
                    async with client.get(url) as response:
                        await response.read()
                        if response.status != 200:
                            failures.append(response.status)

            await asyncio.gather(*(loop() for _ in range(20)))
            async with client.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
                metrics = await response.text()
    finally:
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 0, output.decode()
    assert failures == []
    assert other_kibo.expired_seen == 0
    assert other_kibo.served > 50
    assert other_kibo.rejected_refreshes == 0
    assert other_kibo.logins == 1
    assert 'kibo_sidecar_token_expiry_timestamp_seconds{ticket="customer"}' in metrics
    assert "other-secret" not in output.decode()
    assert "other-password" not in output.decode()
