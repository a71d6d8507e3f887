"""HTTP helpers shared by the blueprints: JSON in and out, conditional answers, pages, sign-in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from flask import Request, Response, current_app, g, request
from flask.json.provider import JSONProvider
from flask.sessions import SessionInterface
from marshmallow import ValidationError
from werkzeug.datastructures import FileStorage, WWWAuthenticate
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    RequestEntityTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from werkzeug.routing import BaseConverter

from library import auth, books, members, uploads
from library.context import (
    MAX_JSON_BYTES,
    UPLOAD_OVERHEAD,
    data_dir,
    store,
)
from library.schemas import (
    BookQuerySchema,
)
from storage import (
    StoreUnavailableError,
)
from storage.base import Snapshot, reads_since

log = logging.getLogger("library_api")


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: the catalogue's pages are mostly encoding, and orjson is ~5x faster."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = args[0] if len(args) == 1 else (args or kwargs)
        return current_app.response_class(orjson.dumps(obj), mimetype="application/json")


def json_response(body: bytes, status: int = 200, **headers: str) -> Response:
    return Response(body, status=status, mimetype="application/json", headers=headers)


class IdConverter(BaseConverter):
    """A path segment meant as an id: anything that is not a positive integer is id 0, which no
    record has, so ``/books/abc`` answers ``Book not found`` like any other missing book."""

    regex = r"[^/]+"

    def to_python(self, value: str) -> int:
        return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else 0

    def to_url(self, value: Any) -> str:
        return str(value)


def json_body() -> dict[str, Any]:
    """The request's JSON object.

    :raises UnsupportedMediaType: when the body is not sent as JSON.
    :raises BadRequest: when it is not valid JSON.
    :raises ValidationError: when it is JSON but not an object.
    """
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        value = orjson.loads(read_body(MAX_JSON_BYTES))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    return value


def read_body(limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes.

    :raises RequestEntityTooLarge: when it is longer, however it arrives. A chunked body has no
        length to check first, and werkzeug would cut it at the limit without a word (a truncated
        body that still parses would be taken), so it is read here to one byte past the limit.
    """
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        data = request.environ["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge()
        return data
    return request.get_data(cache=False)


CLOSE_CONNECTION = "library.close_connection"
"""Set in the WSGI environ when the connection must not be kept alive after this answer."""


class CloseUnreadBodies:
    """WSGI middleware: an answer given before the body was read (a 413) closes the connection,
    instead of gunicorn reading what may be gigabytes to reach the next request. gunicorn drops a
    ``Connection`` header set by the application, so this asks its response object directly (the
    ``start_response`` it hands over is that object's method); other servers are left as they are."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if environ.get(CLOSE_CONNECTION):
                server_response = getattr(start_response, "__self__", None)
                force_close = getattr(server_response, "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.app(environ, start)


class NoSessions(SessionInterface):
    """Sign-in is by bearer token, never a cookie: no request reads or writes a session."""

    def open_session(self, app: Any, request: Any) -> None:
        return None  # Flask hands the request a null session

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        return None


class FreshReads:
    """WSGI middleware: every read a request makes sees what was committed before it arrived, on
    any app server, and no fresher state is needed (so a store shared by several servers asks the
    database once per request, not once per read). A websocket, whose reads go on for as long as it
    is open, is left out: each of its reads is as fresh as its own call."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return self.app(environ, start_response)
        with reads_since(time.monotonic()):
            return self.app(environ, start_response)


def query_args(schema: BookQuerySchema) -> dict[str, Any]:
    return schema.load(request.args.to_dict())


def conditional(body: bytes, etag: str) -> Response:
    """A 200 with ``ETag``, or 304 when the client already has this version."""
    fresh = request.if_none_match.contains(etag.strip('"'))
    response = Response(status=304) if fresh else json_response(body)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-cache"
    return response


def private(body: bytes) -> Response:
    """A signed-in reader's answer: an ETag of its bytes (304 when the client has them), not to
    be kept by shared caches."""
    response = conditional(body, books.etag_of(body))
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def paginated(
    name: str, records: list[Any], page: int, limit: int, show: Callable[[Any], Any] = lambda record: record
) -> Response:
    """A list answer, ``{name: [...], total, page, limit, pages}``: ``show`` makes the public form
    of just the records on the page."""
    shown = [show(record) for record in records[(page - 1) * limit : page * limit]]
    body = {name: shown, "total": len(records), "page": page, "limit": limit, "pages": -(-len(records) // limit)}
    return private(orjson.dumps(body))


def documented(**doc: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach what the OpenAPI document says of a view beyond its docstring."""

    def attach(view_fn: Callable[..., Any]) -> Callable[..., Any]:
        view_fn.openapi = doc  # type: ignore[attr-defined]
        return view_fn

    return attach


ROLE_NAMES = {"member": "signed-in members", "librarian": "librarians and admins", "admin": "admins"}


def unauthorized(detail: str, invalid_token: bool = False) -> Unauthorized:
    params = {"realm": "library_api", **({"error": "invalid_token"} if invalid_token else {})}
    return Unauthorized(detail, www_authenticate=WWWAuthenticate("bearer", params))


def signed_in(role: str = "member", *, rechecked: bool = False) -> dict[str, Any]:
    """The member the request's bearer token signs in, as the store has them now.

    :param rechecked: the request writes through :func:`write_books`, which checks the member,
        their token version and the library's generation again in its transaction, under the
        commit lock. The token is then read against the state this process holds, without asking
        the store for newer commits of other processes (a round trip to the database), and only a
        token that fails there is read again against the latest state.
    :raises Unauthorized: without a token, or with one that is forged, expired, for a member who
        is gone, or issued before their role changed.
    :raises Forbidden: when their role is below ``role``.
    """
    header = request.headers.get("Authorization")
    if not header:
        raise unauthorized("Sign in first: send Authorization: Bearer <token> from POST /auth/login")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Send the token as Authorization: Bearer <token>", invalid_token=True)
    library_store = store()
    if rechecked:
        held = library_store.held()
        try:
            return _member_of(held, token.strip(), role)
        except (Unauthorized, Forbidden, StoreUnavailableError):
            latest = library_store.snapshot()  # perhaps a change this process had not taken in
            if latest is held:
                raise
        return _member_of(latest, token.strip(), role)
    return _member_of(library_store.snapshot(), token.strip(), role)


def _member_of(snap: Snapshot, token: str, role: str) -> dict[str, Any]:
    """:func:`signed_in` against ``snap``. The library the token was issued by (its identity and
    generation) is kept in ``g.signed_in_library`` for a write to check again."""
    library = auth.library_of(snap) or {"identity": "", "generation": 0}  # none yet: nothing is valid
    try:
        claims = auth.read_token(
            current_app.extensions["library_secret"], token, library, int(current_app.config["TOKEN_TTL"])
        )
    except auth.TokenError as exc:
        raise unauthorized(str(exc), invalid_token=True) from None
    member = snap.get("members", claims.member_id)
    if member is None or member.get("token_version", 0) != claims.version:
        if not store().health()["writable"]:
            # This worker may lack the latest changes while the journal is repaired: not a verdict.
            raise StoreUnavailableError(
                "The data directory (its journal or a collection file) is being repaired; try again in a moment"
            )
        raise unauthorized("The token is no longer valid; sign in again", invalid_token=True)
    if not members.at_least(member, role):
        raise Forbidden(f"Only {ROLE_NAMES[role]} can do this")
    g.signed_in_library = (library["identity"], claims.generation)
    return member


class LibraryRequest(Request):
    """Flask's request, writing uploaded files straight into the uploads folder as they arrive."""

    def _get_file_stream(
        self, total_content_length: int | None, content_type: str | None, filename: str | None = None,
        content_length: int | None = None,
    ) -> Any:  # fmt: skip
        view_fn = current_app.view_functions.get(self.endpoint or "")
        if filename is None or not getattr(view_fn, "openapi", {}).get("upload"):  # a route documented as an upload
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        stream = uploads.spool(data_dir())
        g.setdefault("upload_spools", []).append(stream)
        return stream


def received_file() -> tuple[FileStorage, int]:
    """The upload of a route documented with ``upload=True``: its one file in the multipart field
    ``file`` (spooled to disk as it arrived), and the size limit in bytes (``MAX_UPLOAD_MB``).

    :raises RequestEntityTooLarge: beyond the limit (told from Content-Length before reading).
    :raises UnsupportedMediaType: when the body is not multipart/form-data.
    :raises ValidationError: without a file, with more than one, or with a path in its name.
    """
    limit_mb = current_app.config["MAX_UPLOAD_MB"]
    limit = int(float(limit_mb) * 1024 * 1024)
    request.max_content_length = limit + UPLOAD_OVERHEAD  # werkzeug stops reading beyond it (413)
    request.max_form_parts = 4  # each file part would hold a file open until the request ends
    too_large = f"The file is larger than the limit of {limit_mb} MB"
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise RequestEntityTooLarge(too_large)
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Send the file as multipart/form-data, in the field file")
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        if request.content_length is not None and request.content_length <= request.max_content_length:
            raise ValidationError({"file": ["Send the file alone, in the field file."]}) from None  # too many parts
        raise RequestEntityTooLarge(too_large) from None
    if upload is None:
        raise ValidationError({"file": ["Send the file in the multipart field file."]})
    if len(request.files.getlist("file")) > 1 or len(request.files) > 1:
        raise ValidationError({"file": ["Send one file, in the field file."]})
    client_name = upload.filename or ""
    if any(bad in client_name for bad in ("/", "\\", "\x00", "..")):
        raise ValidationError({"file": ["The file name must not contain a path, .. or NUL."]})
    return upload, limit


def safe_headers(response: Response) -> Response:
    """On every answer: no type sniffing, and no framing by another site (clickjacking). A 413,
    or a refusal of a request whose body may be large (a 401 before a 50 MB upload was read),
    closes the connection."""
    if response.status_code == 413 or (response.status_code >= 400 and unread_body_may_be_large()):
        request.environ[CLOSE_CONNECTION] = True
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if response.mimetype == "text/html" and "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return response


DRAIN_LIMIT = 64 * 1024
"""A refused request's body up to this size is left for gunicorn to read past (cheap, and the
connection is kept); beyond it, or of unknown size, the connection is closed instead."""


def unread_body_may_be_large() -> bool:
    length = request.content_length
    return (length or 0) > DRAIN_LIMIT or (length is None and "chunked" in request.headers.get("Transfer-Encoding", ""))


def drop_spools(exc: BaseException | None) -> None:
    """Whatever an upload request spooled and did not keep (refused, too large, a crash of the
    request) is removed when it ends."""
    for stream in g.pop("upload_spools", []):
        stream.close()
        Path(stream.name).unlink(missing_ok=True)


def if_match() -> Any:
    return request.if_match if "If-Match" in request.headers else None


def optional_json_body() -> dict[str, Any]:
    """Like :func:`json_body`, but an empty body is an empty object."""
    if not request.content_length and "Transfer-Encoding" not in request.headers:
        return {}
    return json_body()
