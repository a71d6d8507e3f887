"""Imports of book files (ours, Goodreads, LibraryThing): rows validated and upserted in batches."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from marshmallow import ValidationError

from library import books, catalogue, loader
from library.context import (
    now,
    stamp,
    write_books,
    writer_index,
)
from library.schemas import (
    book_schema,
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
    moment, index = stamp(now()), writer_index()
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


def import_file(
    book_file: loader.BookFile, name: str, dry_run: bool = False, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Import a book file as read by :mod:`library.loader` (the CLI's ``load-books`` and
    ``POST /imports`` alike) and report it: the counts, the format, and each line's text as the
    CLI prints it after ``line N:``.

    :param name: the file's name, as the report calls it.
    """
    report = import_rows(book_file.rows, dry_run, progress)
    return {
        "file": name,
        "format": book_file.format,
        "format_name": book_file.format_name,
        "rows": len(book_file.rows),
        "dry_run": dry_run,
        "created": report["created"],
        "updated": report["updated"],
        "unchanged": report["unchanged"],
        "merged": report["merged"],
        "skipped": len(report["skipped"]),
        "warnings": report["warnings"],
        "lines": [{"line": line, "text": text} for line, text in report["lines"]],
        "unchanged_lines": line_spans(report["unchanged_lines"]),
    }


def line_spans(lines: list[int]) -> str:
    """``[2, 3, 4, 7]`` as "2-4, 7"."""
    spans: list[list[int]] = []
    for line in lines:
        if spans and line <= spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


IMPORT_IGNORED = {"id", "status", "due_at", "cover_url", "document_url", "created_at", "updated_at"}


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


def _reason(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in messages.items())
    return str(messages)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The fields that differ, with their old and new values: 'genre None → "Fantasy"'."""
    return ", ".join(
        f"{field} {_clip(repr(before.get(field)), 40)} → {_clip(repr(after.get(field)), 40)}"
        for field in books.BOOK_FIELDS
        if before.get(field) != after.get(field)
    )


IMPORT_REQUIRED = {"title": "The row has no title.", "author": "The row names no author (nor an editor)."}


def _is_ean(value: str) -> bool:
    digits = value.replace("-", "").replace(" ", "")
    return len(digits) == 13 and digits.isdigit() and not digits.startswith(("978", "979"))


def _year(value: Any) -> Any:
    """CSV's year text as a number."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
