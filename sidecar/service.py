"""The running sidecar: tickets, proxy and admin listeners, started and stopped as a whole.

Start order: ticket tasks, proxy listener, admin listener, so that a startup
probe on the admin port passes only once the proxy accepts connections.
Stop order on SIGTERM: readiness turns 503, new requests are still served for
the drain delay, the proxy listener closes, in-flight requests get the grace
period, then the tickets and HTTP sessions stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import make_admin_app
from .config import Listen, Settings
from .kibo import AppTicketFetcher, CustomerTicketFetcher, KiboAuthClient
from .metrics import Metrics
from .proxy import Proxy, ProxyOptions, ProxyServer
from .state import StateFile
from .ticket import Clock, ManagedTicket, RefreshPolicy, SystemClock

log = structlog.get_logger("sidecar.service")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
FETCH_FINISH_SECONDS = 2.0


class Sidecar:
    """One sidecar instance; tests start several in one process on port 0."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self._clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self.draining = False
        self.proxy_port = 0
        self.admin_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.BaseRunner] = []
        self._proxy_runner: web.ServerRunner | None = None
        self._proxy: Proxy | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self.tickets: list[ManagedTicket] = []

    async def start(self) -> None:
        """Bind both listeners and start keeping the tickets fresh."""
        settings = self.settings
        policy = RefreshPolicy(
            fraction=settings.refresh_fraction,
            margin=settings.refresh_margin,
            jitter=settings.refresh_jitter,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
        )
        token_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.token_timeout),
            connector=aiohttp.TCPConnector(limit=8),
            headers={"User-Agent": "kibo-token-sidecar"},
        )
        upstream_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.upstream_connect_timeout,
                sock_read=settings.upstream_read_timeout,
            ),
            connector=aiohttp.TCPConnector(limit=settings.upstream_pool_size, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        self._sessions = [token_session, upstream_session]

        client = KiboAuthClient(token_session, clock=self._clock)
        app_ticket = ManagedTicket(
            "app",
            AppTicketFetcher(client, settings.auth_url, settings.client_id, settings.client_secret),
            policy=policy,
            metrics=self.metrics,
            clock=self._clock,
            rng=self._rng,
        )
        self.tickets = [app_ticket]
        customer_ticket = None
        if settings.customer is not None:
            customer = settings.customer
            fetcher = CustomerTicketFetcher(
                client,
                app_ticket,
                api_url=settings.api_url,
                username=customer.username,
                password=customer.password,
                refresh_token=customer.refresh_token,
                account_id=settings.account_id,
                app_token_wait=settings.token_timeout,
                state=StateFile(settings.state_file) if settings.state_file else None,
            )
            customer_ticket = ManagedTicket(
                "customer",
                fetcher,
                policy=policy,
                metrics=self.metrics,
                clock=self._clock,
                rng=self._rng,
            )
            self.tickets.append(customer_ticket)

        self._proxy = proxy = Proxy(
            upstream=settings.api_url,
            session=upstream_session,
            app_ticket=app_ticket,
            customer_ticket=customer_ticket,
            metrics=self.metrics,
            options=ProxyOptions(
                customer_auth_mode=settings.customer_auth_mode,
                token_wait=settings.token_wait,
                replay_body_limit=settings.replay_body_limit,
                replay_min_token_age=settings.replay_min_token_age,
                max_body_size=settings.max_body_size,
                log_requests=settings.log_level == "debug",
            ),
        )
        server = ProxyServer(
            proxy.handle,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=settings.client_idle_timeout,
            max_line_size=settings.max_header_size,
            max_field_size=settings.max_header_size,
        )
        # The grace period is enforced by Proxy.drain; aiohttp's timeout only bounds
        # the final close of connections that are idle by then.
        self._proxy_runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._proxy_runner.setup()
        self._runners.append(self._proxy_runner)
        self.proxy_port = await _bind(self._proxy_runner, settings.listen, "SIDECAR_LISTEN")

        admin_app = make_admin_app(
            metrics=self.metrics, tickets=self.tickets, draining=lambda: self.draining
        )
        admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        self.admin_port = await _bind(admin_runner, settings.admin_listen, "SIDECAR_ADMIN_LISTEN")

        # Tickets start last, so a listener that cannot bind costs no call to Kibo.
        for ticket in self.tickets:
            self._tasks.append(asyncio.create_task(ticket.run(), name=f"ticket-{ticket.name}"))

        if settings.listen.host not in LOOPBACK_HOSTS:
            log.warning(
                "proxy.exposed",
                listen=str(settings.listen),
                detail="anyone who can reach this address acts as the configured Kibo identity",
            )
        log.info(
            "sidecar.started",
            proxy=str(Listen(host=settings.listen.host, port=self.proxy_port)),
            admin=str(Listen(host=settings.admin_listen.host, port=self.admin_port)),
            upstream=str(settings.api_url),
            customer=settings.customer is not None,
        )

    async def stop(self) -> None:
        """Drain and stop: readiness off, drain delay, close the listener, wait for in-flight."""
        self.draining = True
        log.info("sidecar.draining", drain_delay_s=self.settings.drain_delay)
        if self.settings.drain_delay > 0:
            await asyncio.sleep(self.settings.drain_delay)

        runner = self._proxy_runner
        if runner is not None and self._proxy is not None:
            for site in list(runner.sites):
                await site.stop()
            # Keep-alive connections close after their current request (aiohttp 3.10+).
            pre_shutdown = getattr(runner.server, "pre_shutdown", None)
            if pre_shutdown is not None:
                pre_shutdown()
            cancelled = await self._proxy.drain(self.settings.shutdown_grace)
            if cancelled:
                log.warning(
                    "sidecar.requests_cut", count=cancelled, grace_s=self.settings.shutdown_grace
                )

        await self.close()
        log.info("sidecar.stopped")

    async def close(self) -> None:
        """Release listeners, tasks and sessions; safe after a start that failed half-way."""
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A fetch in flight may be rotating the customer refresh token, and its
        # result must reach the state file. NOTE: the wait is short because SIGKILL
        # is not far, so a fetch slower than this can still lose a rotated token.
        await asyncio.gather(*(ticket.wait_idle(FETCH_FINISH_SECONDS) for ticket in self.tickets))
        for runner in self._runners:
            if runner is not self._proxy_runner:
                await runner.cleanup()
        for session in self._sessions:
            await session.close()


class ListenError(Exception):
    """A listener could not bind; names the variable that set its address."""

    def __init__(self, variable: str, listen: Listen, reason: str) -> None:
        super().__init__(f"{variable}: cannot listen on {listen}: {reason}")
        self.variable = variable


async def _bind(runner: web.BaseRunner, listen: Listen, variable: str) -> int:
    site = web.TCPSite(runner, listen.host, listen.port)
    try:
        await site.start()
    except OSError as error:
        raise ListenError(variable, listen, error.strerror or str(error)) from None

    return int(runner.addresses[-1][1])


async def serve(settings: Settings) -> int:
    """Run a sidecar until SIGTERM or SIGINT, then drain and return the exit code."""
    sidecar = Sidecar(settings)
    try:
        await sidecar.start()
    except BaseException:
        await sidecar.close()
        raise

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    await stopping.wait()
    await sidecar.stop()
    return 0
