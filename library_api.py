"""library_api: a small library server keeping its catalogue in plain JSON files.

Read top to bottom: settings, the JSON codec, errors, request helpers, routes (books, then the
service routes), the OpenAPI document, command-line commands, and ``create_app`` last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson
from flask import Blueprint, Flask, Request, Response, current_app, g, request, send_from_directory, url_for
from flask.cli import with_appcontext
from flask.json.provider import JSONProvider
from flask_cors import CORS
from flask_sock import Sock
from marshmallow import ValidationError
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter

import auth
import catalogue
import circulation
import live
import loader
import members
import operations
import readcache
import records
import uploads
from catalogue import BookQuery, CatalogueView, WriterIndex
from schemas import (
    BookListSchema,
    BookQuerySchema,
    BookSchema,
    BorrowSchema,
    ChangesQuerySchema,
    ChangesSchema,
    EnrolSchema,
    HealthSchema,
    HoldListSchema,
    HoldQuerySchema,
    HoldRequestSchema,
    HoldSchema,
    LoanListSchema,
    LoanQuerySchema,
    LoanSchema,
    LoginSchema,
    MemberListSchema,
    MemberQuerySchema,
    MemberSchema,
    MessageSchema,
    PaymentResultSchema,
    PaymentSchema,
    ProblemSchema,
    RegisterSchema,
    TokenSchema,
    book_patch_schema,
    book_query_schema,
    book_schema,
    borrow_schema,
    changes_query_schema,
    enrol_schema,
    hold_query_schema,
    hold_request_schema,
    loan_query_schema,
    login_schema,
    member_patch_schema,
    member_query_schema,
    payment_schema,
    register_schema,
)
from storage import (
    ConflictError,
    CorruptFileError,
    JournalTruncatedError,
    JsonStore,
    LockTimeoutError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    StoreUnavailableError,
    Txn,
)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("library_api")
sock = Sock()


# -- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


SETTINGS = (
    Setting(
        "DATA_DIR", "", "Folder of the data files (books.json, journal.jsonl, ...). Empty: Flask's instance folder."
    ),
    Setting(
        "SEED_FILE", str(HERE / "books.json"), 'Catalogue a new, empty data directory starts with. "" starts empty.'
    ),
    Setting("LOCK_TIMEOUT", 10.0, "Seconds a write waits for the data directory's lock before answering 503."),
    Setting("JOURNAL_KEEP", 10000, "Changes the journal keeps for clients catching up; older ones answer 410."),
    Setting(
        "CHECKPOINT_CHANGES",
        20000,
        "Changes after which the collection files are rewritten even while writes go on (else about a second "
        "after writes stop).",
    ),
    Setting(
        "READ_CACHE_MB", 32, "Memory per worker for repeated catalogue pages (served without Flask); 0 turns it off."
    ),
    Setting("CORS_ORIGINS", "", 'Other origins whose pages may use the API: comma-separated, or "*".'),
    Setting("WS_MAX_CONNECTIONS", 24, "Live websocket clients per worker; keep it below GUNICORN_THREADS."),
    Setting("WS_PING_SECONDS", 25, "Seconds between keep-alive pings; a client silent for two is dropped."),
    Setting(
        "SECRET_KEY",
        "",
        "Signs sign-in tokens; at least 32 bytes. Empty: one is generated into the data directory "
        "(secret.key) and shared by every worker.",
    ),
    Setting("TOKEN_TTL", 86400, "Seconds a sign-in token stays valid."),
    Setting("MAX_LOANS", 5, "Books one member may have on loan at once."),
    Setting("LOAN_DAYS", 14, "Days of a loan when the borrower does not say."),
    Setting("MAX_LOAN_DAYS", 60, "The longest loan a borrower may ask for, in days."),
    Setting("MAX_RENEWALS", 2, "How many times one loan may be renewed."),
    Setting("FINE_PER_DAY", "0.50", "Fine for each UTC calendar day a book is returned late."),
    Setting("FINE_GRACE_DAYS", 0, "Days late that cost nothing; beyond them every late day counts."),
    Setting("MAX_FINE", "20.00", "The most one loan's fine can reach."),
    Setting("MAX_FINES_DUE", "10.00", "A member who owes more than this cannot borrow until they pay."),
    Setting("HOLD_DAYS", 3, "Days a returned book is kept for the first member waiting for it."),
    Setting("MAX_UPLOAD_MB", 10, "The largest cover or document accepted, in MB (413 beyond it)."),
    Setting(
        "WARN_EPHEMERAL_DISK",
        True,
        "Warn at start-up when, on a PaaS, the data directory looks like the platform's throw-away disk.",
    ),
)
"""Every setting: ``LIBRARY_<NAME>`` in the environment (or ``.env``), ``<NAME>`` in app.config."""

MAX_JSON_BYTES = 1024 * 1024
UPLOAD_OVERHEAD = 64 * 1024
"""Room for the multipart framing around an upload of the largest allowed size."""
COLLECTIONS = ("books", "members", "loans", "holds", "payments", "logins")
"""One JSON file each in the data directory."""


# -- JSON --------------------------------------------------------------------------------------------


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


# -- errors ------------------------------------------------------------------------------------------


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
}


def handle_http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    custom = exc.description if exc.description != type(exc).description else None
    detail = custom or (DETAILS[code]() if code in DETAILS else HTTP_STATUS_CODES.get(code, "Error"))
    return problem(code, detail, headers=exc.get_response().headers.items())


def retry_later(exc: ServiceUnavailable) -> Response:
    return problem(503, exc.description or "Try again later", headers=[("Retry-After", "5")])


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


def handle_permission_denied(exc: members.PermissionDenied) -> Response:
    return problem(403, str(exc))


def handle_locked_out(exc: auth.LockedOut) -> Response:
    return problem(429, str(exc), headers=[("Retry-After", str(exc.retry_after))])


def handle_unexpected_error(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return problem(500, "Something went wrong on the server; the error was logged")


def register_errors(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ServiceUnavailable, retry_later)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(StorageError, handle_storage_error)
    app.register_error_handler(members.PermissionDenied, handle_permission_denied)
    app.register_error_handler(auth.LockedOut, handle_locked_out)
    app.register_error_handler(Exception, handle_unexpected_error)


# -- request helpers ---------------------------------------------------------------------------------


class IdConverter(BaseConverter):
    """A path segment meant as an id: anything that is not a positive integer is id 0, which no
    record has, so ``/books/abc`` answers ``Book not found`` like any other missing book."""

    regex = r"[^/]+"

    def to_python(self, value: str) -> int:
        return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else 0

    def to_url(self, value: Any) -> str:
        return str(value)


def store() -> JsonStore:
    return current_app.extensions["library_store"]


def writer_index() -> WriterIndex:
    return current_app.extensions["library_writer_index"]


def view() -> CatalogueView:
    library_store = store()
    return CatalogueView.of(library_store.snapshot(), library_store)


def json_body() -> dict[str, Any]:
    """The request's JSON object.

    :raises UnsupportedMediaType: when the body is not sent as JSON.
    :raises BadRequest: when it is not valid JSON.
    :raises ValidationError: when it is JSON but not an object.
    """
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        value = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    return value


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
    response = conditional(body, catalogue.etag_of(body))
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


def book_response(book: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the record as this request stored it (even if another request has
    changed or deleted it since), with its status now."""
    body = orjson.dumps(catalogue.public_book(book, *view().status(book["id"])))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = catalogue.etag_of(body)
    return response


