"""The proxy path, checked byte for byte at a recording upstream on loopback."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket

import aiohttp
import pytest

from tests.conftest import CUSTOMER_ENV, pattern_chunks, pattern_sha256, wait_for

MIB = 1024 * 1024


@pytest.fixture
async def proxied(stand_in_factory, sidecar_factory, recording_upstream):
    """A sidecar whose tickets come from the stand-in and whose upstream records requests."""
    stand_in, kibo_url = await stand_in_factory()
    recording_upstream.kibo_url = kibo_url
    sidecar = await sidecar_factory(kibo_url, upstream_url=recording_upstream.url, **CUSTOMER_ENV)
    await wait_for(lambda: all(t.valid_token() for t in sidecar.tickets), what="first tokens")
    return stand_in, sidecar, recording_upstream


async def raw_exchange(port: int, request: bytes, *, head_only: bool = False) -> bytes:
    """Send raw bytes to the proxy; return its response up to the close, or only the head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if head_only:
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    else:
        data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_query_string_byte_for_byte(proxied, client) -> None:
    """Path and query reach the upstream exactly as the app sent them."""
    _stand_in, sidecar, upstream = proxied
    target = "/api/commerce/catalog/storefront/products/search?q=a%20b+c&filter=x%3D1%26y&empty=&dup=1&dup=2&%7E=%zz"

    raw = await raw_exchange(
        sidecar.proxy_port,
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode(),
    )

    assert raw.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].raw_path == target


async def test_headers_injected_and_cleaned(proxied) -> None:
    """Host is the upstream's, Authorization is replaced, hop-by-hop headers are dropped."""
    _stand_in, sidecar, upstream = proxied
    request = (
        "GET /api/x HTTP/1.1\r\n"
        "Host: app.internal\r\n"
        "Authorization: Bearer app-supplied\r\n"
        "x-vol-user-claims: app-claims\r\n"
        "Connection: close, X-Private-Hop\r\n"
        "X-Private-Hop: drop-me\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "Upgrade: websocket\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "x-vol-tenant: 12345\r\n"
        "X-Multi: one\r\n"
        "X-Multi: two\r\n"
        "Accept-Encoding: gzip\r\n"
        "\r\n"
    )

    raw = await raw_exchange(sidecar.proxy_port, request.encode())

    assert raw.startswith(b"HTTP/1.1 200")
    seen = upstream.requests[-1]
    app_token = sidecar.tickets[0].token
    customer_token = sidecar.tickets[1].token
    assert seen.header("Host") == [upstream.url.removeprefix("http://")]
    assert seen.header("Authorization") == [f"Bearer {app_token.access_token}"]
    assert seen.header("x-vol-user-claims") == [customer_token.access_token]
    for dropped in (
        "Connection",
        "X-Private-Hop",
        "Keep-Alive",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
    ):
        assert seen.header(dropped) == [], dropped
    assert seen.header("x-vol-tenant") == ["12345"]
    assert seen.header("X-Multi") == ["one", "two"]
    assert seen.header("Accept-Encoding") == ["gzip"]
    assert seen.header("User-Agent") == []


async def test_response_hop_by_hop_dropped(proxied, client) -> None:
    """Hop-by-hop headers of the upstream's response, and those it names, do not reach the app."""
    _stand_in, sidecar, _upstream = proxied

    async with client.get(f"http://127.0.0.1:{sidecar.proxy_port}/api/x?hop=1") as response:
        assert response.status == 200
        assert "X-Upstream-Private" not in response.headers
        assert "Keep-Alive" not in response.headers
        assert response.headers["X-Kept"] == "yes"


async def test_gzip_passes_untouched(proxied, client) -> None:
    """A compressed response arrives compressed, with its Content-Encoding."""
    _stand_in, sidecar, _upstream = proxied

    async with client.get(f"http://127.0.0.1:{sidecar.proxy_port}/api/x?gzip=1") as response:
        body = await response.read()

    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b'{"compressed": true}' * 100
    assert int(response.headers["Content-Length"]) == len(body)


async def test_streamed_upload_multi_mib(proxied, client) -> None:
    """A 24 MiB upload, chunked and with a length, arrives intact."""
    _stand_in, sidecar, upstream = proxied
    size = 24 * MIB

    async def body():
        for piece in pattern_chunks(size):
            yield piece

    url = f"http://127.0.0.1:{sidecar.proxy_port}/api/upload"
    async with client.post(url, data=body()) as response:
        assert response.status == 200
    chunked = upstream.requests[-1]
    assert chunked.body_size == size
    assert chunked.body_sha256 == pattern_sha256(size)
    assert chunked.header("Transfer-Encoding") == ["chunked"]

    payload = b"".join(pattern_chunks(size))
    async with client.put(url, data=payload) as response:
        assert response.status == 200
    sized = upstream.requests[-1]
    assert sized.body_sha256 == pattern_sha256(size)
    assert sized.header("Content-Length") == [str(size)]


