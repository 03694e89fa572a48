"""Who may call the API and how much they may send.

- :func:`check_host`: the server listens on this machine only (127.0.0.1) unless told otherwise; a
  host other machines can reach needs a token, or the server refuses to start.
- :class:`ApiGuard`: on every ``/api/*`` call, the bearer token when one is set (401 otherwise, compared
  in constant time) and the request body's size (413 from ``Content-Length`` before anything is read,
  and counted while it streams in, so a body without a length cannot run past the limit either).
- :class:`SecurityHeaders`: the page may load nothing but its own files (Content-Security-Policy),
  is never framed, sends no referrer; API answers are never cached.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skintumor.errors import ConfigError

TOKEN_ENV = "SKINTUMOR_TOKEN"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def is_local(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or ``localhost``: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """ConfigError (one line) for a host other machines can reach when no token is set."""
    if not is_local(host) and not token:
        raise ConfigError(
            f"--host {host} lets other machines reach the server: give --token T (or set {TOKEN_ENV}), "
            "or keep the default --host 127.0.0.1"
        )


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class BodyTooLarge(HTTPException):
    """Raised from the request stream once it passes the limit; FastAPI answers it with 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit / 2**20:g} MB (fewer or smaller files)")


class ApiGuard:
    """ASGI middleware for ``/api/*``: token (when set), then the body's size (``max_body`` bytes)."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.token and not token_matches(headers.get("authorization"), self.token):
            refusal = JSONResponse(
                {"detail": "missing or wrong access token (send the header Authorization: Bearer <token>)"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await JSONResponse({"detail": BodyTooLarge(self.max_body).detail}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """ASGI middleware adding the headers of the module docstring to every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                if scope["path"].startswith("/api/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