def write_books(updater: Callable[..., Any], actor: dict[str, Any] | None = None) -> Any:
    """Run a catalogue write in one transaction, with the writer's index up to date; ``actor``
    must still be a librarian (or admin) as the transaction sees them."""

    # Group commit may run this updater on another request's thread (or the housekeeper's): it
    # must not touch the request or the app context, only what was captured here.
    def run(txn: Any) -> Any:
        if actor is not None:
            current = members.actor_in(txn, actor["id"])
            if current.get("token_version", 0) != actor.get("token_version", 0):
                raise members.PermissionDenied("Your role changed; sign in again")
        return updater(txn)

    return catalogue.with_index(store(), writer_index(), run)


# Updaters passed to store().update() may run on another thread than their request's (group
# commit: the thread that takes the lock runs every waiting updater). So each route reads the
# request, the app and the clock *before* it builds its updater, which uses only those values.


def documented(**doc: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach what the OpenAPI document says of a view beyond its docstring."""

    def attach(view_fn: Callable[..., Any]) -> Callable[..., Any]:
        view_fn.openapi = doc  # type: ignore[attr-defined]
        return view_fn

    return attach


def now() -> datetime:
    """The current time; tests set ``CLOCK`` in the config to control it."""
    clock = current_app.config.get("CLOCK")
    return clock() if clock is not None else datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- sign-in -------------------------------------------------------------------------------------------

ROLE_NAMES = {"member": "signed-in members", "librarian": "librarians and admins", "admin": "admins"}


def unauthorized(detail: str, invalid_token: bool = False) -> Unauthorized:
    params = {"realm": "library_api", **({"error": "invalid_token"} if invalid_token else {})}
    return Unauthorized(detail, www_authenticate=WWWAuthenticate("bearer", params))


def signed_in(role: str = "member") -> dict[str, Any]:
    """The member the request's bearer token signs in, as the store has them now.

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
    try:
        claims = auth.read_token(current_app.extensions["library_secret"], token.strip())
    except auth.TokenError as exc:
        raise unauthorized(str(exc), invalid_token=True) from None
    member = store().snapshot().get("members", claims.member_id)
    if member is None or member.get("token_version", 0) != claims.version:
        if not store().health()["writable"]:
            # This worker may lack the latest changes while the journal is repaired: not a verdict.
            raise StoreUnavailableError("The data directory is being repaired; try again in a moment")
        raise unauthorized("The token is no longer valid; sign in again", invalid_token=True)
    if not members.at_least(member, role):
        raise Forbidden(f"Only {ROLE_NAMES[role]} can do this")
    return member


# -- routes: books -----------------------------------------------------------------------------------

api = Blueprint("api", __name__)


@api.get("/books")
@documented(query=BookQuerySchema, response=BookListSchema, errors=(422,))
def list_books() -> Response:
    """List books: filter, search, sort and paginate."""
    query = BookQuery(**query_args(book_query_schema))
    current = view()
    request.environ[readcache.ENVIRON_KEY] = current.version
    return conditional(catalogue.list_books(current, query), f'"{current.version}"')


@api.post("/books")
@documented(body=BookSchema, response=BookSchema, status=201, errors=(400, 409, 415, 422), auth="librarian")
def create_book() -> Response:
    """Add a book, or update the one with the same ISBN or title, author and year (200)."""
    actor = signed_in("librarian")
    data = book_schema.load(json_body())
    index, moment = writer_index(), catalogue.utcnow()
    book, outcome = write_books(lambda txn: catalogue.upsert_book(txn, index, data, moment), actor)
    if outcome == "created":
        return book_response(book, 201, Location=url_for("api.get_book", book_id=book["id"]))
    return book_response(book)


@api.get("/books/<id:book_id>")
@documented(response=BookSchema, errors=(404,))
def get_book(book_id: int) -> Response:
    """Get one book."""
    current = view()
    if book_id not in current.books:
        raise NotFound("Book not found")
    request.environ[readcache.ENVIRON_KEY] = current.version
    return conditional(current.encoded(book_id), current.etag(book_id))


@api.put("/books/<id:book_id>")
@documented(body=BookSchema, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def replace_book(book_id: int) -> Response:
    """Replace a book: fields left out are cleared."""
    actor = signed_in("librarian")
    data = book_schema.load(json_body())
    index, moment, condition = writer_index(), catalogue.utcnow(), if_match()
    book = write_books(lambda txn: catalogue.replace_book(txn, index, book_id, data, moment, condition), actor)
    return book_response(book)


@api.patch("/books/<id:book_id>")
@documented(body=BookSchema, partial=True, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def update_book(book_id: int) -> Response:
    """Change some fields of a book."""
    actor = signed_in("librarian")
    data = book_patch_schema.load(json_body())
    index, moment, condition = writer_index(), catalogue.utcnow(), if_match()
    book = write_books(lambda txn: catalogue.patch_book(txn, index, book_id, data, moment, condition), actor)
    return book_response(book)


@api.delete("/books/<id:book_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="librarian")
def delete_book(book_id: int) -> Response:
    """Delete a book (not while it is on loan)."""
    actor = signed_in("librarian")
    condition, moment = if_match(), stamp(now())
    book = write_books(lambda txn: catalogue.delete_book(txn, book_id, condition, moment), actor)
    for field in ("cover_url", "document_url"):  # its files go with it
        uploads.remove(data_dir(), file_name(book.get(field)))
    return json_response(orjson.dumps({"message": "Book deleted successfully"}))


# -- routes: covers and documents ------------------------------------------------------------------


@api.post("/books/<id:book_id>/cover")
@documented(upload=True, response=BookSchema, errors=(404, 413, 415, 422), auth="librarian")
def upload_cover(book_id: int) -> Response:
    """Attach a cover image (JPEG, PNG, WebP or GIF) to a book, replacing the one it had."""
    return attach_file(book_id, "cover")


@api.post("/books/<id:book_id>/document")
@documented(upload=True, response=BookSchema, errors=(404, 413, 415, 422), auth="librarian")
def upload_document(book_id: int) -> Response:
    """Attach a document (PDF or EPUB) to a book, replacing the one it had."""
    return attach_file(book_id, "document")


@api.get("/uploads/<name>")
def uploaded_file(name: str) -> Response:
    """A cover or document, under the name its book's ``cover_url`` or ``document_url`` gives.
    Names are never reused, so the answer may be cached for good."""
    if not uploads.NAME.fullmatch(name):
        raise NotFound("File not found")
    kind = uploads.BY_EXTENSION[name.rsplit(".", 1)[1]]
    document = kind in uploads.KINDS["document"]
    response = send_from_directory(
        data_dir() / uploads.FOLDER,
        name,
        mimetype=kind.media_type,
        max_age=31536000,
        etag=True,
        conditional=True,
        as_attachment=document,  # a document is downloaded, never rendered in our origin
    )
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def data_dir() -> Path:
    return Path(store().directory)


class LibraryRequest(Request):
    """Flask's request, writing uploaded files straight into the uploads folder as they arrive."""

    def _get_file_stream(
        self, total_content_length: int | None, content_type: str | None, filename: str | None = None,
        content_length: int | None = None,
    ) -> Any:  # fmt: skip
        if filename is None or not (self.endpoint or "").startswith("api.upload_"):
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        stream = uploads.spool(data_dir())
        g.setdefault("upload_spools", []).append(stream)
        return stream


def drop_spools(exc: BaseException | None) -> None:
    """Whatever an upload request spooled and did not keep (refused, too large, a crash of the
    request) is removed when it ends."""
    for stream in g.pop("upload_spools", []):
        stream.close()
        Path(stream.name).unlink(missing_ok=True)


def file_name(url: str | None) -> str | None:
    return url.rsplit("/", 1)[-1] if url else None


def attach_file(book_id: int, purpose: str) -> Response:
    """Stream the upload to disk (judged by its bytes, within the size limit), then point the book
    at it, then remove the file it replaces. A failure leaves the book as it was."""
    actor = signed_in("librarian")
    if book_id not in view().books:
        raise NotFound("Book not found")
    limit = int(float(current_app.config["MAX_UPLOAD_MB"]) * 1024 * 1024)
    request.max_content_length = limit + UPLOAD_OVERHEAD  # werkzeug stops reading beyond it (413)
    request.max_form_parts = 4  # each file part would hold a file open until the request ends
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise RequestEntityTooLarge(f"The file is larger than the limit of {current_app.config['MAX_UPLOAD_MB']} MB")
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Send the file as multipart/form-data, in the field file")
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        if request.content_length is not None and request.content_length <= request.max_content_length:
            raise ValidationError({"file": ["Send the file alone, in the field file."]}) from None  # too many parts
        too_large = f"The file is larger than the limit of {current_app.config['MAX_UPLOAD_MB']} MB"
        raise RequestEntityTooLarge(too_large) from None
    if upload is None:
        raise ValidationError({"file": ["Send the file in the multipart field file."]})
    if len(request.files.getlist("file")) > 1 or len(request.files) > 1:
        raise ValidationError({"file": ["Send one file, in the field file."]})
    client_name = upload.filename or ""
    if any(bad in client_name for bad in ("/", "\\", "\x00", "..")):
        raise ValidationError({"file": ["The file name must not contain a path, .. or NUL."]})
    try:
        name, _, _ = uploads.save(upload.stream, purpose, limit)
    except uploads.UploadError as exc:
        return problem(exc.status, str(exc))
    field, url, moment = f"{purpose}_url", f"/uploads/{name}", catalogue.utcnow()

    refused = False

    def point(txn: Any) -> tuple[dict[str, Any], str | None]:
        nonlocal refused
        book = txn.get("books", book_id)
        if book is None:
            refused = True
            raise NotFoundError("Book not found")
        return txn.put("books", {**book, field: url, "updated_at": moment}), book.get(field)

    try:
        book, replaced = write_books(point, actor)
    except BaseException as exc:
        # Only a change refused or never tried is sure not to point at the file: a commit that
        # failed late may be in the journal, and the file must then stay (start-up removes it if
        # no book points at it).
        if refused or isinstance(exc, members.PermissionDenied | LockTimeoutError | CorruptFileError):
            uploads.remove(data_dir(), name)
        raise
    uploads.remove(data_dir(), file_name(replaced))
    return book_response(book)


def if_match() -> Any:
    return request.if_match if "If-Match" in request.headers else None


# -- routes: sign-in and members ----------------------------------------------------------------------


@api.post("/auth/register")
@documented(body=RegisterSchema, response=MemberSchema, status=201, errors=(400, 409, 415, 422))
def register() -> Response:
    """Become a member who signs in with a password (always with the role ``member``)."""
    data = register_schema.load(json_body())
    password_hash = auth.hash_password(data["password"])
    moment = stamp(now())
    member = store().update(lambda txn: members.create(txn, data, moment, password_hash))
    return member_response(member, 201, Location=url_for("api.get_member", member_id=member["id"]))


@api.post("/auth/login")
@documented(body=LoginSchema, response=TokenSchema, errors=(400, 401, 415, 422, 429))
def login() -> Response:
    """Exchange an email and password for a bearer token. After 5 failures for one email within
    15 minutes, every attempt for it is refused (429) for 15 minutes."""
    data = login_schema.load(json_body())
    secret: bytes = current_app.extensions["library_secret"]
    key = auth.email_key(secret, data["email"])
    moment = now()
    attempt = store().update(lambda txn: auth.begin_attempt(txn, key, moment))
    member_id = members.by_email(store().snapshot()).get(members.email_key(data["email"]))
    member = store().snapshot().get("members", member_id) if member_id is not None else None
    stored_hash = member.get("password_hash") if member is not None else None
    if not auth.check_password(stored_hash, data["password"]):
        raise unauthorized("The email or password is wrong")
    rehashed = auth.hash_password(data["password"]) if auth.needs_rehash(stored_hash) else None

    def reset(txn: Any) -> dict[str, Any] | None:
        auth.succeeded(txn, attempt)
        current = txn.get("members", member_id)
        if current is not None and rehashed and current["password_hash"] == stored_hash:
            current = txn.put("members", {**current, "password_hash": rehashed})
        return current

    current = store().update(reset)
    if current is None or current.get("password_hash") not in (stored_hash, rehashed):
        raise unauthorized("The email or password is wrong")  # deleted or changed meanwhile
    ttl = int(current_app.config["TOKEN_TTL"])
    token = auth.issue_token(secret, current, ttl)  # checked by PyJWT against the real clock
    body = {"access_token": token, "token_type": "bearer", "expires_in": ttl}
    return json_response(orjson.dumps(body), **{"Cache-Control": "no-store"})


@api.post("/members")
@documented(body=EnrolSchema, response=MemberSchema, status=201, errors=(400, 409, 415, 422), auth="librarian")
def enrol_member() -> Response:
    """Enrol a member who will not sign in (a librarian lends to them)."""
    signed_in("librarian")
    data = enrol_schema.load(json_body())
    moment = stamp(now())
    member = store().update(lambda txn: members.create(txn, data, moment))
    return member_response(member, 201, Location=url_for("api.get_member", member_id=member["id"]))


@api.get("/members")
@documented(query=MemberQuerySchema, response=MemberListSchema, errors=(422,), auth="librarian")
def list_members() -> Response:
    """List members with their open loans and the fines they owe."""
    signed_in("librarian")
    args = member_query_schema.load(request.args.to_dict())
    snap = store().snapshot()
    found = members.select(snap, args["sort_by"], args.get("role"), args.get("q"))
    return paginated("members", found, args["page"], args["limit"], lambda record: member_listing(snap, record))


@api.get("/members/me")
@documented(response=MemberSchema, errors=(), auth="member")
def get_me() -> Response:
    """The signed-in member."""
    me = signed_in()
    snap = store().snapshot()
    if snap.get("members", me["id"]) is None:  # deleted since the token was checked
        raise unauthorized("The token is no longer valid; sign in again", invalid_token=True)
    return member_conditional(snap, me["id"])


@api.route("/members/me", methods=["PATCH", "DELETE", "PUT", "POST"])
def not_on_me() -> Response:
    """``/members/me`` is for reading; changes go to ``/members/<id>``."""
    raise MethodNotAllowed(valid_methods=["GET"], description="/members/me is read-only; use /members/<id>")


@api.get("/members/<id:member_id>")
@documented(response=MemberSchema, errors=(404,), auth="member")
def get_member(member_id: int) -> Response:
    """One member (yourself, or anyone for a librarian)."""
    members.check_may_see(signed_in(), member_id)
    snap = store().snapshot()
    if snap.get("members", member_id) is None:
        raise NotFound("Member not found")
    return member_conditional(snap, member_id)


@api.patch("/members/<id:member_id>")
@documented(body="MemberPatch", response=MemberSchema, errors=(400, 404, 409, 412, 415, 422), auth="member")
def update_member(member_id: int) -> Response:
    """Change names or email (your own; a librarian's for members), or the role (admins only)."""
    actor = signed_in()
    data = member_patch_schema.load(json_body())
    condition, moment, lending = if_match(), now(), rules()

    def change(txn: Any) -> dict[str, Any]:
        members.check_may_see(members.actor_in(txn, actor["id"]), member_id)
        check_member_etag(txn, member_id, condition, moment, lending)
        return members.patch(txn, actor["id"], member_id, data, stamp(moment))

    return member_response(store().update(change))


@api.delete("/members/<id:member_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="admin")
def delete_member(member_id: int) -> Response:
    """Delete a member (admins only; not while they have books on loan)."""
    actor = signed_in("admin")
    condition, moment, lending = if_match(), now(), rules()

    def remove(txn: Any) -> None:
        members.actor_in(txn, actor["id"])
        check_member_etag(txn, member_id, condition, moment, lending)
        members.delete(txn, actor["id"], member_id)
        circulation.cancel_all_holds(txn, moment, lending, member_id=member_id)

    store().update(remove)
    return json_response(orjson.dumps({"message": "Member deleted successfully"}))


def member_listing(snap: Any, record: dict[str, Any]) -> dict[str, Any]:
    owed = circulation.member_fines(snap, record["id"], now(), rules())
    return members.listing(snap, record, circulation.money(owed))


def member_conditional(snap: Any, member_id: int) -> Response:
    return private(orjson.dumps(member_listing(snap, snap.get("members", member_id))))


def member_response(record: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the member as this request stored them."""
    body = orjson.dumps(member_listing(store().snapshot(), record))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = catalogue.etag_of(body)
    return response


def check_member_etag(txn: Any, member_id: int, condition: Any, moment: datetime, lending: circulation.Rules) -> None:
    """``If-Match`` against the member as the transaction sees them.

    :raises PreconditionFailedError: when it does not match.
    """
    if condition is None or condition.star_tag:
        return
    record = txn.get("members", member_id)
    if record is None:
        return  # the change itself answers 404
    owed = circulation.member_fines(txn, member_id, moment, lending)
    body = orjson.dumps(members.listing_in(txn, record, circulation.money(owed)))
    if not condition.contains(catalogue.etag_of(body).strip('"')):
        raise PreconditionFailedError("The member changed since they were read (If-Match does not match)")


# -- routes: loans, holds and payments -----------------------------------------------------------------


def rules() -> circulation.Rules:
    return current_app.extensions["library_rules"]


def optional_json_body() -> dict[str, Any]:
    """Like :func:`json_body`, but an empty body is an empty object."""
    if not request.content_length and "Transfer-Encoding" not in request.headers:
        return {}
    return json_body()


def acting_for(actor: dict[str, Any], data: dict[str, Any], what: str) -> int:
    """The member a request acts for: ``member_id`` (a librarian's choice) or the actor."""
    member_id = data.get("member_id", actor["id"])
    if member_id != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden(f"Only librarians can {what} for another member")
    return member_id


@api.post("/books/<id:book_id>/borrow")
@documented(
    body=BorrowSchema,
    body_optional=True,
    response=LoanSchema,
    status=201,
    errors=(400, 404, 409, 415, 422),
    auth="member",
)
def borrow_book(book_id: int) -> Response:
    """Borrow a book: for yourself, or (librarians) for a member, possibly backdated."""
    actor = signed_in()
    data = borrow_schema.load(optional_json_body())
    lending, moment = rules(), now()
    member_id = acting_for(actor, data, "lend books")
    days = data.get("days", lending.loan_days)
    if not 1 <= days <= lending.max_loan_days:
        raise ValidationError({"days": [f"Must be between 1 and {lending.max_loan_days}."]})
    borrowed_at = data.get("borrowed_at")
    if borrowed_at is not None:
        if not members.at_least(actor, "librarian"):
            raise Forbidden("Only librarians can record a loan made earlier")
        if borrowed_at > moment:
            raise ValidationError({"borrowed_at": ["Must not be in the future."]})
        if borrowed_at < moment - timedelta(days=365):
            raise ValidationError({"borrowed_at": ["Must be within the last year."]})

    def lend(txn: Any) -> dict[str, Any]:
        current = members.actor_in(txn, actor["id"])
        return circulation.borrow(txn, current, book_id, member_id, days, borrowed_at, moment, lending)

    loan = store().update(lend)
    body = orjson.dumps(circulation.public_loan(loan, moment, lending))
    return json_response(body, 201, Location=url_for("api.get_loan", loan_id=loan["id"]))


@api.post("/books/<id:book_id>/return")
@documented(response=LoanSchema, errors=(404, 409), auth="member")
def return_book(book_id: int) -> Response:
    """Return a book (its borrower, or a librarian): the loan closes with its fine."""
    actor = signed_in()
    lending, moment = rules(), now()
    loan = store().update(
        lambda txn: circulation.give_back(txn, members.actor_in(txn, actor["id"]), book_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_loan(loan, moment, lending)))


@api.post("/loans/<id:loan_id>/renew")
@documented(response=LoanSchema, errors=(404, 409), auth="member")
def renew_loan(loan_id: int) -> Response:
    """Extend a loan by its own period (not when overdue, at the limit, or someone waits)."""
    actor = signed_in()
    lending, moment = rules(), now()
    loan = store().update(
        lambda txn: circulation.renew(txn, members.actor_in(txn, actor["id"]), loan_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_loan(loan, moment, lending)))


@api.get("/loans")
@documented(query=LoanQuerySchema, response=LoanListSchema, errors=(422,), auth="member")
def list_loans() -> Response:
    """Loans: a member's own; every loan for a librarian."""
    actor = signed_in()
    args = loan_query_schema.load(request.args.to_dict())
    if not members.at_least(actor, "librarian") and args.setdefault("member_id", actor["id"]) != actor["id"]:
        raise Forbidden("Only librarians can see other members' loans")
    lending, moment = rules(), now()
    snap = store().snapshot()
    if "member_id" in args:  # through the per-snapshot index: a member's page costs their loans only
        chosen = Txn(snap).where("loans", "member_id", args["member_id"])
    else:
        chosen = list(snap.tables["loans"].records.values())
    if "book_id" in args:
        chosen = [loan for loan in chosen if loan["book_id"] == args["book_id"]]
    wanted, now_stamp = args.get("status"), stamp(moment)
    if wanted == "returned":
        chosen = [loan for loan in chosen if loan.get("returned_at") is not None]
    elif wanted in ("active", "overdue"):
        chosen = [loan for loan in chosen if loan.get("returned_at") is None]
        if wanted == "overdue":  # ISO 8601 UTC stamps compare as text
            chosen = [loan for loan in chosen if loan["due_at"] < now_stamp]
    sort_by = args["sort_by"]
    field = sort_by.lstrip("-")
    if field != "id":
        present = [loan for loan in chosen if loan.get(field) is not None]
        present.sort(key=lambda loan: loan[field], reverse=sort_by.startswith("-"))  # stable: ties by id
        chosen = present + [loan for loan in chosen if loan.get(field) is None]
    elif sort_by.startswith("-"):
        chosen.reverse()
    return paginated(
        "loans", chosen, args["page"], args["limit"], lambda loan: circulation.public_loan(loan, moment, lending)
    )


@api.get("/loans/<id:loan_id>")
@documented(response=LoanSchema, errors=(404,), auth="member")
def get_loan(loan_id: int) -> Response:
    """One loan (your own, or any for a librarian)."""
    actor = signed_in()
    loan = store().snapshot().get("loans", loan_id)
    if loan is None:
        raise NotFound("Loan not found")
    if loan["member_id"] != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden("Only librarians can see other members' loans")
    return private(orjson.dumps(circulation.public_loan(loan, now(), rules())))


@api.post("/books/<id:book_id>/hold")
@documented(
    body=HoldRequestSchema,
    body_optional=True,
    response=HoldSchema,
    status=201,
    errors=(400, 404, 409, 415, 422),
    auth="member",
)
def hold_book(book_id: int) -> Response:
    """Join the queue for a book that is out; it is kept for you when your turn comes."""
    actor = signed_in()
    data = hold_request_schema.load(optional_json_body())
    member_id = acting_for(actor, data, "place holds")
    lending, moment = rules(), now()
    hold, position = store().update(
        lambda txn: circulation.place_hold(txn, members.actor_in(txn, actor["id"]), book_id, member_id, moment, lending)
    )
    body = orjson.dumps(circulation.public_hold(hold, position))
    return json_response(body, 201, Location=url_for("api.get_hold", hold_id=hold["id"]))


def holds_now() -> Any:
    """The holds as they stand now: kept books whose time is over already passed on (in a
    transaction that is never committed; the server commits it within a second anyway)."""
    view_txn = Txn(store().snapshot())
    circulation.expire_holds(view_txn, now(), rules())
    return view_txn


@api.get("/holds")
@documented(query=HoldQuerySchema, response=HoldListSchema, errors=(422,), auth="member")
def list_holds() -> Response:
    """Holds: a member's own; every hold for a librarian."""
    actor = signed_in()
    args = hold_query_schema.load(request.args.to_dict())
    if not members.at_least(actor, "librarian") and args.setdefault("member_id", actor["id"]) != actor["id"]:
        raise Forbidden("Only librarians can see other members' holds")
    current = holds_now()
    places = circulation.positions(current)
    if "member_id" in args:
        chosen = current.where("holds", "member_id", args["member_id"])
    else:
        chosen = [hold for _, hold in current.items("holds")]
    if "book_id" in args:
        chosen = [hold for hold in chosen if hold["book_id"] == args["book_id"]]
    wanted = args.get("status")
    if wanted == "active":
        chosen = [hold for hold in chosen if hold["status"] in circulation.ACTIVE_HOLDS]
    elif wanted:
        chosen = [hold for hold in chosen if hold["status"] == wanted]
    return paginated(
        "holds", chosen, args["page"], args["limit"], lambda hold: circulation.public_hold(hold, places.get(hold["id"]))
    )


@api.get("/holds/<id:hold_id>")
@documented(response=HoldSchema, errors=(404,), auth="member")
def get_hold(hold_id: int) -> Response:
    """One hold (your own, or any for a librarian)."""
    actor = signed_in()
    current = holds_now()
    hold = current.get("holds", hold_id)
    if hold is None:
        raise NotFound("Hold not found")
    if hold["member_id"] != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden("Only librarians can see other members' holds")
    body = circulation.public_hold(hold, circulation.positions(current).get(hold_id))
    return private(orjson.dumps(body))


@api.delete("/holds/<id:hold_id>")
@documented(response=HoldSchema, errors=(404, 409), auth="member")
def cancel_hold(hold_id: int) -> Response:
    """Cancel a hold (your own, or any for a librarian); a kept book passes to the next in line."""
    actor = signed_in()
    lending, moment = rules(), now()
    hold = store().update(
        lambda txn: circulation.cancel_hold(txn, members.actor_in(txn, actor["id"]), hold_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_hold(hold, None)))


@api.post("/members/<id:member_id>/payments")
@documented(
    body=PaymentSchema, response=PaymentResultSchema, status=201, errors=(400, 404, 409, 415, 422), auth="librarian"
)
def record_payment(member_id: int) -> Response:
    """Record what a member paid against their fines."""
    actor = signed_in("librarian")
    data = payment_schema.load(json_body())
    amount = circulation.cents(data["amount"])
    lending, moment = rules(), now()
    payment, still_due = store().update(
        lambda txn: circulation.pay(txn, members.actor_in(txn, actor["id"]), member_id, amount, moment, lending)
    )
    body = {**payment, "fines_due": circulation.money(still_due)}
    return json_response(orjson.dumps(body), 201)


# -- routes: live updates -----------------------------------------------------------------------------


@api.get("/changes")
@documented(query=ChangesQuerySchema, response=ChangesSchema, errors=(410, 422))
def list_changes() -> Response:
    """Catalogue changes after ``since``, oldest first: the polling form of the websocket."""
    args = changes_query_schema.load(request.args.to_dict())
    events, last_seq = store().raw_events_since(args["since"], args["limit"])
    body = b'{"changes":[' + b",".join(data for _, data in events) + b'],"last_seq":' + str(last_seq).encode() + b"}"
    return json_response(body, **{"Cache-Control": "no-cache"})


@sock.route("/ws")
def live_updates(ws: Any) -> None:
    """Every change of the catalogue as it happens: ``initial_load`` first, or what was missed
    after ``?since=<seq>``. Messages from the client are ignored."""
    ws.sock = live.LockedSocket(ws.sock)
    feed: live.Feed = current_app.extensions["library_feed"]
    since = request.args.get("since", type=int)
    if since is not None:
        try:
            store().raw_events_since(since, 1)  # can the journal answer from there?
        except JournalTruncatedError:
            since = None
    last = send_catalogue(ws) if since is None else since
    while ws.connected and not feed.stopped:
        shared = feed.events_after(last)
        if shared is not None:
            events, last = shared
        else:  # further back than the worker keeps: read the journal
            try:
                found, last = store().raw_events_since(last, 500)
            except JournalTruncatedError:  # the client was away longer than the journal remembers
                last = send_catalogue(ws)
                continue
            events = [data for _, data in found]
        for event in events:
            ws.send(event.decode())
        while ws.receive(timeout=0) is not None:
            pass
        if shared is not None:
            feed.wait_beyond(last, timeout=1.0)


def send_catalogue(ws: Any) -> int:
    """Send the whole catalogue as one ``initial_load`` message; returns its seq."""
    current = view()
    books = b",".join(current.encoded(book_id) for book_id in current.books)
    ws.send(f'{{"action":"initial_load","seq":{current.seq},"books":[' + books.decode() + "]}")
    return current.seq


def reserve_live_slot() -> None:
    """Refuse a websocket beyond the worker's limit before it takes a thread for good."""
    if request.path == "/ws" and request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        if not current_app.extensions["library_feed"].acquire():
            raise ServiceUnavailable("This worker has no room for another live connection; poll GET /changes instead")
        g.live_slot = True


def release_live_slot(exc: BaseException | None) -> None:
    if g.pop("live_slot", False):
        current_app.extensions["library_feed"].release()


# -- routes: service ---------------------------------------------------------------------------------


@api.get("/healthz")
@documented(response=HealthSchema)
def healthz() -> Response:
    """Liveness, the data directory's current sequence number, and what refuses writes (503)."""
    current = view()
    health = store().health()
    body = {"status": "ok" if health["writable"] else "degraded", "seq": current.seq, "books": len(current.books)}
    if not health["writable"]:
        body["problems"] = health["problems"]
        return json_response(orjson.dumps(body), status=503)
    return json_response(orjson.dumps(body))


@api.get("/openapi.json")
def openapi_document() -> Response:
    """This API, described from its schemas."""
    return json_response(openapi_spec(current_app))


@api.get("/docs")
def docs() -> Response:
    """A page to read the OpenAPI document."""
    return send_from_directory(HERE / "static", "docs.html")


@api.get("/")
def index() -> Response:
    """The catalogue page."""
    return send_from_directory(HERE / "static", "index.html")


# -- OpenAPI -----------------------------------------------------------------------------------------


def openapi_spec(app: Flask) -> bytes:
    """The OpenAPI 3 document, generated from the routes and their marshmallow schemas."""
    cached = app.extensions.get("library_openapi")
    if cached is not None:
        return cached
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    spec = APISpec("library_api", "1.0.0", "3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Problem", schema=ProblemSchema)
    spec.components.schema("Book", schema=BookSchema)
    spec.components.schema("BookPatch", schema=book_patch_schema)
    spec.components.schema("MemberPatch", schema=member_patch_schema)
    spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A token from POST /auth/login."},
    )
    for rule in app.url_map.iter_rules():
        view_fn = app.view_functions[rule.endpoint]
        doc = getattr(view_fn, "openapi", None)
        if doc is None:
            continue
        path = str(rule.rule)
        params = []
        for arg in rule.arguments:
            path = path.replace(f"<id:{arg}>", f"{{{arg}}}")
            params.append({"in": "path", "name": arg, "required": True, "schema": {"type": "integer", "minimum": 1}})
        operations = {}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(view_fn, doc, params)
        spec.path(path=path, operations=operations)
    app.extensions["library_openapi"] = orjson.dumps(spec.to_dict())
    return app.extensions["library_openapi"]


def _operation(view_fn: Callable[..., Any], doc: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    status = doc.get("status", 200)
    response = doc.get("response")
    content = {"application/json": {"schema": response}} if response else None
    op: dict[str, Any] = {
        "summary": (view_fn.__doc__ or "").strip().splitlines()[0],
        "operationId": view_fn.__name__,
        "parameters": list(params),
        "responses": {
            str(status): {"description": HTTP_STATUS_CODES[status], **({"content": content} if content else {})}
        },
    }
    if status == 201 and view_fn.__name__ == "create_book":
        op["responses"]["200"] = {"description": "Updated an existing book", "content": content}
    if doc.get("query"):
        op["parameters"].append({"in": "query", "schema": doc["query"]})
    if doc.get("upload"):
        binary = {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}},
        }
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": binary}}}
    if doc.get("body"):
        body = "BookPatch" if doc.get("partial") else doc["body"]
        required = not doc.get("body_optional")
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
    errors = list(doc.get("errors", ()))
    role = doc.get("auth")
    if role:
        op["security"] = [{"bearerAuth": []}]
        op["description"] = f"Needs a bearer token: {ROLE_NAMES[role]}."
        errors = [401, 403, *errors]
    for code in sorted(set(errors)):
        op["responses"][str(code)] = {
            "description": HTTP_STATUS_CODES[code],
            "content": {"application/problem+json": {"schema": "Problem"}},
        }
    return op


# -- command-line commands ---------------------------------------------------------------------------


@click.command("load-books")
@with_appcontext
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option(
    "--replace-sample", is_flag=True, help="First remove the sample books no one has touched (see remove-sample)."
)
def load_books_command(path: Path, dry_run: bool, replace_sample: bool) -> None:
    """Import books from a JSON or CSV file, or a Goodreads CSV or LibraryThing TSV export (the
    format told from the file's content): a row with an ISBN is the book with that ISBN, one
    without is matched by title, author and year."""
    try:
        book_file = loader.read_file(path)
    except loader.UnreadableFileError as exc:
        raise click.ClickException(str(exc)) from None
    rows = book_file.rows
    if replace_sample and not dry_run:
        click.echo(f"removed {len(remove_sample())} untouched sample books")
    if loader.wants_progress(len(rows), sys.stderr):
        label = f"{'Checking' if dry_run else 'Importing'} {path.name}"
        with click.progressbar(length=len(rows), label=label, file=sys.stderr) as bar:
            report = import_rows(rows, dry_run, progress=bar.update)
    else:
        report = import_rows(rows, dry_run)
    for line, text in report["lines"]:
        click.echo(f"line {line}: {text}")
    if report["unchanged_lines"]:
        click.echo(f"unchanged (each the same as its book): {_line_ranges(report['unchanged_lines'])}")
    prefix = "dry run: would have " if dry_run else ""
    click.echo(
        f"{prefix}created {report['created']}, updated {report['updated']}, "
        f"unchanged {report['unchanged']}, skipped {len(report['skipped'])}, "
        f"merged {report['merged']}, warnings {report['warnings']} "
        f"(of {len(rows)} rows in {path.name}, read as {book_file.format_name})"
    )


def _line_ranges(lines: list[int]) -> str:
    """``[2, 3, 4, 7]`` as "lines 2-4, 7"."""
    spans: list[list[int]] = []
    for line in lines:
        if spans and line <= spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"line{'s' if len(lines) > 1 else ''} {text}"


@click.command("remove-sample")
@with_appcontext
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def remove_sample_command(dry_run: bool) -> None:
    """Remove the sample books (of the seed file) that no one has touched: never edited, never
    borrowed or held, without a cover or a document."""
    removed = remove_sample(dry_run)
    for book in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} book {book['id']}: {book['title']!r}")
    click.echo(f"{'dry run: would have ' if dry_run else ''}removed {len(removed)} sample books")


def remove_sample(dry_run: bool = False) -> list[dict[str, Any]]:
    """Delete the untouched books of the sample catalogue (``SEED_FILE``); returns them."""
    seed_file = current_app.config["SEED_FILE"] or HERE / "books.json"
    sample = [_import_fields(fields)[0] for _, fields in loader.read_rows(Path(seed_file))]
    index = writer_index()

    def remove(txn: Any) -> list[dict[str, Any]]:
        removed = catalogue.remove_sample(txn, index, sample)
        if dry_run:
            raise DryRun(removed)
        return removed

    try:
        return write_books(remove)
    except DryRun as exc:
        return exc.args[0]


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Asked for when left out.")
@click.option("--first-name", default=None, help="For a new admin; default: the email's local part.")
@click.option("--last-name", default="Admin", show_default=True, help="For a new admin.")
def create_admin_command(email: str, password: str, first_name: str | None, last_name: str) -> None:
    """Make EMAIL an admin who signs in with PASSWORD (a new member, or an existing one promoted)."""
    try:
        data = RegisterSchema(only=("email", "password")).load({"email": email, "password": password})
    except ValidationError as exc:
        raise click.ClickException(_reason(exc.messages)) from None
    password_hash = auth.hash_password(data["password"])
    names = {"first_name": first_name or data["email"].split("@")[0], "last_name": last_name}
    moment = utc_stamp()
    member, created = store().update(lambda txn: members.make_admin(txn, data["email"], password_hash, moment, names))
    what = "created admin" if created else "made an admin (with the new password):"
    click.echo(f"{what} {member['email']} (member {member['id']})")


@click.command("overdue")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def overdue_command(as_json: bool) -> None:
    """Report the loans past their due date: who, which book, how late, the fine so far."""
    report = circulation.overdue(store().snapshot(), now(), rules())
    if as_json:
        click.echo(orjson.dumps({"overdue": report}, option=orjson.OPT_INDENT_2).decode())
        return
    if not report:
        click.echo("No loan is overdue.")
        return
    headers = ("Loan", "Member", "Email", "Book", "Due", "Days late", "Fine")
    rows = [
        (
            str(r["loan_id"]),
            r["member"],
            r["email"] or "",
            _clip(r["title"] or f"book {r['book_id']}", 40),
            r["due_at"][:10],
            str(r["days_late"]),
            f"{r['fine']:.2f}",
        )
        for r in report
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    right = {0, 5, 6}
    for row in (headers, *rows):
        click.echo(
            "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    total = sum(r["fine"] for r in report)
    click.echo(f"{len(report)} overdue loan{'s' if len(report) > 1 else ''}, fines so far {total:.2f}")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def utc_stamp() -> str:
    return stamp(datetime.now(UTC))


@click.command("export")
@with_appcontext
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="A file instead of stdout.")
def export_command(fmt: str, output: Path | None) -> None:
    """Write the catalogue as CSV or JSON; load-books reads either back unchanged."""
    current = view()
    data = operations.export_books((current.public(book_id) for book_id in current.books), fmt)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"exported {len(current.books)} books to {output}", err=True)


@click.command("backup")
@with_appcontext
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def backup_command(path: Path | None) -> None:
    """Write one consistent archive of the data directory (safe while the server runs)."""
    target = path or Path(f"library-backup-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.tar.gz")
    report = operations.backup(store(), target)
    click.echo(f"backed up {report.files} files at seq {report.seq} to {report.path} ({report.size} bytes)")


@click.command("restore")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace the data already there (it is kept aside, not deleted).")
def restore_command(path: Path, force: bool) -> None:
    """Put a backup back into the data directory, after checking it whole."""
    directory = data_dir()
    if current_app.extensions.get("library_was_empty"):
        force = True  # only what this command's own start-up wrote is there
    store().close()  # this command's own view of the directory must not outlive the swap
    try:
        aside = operations.restore(path, directory, COLLECTIONS, force)
    except operations.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {path} into {directory}")
    if aside is not None:
        click.echo(f"the data it replaced is kept in {aside}")


class DryRun(Exception):
    """Raised inside a transaction to throw its changes away."""


IMPORT_BATCH = 2000
"""Rows committed together by an import: memory stays bounded by a batch, not the file, and an
interrupted import can be run again (the upsert rules make what it already did a no-op)."""


def import_rows(
    rows: list[loader.Row], dry_run: bool = False, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Validate and import ``rows`` by :func:`catalogue.import_book`, committed in batches of
    :data:`IMPORT_BATCH` (a dry run in one transaction that is thrown away). ``progress(1)`` is
    called after each row (a progress bar's ``update``).

    :returns: the counts; ``lines``, ``(line, text)`` for every row that did not simply create a
        book, in file order (updated, merged, warnings, skipped); ``unchanged_lines``; ``skipped``.
    """
    report: dict[str, Any] = {
        "created": 0, "updated": 0, "unchanged": 0, "merged": 0, "warnings": 0,
        "lines": [], "unchanged_lines": [], "skipped": [],
    }  # fmt: skip
    moment, index = catalogue.utcnow(), writer_index()
    earlier: dict[int, int] = {}  # book id: the first line of this file that was that book

    def note(line: int, text: str) -> None:
        report["lines"].append((line, text))

    def upsert(txn: Any, batch: list[loader.Row]) -> None:
        for line, fields in batch:
            try:
                data, warnings = _import_fields(fields)
                done = catalogue.import_book(txn, index, data, moment, earlier)
            except ValidationError as exc:
                report["skipped"].append((line, _reason(exc.messages)))
                note(line, f"skipped: {_reason(exc.messages)}")
                continue
            finally:
                if progress is not None:
                    progress(1)
            book, before = done.book, done.before
            for text in (*warnings, *done.notes):
                report["warnings"] += 1
                note(line, f"warning: {text}")
            name = f"book {book['id']} ({book['title']!r})"
            changed = _changes(before, book) if before is not None else ""
            if done.outcome == "merged":
                first = earlier[book["id"]]
                note(line, f"merged with line {first}, {name}" + (f"; filled {changed}" if changed else ""))
            elif done.outcome == "updated":
                note(line, f"updated {name}: {changed}")
            elif done.outcome == "unchanged":
                report["unchanged_lines"].append(line)
            earlier.setdefault(book["id"], line)
            report[done.outcome] += 1

    if dry_run:

        def everything(txn: Any) -> None:
            upsert(txn, rows)
            raise DryRun

        with contextlib.suppress(DryRun):
            write_books(everything)
        return report
    for start in range(0, len(rows), IMPORT_BATCH):
        batch = rows[start : start + IMPORT_BATCH]
        write_books(lambda txn, batch=batch: upsert(txn, batch))
    return report


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The fields that differ, with their old and new values: 'genre None → "Fantasy"'."""
    return ", ".join(
        f"{field} {_clip(repr(before.get(field)), 40)} → {_clip(repr(after.get(field)), 40)}"
        for field in catalogue.BOOK_FIELDS
        if before.get(field) != after.get(field)
    )


IMPORT_IGNORED = {"id", "status", "due_at", "cover_url", "document_url", "created_at", "updated_at"}
IMPORT_REQUIRED = {"title": "The row has no title.", "author": "The row names no author (nor an editor)."}


def _import_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A row as the book schema takes it, and warnings for the values left out.

    Read-only columns are dropped and CSV's empty cells left out. Of a field's choices
    (:class:`loader.Choices`) the first valid one is taken; a field with no valid value is left
    out with a warning, the book kept. Only a row without a valid title or author is refused.

    :raises ValidationError: naming the required field that has no valid value.
    """
    if "_row" in fields:
        raise ValidationError({"_schema": ["A book must be a JSON object."]})
    choices: dict[str, tuple[Any, ...]] = {}
    for name, value in fields.items():
        if name in IMPORT_IGNORED:
            continue
        values = value if isinstance(value, loader.Choices) else (value,)
        values = tuple(_year(v) if name == "publication_year" else v for v in values if v != "")
        if values:
            choices[name] = values
    refused: dict[str, list[str]] = {}
    if "isbn" in choices:  # a bar code that is not a book's passes the ISBN-13 checksum: refuse it here
        eans = [v for v in choices["isbn"] if isinstance(v, str) and _is_ean(v)]
        if eans:
            refused["isbn"] = [f"{v!r} (an EAN, not an ISBN: an ISBN-13 starts with 978 or 979)" for v in eans]
            choices["isbn"] = tuple(v for v in choices["isbn"] if v not in eans)
            if not choices["isbn"]:
                del choices["isbn"]
    for name, missing in IMPORT_REQUIRED.items():
        if name not in choices:
            raise ValidationError({name: [missing]})
    picked = dict.fromkeys(choices, 0)
    warnings = [f"{name} dropped: " + "; ".join(why) for name, why in refused.items() if name not in choices]
    while True:
        data = {name: choices[name][i] for name, i in picked.items()}
        try:
            return book_schema.load(data), warnings
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        for name, messages in errors.items():
            if name not in picked:
                raise ValidationError(errors)
            text = " ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
            refused.setdefault(name, []).append(f"{_clip(repr(data[name]), 40)} ({text.rstrip('.')})")
            picked[name] += 1
            if picked[name] < len(choices[name]):
                continue
            del picked[name]
            if name in IMPORT_REQUIRED:
                raise ValidationError({name: ["No valid value: " + "; ".join(refused[name])]})
            warnings.append(f"{name} dropped: " + "; ".join(refused[name]))


def _is_ean(value: str) -> bool:
    digits = value.replace("-", "").replace(" ", "")
    return len(digits) == 13 and digits.isdigit() and not digits.startswith(("978", "979"))


def _year(value: Any) -> Any:
    """CSV's year text as a number."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _reason(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in messages.items())
    return str(messages)


# -- the application ---------------------------------------------------------------------------------


def open_store(app: Flask) -> JsonStore:
    """Open (and on first use fill) the data directory."""
    data_dir = Path(app.config["DATA_DIR"] or app.instance_path)
    seed_file = app.config["SEED_FILE"]

    def fill(txn: Any) -> None:
        if seed_file:
            rows = loader.read_rows(Path(seed_file))
            catalogue.seed(txn, [_import_fields(fields)[0] for _, fields in rows])

    opened: list[JsonStore] = []  # the store, once it is open: events read statuses from its last view

    def describe(changes: list[Any], after: Any) -> list[dict[str, Any] | None]:
        return catalogue.describe(changes, after, opened[0] if opened else None)

    library_store = JsonStore(
        data_dir,
        COLLECTIONS,
        describe=describe,
        initial=fill,
        validate=records.problem,
        lock_timeout=float(app.config["LOCK_TIMEOUT"]),
        journal_keep=int(app.config["JOURNAL_KEEP"]),
        checkpoint_changes=int(app.config["CHECKPOINT_CHANGES"]),
    )
    opened.append(library_store)
    return library_store


def lending_rules(config: Any) -> circulation.Rules:
    """The lending rules from the settings.

    :raises ValueError: naming the setting that is not valid.
    """
    values: dict[str, int] = {}
    for name in ("MAX_LOANS", "LOAN_DAYS", "MAX_LOAN_DAYS", "MAX_RENEWALS", "FINE_GRACE_DAYS", "HOLD_DAYS"):
        try:
            values[name.lower()] = int(config[name])
        except (TypeError, ValueError):
            raise ValueError(f"LIBRARY_{name} must be a whole number, not {config[name]!r}") from None
    for name in ("FINE_PER_DAY", "MAX_FINE", "MAX_FINES_DUE"):
        try:
            values[name.lower()] = circulation.cents(config[name])
        except ValueError:
            raise ValueError(f"LIBRARY_{name} must be an amount like 0.50, not {config[name]!r}") from None
    if min(values.values()) < 0 or values["loan_days"] < 1 or values["loan_days"] > values["max_loan_days"]:
        raise ValueError("The lending settings must not be negative, and LOAN_DAYS must be 1..MAX_LOAN_DAYS")
    return circulation.Rules(**values)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: settings, storage, errors, routes, commands."""
    app = Flask(__name__, instance_relative_config=True, static_folder=str(HERE / "static"))
    app.request_class = LibraryRequest
    app.config.from_mapping({s.name: s.default for s in SETTINGS})
    app.config.from_prefixed_env("LIBRARY")
    if test_config:
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BYTES
    app.json = OrjsonProvider(app)
    app.url_map.converters["id"] = IdConverter
    app.url_map.strict_slashes = False
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    directory = Path(app.config["DATA_DIR"] or app.instance_path)
    app.extensions["library_was_empty"] = not operations.has_data(directory)
    app.extensions["library_store"] = open_store(app)
    if app.config["WARN_EPHEMERAL_DISK"] not in (False, 0, "0", "false", "False", "no", ""):
        reasons = operations.ephemeral_reasons(directory, HERE, os.environ)
        if reasons:
            log.warning(
                "\n%s\nTHE DATA DIRECTORY %s WILL PROBABLY BE LOST at the next deploy or restart: %s.\n"
                "Mount a persistent volume and set LIBRARY_DATA_DIR to it (see the README, Deploying),\n"
                "or set LIBRARY_WARN_EPHEMERAL_DISK=0 if this disk is persistent.\n%s",
                "=" * 78, directory, "; ".join(reasons), "=" * 78,
            )  # fmt: skip
    app.extensions["library_writer_index"] = WriterIndex()
    app.extensions["library_rules"] = lending_rules(app.config)
    books = app.extensions["library_store"].snapshot().tables["books"].records.values()
    referenced = {file_name(b.get(f)) for b in books for f in ("cover_url", "document_url") if b.get(f)}
    uploads.clean(Path(app.extensions["library_store"].directory), referenced)
    if int(app.config["TOKEN_TTL"]) < 1:
        raise ValueError("LIBRARY_TOKEN_TTL must be at least 1 (seconds)")
    clock = app.config.get("CLOCK") or (lambda: datetime.now(UTC))
    housekeeper = circulation.Housekeeper(app.extensions["library_store"], app.extensions["library_rules"], clock)
    app.extensions["library_housekeeper"] = housekeeper
    if not app.testing:  # tests run it by hand, on their own clock
        app.before_request(housekeeper.start)  # in the worker, after gunicorn forked it
        # Checkpoints, hand edits and journal repairs, in every worker from its start (a worker
        # that serves nothing must still follow the journal); started again after a fork
        # (gunicorn --preload). Tests call store.maintain() themselves.
        app.extensions["library_store"].start()
        app.before_request(app.extensions["library_store"].start)
    # Refuses (auth.SecretError) to start with a configured secret shorter than 32 bytes.
    app.extensions["library_secret"] = auth.load_secret(
        str(app.config["SECRET_KEY"] or ""), Path(app.extensions["library_store"].directory)
    )
    register_errors(app)
    app.register_blueprint(api)
    library_store = app.extensions["library_store"]
    app.extensions["library_feed"] = live.Feed(library_store, int(app.config["WS_MAX_CONNECTIONS"]))
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": float(app.config["WS_PING_SECONDS"]),
        "max_message_size": 65536,
    }
    app.before_request(reserve_live_slot)
    app.teardown_request(release_live_slot)
    app.teardown_request(drop_spools)
    sock.init_app(app)
    origins = [o.strip() for o in str(app.config["CORS_ORIGINS"]).split(",") if o.strip()]
    if origins:
        CORS(
            app,
            origins="*" if "*" in origins else origins,
            expose_headers=["ETag", "Location"],
            allow_headers=["Content-Type", "If-Match", "If-None-Match", "Authorization"],
            max_age=600,
        )
    app.wsgi_app = readcache.ReadCache(  # type: ignore[method-assign]
        app.wsgi_app,
        lambda: CatalogueView.of(library_store.snapshot(), library_store).version,
        max_entries=10_000,
        max_bytes=int(float(app.config["READ_CACHE_MB"]) * 1024 * 1024),
    )
    app.cli.add_command(load_books_command)
    app.cli.add_command(remove_sample_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(overdue_command)
    app.cli.add_command(export_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    return app


if __name__ == "__main__":  # pragma: no cover - `flask --app library_api run` is the way in
    create_app().run(port=int(os.environ.get("PORT", "5000")))