async def test_streamed_download_multi_mib(proxied, client) -> None:
    """A 32 MiB response arrives intact with its Content-Length."""
    _stand_in, sidecar, _upstream = proxied
    size = 32 * MIB
    digest = hashlib.sha256()

    async with client.get(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x?download={size}"
    ) as response:
        async for chunk in response.content.iter_any():
            digest.update(chunk)

    assert response.headers["Content-Length"] == str(size)
    assert digest.hexdigest() == pattern_sha256(size)


async def test_small_body_buffered_exactly(proxied, client) -> None:
    """A small JSON body arrives as sent, with its content type."""
    _stand_in, sidecar, upstream = proxied
    payload = b'{"items": [1, 2, 3]}'

    async with client.post(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/orders",
        data=payload,
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 200

    seen = upstream.requests[-1]
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert seen.header("Content-Type") == ["application/json"]
    assert seen.header("Content-Length") == [str(len(payload))]


@pytest.mark.parametrize(
    "target",
    [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2e/admin",
        "/api/%252e%252e/admin",
        "/api/..%2fadmin",
        "/api/..%5cadmin",
        "/api/./x",
        "/api/x%00y",
    ],
)
async def test_path_escape_rejected(proxied, target: str) -> None:
    """Dot segments, raw or encoded, are rejected with 400 and never forwarded."""
    _stand_in, sidecar, upstream = proxied
    before = len(upstream.requests)

    raw = await raw_exchange(
        sidecar.proxy_port,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )

    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b'"error"' in raw
    assert len(upstream.requests) == before


async def test_absolute_form_rejected(proxied) -> None:
    """An absolute-form target naming another host is rejected, not forwarded."""
    _stand_in, sidecar, upstream = proxied
    before = len(upstream.requests)

    raw = await raw_exchange(
        sidecar.proxy_port,
        b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    )

    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert len(upstream.requests) == before


async def test_connect_rejected(proxied) -> None:
    """CONNECT is rejected with a 4xx and opens no tunnel."""
    _stand_in, sidecar, upstream = proxied
    before = len(upstream.requests)

    raw = await raw_exchange(
        sidecar.proxy_port,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        head_only=True,
    )

    assert raw[:12] in (b"HTTP/1.1 405", b"HTTP/1.1 400"), raw[:200]
    assert len(upstream.requests) == before


async def test_keepalive_connections_reused(proxied, client) -> None:
    """Sequential requests reuse one pooled upstream connection."""
    _stand_in, sidecar, _upstream = proxied
    url = f"http://127.0.0.1:{sidecar.proxy_port}/api/x"
    for _ in range(20):
        async with client.get(url) as response:
            await response.read()

    connector = sidecar._sessions[1].connector
    assert connector is not None
    pooled = sum(len(connections) for connections in connector._conns.values())
    assert pooled == 1


async def test_upload_memory_stays_flat(proxied) -> None:
    """A 256 MiB chunked upload passes without the proxy buffering it."""
    import resource

    _stand_in, sidecar, upstream = proxied
    size = 256 * MIB
    block = bytes(1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def body():
        for _ in range(size // len(block)):
            yield block

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{sidecar.proxy_port}/api/upload", data=body()
        ) as response:
            assert response.status == 200

    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert upstream.requests[-1].body_size == size
    # Client, proxy and upstream share this process; buffering would add 256 MiB.
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"


def test_socket_module_available() -> None:
    """The raw socket tests need IPv4 loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))


async def test_head_request_keeps_length(proxied, client) -> None:
    """A HEAD response keeps the upstream's Content-Length and carries no body."""
    _stand_in, sidecar, upstream = proxied

    async with client.head(
        f"http://127.0.0.1:{sidecar.proxy_port}/api/x?download=5000"
    ) as response:
        body = await response.read()

    assert response.status == 200
    assert response.headers["Content-Length"] == "5000"
    assert body == b""
    assert upstream.requests[-1].method == "HEAD"


async def test_empty_post_forwarded(proxied) -> None:
    """A POST with Content-Length: 0 arrives with an empty body and that length."""
    _stand_in, sidecar, upstream = proxied

    raw = await raw_exchange(
        sidecar.proxy_port,
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )

    assert raw.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].body_size == 0
    assert upstream.requests[-1].header("Content-Length") == ["0"]


async def test_expect_continue_upload(proxied) -> None:
    """A client that sends Expect: 100-continue gets the go-ahead and its body arrives."""
    _stand_in, sidecar, upstream = proxied
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(
        b"PUT /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()

    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(b"hello")
    await writer.drain()
    final = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert interim.startswith(b"HTTP/1.1 100")
    assert final.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].body_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert upstream.requests[-1].header("Expect") == []
