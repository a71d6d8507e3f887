"""The catalogue's routes: books, their covers and documents, and the uploaded files."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Blueprint, Response, request, send_from_directory, url_for
from werkzeug.exceptions import (
    NotFound,
)

from library import books, catalogue, readcache, uploads
from library.catalogue import BookQuery
from library.context import (
    data_dir,
    now,
    stamp,
    store,
    view,
    write_books,
    writer_index,
)
from library.errors import PermissionDenied, TokenEnded
from library.schemas import (
    BookListSchema,
    BookQuerySchema,
    BookSchema,
    GenresSchema,
    MessageSchema,
    book_patch_schema,
    book_query_schema,
    book_schema,
)
from library.web.http import (
    conditional,
    documented,
    if_match,
    json_body,
    json_response,
    query_args,
    received_file,
    signed_in,
)
from storage import (
    CorruptFileError,
    LockTimeoutError,
    NotFoundError,
)

bp = Blueprint("books", __name__)


log = logging.getLogger("library_api")


def book_response(book: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the record as this request stored it (even if another request has
    changed or deleted it since), with its status now."""
    body = orjson.dumps(books.public_book(book, *view().status(book["id"])))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = books.etag_of(body)
    return response


@bp.get("/books")
@documented(query=BookQuerySchema, response=BookListSchema, errors=(422,))
def list_books() -> Response:
    """List books: filter, search, sort and paginate."""
    query = BookQuery(**query_args(book_query_schema))
    current = view()
    request.environ[readcache.ENVIRON_KEY] = current.version
    return conditional(catalogue.list_books(current, query), f'"{current.version}"')


@bp.post("/books")
@documented(
    body=BookSchema,
    response=BookSchema,
    status=201,
    also={200: "Updated an existing book"},
    errors=(400, 409, 415, 422),
    auth="librarian",
)
def create_book() -> Response:
    """Add a book, or update the one with the same ISBN or title, author and year (200)."""
    actor = signed_in("librarian", rechecked=True)
    data = book_schema.load(json_body())
    index, moment = writer_index(), stamp(now())
    book, outcome = write_books(lambda txn: catalogue.upsert_book(txn, index, data, moment), actor)
    if outcome == "created":
        return book_response(book, 201, Location=url_for("books.get_book", book_id=book["id"]))
    return book_response(book)


@bp.get("/genres")
@documented(response=GenresSchema)
def list_genres() -> Response:
    """The genres of the catalogue, sorted (for a filter's choices)."""
    current = view()
    return conditional(orjson.dumps({"genres": current.genres()}), f'"{current.version}"')


@bp.get("/books/<id:book_id>")
@documented(response=BookSchema, errors=(404,))
def get_book(book_id: int) -> Response:
    """Get one book."""
    current = view()
    if book_id not in current.books:
        raise NotFound("Book not found")
    request.environ[readcache.ENVIRON_KEY] = current.version
    return conditional(current.encoded(book_id), current.etag(book_id))


@bp.put("/books/<id:book_id>")
@documented(body=BookSchema, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def replace_book(book_id: int) -> Response:
    """Replace a book: fields left out are cleared."""
    actor = signed_in("librarian", rechecked=True)
    data = book_schema.load(json_body())
    index, moment, condition = writer_index(), stamp(now()), if_match()
    book = write_books(lambda txn: catalogue.replace_book(txn, index, book_id, data, moment, condition), actor)
    return book_response(book)


@bp.patch("/books/<id:book_id>")
@documented(body=BookSchema, partial=True, response=BookSchema, errors=(400, 404, 409, 412, 415, 422), auth="librarian")
def update_book(book_id: int) -> Response:
    """Change some fields of a book."""
    actor = signed_in("librarian", rechecked=True)
    data = book_patch_schema.load(json_body())
    index, moment, condition = writer_index(), stamp(now()), if_match()
    book = write_books(lambda txn: catalogue.patch_book(txn, index, book_id, data, moment, condition), actor)
    return book_response(book)


@bp.delete("/books/<id:book_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="librarian")
def delete_book(book_id: int) -> Response:
    """Delete a book (not while it is on loan)."""
    actor = signed_in("librarian", rechecked=True)
    condition, moment = if_match(), stamp(now())
    book = write_books(lambda txn: catalogue.delete_book(txn, book_id, condition, moment), actor)
    for field in ("cover_url", "document_url"):  # its files go with it
        uploads.remove(store(), file_name(book.get(field)))
    return json_response(orjson.dumps({"message": "Book deleted successfully"}))


@bp.post("/books/<id:book_id>/cover")
@documented(upload=True, response=BookSchema, errors=(404, 413, 415, 422), auth="librarian")
def upload_cover(book_id: int) -> Response:
    """Attach a cover image (JPEG, PNG, WebP or GIF) to a book, replacing the one it had."""
    return attach_file(book_id, "cover")


@bp.post("/books/<id:book_id>/document")
@documented(upload=True, response=BookSchema, errors=(404, 413, 415, 422), auth="librarian")
def upload_document(book_id: int) -> Response:
    """Attach a document (PDF or EPUB) to a book, replacing the one it had."""
    return attach_file(book_id, "document")


@bp.get("/uploads/<name>")
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


def file_name(url: str | None) -> str | None:
    return url.rsplit("/", 1)[-1] if url else None


def attach_file(book_id: int, purpose: str) -> Response:
    """Stream the upload to disk (judged by its bytes, within the size limit), then point the book
    at it, then remove the file it replaces. A failure leaves the book as it was."""
    actor = signed_in("librarian")
    if book_id not in view().books:
        raise NotFound("Book not found")
    upload, limit = received_file()
    name, _, _ = uploads.save(upload.stream, purpose, limit)  # UploadError: answered as any refusal
    field, url, moment = f"{purpose}_url", f"/uploads/{name}", stamp(now())

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
        if refused or isinstance(exc, PermissionDenied | TokenEnded | LockTimeoutError | CorruptFileError):
            uploads.remove(store(), name)
        raise
    uploads.remove(store(), file_name(replaced))
    return book_response(book)
