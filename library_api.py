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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from flask import Blueprint, Flask, Response, current_app, g, request, send_from_directory, url_for
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
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter

import auth
import catalogue
import live
import loader
import members
import readcache
from catalogue import BookQuery, CatalogueView, WriterIndex
from schemas import (
    BookListSchema,
    BookQuerySchema,
    BookSchema,
    ChangesQuerySchema,
    ChangesSchema,
    EnrolSchema,
    HealthSchema,
    LoginSchema,
    MemberListSchema,
    MemberQuerySchema,
    MemberSchema,
    MessageSchema,
    ProblemSchema,
    RegisterSchema,
    TokenSchema,
    book_patch_schema,
    book_query_schema,
    book_schema,
    changes_query_schema,
    enrol_schema,
    login_schema,
    member_patch_schema,
    member_query_schema,
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
)
"""Every setting: ``LIBRARY_<NAME>`` in the environment (or ``.env``), ``<NAME>`` in app.config."""

MAX_JSON_BYTES = 1024 * 1024


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
    return CatalogueView.of(store().snapshot())


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


def book_response(book: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the record as this request stored it (even if another request has
    changed or deleted it since), with its status now."""
    body = orjson.dumps(catalogue.public_book(book, *view().status(book["id"])))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = catalogue.etag_of(body)
    return response


def write_books(updater: Callable[..., Any]) -> Any:
    """Run a catalogue write in one transaction, with the writer's index up to date."""
    return catalogue.with_index(store(), writer_index(), updater)


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
    request.environ[readcache.ENVIRON_KEY] = current.snap.seq
    return conditional(catalogue.list_books(current, query), f'"{current.snap.seq}"')


@api.post("/books")
@documented(body=BookSchema, response=BookSchema, status=201, errors=(400, 409, 415, 422), auth="librarian")
def create_book() -> Response:
    """Add a book, or update the one with the same ISBN or title, author and year (200)."""
    signed_in("librarian")
    data = book_schema.load(json_body())
    book, outcome = write_books(lambda txn: catalogue.upsert_book(txn, writer_index(), data, catalogue.utcnow()))
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
    request.environ[readcache.ENVIRON_KEY] = current.snap.seq
    return conditional(current.encoded(book_id), current.etag(book_id))


@api.put("/books/<id:book_id>")
@documented(body=BookSchema, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def replace_book(book_id: int) -> Response:
    """Replace a book: fields left out are cleared."""
    signed_in("librarian")
    data = book_schema.load(json_body())
    book = write_books(
        lambda txn: catalogue.replace_book(txn, writer_index(), book_id, data, catalogue.utcnow(), if_match())
    )
    return book_response(book)


@api.patch("/books/<id:book_id>")
@documented(body=BookSchema, partial=True, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def update_book(book_id: int) -> Response:
    """Change some fields of a book."""
    signed_in("librarian")
    data = book_patch_schema.load(json_body())
    book = write_books(
        lambda txn: catalogue.patch_book(txn, writer_index(), book_id, data, catalogue.utcnow(), if_match())
    )
    return book_response(book)


@api.delete("/books/<id:book_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="librarian")
def delete_book(book_id: int) -> Response:
    """Delete a book (not while it is on loan)."""
    signed_in("librarian")
    store().update(lambda txn: catalogue.delete_book(txn, book_id, if_match()))
    return json_response(orjson.dumps({"message": "Book deleted successfully"}))


def if_match() -> Any:
    return request.if_match if "If-Match" in request.headers else None


# -- routes: sign-in and members ----------------------------------------------------------------------


@api.post("/auth/register")
@documented(body=RegisterSchema, response=MemberSchema, status=201, errors=(400, 409, 415, 422))
def register() -> Response:
    """Become a member who signs in with a password (always with the role ``member``)."""
    data = register_schema.load(json_body())
    password_hash = auth.hash_password(data["password"])
    member = store().update(lambda txn: members.create(txn, data, stamp(now()), password_hash))
    return member_response(member, 201, Location=url_for("api.get_member", member_id=member["id"]))


@api.post("/auth/login")
@documented(body=LoginSchema, response=TokenSchema, errors=(400, 401, 415, 422, 429))
def login() -> Response:
    """Exchange an email and password for a bearer token. After 5 failures for one email within
    15 minutes, every attempt for it is refused (429) for 15 minutes."""
    data = login_schema.load(json_body())
    secret: bytes = current_app.extensions["library_secret"]
    key = auth.email_key(secret, data["email"])
    attempt = store().update(lambda txn: auth.begin_attempt(txn, key, now()))
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
    member = store().update(lambda txn: members.create(txn, data, stamp(now())))
    return member_response(member, 201, Location=url_for("api.get_member", member_id=member["id"]))


@api.get("/members")
@documented(query=MemberQuerySchema, response=MemberListSchema, errors=(422,), auth="librarian")
def list_members() -> Response:
    """List members with their open loans and the fines they owe."""
    signed_in("librarian")
    args = member_query_schema.load(request.args.to_dict())
    snap = store().snapshot()
    found = members.select(snap, args["sort_by"], args.get("role"), args.get("q"))
    page, limit = args["page"], args["limit"]
    shown = [member_listing(snap, record) for record in found[(page - 1) * limit : page * limit]]
    body = {"members": shown, "total": len(found), "page": page, "limit": limit, "pages": -(-len(found) // limit)}
    return json_response(orjson.dumps(body), **{"Cache-Control": "no-store"})


@api.get("/members/me")
@documented(response=MemberSchema, errors=(), auth="member")
def get_me() -> Response:
    """The signed-in member."""
    me = signed_in()
    return member_conditional(store().snapshot(), me["id"])


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
    condition = if_match()

    def change(txn: Any) -> dict[str, Any]:
        members.check_may_see(members.actor_in(txn, actor["id"]), member_id)
        check_member_etag(txn, member_id, condition)
        return members.patch(txn, actor["id"], member_id, data, stamp(now()))

    return member_response(store().update(change))


@api.delete("/members/<id:member_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="admin")
def delete_member(member_id: int) -> Response:
    """Delete a member (admins only; not while they have books on loan)."""
    actor = signed_in("admin")
    condition = if_match()

    def remove(txn: Any) -> None:
        members.actor_in(txn, actor["id"])
        check_member_etag(txn, member_id, condition)
        members.delete(txn, actor["id"], member_id)

    store().update(remove)
    return json_response(orjson.dumps({"message": "Member deleted successfully"}))


def member_listing(snap: Any, record: dict[str, Any]) -> dict[str, Any]:
    return members.listing(snap, record)


def member_conditional(snap: Any, member_id: int) -> Response:
    body = orjson.dumps(member_listing(snap, snap.get("members", member_id)))
    response = conditional(body, catalogue.etag_of(body))
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def member_response(record: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the member as this request stored them."""
    body = orjson.dumps(member_listing(store().snapshot(), record))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = catalogue.etag_of(body)
    return response


def check_member_etag(txn: Any, member_id: int, condition: Any) -> None:
    """``If-Match`` against the member as the transaction sees them.

    :raises PreconditionFailedError: when it does not match.
    """
    if condition is None or condition.star_tag:
        return
    record = txn.get("members", member_id)
    if record is None:
        return  # the change itself answers 404
    body = orjson.dumps(members.listing_in(txn, record))
    if not condition.contains(catalogue.etag_of(body).strip('"')):
        raise PreconditionFailedError("The member changed since they were read (If-Match does not match)")


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
    ws.send(f'{{"action":"initial_load","seq":{current.snap.seq},"books":[' + books.decode() + "]}")
    return current.snap.seq


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
    """Liveness and the data directory's current sequence number."""
    current = view()
    return json_response(orjson.dumps({"status": "ok", "seq": current.snap.seq, "books": len(current.books)}))


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
    if doc.get("body"):
        body = "BookPatch" if doc.get("partial") else doc["body"]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
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
def load_books_command(path: Path, dry_run: bool) -> None:
    """Import books from a JSON or CSV file (upserting by ISBN, then title+author+year)."""
    try:
        rows = loader.read_rows(path)
    except loader.UnreadableFileError as exc:
        raise click.ClickException(str(exc)) from None
    report = import_rows(rows, dry_run)
    for line, reason in report["skipped"]:
        click.echo(f"line {line}: skipped: {reason}")
    prefix = "dry run: would have " if dry_run else ""
    click.echo(
        f"{prefix}created {report['created']}, updated {report['updated']}, "
        f"unchanged {report['unchanged']}, skipped {len(report['skipped'])} (of {len(rows)} rows in {path.name})"
    )


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Asked for when left out.")
def create_admin_command(email: str, password: str) -> None:
    """Make EMAIL an admin who signs in with PASSWORD (a new member, or an existing one promoted)."""
    try:
        data = RegisterSchema(only=("email", "password")).load({"email": email, "password": password})
    except ValidationError as exc:
        raise click.ClickException(_reason(exc.messages)) from None
    password_hash = auth.hash_password(data["password"])
    member, created = store().update(lambda txn: members.make_admin(txn, data["email"], password_hash, utc_stamp()))
    what = "created admin" if created else "made an admin (with the new password):"
    click.echo(f"{what} {member['email']} (member {member['id']})")


def utc_stamp() -> str:
    return stamp(datetime.now(UTC))


class DryRun(Exception):
    """Raised inside a transaction to throw its changes away."""


def import_rows(rows: list[loader.Row], dry_run: bool = False) -> dict[str, Any]:
    """Validate and upsert ``rows`` in one transaction; returns counts and the skipped rows."""
    report: dict[str, Any] = {"created": 0, "updated": 0, "unchanged": 0, "skipped": []}
    now = catalogue.utcnow()

    def run(txn: Any) -> None:
        for line, fields in rows:
            try:
                data = book_schema.load(_import_fields(fields))
                _, outcome = catalogue.upsert_book(txn, writer_index(), data, now)
            except ValidationError as exc:
                report["skipped"].append((line, _reason(exc.messages)))
                continue
            except ConflictError as exc:
                report["skipped"].append((line, str(exc)))
                continue
            report[outcome] += 1
        if dry_run:
            raise DryRun

    with contextlib.suppress(DryRun):
        write_books(run)
    return report


IMPORT_IGNORED = {"id", "status", "due_at", "cover_url", "document_url", "created_at", "updated_at"}


def _import_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A row as the book schema takes it: read-only columns dropped, CSV's empty cells left out,
    CSV's year text made a number."""
    if "_row" in fields:
        raise ValidationError({"_schema": ["A book must be a JSON object."]})
    data = {k: v for k, v in fields.items() if k not in IMPORT_IGNORED and v != ""}
    year = data.get("publication_year")
    if isinstance(year, str) and year.lstrip("-").isdigit():
        data["publication_year"] = int(year)
    return data


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
            catalogue.seed(txn, [book_schema.load(_import_fields(fields)) for _, fields in rows])

    return JsonStore(
        data_dir,
        ("books", "members", "loans", "logins"),
        describe=catalogue.describe,
        initial=fill,
        lock_timeout=float(app.config["LOCK_TIMEOUT"]),
        journal_keep=int(app.config["JOURNAL_KEEP"]),
    )


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: settings, storage, errors, routes, commands."""
    app = Flask(__name__, instance_relative_config=True, static_folder=str(HERE / "static"))
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
    app.extensions["library_store"] = open_store(app)
    app.extensions["library_writer_index"] = WriterIndex()
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
        lambda: library_store.snapshot().seq,
        max_entries=10_000,
        max_bytes=int(float(app.config["READ_CACHE_MB"]) * 1024 * 1024),
    )
    app.cli.add_command(load_books_command)
    app.cli.add_command(create_admin_command)
    return app


if __name__ == "__main__":  # pragma: no cover - `flask --app library_api run` is the way in
    create_app().run(port=int(os.environ.get("PORT", "5000")))
