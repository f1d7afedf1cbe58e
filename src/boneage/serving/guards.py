"""What the service refuses before any work: a Host it is not, a cross-origin POST, a client with too many requests in
progress, a body that trickles in, and (on the HTTP connection itself) headers that never finish.

Each refusal is one JSON line (`detail`) with its status: 400, 403, 429 or 408. Pure ASGI middleware, free of the
model, so a test can drive each one alone.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence

import h11
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from boneage.errors import UserError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
CLOSE = {"Connection": "close"}  # the server drops the connection: the rest of a refused body is never received


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """Host header names the service answers to: loopback, the address it is bound to, and names given by the user.

    A browser page on another site that points its own DNS name at this address (DNS rebinding) sends that name as
    Host: refusing unknown names keeps such a page from reading the answers."""
    hosts = list(LOCAL_HOSTS)
    for name in [bind, *extra]:
        name = name.strip().lower()
        if not name or any(c.isspace() or c in "/@?#" for c in name) or name.count("*") > (name.startswith("*.")):
            raise UserError(f"--allow-host: {name!r} is not a host name (e.g. ward-pc.hospital.org or 10.1.2.3)")
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"  # an IPv6 address, as it appears in a Host header
        if name not in ("0.0.0.0", "[::]") and name not in hosts:
            hosts.append(name)
    return hosts


class SameOriginPosts:
    """A POST whose Origin header is present and is not this service's own origin (its Host) is a 403.

    Browsers send Origin with every cross-site form or fetch POST; a form on another page could otherwise make a
    user's browser post films here. Clients that are not browsers (curl, scripts) send none and are not affected."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = Headers(scope=scope)
            origin, own = headers.get("origin"), headers.get("host", "").lower()
            # host and port only: behind a TLS proxy the page is https while this server sees http
            if origin is not None and origin.rstrip("/").lower().partition("://")[2] != own:
                detail = f"cross-origin request refused (Origin {origin[:100]!r} is not {own})"
                return await JSONResponse({"detail": detail}, 403, CLOSE)(scope, receive, send)
        return await self.app(scope, receive, send)


class PerClient:
    """At most `limit` POSTs in progress (uploading, queued or in work) per client address; more is a 429."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.busy = app, limit, Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        who = (scope.get("client") or ("unknown", 0))[0]
        if self.busy[who] >= self.limit:
            detail = (f"too many requests at once from {who} (at most {self.limit} in progress per client); "
                      "wait for an answer before sending the next")
            return await JSONResponse({"detail": detail}, 429, {**CLOSE, "Retry-After": "1"})(scope, receive, send)
        self.busy[who] += 1  # the event loop is one thread: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy[who] -= 1
            if not self.busy[who]:
                del self.busy[who]


async def refuse_mid_body(app, scope, receive, send, body_receive, error: type[Exception], status: int,
                          detail: str) -> None:
    """Run `app` with its body read through `body_receive`; when that raises `error` before the response has started,
    answer `status` with `detail` and close the connection (after the start, the error propagates)."""
    started = False

    async def tracked(message):
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, body_receive, tracked)
    except error:
        if started:
            raise
        await JSONResponse({"detail": detail}, status, CLOSE)(scope, receive, send)


class _BodyTooSlow(Exception):
    pass


class SlowBody:
    """A request body must keep coming: a wait of more than `idle` seconds for its next part, or more than `total`
    seconds for all of it, is a 408 and the connection is closed (a client that trickles its upload would otherwise
    hold a connection and its spooled parts for as long as it likes)."""

    def __init__(self, app, idle: float = 15.0, total: float = 300.0):
        self.app, self.idle, self.total = app, idle, total

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline, done = loop.time() + self.total, False

        async def timed():
            nonlocal done
            if done:  # after the body: only a disconnect is waited for, as long as it takes
                return await receive()
            left = min(self.idle, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                raise _BodyTooSlow() from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        detail = f"upload too slow (no data for {self.idle:g} s, or not all of it within {self.total:g} s)"
        await refuse_mid_body(self.app, scope, receive, send, timed, _BodyTooSlow, 408, detail)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete `HEADER_TIMEOUT` seconds
    after their first byte (or after the connection opened): uvicorn's own keep-alive timer stops at the first byte,
    so a client sending a header a minute could hold a connection indefinitely."""

    HEADER_TIMEOUT = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.HEADER_TIMEOUT, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_header_timer", None) is None and self.conn.their_state is h11.IDLE:
            self._header_timer = self.loop.call_later(self.HEADER_TIMEOUT, self._headers_late)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def check_serve_options(port: int, max_upload_mb: float, per_client: int) -> None:
    """One line (`UserError`) for an option `serve` cannot run with."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: expected 1 to 65535")
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise UserError(f"--max-upload-mb {max_upload_mb:g}: expected a positive number of megabytes")
    if per_client < 1:
        raise UserError(f"--per-client {per_client}: expected at least 1")
