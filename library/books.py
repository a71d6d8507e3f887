"""A book's own rules: its fields, ISBNs (checked, 10 and 13 compared), text as compared, its
public form and that form's ETag. Pure functions, used by every other part."""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: Words after a name that do not make another person: "Kurt Vonnegut Jr." is Kurt Vonnegut.
NAME_SUFFIXES = frozenset({"jr", "jnr", "junior", "sr", "snr", "senior", "ii", "iii", "iv"})

BOOK_FIELDS = ("title", "author", "genre", "publisher", "publication_year", "isbn")
"""The fields a client writes; PUT clears those it leaves out."""


PUBLIC_ORDER = (
    "id", "title", "author", "genre", "publisher", "publication_year", "isbn",
    "status", "due_at", "cover_url", "document_url", "created_at", "updated_at",
)  # fmt: skip


SORT_FIELDS = ("title", "author", "publication_year", "id", "created_at", "updated_at")


STATUSES = ("available", "checked_out", "on_hold")


FILTER_FIELDS = ("genre", "author", "publisher")


def utcnow() -> str:
    """Now, as the ISO 8601 UTC timestamp stored in records."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_isbn(raw: str) -> str:
    """The ISBN's digits (and a final X) in the form given, after checking its checksum.

    :raises ValueError: with a sentence saying what is wrong.
    """
    value = raw.replace("-", "").replace(" ", "").upper()
    if len(value) == 10:
        if not (value[:9].isdigit() and (value[9].isdigit() or value[9] == "X")) or not value.isascii():
            raise ValueError("An ISBN-10 is 9 digits and a final digit or X.")
        total = sum((10 - i) * (10 if c == "X" else int(c)) for i, c in enumerate(value))
        if total % 11:
            raise ValueError("Not a valid ISBN-10: the check digit is wrong.")
        return value
    if len(value) == 13:
        if not (value.isdigit() and value.isascii()):
            raise ValueError("An ISBN-13 is 13 digits.")
        if sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(value)) % 10:
            raise ValueError("Not a valid ISBN-13: the check digit is wrong.")
        return value
    raise ValueError("An ISBN has 10 or 13 digits (hyphens and spaces are allowed).")


def isbn13(isbn: str) -> str:
    """The ISBN-13 form of a normalized ISBN, so that both forms of one book compare equal."""
    if len(isbn) == 13:
        return isbn
    body = "978" + isbn[:9]
    check = (10 - sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(body)) % 10) % 10
    return body + str(check)


def fold(text: str | None) -> str:
    """Text as compared by filters and the upsert rules: case-insensitive, spaces collapsed."""
    return " ".join(text.split()).casefold() if text else ""


@functools.lru_cache(maxsize=4096)  # a catalogue has far fewer authors than books: most calls repeat one
def author_key(name: str | None) -> str:
    """An author's name as the upsert rules compare it: without case, accents, punctuation or
    a suffix such as "Jr." ("Mariana Enríquez" is "Mariana Enriquez", "J.R.R. Tolkien" is
    "J. R. R. Tolkien")."""
    if not name:
        return ""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name.casefold()) if not unicodedata.combining(c))
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    while len(words) > 1 and words[-1] in NAME_SUFFIXES:
        words.pop()
    return " ".join(words)


def etag_of(encoded: bytes) -> str:
    return '"' + hashlib.blake2b(encoded, digest_size=9).hexdigest() + '"'


def public_book(record: Mapping[str, Any], status: str, due_at: str | None) -> dict[str, Any]:
    book = {key: record.get(key) for key in PUBLIC_ORDER}
    book["status"] = status
    book["due_at"] = due_at
    return book
