"""Imports of book files (ours, Goodreads, LibraryThing): rows validated and upserted in batches."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from marshmallow import ValidationError

from library import catalogue, loader
from library.context import (
    write_books,
    writer_index,
)
from library.schemas import (
    book_schema,
)
from storage import (
    ConflictError,
)

log = logging.getLogger("library_api")


class DryRun(Exception):
    """Raised inside a transaction to throw its changes away."""


IMPORT_BATCH = 2000
"""Rows committed together by an import: memory stays bounded by a batch, not the file, and an
interrupted import can be run again (the upsert rules make what it already did a no-op)."""


def import_rows(
    rows: list[loader.Row], dry_run: bool = False, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Validate and upsert ``rows``, committed in batches of :data:`IMPORT_BATCH` (a dry run in one
    transaction that is thrown away); returns counts and the skipped rows. ``progress(1)`` is called
    after each row (a progress bar's ``update``)."""
    report: dict[str, Any] = {"created": 0, "updated": 0, "unchanged": 0, "skipped": []}
    moment, index = catalogue.utcnow(), writer_index()

    def upsert(txn: Any, batch: list[loader.Row]) -> None:
        for line, fields in batch:
            try:
                data = book_schema.load(_import_fields(fields))
                _, outcome = catalogue.upsert_book(txn, index, data, moment)
            except ValidationError as exc:
                report["skipped"].append((line, _reason(exc.messages)))
                continue
            except ConflictError as exc:
                report["skipped"].append((line, str(exc)))
                continue
            finally:
                if progress is not None:
                    progress(1)
            report[outcome] += 1

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
