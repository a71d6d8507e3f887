"""Imports of book files from the page: the CLI's ``load-books`` as an upload."""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, current_app, request

from library import loader
from library.errors import UploadError
from library.importer import import_file
from library.schemas import ImportReportSchema, import_form_schema
from library.web.http import documented, json_response, received_file, signed_in

bp = Blueprint("imports", __name__)


log = logging.getLogger("library_api")


@bp.post("/imports")
@documented(
    upload=True,
    upload_fields={"dry_run": {"type": "boolean", "default": False, "description": "Write nothing; report only."}},
    response=ImportReportSchema,
    errors=(413, 415, 422),
    auth="librarian",
)
def import_books() -> Response:
    """Import a book file (JSON, our CSV, a Goodreads or LibraryThing export) as load-books does."""
    signed_in("librarian")
    upload, limit = received_file()
    options = import_form_schema.load(request.form.to_dict())
    name = upload.filename or "upload"
    stream = upload.stream
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise UploadError(f"The file is larger than the limit of {current_app.config['MAX_UPLOAD_MB']} MB", 413)
    try:
        book_file = loader.read_data(raw, name)
    except loader.UnreadableFileError as exc:
        raise UploadError(str(exc), 422) from None
    del raw
    report = import_file(book_file, name, options["dry_run"])
    log.info("imported %s (%s): %s", name, book_file.format, {k: report[k] for k in ("created", "updated", "skipped")})
    return json_response(orjson.dumps(report))
