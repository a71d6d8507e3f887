"""The service's own routes: health, the OpenAPI document, its reader and the page."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
from flask import Blueprint, Response, current_app, send_from_directory

from library.context import (
    store,
    view,
)
from library.schemas import (
    HealthSchema,
    LibrarySchema,
)
from library.web.http import documented, json_response
from library.web.openapi import openapi_spec

bp = Blueprint("service", __name__)


log = logging.getLogger("library_api")
STATIC = Path(__file__).resolve().parents[2] / "static"
"""The page and the OpenAPI reader: ``static/`` beside the entry point."""


@bp.get("/healthz")
@documented(response=HealthSchema)
def healthz() -> Response:
    """Liveness, the data directory's current sequence number, and what refuses writes (503)."""
    current = view()
    health = store().health()
    body = {"status": "ok" if health["writable"] else "degraded", "seq": current.seq, "books": len(current.books)}
    body["backend"] = health.get("backend", "json")
    if "schema_version" in health:
        body["schema_version"] = health["schema_version"]
    if not health["writable"]:
        body["problems"] = health["problems"]
        return json_response(orjson.dumps(body), status=503)
    return json_response(orjson.dumps(body))


@bp.get("/library")
@documented(response=LibrarySchema)
def about_library() -> Response:
    """The library's name, and whether anyone may register (the page offers it only then)."""
    body = {"name": current_app.config["NAME"] or "Library", "registration": current_app.config["REGISTRATION"]}
    return json_response(orjson.dumps(body))


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """This API, described from its schemas."""
    return json_response(openapi_spec(current_app))


@bp.get("/docs")
def docs() -> Response:
    """A page to read the OpenAPI document."""
    return send_from_directory(STATIC, "docs.html")


PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # covers: our uploads, a picked file's preview, and Open Library's (which redirect to archive.org)
        "img-src 'self' data: blob: https://covers.openlibrary.org https://*.archive.org",
        # the websocket and the API; Open Library for the ISBN lookup the browser makes (and the cover it fetches)
        "connect-src 'self' https://openlibrary.org https://covers.openlibrary.org https://*.archive.org",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
"""The page's Content-Security-Policy: its own scripts and styles only (no inline ones), nothing
from elsewhere but the optional ISBN lookup."""


@bp.get("/")
def index() -> Response:
    """The page: the catalogue for everyone, and the desk for those signed in."""
    response = send_from_directory(STATIC, "index.html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["Referrer-Policy"] = "same-origin"
    return response
