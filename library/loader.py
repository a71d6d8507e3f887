"""Reading book files for ``flask load-books``.

Four formats, told apart by the file's content (never its name): JSON (a list of books, or
``{"books": [...]}``), our CSV (a header row with a ``title`` column: title, author, genre,
publisher, publication_year, isbn), a Goodreads CSV export and a LibraryThing TSV export (both
recognised by their header row). The text is UTF-8 (a BOM is allowed), UTF-16 with a BOM, or, when
it is not valid UTF-8, Windows-1252/Latin-1 as LibraryThing writes it.

Each reader yields ``(line, fields)`` pairs: the line of the file the row starts on and the row's
fields under our names (title, author, genre, publisher, publication_year, isbn), an empty string
for a value the file does not give. Validation (required fields, ISBN checksums, years) and the
upsert rules are the caller's, so a bad row is reported, not dropped.

How the exports map onto a book:

Goodreads (``Book Id,Title,Author,...,ISBN,ISBN13,...``)
  - title: ``Title`` without the series Goodreads appends ("Dune (Dune, #1)" is "Dune").
  - author: ``Author`` (already "First Last"; ``Additional Authors`` are left out), spaces
    collapsed and initials spaced like the catalogue's ("J.R.R. Tolkien" is "J. R. R. Tolkien").
  - isbn: ``ISBN13``, else ``ISBN``, with the spreadsheet quoting ``="..."`` removed (``=""`` is none).
  - publisher: ``Publisher``.
  - publication_year: ``Original Publication Year`` (the work's), else ``Year Published`` (the edition's).
  - genre: the first of ``Bookshelves`` that is not about reading (``Exclusive Shelf``, to-read,
    currently-reading, read, favorites, owned, ...), its slug made words ("science-fiction" is
    "Science Fiction"); none when every shelf is a reading one.

LibraryThing (tab-separated: ``Book Id, Title, Sort Character, Primary Author, ...`` with tabs)
  - title: ``Title``.
  - author: ``Primary Author``, written "Last, First" by LibraryThing and turned into "First Last"
    like the catalogue's ("García Márquez, Gabriel" is "Gabriel García Márquez", "Vonnegut, Kurt,
    Jr." is "Kurt Vonnegut Jr."), initials spaced as above. Secondary authors are left out.
  - isbn: the first valid ISBN of ``ISBN`` then ``ISBNs`` (brackets removed); when none is valid,
    ``ISBN`` as written, so that the row is reported as skipped rather than imported without it.
  - publisher: ``Publication`` up to its " (year)": "Ace Books (1990), Edition: Reissue, ..." is
    "Ace Books"; without a year, the text before its first comma.
  - publication_year: the year ``Date`` starts with ("1965", "c1965", "1965-04-01").
  - genre: the first of ``Tags`` that is not about reading, its first letters made capitals.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from library.catalogue import normalize_isbn
from storage.jsonfile import item_lines

Row = tuple[int, dict[str, Any]]

#: A file with more rows than this shows a progress bar while it is imported (on a terminal only).
PROGRESS_MIN_ROWS = 1000

FORMAT_NAMES = {
    "json": "JSON",
    "csv": "CSV",
    "goodreads": "Goodreads CSV export",
    "librarything": "LibraryThing TSV export",
}

GOODREADS_COLUMNS = {"book id", "title", "author", "isbn", "isbn13"}
LIBRARYTHING_COLUMNS = {"title", "primary author"}

#: Shelves and tags that say how far one got with a book, not what kind of book it is.
READING_SHELVES = {
    "read", "to-read", "currently-reading", "want-to-read", "did-not-finish", "dnf", "abandoned",
    "on-hold", "paused", "re-read", "reread", "tbr", "favorites", "favourites", "owned", "books-i-own",
    "owned-books", "wishlist", "wish-list", "library", "your-library", "kindle", "ebook", "ebooks",
    "audiobook", "audiobooks",
}  # fmt: skip


class UnreadableFileError(Exception):
    """The file cannot be read as a book file at all."""


@dataclass(frozen=True)
class BookFile:
    """A book file as read: its format (a key of ``FORMAT_NAMES``) and its rows."""

    format: str
    rows: list[Row]

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES[self.format]


def read_file(path: Path) -> BookFile:
    """The book file at ``path``, its format told from its content.

    :raises UnreadableFileError: when it does not exist, is binary, is broken JSON or has a header
        row of no format known here.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{path}: {exc.strerror}") from None
    text = _decode(raw)
    if "\x00" in text:
        raise UnreadableFileError(f"{path}: a binary file, not a book file (JSON, CSV or TSV)")
    if text.lstrip()[:1] in ("[", "{"):
        return BookFile("json", list(_json_rows(text, path)))
    return _table(text, path)


def read_rows(path: Path) -> list[Row]:
    """Every row of the book file at ``path`` (see ``read_file``)."""
    return read_file(path).rows


def wants_progress(count: int, stream: TextIO | None) -> bool:
    """Whether importing ``count`` rows shows a progress bar on ``stream``: a large file, and a
    terminal to draw it on (never in a pipe, a log or a test)."""
    if count <= PROGRESS_MIN_ROWS or stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# -- text ----------------------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")  # what "Latin-1" exports mostly are: curly quotes, dashes
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # every byte is a character


# -- JSON ----------------------------------------------------------------------------------------


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


# -- CSV and TSV ---------------------------------------------------------------------------------


