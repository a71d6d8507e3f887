"""Reading book files for ``flask load-books``.

Four formats, told apart by the file's content (never its name): JSON (a list of books, or
``{"books": [...]}``), our CSV (a header row with a ``title`` column: title, author, genre,
publisher, publication_year, isbn), a Goodreads CSV export and a LibraryThing TSV export (both
recognised by their header row). The text is UTF-8 (a BOM is allowed) or UTF-16 with a BOM. Bytes
that are not UTF-8 are read as Windows-1252 (Latin-1 for the five bytes it leaves undefined) one by
one, where they stand: an export that is UTF-8 with a few stray bytes in one column keeps every other
character as written, and an export written wholly in Latin-1 is read as Latin-1.

Each reader yields ``(line, fields)`` pairs: the line of the file the row starts on and the row's
fields under our names (title, author, genre, publisher, publication_year, isbn), an empty string
for a value the file does not give. Where an export offers a field in several columns, the value is
a :class:`Choices` of them in order of preference; the caller takes the first that is valid.
Validation (required fields, ISBN checksums, years) and the upsert rules are the caller's, so a bad
value is reported, not silently dropped.

How the exports map onto a book:

Goodreads (``Book Id,Title,Author,...,ISBN,ISBN13,...``)
  - title: ``Title`` without the series Goodreads appends: a last parenthesis holding "#" and a
    number ("Dune (Dune, #1)" is "Dune", "(Discworld, #1-3)", "(Foundation #0.5)"); a parenthesis
    without a number ("(Penguin Modern Classics)") is part of the title.
  - author: ``Author`` (already "First Last"; ``Additional Authors`` are left out), spaces
    collapsed and initials spaced like the catalogue's ("J.R.R. Tolkien" is "J. R. R. Tolkien").
  - isbn: the first valid of ``ISBN13`` and ``ISBN``, with the spreadsheet quoting ``="..."``
    removed (``=""`` is none): an EAN, a truncated ISBN-13 or a spreadsheet's ``9.78E+12`` does
    not hide a valid ISBN-10; an ISBN-10 a spreadsheet stripped of its leading zeros gets them back.
  - publisher: ``Publisher``.
  - publication_year: the first valid of ``Original Publication Year`` (the work's) and ``Year
    Published`` (the edition's): Goodreads' 32767 for "unknown" gives way to the edition's year.
  - genre: the first of ``Bookshelves`` that is a subject (see :func:`is_subject`), its slug made
    words ("science-fiction" is "Science Fiction"); none when no shelf is.

LibraryThing (tab-separated: ``Book Id, Title, Sort Character, Primary Author, ...`` with tabs)
  - title: ``Title``.
  - author: ``Primary Author``, written "Last, First" by LibraryThing and turned into "First Last"
    like the catalogue's ("García Márquez, Gabriel" is "Gabriel García Márquez", "Vonnegut, Kurt,
    Jr." is "Kurt Vonnegut Jr."), initials spaced as above; without one (an anthology, an atlas),
    the first ``Secondary Author`` whose role is an editor's or a compiler's.
  - isbn: the first valid of ``ISBN`` then each of ``ISBNs`` (brackets removed).
  - publisher: ``Publication`` up to its " (year)": "Ace Books (1990), Edition: Reissue, ..." is
    "Ace Books"; without a year, the text before its first comma.
  - publication_year: the year ``Date`` starts with ("1965", "c1965", "1965-04-01"); a date
    without digits ("date?", "?", "pas de date", "aucune date", "n.d.") is no year.
  - genre: the first of ``Tags`` that is a subject (see :func:`is_subject`), its first letters
    made capitals.

Both: HTML entities are decoded ("&amp;" is "&"); spaces after a delimiter are ignored (an
export realigned into columns by an editor reads as the original).
"""

from __future__ import annotations

import codecs
import csv
import html
import io
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from storage.files import item_lines

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

