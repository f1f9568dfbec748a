"""The proxy handler: forward one app request to the Kibo API with fresh credentials.

Bodies stream in both directions and the target's path and query pass byte
for byte. Hop-by-hop headers (RFC 9110 section 7.6.1) are dropped, and
compressed responses pass through untouched. Only the configured upstream is ever
contacted. A 401 `invalid_token` response refreshes the ticket and replays the
request once, when its body was small enough to keep.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import aiohttp
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import CustomerAuthMode
from .errors import TicketError
from .metrics import Metrics
from .ticket import ManagedTicket
from .token import Token

log = structlog.get_logger("sidecar.proxy")

# RFC 9110 section 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE,
# Transfer-Encoding and Upgrade; Trailer and the Proxy-Auth pair are
# connection-scoped as well (RFC 9110 sections 6.6.2 and 11.7).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Replaced by the sidecar, or set by the HTTP client for the upstream host.
REQUEST_REPLACED = frozenset({"host", "authorization", "x-vol-user-claims", "expect"})
REQUEST_DROPPED = HOP_BY_HOP | REQUEST_REPLACED

_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
CHUNK_SIZE = 64 * 1024
MAX_401_BODY = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class ProxyOptions:
    """The proxy's limits and modes, taken from Settings."""

    customer_auth_mode: CustomerAuthMode = "user-claims"
    token_wait: float = 5.0
    replay_body_limit: int = 64 * 1024
    # A token younger than this that the upstream rejects is not refreshed for it:
    # the rejection is then most likely about permissions, not expiry.
    replay_min_token_age: float = 5.0
    max_body_size: int = 2 * 1024**3
    log_requests: bool = False