def _table(text: str, path: Path) -> BookFile:
    """A delimited file, its format (and delimiter) told from its header row."""
    for delimiter in ("\t", ",", ";"):
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
        kind = _kind({_column(name) for name in header})
        if kind:
            return BookFile(kind, list(_table_rows(text, path, delimiter, kind)))
    first = text.lstrip().splitlines()[0][:80] if text.strip() else ""
    raise UnreadableFileError(
        f"{path}: not a book file: neither JSON nor a table whose header row is ours (with a title "
        f"column), a Goodreads export's or a LibraryThing export's; the first line is {first!r}"
    )


def _column(name: str) -> str:
    return " ".join(name.split()).lower()


def _kind(columns: set[str]) -> str | None:
    if columns >= GOODREADS_COLUMNS:
        return "goodreads"
    if columns >= LIBRARYTHING_COLUMNS:
        return "librarything"
    if "title" in columns:
        return "csv"
    return None


def _table_rows(text: str, path: Path, delimiter: str, kind: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    mapper = {"goodreads": _goodreads, "librarything": _librarything, "csv": _ours}[kind]
    try:
        header = [_column(name) for name in next(reader)]
        start = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                values = dict(zip(header, (cell.strip() for cell in cells), strict=False))
                yield start, mapper({name: values.get(name, "") for name in header if name})
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UnreadableFileError(f"{path}: line {reader.line_num}: {exc}") from None


def _ours(cells: dict[str, str]) -> dict[str, Any]:
    """Our CSV: the columns are the fields (unknown ones are reported by validation)."""
    return {name.replace(" ", "_"): value for name, value in cells.items()}


# -- Goodreads -----------------------------------------------------------------------------------

_SERIES = re.compile(r"\s*\([^()]*#\s*\d[^()]*\)\s*$")  # "Dune (Dune, #1)", "(Discworld, #1-3)"


def _goodreads(cells: dict[str, str]) -> dict[str, Any]:
    not_genre = READING_SHELVES | {_slug(cells.get("exclusive shelf", ""))}
    shelves = [_slug(s) for s in cells.get("bookshelves", "").split(",")]
    genre = next((s for s in shelves if s and s not in not_genre), "")
    return {
        "title": _SERIES.sub("", _words(cells.get("title", ""))),
        "author": _author(cells.get("author", "")),
        "genre": _capitalized(genre.replace("-", " ")),
        "publisher": _words(cells.get("publisher", "")),
        "publication_year": cells.get("original publication year") or cells.get("year published", ""),
        "isbn": _unformula(cells.get("isbn13", "")) or _unformula(cells.get("isbn", "")),
    }


def _unformula(value: str) -> str:
    """``="0441172717"`` (how Goodreads keeps spreadsheets from eating the zeros) as ``0441172717``."""
    value = value.strip()
    if value.startswith("="):
        value = value[1:].strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
    return value.strip()


# -- LibraryThing --------------------------------------------------------------------------------

_PUBLICATION = re.compile(r"^(.*?)\s*\(\s*(?:c\.?\s*)?\d{3,4}\??\s*\)")
_YEAR = re.compile(r"\s*\[?\s*(?:c\.?\s*)?(\d{1,4})(?![\d])")


def _librarything(cells: dict[str, str]) -> dict[str, Any]:
    tags = [_words(t) for t in cells.get("tags", "").split(",")]
    genre = next((t for t in tags if t and _slug(t) not in READING_SHELVES), "")
    return {
        "title": _words(cells.get("title", "")),
        "author": _author(_first_last(cells.get("primary author", ""))),
        "genre": _capitalized(genre),
        "publisher": _publisher(cells.get("publication", "")),
        "publication_year": _year(cells.get("date", "")),
        "isbn": _librarything_isbn(cells.get("isbn", ""), cells.get("isbns", "")),
    }


def _first_last(name: str) -> str:
    """ "Herbert, Frank" as "Frank Herbert"; "King, Martin Luther, Jr." as "Martin Luther King Jr."."""
    parts = [p.strip() for p in name.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return name.strip(" ,")
    last, first, *rest = parts
    return " ".join(p for p in (first, last, *rest) if p)


def _librarything_isbn(main: str, others: str) -> str:
    written = [c for c in (_unbracket(c) for c in re.split(r"[,;|]", main)) if c]
    candidates = written + [c for c in (_unbracket(c) for c in re.split(r"[,;|]", others)) if c]
    for candidate in candidates:
        try:
            normalize_isbn(candidate)
        except ValueError:
            continue
        return candidate
    return written[0] if written else ""


def _unbracket(value: str) -> str:
    return value.strip().strip("[]").strip()


def _publisher(publication: str) -> str:
    publication = _words(publication)
    match = _PUBLICATION.match(publication)
    publisher = match.group(1) if match else publication.split(", ")[0]
    return publisher.strip(" ,;:")


def _year(date: str) -> str:
    """The year a LibraryThing date starts with; the text as it is (reported then) when it has none."""
    match = _YEAR.match(date)
    return match.group(1) if match else date.strip()


# -- shared --------------------------------------------------------------------------------------

_INITIALS = re.compile(r"\b([A-Z])\.(?=[A-Z]\b)")


def _words(text: str) -> str:
    """``text`` with its runs of spaces (exports have double ones) made one."""
    return " ".join(text.split())


def _author(name: str) -> str:
    """An author's name spaced like the catalogue's: "J.R.R.  Tolkien" as "J. R. R. Tolkien"."""
    return _INITIALS.sub(r"\1. ", _words(name))


def _slug(text: str) -> str:
    return "-".join(text.lower().split())


def _capitalized(text: str) -> str:
    """Each word's first letter a capital, the rest as written ("science fiction" → "Science Fiction")."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split())