#: Words that make a shelf or a tag say how far one got with a book, whether one owns it, in what
#: form, how one files it, or where it came from ("books from mum", "alex borrowing"), not what
#: kind of book it is: a shelf with any of these words (its
#: words split at spaces, "-" and "_", compared without case or accents) is never a genre. English
#: and the languages of the exports we have seen (French, Spanish, German).
_NOT_SUBJECT = """
    read reading reread re unread tbr dnf did finish finished unfinished abandoned paused hold
    currently want wanted wish wishlist wishes owned own owning bought buy borrowed lent loaned
    borrowing lending gift gifts gifted from couldnt hack
    library libraries kindle ebook ebooks audiobook audiobooks audible favorites favourites
    favorite favourite faves fave shelf shelves default meta undetermined unknown misc
    lire lu lus lue lues lecture possede possedes envie pal
    leer leido leidos leyendo pendiente pendientes
    gelesen lesen ungelesen
"""
NOT_SUBJECT_WORDS = frozenset(_NOT_SUBJECT.split())


class UnreadableFileError(Exception):
    """The file cannot be read as a book file at all."""


class Choices(tuple[str, ...]):
    """The values an export offers for one field, in order of preference (empty ones left out)."""

    __slots__ = ()

    def __new__(cls, *values: str) -> Choices:
        return super().__new__(cls, (v for v in values if v))


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
    return read_data(raw, str(path))


def read_data(raw: bytes, name: str) -> BookFile:
    """A book file's content (an upload), its format told from it; ``name`` is what the messages
    call it.

    :raises UnreadableFileError: when it is binary, broken JSON or has a header row of no format
        known here.
    """
    text = _decode(raw)
    if "\x00" in text:
        raise UnreadableFileError(f"{name}: a binary file, not a book file (JSON, CSV or TSV)")
    if text.lstrip()[:1] in ("[", "{"):
        return BookFile("json", list(_json_rows(text, name)))
    return _table(text, name)


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


_STRAY = re.compile("[\udc80-\udcff]+")
#: A byte that is not part of UTF-8 text, as Windows-1252 reads it (what "Latin-1" exports mostly
#: are: curly quotes, dashes), or as Latin-1 for the five bytes Windows-1252 leaves undefined.
_LEGACY = {0xDC00 + b: bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0x100)}


def _decode(raw: bytes) -> str:
    """The file's text: UTF-16 when it says so, else UTF-8 where the bytes are UTF-8 and the
    legacy encoding for each byte that is not, so that stray bytes change nothing around them."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    text = raw.decode("utf-8-sig", "surrogateescape")
    if _STRAY.search(text) is None:
        return text
    return _STRAY.sub(lambda m: m.group().translate(_LEGACY), text)


# -- JSON ----------------------------------------------------------------------------------------


def _json_rows(text: str, path: str | Path) -> Iterator[Row]:
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


def _table(text: str, path: str | Path) -> BookFile:
    """A delimited file, its format (and delimiter) told from its header row."""
    for delimiter in ("\t", ",", ";"):
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True), [])
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


def _table_rows(text: str, path: str | Path, delimiter: str, kind: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
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
    exclusive = _slug(cells.get("exclusive shelf", ""))
    shelves = [_slug(s) for s in cells.get("bookshelves", "").split(",")]
    genre = next((s for s in shelves if s and s != exclusive and is_subject(s)), "")
    return {
        "title": _SERIES.sub("", _words(cells.get("title", ""))),
        "author": _author(cells.get("author", "")),
        "genre": _capitalized(_words(genre.replace("-", " ").replace("_", " "))),
        "publisher": _words(cells.get("publisher", "")),
        "publication_year": Choices(cells.get("original publication year", ""), cells.get("year published", "")),
        "isbn": Choices(_unformula(cells.get("isbn13", "")), _zeros(_unformula(cells.get("isbn", "")))),
    }


def _zeros(isbn: str) -> str:
    """An ISBN-10 that a spreadsheet read as a number, its leading zeros given back ("62645226" is
    "0062645226"); the checksum still decides whether it is one."""
    if 7 <= len(isbn) < 10 and isbn[:-1].isdigit() and (isbn[-1].isdigit() or isbn[-1] in "xX"):
        return isbn.zfill(10)
    return isbn


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
    genre = next((t for t in tags if t and is_subject(t)), "")
    return {
        "title": _words(cells.get("title", "")),
        "author": Choices(
            _author(_first_last(cells.get("primary author", ""))),
            *_editors(cells.get("secondary author", ""), cells.get("secondary author roles", "")),
        ),
        "genre": _capitalized(genre),
        "publisher": _publisher(cells.get("publication", "")),
        "publication_year": _year(cells.get("date", "")),
        "isbn": _librarything_isbn(cells.get("isbn", ""), cells.get("isbns", "")),
    }


_EDITOR = re.compile(r"edit|[ée]d\.|compil|herausg|hrsg|direct", re.IGNORECASE)


def _editors(names: str, roles: str) -> list[str]:
    """The secondary authors (``|``-separated, "Last, First") whose role is an editor's."""
    pairs = zip(names.split("|"), [*roles.split("|"), *[""] * names.count("|")], strict=False)
    return [_author(_first_last(name)) for name, role in pairs if name.strip() and _EDITOR.search(role)]


