"""Every error as an RFC 9457 problem document: one builder, one registration point."""

from __future__ import annotations

import logging
from collections.abc import Callable
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
    seconds, moment = retry_at(current_app.extensions["library_limiter"])
    return problem(
        429,
        f"Too many attempts from your address (at most {exc.limit.limit}); "
        f"try again after {moment:%H:%M:%S} UTC",
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
    app.register_error_handler(Exception, handle_unexpected_error)