class RequestRejected(Exception):
    """The request cannot be forwarded; carries the status and a short reason."""

    def __init__(self, status: int, error: str, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after = retry_after


class Proxy:
    """Forwards requests to `upstream`, injecting the tickets' current tokens."""

    def __init__(
        self,
        *,
        upstream: URL,
        session: aiohttp.ClientSession,
        app_ticket: ManagedTicket,
        customer_ticket: ManagedTicket | None,
        metrics: Metrics,
        options: ProxyOptions,
    ) -> None:
        self._base = str(upstream).rstrip("/")
        self._session = session
        self._app_ticket = app_ticket
        self._customer_ticket = customer_ticket
        self._metrics = metrics
        self._options = options
        self._active: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._injected_cache: tuple[Token, Token | None, dict[str, str]] | None = None
        self._failure_log = _RateLimitedLog(interval=1.0)

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for in-flight requests, then cancel the rest.

        Returns how many requests were cancelled. aiohttp's own shutdown cannot
        interrupt a handler that is waiting on the upstream, so the proxy
        cancels its handlers itself.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            pass

        leftover = list(self._active)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=1.0)

        return len(leftover)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one proxied request; every outcome is counted and timed."""
        started = time.perf_counter()
        metrics = self._metrics
        metrics.in_flight.inc()
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
            self._idle.clear()
        status = 0
        try:
            response = await self._forward(request)
            status = response.status
            return response
        except RequestRejected as rejection:
            status = rejection.status
            return _error_response(rejection)
        except asyncio.CancelledError:
            # The client went away; 499 is the customary code for that in access logs.
            status = 499
            raise
        except ConnectionError:
            # The client closed the connection while the response was being written.
            status = 499
            raise
        except Exception as error:
            # A bug: aiohttp turns it into a 500 through the server's handle_error.
            status = 500
            log.error("proxy.handler_crashed", error=type(error).__name__)
            raise
        finally:
            metrics.in_flight.dec()
            if task is not None:
                self._active.discard(task)
                if not self._active:
                    self._idle.set()
            duration = time.perf_counter() - started
            metrics.proxy_duration.observe(duration)
            metrics.count_request(request.method, status)
            if self._options.log_requests:
                log.debug(
                    "proxy.request",
                    method=request.method,
                    path=request.raw_path.partition("?")[0],
                    status=status,
                    duration_s=round(duration, 4),
                )

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        target = self._target(request)
        # The body is read first: reading a buffered body can take long, and the
        # token must still be valid when the request leaves.
        body, replayable = await self._body(request)
        tokens = await self._tokens()
        headers = _forward_headers(request.headers)

        upstream = await self._send(request.method, target, headers, tokens, body)
        try:
            prefix = b""
            if upstream.status == 401 and replayable:
                prefix, invalid_token = await _read_401(upstream)
                retried = None
                if invalid_token:
                    retried = await self._replay(request.method, target, headers, tokens, body)
                if retried is not None:
                    upstream.release()
                    upstream, prefix = retried, b""

            return await self._stream_back(request, upstream, prefix)
        finally:
            upstream.release()

    def _target(self, request: web.BaseRequest) -> URL:
        method = request.method
        if method == "CONNECT":
            raise RequestRejected(405, "method_not_allowed", "CONNECT is not supported")

        raw = request.raw_path
        if not raw.startswith("/"):
            # Absolute-form targets (RFC 9112 section 3.2.2) could name another host.
            raise RequestRejected(
                400, "bad_target", "only origin-form request targets are accepted"
            )

        path = raw.partition("?")[0]
        if _escapes_base(path):
            raise RequestRejected(
                400, "bad_path", "the path contains dot segments or control characters"
            )

        length = request.content_length
        if length is not None and length > self._options.max_body_size:
            raise _body_too_large(self._options.max_body_size)

        return URL(self._base + raw, encoded=True)

    async def _tokens(self) -> tuple[Token, Token | None]:
        """Return the tokens to inject, waiting briefly only when none is valid."""
        app = self._app_ticket.valid_token()
        customer_ticket = self._customer_ticket
        customer = customer_ticket.valid_token() if customer_ticket is not None else None
        if app is not None and (customer is not None or customer_ticket is None):
            return app, customer

        wait = self._options.token_wait
        if app is None:
            app = await self._app_ticket.wait_valid(wait)
        if app is None:
            raise _no_token(self._app_ticket)
        if customer_ticket is not None and customer is None:
            customer = await customer_ticket.wait_valid(wait)
            if customer is None:
                raise _no_token(customer_ticket)

        return app, customer

    async def _body(self, request: web.BaseRequest) -> tuple[object, bool]:
        """Return the body to send upstream and whether it can be sent a second time."""
        if request.headers.get("Expect", "").lower() == "100-continue":
            # The low-level server does not handle Expect itself; without this a
            # client such as curl stalls for a second before every large upload.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        length = request.content_length
        if not request.body_exists:
            return None, True
        if length is not None and length <= self._options.replay_body_limit:
            return await request.read(), True
        if length is not None:
            return request.content, False

        return _LimitedBody(request.content, self._options.max_body_size), False

    def _injected(self, tokens: tuple[Token, Token | None]) -> dict[str, str]:
        """Return the credential headers for `tokens`, built once per token pair."""
        cached = self._injected_cache
        if cached is not None and cached[0] is tokens[0] and cached[1] is tokens[1]:
            return cached[2]

        headers = self._build_injected(tokens)
        self._injected_cache = (tokens[0], tokens[1], headers)
        return headers

    def _build_injected(self, tokens: tuple[Token, Token | None]) -> dict[str, str]:
        app, customer = tokens
        if customer is None:
            return {"Authorization": f"Bearer {app.access_token}"}
        if self._options.customer_auth_mode == "jwt-bearer" and customer.jwt_access_token:
            return {"Authorization": f"Bearer {customer.jwt_access_token}"}

        return {
            "Authorization": f"Bearer {app.access_token}",
            "x-vol-user-claims": customer.access_token,
        }

    async def _send(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        tokens: tuple[Token, Token | None],
        body: object,
    ) -> aiohttp.ClientResponse:
        outgoing = CIMultiDict(headers)
        outgoing.update(self._injected(tokens))
        data = body.__aiter__() if isinstance(body, _LimitedBody) else body
        try:
            return await self._session.request(
                method, target, headers=outgoing, data=data, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError, RequestRejected) as error:
            if isinstance(body, _LimitedBody) and body.exceeded:
                # aiohttp reports the aborted upload as a connection error.
                raise _body_too_large(self._options.max_body_size) from None
            raise self._upstream_failure(method, error) from None

    def _upstream_failure(self, method: str, error: Exception) -> RequestRejected:
        if isinstance(error, RequestRejected):
            return error

        if isinstance(error, aiohttp.ConnectionTimeoutError):
            # No connection within the connect timeout, including the wait for a
            # free slot in a full pool: the upstream was never reached.
            kind = "connect"
            rejection = RequestRejected(
                502, "upstream_unreachable", "no connection to the upstream within the timeout"
            )
        elif isinstance(error, TimeoutError):
            kind = "timeout"
            rejection = RequestRejected(
                504, "upstream_timeout", "the upstream did not respond in time"
            )
        elif isinstance(error, aiohttp.ClientConnectorError):
            kind = "connect"
            rejection = RequestRejected(
                502, "upstream_unreachable", "the upstream cannot be reached"
            )
        else:
            kind = "protocol"
            rejection = RequestRejected(502, "upstream_failed", "the upstream connection failed")
        self._metrics.upstream_errors.labels(kind=kind).inc()
        self._failure_log.warning(
            "proxy.upstream_failed", kind, method=method, kind=kind, error=type(error).__name__
        )
        return rejection

    async def _replay(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        tokens: tuple[Token, Token | None],
        body: object,
    ) -> aiohttp.ClientResponse | None:
        """Send the request once more with newer tokens, refreshing the rejected ones.

        Returns None when no newer token can be had (the refresh failed, or the
        rejected tokens were too new to blame on expiry), so the 401 is passed on.
        """
        app, customer = tokens
        try:
            fresh_app = await self._app_ticket.refresh_rejected(
                app, min_age=self._options.replay_min_token_age
            )
            fresh_customer = None
            if self._customer_ticket is not None and customer is not None:
                fresh_customer = await self._customer_ticket.refresh_rejected(
                    customer, min_age=self._options.replay_min_token_age
                )
        except TicketError as error:
            log.warning("proxy.replay_refresh_failed", error=str(error))
            return None

        if fresh_app is None and fresh_customer is None:
            return None

        self._metrics.proxy_replays.inc()
        log.info("proxy.replayed", method=method, reason="invalid_token")
        replay_tokens = (fresh_app or app, fresh_customer or customer)
        return await self._send(method, target, headers, replay_tokens, body)

    async def _stream_back(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, prefix: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_response_headers(upstream.headers))
        await response.prepare(request)

        try:
            if prefix:
                await response.write(prefix)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, TimeoutError) as error:
            # The status line is gone already; cutting the connection is the only
            # way left to tell the client that the body is incomplete.
            self._metrics.upstream_errors.labels(kind="body").inc()
            self._failure_log.warning(
                "proxy.upstream_failed", "body", kind="body", error=type(error).__name__
            )
            if request.transport is not None:
                request.transport.abort()
            return response

        await response.write_eof()
        return response


def _forward_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return _without(incoming, REQUEST_DROPPED)


def _response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return _without(incoming, HOP_BY_HOP)


def _without(incoming: CIMultiDictProxy[str], dropped: frozenset[str]) -> CIMultiDict[str]:
    """Copy `incoming` without the `dropped` names and those its Connection header names."""
    connection_named = _connection_tokens(incoming)
    outgoing: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered in dropped or lowered in connection_named:
            continue
        outgoing.add(name, value)

    return outgoing


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()

    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


def _escapes_base(path: str) -> bool:
    """Return True if the path has dot segments or control bytes, raw or percent-encoded."""
    decoded = path
    for _ in range(3):
        # Decoding up to three times catches double and triple encoding (%252e%252e).
        if ("." in decoded or "\\" in decoded) and any(
            segment in (".", "..") for segment in decoded.replace("\\", "/").split("/")
        ):
            return True
        if _CONTROL_CHARACTER.search(decoded):
            return True
        if "%" not in decoded:
            return False
        next_decoded = unquote(decoded)
        if next_decoded == decoded:
            return False
        decoded = next_decoded

    return True


class _LimitedBody:
    """A chunked request body that stops the upload once it passes `limit` bytes."""

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._content.iter_chunked(CHUNK_SIZE):
            size += len(chunk)
            if size > self._limit:
                self.exceeded = True
                raise _body_too_large(self._limit)
            yield chunk


def _body_too_large(limit: int) -> RequestRejected:
    return RequestRejected(413, "body_too_large", f"the request body is larger than {limit} bytes")


async def _read_401(upstream: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Read the start of a 401 body and tell whether it rejects the token as invalid_token.

    The bytes read are returned so the 401 can still be passed on whole.
    """
    raw = b""
    try:
        while len(raw) < MAX_401_BODY:
            chunk = await upstream.content.read(MAX_401_BODY - len(raw))
            if not chunk:
                break
            raw += chunk
    except (aiohttp.ClientError, TimeoutError):
        return raw, False

    if "invalid_token" in upstream.headers.get("WWW-Authenticate", ""):
        return raw, True
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw, False

    invalid = isinstance(body, dict) and "invalid_token" in (body.get("message"), body.get("error"))
    return raw, invalid


