"""Every error as an RFC 9457 problem document: one builder, one registration point."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, current_app, request
from flask_limiter.errors import RateLimitExceeded
from marshmallow import ValidationError
from werkzeug.exceptions import (
    HTTPException,
    ServiceUnavailable,
)
from werkzeug.http import HTTP_STATUS_CODES

from library.context import (
    MAX_JSON_BYTES,
)
from library.errors import DomainError
from library.web.limits import retry_at
from storage import (
    CommitUnknownError,
    ConflictError,
    CorruptFileError,
    JournalTruncatedError,
    LockTimeoutError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    StoreUnavailableError,
)

log = logging.getLogger("library_api")


def problem(status: int, detail: str, errors: dict[str, Any] | None = None, headers: Any = None) -> Response:
    """The one builder of error responses: an RFC 9457 problem document."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    response = Response(orjson.dumps(body), status=status, mimetype="application/problem+json")
    for key, value in headers or ():
        if key.lower() not in ("content-type", "content-length"):
            response.headers[key] = value
    return response


DETAILS: dict[int, Callable[[], str]] = {
    400: lambda: "Open /ws as a websocket, or poll GET /changes" if request.path == "/ws" else "Bad request",
    404: lambda: f"Nothing is at {request.path}",
    405: lambda: f"{request.method} is not allowed on {request.path}",
    413: lambda: f"The body is larger than the limit of {MAX_JSON_BYTES // 1024} KiB",
}


STORAGE_STATUS: dict[type[StorageError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    PreconditionFailedError: 412,
    JournalTruncatedError: 410,
    LockTimeoutError: 503,
    CorruptFileError: 503,
    StoreUnavailableError: 503,
    CommitUnknownError: 503,
}


def handle_http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    custom = exc.description if exc.description != type(exc).description else None
    detail = custom or (DETAILS[code]() if code in DETAILS else HTTP_STATUS_CODES.get(code, "Error"))
    return problem(code, detail, headers=exc.get_response().headers.items())


def retry_later(exc: ServiceUnavailable) -> Response:
    return problem(503, exc.description or "Try again later", headers=[("Retry-After", "5")])


def too_many_requests(exc: RateLimitExceeded) -> Response:
    """A client over its sign-in or registration limit: when it may come back, in ``detail`` and
    ``Retry-After``."""
    seconds, moment = retry_at(current_app.extensions["library_limiter"], exc.limit.limit.get_expiry())
    return problem(
        429,
        f"Too many attempts from your address (at most {exc.limit.limit}); try again after {moment:%H:%M:%S} UTC",
        headers=[("Retry-After", str(seconds))],
    )


def handle_validation_error(exc: ValidationError) -> Response:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    fields = ", ".join(sorted(messages))
    return problem(422, f"Some fields are not valid: {fields}", errors=messages)


def handle_storage_error(exc: StorageError) -> Response:
    status = next((code for kind, code in STORAGE_STATUS.items() if isinstance(exc, kind)), 500)
    if isinstance(exc, CorruptFileError):
        log.error("%s", exc)
        return problem(
            503,
            f"{exc.path.name}: {exc.reason} (line {exc.line}); writes are refused until it is fixed",
            headers=[("Retry-After", "60")],
        )
    headers = [("Retry-After", "1")] if status == 503 else None
    return problem(status, str(exc), headers=headers)


def handle_domain_error(exc: DomainError) -> Response:
    """Any refusal of the rules: its own status, its sentence, its headers."""
    return problem(exc.status, str(exc), headers=exc.headers() or None)


class StateLog:
    """Logs a lasting condition (a full disk, a missing data directory) once when it starts and
    once when it ends, not on every request that meets it."""

    def __init__(self, started: str, ended: str, quiet_after: float = 60.0) -> None:
        self.started, self.ended, self.quiet_after = started, ended, quiet_after
        self.since: float | None = None  # when the condition was last seen; None while it is not on
        self.lock = threading.Lock()

    def seen(self, on: bool, *args: Any) -> None:
        """Record whether the condition holds now; log only when that changes."""
        with self.lock:
            now = time.monotonic()
            if on:
                if self.since is None:
                    log.error(self.started, *args)
                self.since = now
            elif self.since is not None:
                self.since = None
                log.warning(self.ended, *args)

    def expired(self) -> None:
        """A condition seen only when it is met (a full disk) ends when it has not been met for a while."""
        if self.since is not None and time.monotonic() - self.since > self.quiet_after:
            self.seen(False)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
disk_full_log = StateLog(
    "The disk of the data directory is full: writes answer 507 until there is room",
    "Writes have not met a full disk for a minute",
)


def handle_os_error(exc: OSError) -> Response:
    """A full disk (or quota) is the operator's to fix, not a bug: 507, logged once."""
    if exc.errno not in DISK_FULL:
        return handle_unexpected_error(exc)
    disk_full_log.seen(True)
    return problem(
        507,
        "The server's disk is full, so the change was not saved; try again once an administrator has made room",
        headers=[("Retry-After", "60")],
    )


class DataDirectoryGuard:
    """WSGI middleware: while the data directory is missing (deleted, or its volume unmounted),
    every route answers a 503 problem (``/healthz`` too) instead of serving from memory what may
    be gone, or writing onto the wrong disk. One ``stat`` per request; logged once per change."""

    def __init__(self, app: Callable[..., Any], directory: Path) -> None:
        self.app = app
        self.directory = directory
        self.state = StateLog(
            "The data directory %s is missing: every request answers 503 until it is back",
            "The data directory %s is back: serving again",
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        missing = not self.directory.is_dir()
        self.state.seen(missing, self.directory)
        disk_full_log.expired()
        if not missing:
            return self.app(environ, start_response)
        answer = problem(
            503,
            "The data directory is missing (deleted, or its disk is not mounted); the library answers again "
            "once it is back",
            headers=[("Retry-After", "30")],
        )
        answer.headers["X-Content-Type-Options"] = "nosniff"
        answer.headers["X-Frame-Options"] = "DENY"
        return answer(environ, start_response)


def handle_unexpected_error(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return problem(500, "Something went wrong on the server; the error was logged")


def register_errors(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ServiceUnavailable, retry_later)
    app.register_error_handler(RateLimitExceeded, too_many_requests)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(StorageError, handle_storage_error)
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(OSError, handle_os_error)
    app.register_error_handler(Exception, handle_unexpected_error)