def _first_last(name: str) -> str:
    """ "Herbert, Frank" as "Frank Herbert"; "King, Martin Luther, Jr." as "Martin Luther King Jr."."""
    parts = [p.strip() for p in name.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return name.strip(" ,")
    last, first, *rest = parts
    return " ".join(p for p in (first, last, *rest) if p)


def _librarything_isbn(main: str, others: str) -> Choices:
    """``ISBN``'s values, then each of ``ISBNs`` not already among them (the list repeats it)."""
    values: list[str] = []
    for value in (_unbracket(c) for c in re.split(r"[,;|]", f"{main},{others}")):
        if value and value not in values:
            values.append(value)
    return Choices(*values)


def _unbracket(value: str) -> str:
    return value.strip().strip("[]").strip()


def _publisher(publication: str) -> str:
    publication = _words(publication)
    match = _PUBLICATION.match(publication)
    publisher = match.group(1) if match else publication.split(", ")[0]
    return publisher.strip(" ,;:")


def _year(date: str) -> str:
    """The year a LibraryThing date starts with; none for a placeholder without digits ("date?",
    "pas de date"); else the text as it is, to be reported."""
    match = _YEAR.match(date)
    if match:
        return match.group(1)
    return date.strip() if any(c.isdigit() for c in date) else ""


# -- shared --------------------------------------------------------------------------------------

_INITIALS = re.compile(r"\b([A-Z])\.(?=[A-Z]\b)")


def _words(text: str) -> str:
    """``text`` with its HTML entities decoded and its runs of spaces (exports have double ones)
    made one."""
    if "&" in text:
        text = html.unescape(text)
    return " ".join(text.split())


def is_subject(shelf: str) -> bool:
    """Whether a shelf or tag names what a book is about (a genre), not a reading status, an
    ownership, a format or a filing mark: none of its words is in :data:`NOT_SUBJECT_WORDS`."""
    words = _plain(shelf).replace("-", " ").replace("_", " ").replace("'", " ").split()
    return bool(words) and not any(w in NOT_SUBJECT_WORDS for w in words)


def _plain(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def _author(name: str) -> str:
    """An author's name spaced like the catalogue's: "J.R.R.  Tolkien" as "J. R. R. Tolkien"."""
    return _INITIALS.sub(r"\1. ", _words(name))


def _slug(text: str) -> str:
    return "-".join(text.lower().split())


def _capitalized(text: str) -> str:
    """Each word's first letter a capital, the rest as written ("science fiction" → "Science Fiction")."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split())
