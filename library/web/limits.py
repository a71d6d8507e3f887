"""Per-client rate limits on sign-in and registration (flask-limiter).

The per-email lockout (:mod:`library.auth`) stops guessing one member's password; these limits stop
one client from trying many emails, or filling the library with accounts. A client is its address
(``X-Forwarded-For`` only from the ``LIBRARY_PROXY_COUNT`` proxies trusted in front of gunicorn).
With ``memory://`` each worker counts on its own, so a deployment of N workers lets a client try up
to N times the limit; a shared storage (``redis://...``) makes it one count.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

LIMITED = {"members.login": "SIGNIN_RATE_LIMIT", "members.register": "REGISTER_RATE_LIMIT"}
"""The views that are limited, and the setting that says how much."""


def init_limits(app: Flask) -> Limiter:
    """Wrap the limited views of ``app`` in a limiter of their own (one per app, so two apps in
    one process never share counts)."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=str(app.config["RATELIMIT_STORAGE_URI"] or "memory://"),
        strategy="moving-window",
        headers_enabled=False,  # the 429 problem carries its own Retry-After
    )
    # The limited views' wrappers check their limits themselves; the check flask-limiter also runs
    # before every request is for default and application-wide limits, which this app has none of.
    app.before_request_funcs[None].remove(limiter._check_request_limit)
    # Its after-request hook adds headers (disabled above) and deducts conditional costs (none
    # here): work on every answer for nothing.
    app.after_request_funcs[None] = [
        f for f in app.after_request_funcs[None] if getattr(f, "func", None) is not Limiter._Limiter__inject_headers
    ]
    for endpoint, setting in LIMITED.items():
        value = str(app.config[setting] or "").strip()
        if value:
            view = app.view_functions[endpoint]
            app.view_functions[endpoint] = limiter.limit(value, scope=endpoint)(view)
    app.extensions["library_limiter"] = limiter
    return limiter


def retry_at(limiter: Limiter, window: int) -> tuple[int, datetime]:
    """Seconds until the breached limit lets the client in again (at most its ``window``), and
    that moment (UTC)."""
    current: Any = limiter.current_limit
    moment = datetime.now(UTC)
    if current is None:
        return window, moment + timedelta(seconds=window)
    seconds = min(window, max(1, math.ceil(current.reset_at - moment.timestamp())))
    return seconds, moment + timedelta(seconds=seconds)
