"""What every request to the web page passes: host and origin checks, the session cookie,
and the security headers.

The page is meant for the machine it runs on, so the defaults are strict:
- bound to a loopback address, only loopback ``Host`` names are served (a page elsewhere that
  rebinds its DNS name to 127.0.0.1 gets nothing);
- a POST must come from this page: a browser's ``Origin`` (or ``Sec-Fetch-Site``) has to say
  same-origin, and the session cookie (``SameSite=Strict``) has to be there already;
- a Content-Security-Policy allows nothing but this origin, so no asset can come from a CDN.

Each browser gets a random session token in a cookie; its chat id is a hash of the token, so
the database and the logs never hold a value that would let someone take over the session.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

COOKIE = "voicebot_session"
COOKIE_MAX_AGE = 365 * 24 * 3600
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
_CHAT = web.RequestKey("chat", str)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": with it a browser may send "Origin: null" on the page's own POSTs.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    if host.casefold() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def chat_id_for(token: str) -> str:
    """The chat id stored for a session token: a hash, so the database cannot replay it."""
    return "s" + hashlib.sha256(token.encode()).hexdigest()[:24]


def chat_of(request: web.Request) -> str:
    """This request's chat id (set by :func:`guard`)."""
    return request[_CHAT]


def refuse(status: int, message: str) -> web.Response:
    """A JSON error the page shows as it is."""
    return web.json_response({"error": message}, status=status)


def _same_origin(request: web.Request) -> bool:
    """Whether a browser says the request comes from this page; the scheme is not compared,
    so a TLS proxy in front (which must pass ``Host`` on) does not break the page."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return urlsplit(origin).netloc == request.host
    site = request.headers.get("Sec-Fetch-Site")
    return site is None or site in ("same-origin", "none")  # no header at all: not a browser


def guard(loopback_only: bool) -> Middleware:
    """The middleware; ``loopback_only`` when the server listens on a loopback address."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        hostname = urlsplit(f"//{request.host}").hostname or ""
        if loopback_only and not is_loopback(hostname):
            return refuse(403, "This page answers on localhost only.")
        token = request.cookies.get(COOKIE, "")
        if request.method not in ("GET", "HEAD"):
            if not _same_origin(request):
                return refuse(403, "Cross-site request refused.")
            if not _TOKEN.fullmatch(token):
                return refuse(403, "Your session cookie is missing: reload the page.")
        new_session = not _TOKEN.fullmatch(token)
        if new_session:
            token = secrets.token_urlsafe(32)
        request[_CHAT] = chat_id_for(token)
        response = await handler(request)
        if new_session and not response.prepared:  # only GETs start sessions, and none is streamed
            response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Strict", path="/")
        return response

    return middleware


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: a signal rather than the middleware because streamed
    responses and raised errors are sent before (or without) the middleware seeing them."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
