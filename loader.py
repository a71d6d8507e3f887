"""Reading book files for ``flask load-books``: JSON (a list, or ``{"books": [...]}``) and CSV.

Each reader yields ``(line, fields)`` pairs: the line of the file the row starts on and the row's
fields as the file gives them. Validation and the upsert rules are the caller's.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storage.jsonfile import item_lines

Row = tuple[int, dict[str, Any]]


class UnreadableFileError(Exception):
    """The file cannot be read as a book file at all."""


def read_rows(path: Path) -> list[Row]:
    """Every row of the book file at ``path``.

    :raises UnreadableFileError: when it does not exist or is neither JSON nor CSV.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{path}: {exc.strerror}") from None
    text = _decode(raw)
    if "\x00" in text:
        raise UnreadableFileError(f"{path}: a binary file, neither JSON nor CSV")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        return list(_json_rows(text, path))
    return list(_csv_rows(text, path))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _json_rows(text: str, path: Path) -> Iterator[Row]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableFileError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("books"), list):
        items, key = doc["books"], "books"
    elif isinstance(doc, list):
        items, key = doc, None
    else:
        raise UnreadableFileError(f'{path}: expected a list of books or an object with a "books" list')
    lines = item_lines(text, key)
    for index, item in enumerate(items):
        line = lines[index] if index < len(lines) else index + 1
        yield line, item if isinstance(item, dict) else {"_row": item}


def _csv_rows(text: str, path: Path) -> Iterator[Row]:
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    columns = [(name or "").strip().lower() for name in reader.fieldnames or ()]
    if "title" not in columns:
        raise UnreadableFileError(f"{path}: not a book file: a CSV needs a header row with a title column")
    line = reader.line_num + 1
    for row in reader:
        fields = {(k or "").strip().lower().replace(" ", "_"): (v or "").strip() for k, v in row.items() if k}
        yield line, fields
        line = reader.line_num + 1