def _no_token(ticket: ManagedTicket) -> RequestRejected:
    if ticket.failure is not None:
        reason = f"the {ticket.name} ticket has failed and needs operator action"
    elif ticket.token is not None:
        reason = f"the {ticket.name} token has expired and its refresh has not succeeded yet"
    else:
        reason = f"no valid {ticket.name} token yet"
    return RequestRejected(503, "no_token", reason, retry_after=1)


def _error_response(rejection: RequestRejected) -> web.Response:
    headers = {}
    if rejection.retry_after is not None:
        headers["Retry-After"] = str(rejection.retry_after)

    return web.json_response(
        {"error": rejection.error, "message": str(rejection)},
        status=rejection.status,
        headers=headers,
    )


class _RateLimitedLog:
    """Logs at most one warning per key and interval; the rest are counted and summed up.

    A down upstream fails every request, and one line a second with a count
    carries as much information as thousands of identical lines. The count of
    a window is logged when the window ends, so no failure goes unreported.
    """

    def __init__(self, *, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, tuple[int, str, dict[str, object]]] = {}

    def warning(self, event: str, key: str, **fields: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self._interval:
            self._last[key] = now
            log.warning(event, **fields)
            return

        count = self._suppressed.get(key, (0, event, fields))[0]
        if count == 0:
            asyncio.get_running_loop().call_later(last + self._interval - now, self._flush, key)
        self._suppressed[key] = (count + 1, event, fields)

    def _flush(self, key: str) -> None:
        count, event, fields = self._suppressed.pop(key, (0, "", {}))
        if count:
            self._last[key] = time.monotonic()
            log.warning(event, suppressed=count, **fields)


# Explanations for aiohttp's parser errors, by exception class name.
_BAD_REQUEST_REASONS = {
    "LineTooLong": "the request line or a header field is longer than SIDECAR_MAX_HEADER_BYTES",
    "BadHttpMessage": "the request is not valid HTTP/1.1",
    "BadHttpMethod": "the request method is not valid",
    "BadStatusLine": "the request line is not valid",
    "InvalidHeader": "a request header is not valid",
}


class ProxyServer(web.Server):
    """The low-level aiohttp server, with JSON error responses for requests it cannot parse.

    aiohttp's default error page is plain text and its log record carries a
    traceback that quotes the start of the offending header or request line,
    which can be a token. Here the log line names only the status and the
    error type.
    """

    def __call__(self) -> RequestHandler:
        # Mirrors web.Server.__call__, which offers no other way to pick the handler class.
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning(
            "proxy.bad_request",
            status=status,
            error=type(exc).__name__ if exc is not None else None,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started, so no error response can be sent")

        reason = _BAD_REQUEST_REASONS.get(type(exc).__name__) if exc is not None else None
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "Error"
        response = web.json_response(
            {"error": "bad_request" if status < 500 else "internal_error", "message": reason},
            status=status,
        )
        response.force_close()
        return response
