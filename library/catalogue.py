"""The catalogue: ISBNs, the public form of a book, list queries, the POST upsert rules, events.

Pure Python over :mod:`storage` snapshots; no Flask. What is computed from a snapshot (a book's
status, sort orders, the search text) is cached on that snapshot, so it is computed once per change
of the data, not once per request.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import math
import threading
import unicodedata
import weakref
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from storage import Change, ConflictError, NotFoundError, PreconditionFailedError, Snapshot, Store, Txn

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


# -- ISBN ------------------------------------------------------------------------------------------


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


#: Words after a name that do not make another person: "Kurt Vonnegut Jr." is Kurt Vonnegut.
NAME_SUFFIXES = frozenset({"jr", "jnr", "junior", "sr", "snr", "senior", "ii", "iii", "iv"})


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


# -- the public form of a book ---------------------------------------------------------------------
#
# What read requests need (sort orders, filter indexes, the search index, which books are out or
# kept) is derived once and then kept up to date change by change: the view of a new snapshot is
# the view of the one before it plus the changes in between (``Store.changes_between``). Structures
# are shared between views and never changed once a view has published them (readers of older
# snapshots run at the same time): a view that has changes to apply copies what they touch, and
# only when a request first needs that structure. A loan changes no sort key and no searched text,
# so it leaves every book structure shared as it is.


class _Stale(Exception):
    """A derived structure does not match the changes it is given: build it again from the books."""


_PATCH_LIMIT = 64
"""Pending changes beyond which (and beyond a 200th of the catalogue) a structure is rebuilt."""


class CatalogueView:
    """Everything read requests need from one snapshot, each part derived on first use.

    Holds the snapshot's records, never the snapshot itself (the snapshot keeps its view in
    ``derived``: a reference back would keep every old snapshot alive until a full garbage
    collection).
    """

    def __init__(self, snap: Snapshot, version: int | None = None) -> None:
        self.seq = snap.seq
        self.version = catalogue_version(snap) if version is None else version
        """The seq of the last change to what the catalogue shows: its ETag and the read cache's
        version. Sign-ins, member changes, waiting holds and returned loans do not move it."""
        self.tables = {name: snap.tables.get(name) for name in CATALOGUE_TABLES}
        self.books = snap.tables["books"].records
        self._lock = threading.Lock()
        # What the next view is derived from. The store's holder keeps this (not the view, which
        # holds the snapshot's records: they must go with their snapshot, in the commit that
        # replaces it, not on the first read after it).
        self.state = _State(self.seq, self.version, _table_seqs(snap))
        self._built = self.state.built
        self._pending = self.state.pending
        self._unavailable: dict[str, set[int]] | None = None

    @classmethod
    def of(cls, snap: Snapshot, store: Store | None = None) -> CatalogueView:
        """The view of ``snap``, derived from the last view made for ``store`` when there is one."""
        view = snap.derived.get(cls)
        if view is not None:
            return view
        if store is None:
            view = cls(snap)
        else:
            holder = _holder(store)
            with holder.lock:
                view = snap.derived.get(cls)
                if view is None:
                    view = holder.view_of(snap, store)
        return snap.derived.setdefault(cls, view)

    # -- deriving ----------------------------------------------------------------------------------

    @staticmethod
    def derive(
        base: _State, snap: Snapshot, changes: list[tuple[int, Change]], backwards: bool = False
    ) -> CatalogueView:
        """The view of ``snap``, which is ``base``'s snapshot with ``changes`` applied (or, when
        ``backwards``, the snapshot before them). Copies nothing: structures with changes to apply
        carry them as pending until first used."""
        books: list[tuple[int, Any, Any]] = []
        loans: list[tuple[Any, Any]] = []
        holds: list[tuple[Any, Any]] = []
        for _, change in reversed(changes) if backwards else changes:
            before, after = (change.after, change.before) if backwards else (change.before, change.after)
            if change.collection == "books":
                books.append((change.id, before, after))
            elif change.collection == "loans":
                loans.append((before, after))
            elif change.collection == "holds":
                holds.append((before, after))
        # The version is a function of the snapshot alone, so that every worker gives the same
        # ETag for the same data (a poller's If-None-Match holds whichever worker answers).
        view = CatalogueView(snap, catalogue_version(snap))
        limit = max(_PATCH_LIMIT, len(view.books) // 200)
        built, pending = dict(base.built), dict(base.pending)
        for key, value in [*((k, (v, [])) for k, v in built.items()), *pending.items()]:
            if key in built and value[1]:
                continue  # published while we looked: the built one is newer
            kind = key[0] if isinstance(key, tuple) else key
            more = loans if kind == "open_loans" else holds if kind == "kept" else books
            todo = value[1] + more if more else value[1]
            if not todo:
                view._built[key] = value[0]
            elif len(todo) <= limit:
                view._pending[key] = (value[0], todo)
        return view

    def _get(self, key: Any, build: Any, patch: Any) -> Any:
        """The structure ``key``: built, patched from the pending changes, or built anew."""
        found = self._built.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._built.get(key)
            if found is not None:
                return found
            pending = self._pending.get(key)
            if pending is not None:
                try:
                    found = patch(pending[0], pending[1])
                except _Stale:
                    found = None
            if found is None:
                found = build()
            self._built[key] = found  # published whole, never half built
            self._pending.pop(key, None)
            return found

    # -- loans and holds ---------------------------------------------------------------------------

    @property
    def open_loans(self) -> dict[int, dict[str, Any]]:
        """Open loans by book id."""
        table = self.tables["loans"]
        records = table.records if table is not None else {}
        return self._get(
            ("open_loans",), lambda: _by_book(records, _is_open), lambda b, c: _patch_by_book(b, c, _is_open)
        )

    @property
    def kept(self) -> dict[int, dict[str, Any]]:
        """Holds that keep their book for a member (status ``ready``), by book id."""
        table = self.tables["holds"]
        records = table.records if table is not None else {}
        return self._get(("kept",), lambda: _by_book(records, _is_ready), lambda b, c: _patch_by_book(b, c, _is_ready))

    def status(self, book_id: int) -> tuple[str, str | None]:
        """A book's status and, while it is checked out, when it is due back."""
        loan = self.open_loans.get(book_id)
        if loan is not None:
            return "checked_out", loan.get("due_at")
        if book_id in self.kept:
            return "on_hold", None
        return "available", None

    def unavailable(self) -> dict[str, set[int]]:
        """The ids of the books that are not available, by status."""
        found = self._unavailable
        if found is None:
            checked_out = {bid for bid in self.open_loans if bid in self.books}
            on_hold = {bid for bid in self.kept if bid in self.books and bid not in checked_out}
            found = self._unavailable = {"checked_out": checked_out, "on_hold": on_hold}
        return found

    # -- one book ----------------------------------------------------------------------------------

    def public(self, book_id: int) -> dict[str, Any]:
        """The book as the API shows it: stored fields plus ``status`` and ``due_at``."""
        return public_book(self.books[book_id], *self.status(book_id))

    def encoded(self, book_id: int) -> bytes:
        """The book's public form as JSON bytes, kept (for the most recently asked books) for as
        long as neither it nor its status changes."""
        return self.answer(book_id)[0]

    def etag(self, book_id: int) -> str:
        """A strong ETag for one book: a digest of exactly what GET returns."""
        return self.answer(book_id)[1]

    def answer(self, book_id: int) -> tuple[bytes, str]:
        """The book's JSON bytes and their ETag (what ``GET /books/<id>`` answers)."""
        record = self.books[book_id]
        status = self.status(book_id)
        cached = _ENCODED.get(book_id)
        if cached is not None and cached[0] is record and cached[1] == status:
            return cached[2]
        data = orjson.dumps(public_book(record, *status))
        found = (data, etag_of(data))
        if len(_ENCODED) >= _ENCODED_MAX:
            with contextlib.suppress(RuntimeError, KeyError, StopIteration):  # another thread got there
                _ENCODED.pop(next(iter(_ENCODED)))  # the oldest: a reader of random books keeps the rest
        _ENCODED[book_id] = (record, status, found)
        return found

    # -- sorting -----------------------------------------------------------------------------------

    def order(self, sort_by: str) -> Sequence[int]:
        """Book ids sorted by ``sort_by`` (``-field`` descending), ties by ascending id, empty last."""
        if sort_by == "id":
            return _Ids(self.books, False)
        if sort_by == "-id":
            return _Ids(self.books, True)
        books = self.books
        return self._get(
            ("order", sort_by),
            lambda: _build_order(books, sort_by),
            lambda base, changes: _patch_order(base, changes, books, sort_by),
        )

    def page(self, sort_by: str, start: int, end: int, wanted: set[int] | None, unwanted: set[int]) -> list[int]:
        """Ids ``start:end`` of the books in ``sort_by`` order that are in ``wanted`` (None: all)
        and not in ``unwanted``."""
        if wanted is not None:
            wanted = wanted - unwanted if unwanted else wanted
            count = len(wanted)
            if count <= start:
                return []
            size = len(self.books)
            # Sorting the matches by their key costs about a microsecond each; walking the order
            # until the page is full, a few tens of nanoseconds per book walked.
            walk = min(size, end * size // count)
            if sort_by.lstrip("-") == "id" or count * 20 < walk:
                return _sort_ids(wanted, sort_by, self.books)[start:end]
            return list(itertools.islice((b for b in self.order(sort_by) if b in wanted), start, end))
        order = self.order(sort_by)
        if not unwanted:
            return list(itertools.islice(order, start, end)) if isinstance(order, _Ids) else order[start:end]
        return list(itertools.islice((b for b in order if b not in unwanted), start, end))

    # -- filters -----------------------------------------------------------------------------------

    def index(self, field: str) -> dict[Any, set[int]]:
        """Book ids by the value of ``field`` (folded text, or the value itself for numbers)."""
        return self._get(
            ("index", field),
            lambda: _build_index(self.books, field),
            lambda base, changes: _patch_index(base, changes, field),
        )

    def search(self, words: list[str]) -> set[int]:
        """Ids of the books in whose title, author or ISBN every word appears (case-insensitive)."""
        found = sorted({_search_word(w) for w in words if fold(w)}, key=len, reverse=True)
        found = [w for w in found if w]  # an empty word (a lone "--") is in every book
        if not found:
            return set(self.books)
        books = self.books
        index: SearchIndex = self._get(
            ("search",), lambda: SearchIndex.build(books), lambda base, changes: base.patched(changes)
        )
        if any(_ISBNISH.issuperset(word) for word in found):
            words = index
            index = self._get(
                ("search", "isbn"), lambda: words.with_digits(books), lambda base, changes: base.patched(changes)
            )
        result = index.find(found[0], books)
        for word in found[1:]:
            if not result:
                break
            if len(result) <= 512:
                result = {bid for bid in result if _contains(books[bid], word)}
            else:
                result &= index.find(word, books)
        return result


CATALOGUE_TABLES = ("books", "loans", "holds")


def catalogue_version(snap: Snapshot) -> int:
    """The seq of the last change to the tables the catalogue shows: a version that moves with
    every change of what it shows (and with some that change nothing shown)."""
    return max(snap.tables[name].seq for name in CATALOGUE_TABLES if name in snap.tables)


def _table_seqs(snap: Snapshot) -> tuple[int | None, ...]:
    return tuple(t.seq if (t := snap.tables.get(name)) is not None else None for name in CATALOGUE_TABLES)


class _State:
    """What a view of a snapshot has derived so far (shared with that view), by which the next
    view is derived: structures built and structures with changes still to apply."""

    __slots__ = ("seq", "version", "table_seqs", "built", "pending")

    def __init__(self, seq: int, version: int, table_seqs: tuple[int | None, ...]) -> None:
        self.seq, self.version, self.table_seqs = seq, version, table_seqs
        self.built: dict[Any, Any] = {}
        self.pending: dict[Any, tuple[Any, list[Any]]] = {}


class _Holder:
    """The state of the last view made for a store (the next one is derived from it), and that
    view itself for as long as its snapshot is alive."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: _State | None = None
        self.view: weakref.ref[CatalogueView] | None = None

    def view_of(self, snap: Snapshot, store: Store) -> CatalogueView:
        last, view = self.last, None
        if last is not None:
            if last.seq == snap.seq:
                if last.table_seqs == _table_seqs(snap):
                    view = CatalogueView.derive(last, snap, [])
            elif last.seq < snap.seq:
                changes = store.changes_between(last.seq, snap.seq)
                if changes is not None:
                    view = CatalogueView.derive(last, snap, changes)
            else:  # a reader still on an older snapshot: undo the changes since
                changes = store.changes_between(snap.seq, last.seq)
                if changes is not None:
                    view = CatalogueView.derive(last, snap, changes, backwards=True)
        if view is None:
            view = CatalogueView(snap)
        if last is None or view.seq >= last.seq:
            self.last, self.view = view.state, weakref.ref(view)
        return view


_HOLDERS: weakref.WeakKeyDictionary[Any, _Holder] = weakref.WeakKeyDictionary()
_HOLDERS_LOCK = threading.Lock()


def _holder(store: Store) -> _Holder:
    holder = _HOLDERS.get(store)
    if holder is None:
        with _HOLDERS_LOCK:
            holder = _HOLDERS.setdefault(store, _Holder())
    return holder


def last_view(store: Store) -> CatalogueView | None:
    """The newest view made for ``store`` so far (without looking at the store)."""
    holder = _HOLDERS.get(store)
    ref = holder.view if holder is not None else None
    return ref() if ref is not None else None


# -- what a loan or hold shows ------------------------------------------------------------------------


def _is_open(loan: Mapping[str, Any]) -> bool:
    return loan.get("returned_at") is None


def _is_ready(hold: Mapping[str, Any]) -> bool:
    return hold.get("status") == "ready"


def _by_book(records: Mapping[int, dict[str, Any]], keep: Any) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for record in records.values():
        if keep(record):
            if record["book_id"] in found:
                # Two for one book (a hand-edited file): the last in id order counts, which only a
                # rebuild knows; mark the structure so that it is never patched.
                found[_TWICE] = found.get(_TWICE, record)  # type: ignore[index]
            found[record["book_id"]] = record
    return found


_TWICE = object()
"""A key in an open-loans or kept map that holds two records for one book (never patched)."""


def _patch_by_book(base: dict[Any, Any], changes: list[tuple[Any, Any]], keep: Any) -> dict[Any, Any]:
    if _TWICE in base:
        raise _Stale
    found = dict(base)
    for before, after in changes:
        if before is not None and keep(before):
            if found.get(before["book_id"]) is not before and found.get(before["book_id"]) != before:
                raise _Stale
            del found[before["book_id"]]
        if after is not None and keep(after):
            if after["book_id"] in found:
                raise _Stale
            found[after["book_id"]] = after
    return found


# -- sort orders -------------------------------------------------------------------------------------


class _Rev:
    """A value that sorts the other way round (descending orders keep ties by ascending id)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Rev) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rev) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


def _sort_value(book: Mapping[str, Any], field: str) -> Any:
    """What ``field`` sorts by (folded text), or None when it is empty."""
    value = book.get(field)
    if field in ("title", "author"):
        value = fold(value)
    return None if value is None or value == "" else value


def _sort_key(book: Mapping[str, Any], field: str, descending: bool) -> tuple[Any, ...]:
    value = _sort_value(book, field)
    if value is None:
        return (1, book["id"])
    return (0, _Rev(value) if descending else value, book["id"])


def _build_order(books: Mapping[int, Mapping[str, Any]], sort_by: str) -> list[int]:
    field = sort_by.lstrip("-")
    keys = {bid: _sort_value(book, field) for bid, book in books.items()}
    present = [bid for bid, key in keys.items() if key is not None]
    missing = [bid for bid, key in keys.items() if key is None]
    # Python's sort is stable, also with reverse=True: equal keys keep ascending id order.
    present.sort(key=keys.__getitem__, reverse=sort_by.startswith("-"))
    return present + missing


def _patch_order(
    base: list[int], changes: list[tuple[int, Any, Any]], books: Mapping[int, Mapping[str, Any]], sort_by: str
) -> list[int]:
    field, descending = sort_by.lstrip("-"), sort_by.startswith("-")
    first: dict[int, Any] = {}
    for bid, before, _ in changes:
        first.setdefault(bid, before)
    # Books that changed still sit in the list under their key from before the first change.
    old = {bid: _sort_key(before, field, descending) for bid, before in first.items() if before is not None}

    def key(bid: int) -> tuple[Any, ...]:
        found = old.get(bid)
        return found if found is not None else _sort_key(books[bid], field, descending)

    ids = base.copy()
    try:
        for bid, wanted in list(old.items()):
            at = bisect.bisect_left(ids, wanted, key=key)
            if at >= len(ids) or ids[at] != bid:
                raise _Stale
            del ids[at]
        old.clear()
        for bid in first:
            book = books.get(bid)
            if book is not None:
                bisect.insort(ids, bid, key=key)
    except KeyError:
        raise _Stale from None
    if len(ids) != len(books):
        raise _Stale
    return ids


class _Ids(Sequence[int]):
    """The books in id order (the snapshot's own order), without a copy."""

    def __init__(self, books: Mapping[int, Any], descending: bool) -> None:
        self.books, self.descending = books, descending

    def __len__(self) -> int:
        return len(self.books)

    def __iter__(self) -> Iterator[int]:
        return reversed(self.books) if self.descending else iter(self.books)  # type: ignore[call-overload]

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return list(itertools.islice(self, *item.indices(len(self))))
        return next(itertools.islice(self, item, None))


def _sort_ids(ids: Iterable[int], sort_by: str, books: Mapping[int, Mapping[str, Any]]) -> list[int]:
    field, descending = sort_by.lstrip("-"), sort_by.startswith("-")
    if field == "id":
        return sorted(ids, reverse=descending)
    return sorted(ids, key=lambda bid: _sort_key(books[bid], field, descending))


# -- filter indexes ----------------------------------------------------------------------------------


def _index_value(book: Mapping[str, Any], field: str) -> Any:
    value = book.get(field)
    return value if field == "publication_year" else fold(value)


def _build_index(books: Mapping[int, Mapping[str, Any]], field: str) -> dict[Any, set[int]]:
    found: dict[Any, set[int]] = {}
    for bid, book in books.items():
        found.setdefault(_index_value(book, field), set()).add(bid)
    return found


def _patch_index(base: dict[Any, set[int]], changes: list[tuple[int, Any, Any]], field: str) -> dict[Any, set[int]]:
    found = dict(base)
    copied: set[Any] = set()

    def ids(value: Any) -> set[int]:
        if value not in copied:
            copied.add(value)
            found[value] = set(found.get(value, ()))
        return found[value]

    for bid, before, after in changes:
        if before is not None:
            value = _index_value(before, field)
            try:
                ids(value).remove(bid)
            except KeyError:
                raise _Stale from None
            if not found[value]:
                del found[value]
                copied.discard(value)
        if after is not None:
            ids(_index_value(after, field)).add(bid)
    return found


# -- the search index --------------------------------------------------------------------------------


_ISBNISH = frozenset("0123456789x")
_WORD_SHARDS = 128
_GRAM_SHARDS = 64


def _tokens(book: Mapping[str, Any]) -> set[str]:
    """The whitespace-free pieces of a book's folded title and author and its ISBN: a query word
    (which has no whitespace) is in one of those texts exactly when it is in one of its pieces."""
    found = set(fold(book.get("title")).split(" "))
    found.update(fold(book.get("author")).split(" "))
    found.update((book.get("isbn") or "").lower().split(" "))
    found.discard("")
    return found


def _contains(book: Mapping[str, Any], word: str) -> bool:
    """The definition of a match: ``word`` is in the folded title, author or ISBN."""
    return (
        word in fold(book.get("title")) or word in fold(book.get("author")) or word in (book.get("isbn") or "").lower()
    )


def _isbnish_tokens(book: Mapping[str, Any]) -> list[str]:
    """The pieces of :func:`_tokens` made of three or more digits or x, without folding the texts
    that cannot hold one (casefolding makes digits and x only of digits, x and X)."""
    found = [t for t in (book.get("isbn") or "").lower().split(" ") if _isbnish(t)]
    for field in ("title", "author"):
        text = book.get(field)
        if text and any(c in text for c in _ISBNISH_RAW):
            found.extend(t for t in fold(text).split(" ") if _isbnish(t))
    return found


_ISBNISH_RAW = "0123456789xX"


def _isbnish(token: str) -> bool:
    return len(token) >= 3 and _ISBNISH.issuperset(token)


def _trigrams(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)}


class SearchIndex:
    """Where each query word can be found, kept up to date per change. Never changed once built:
    :meth:`patched` copies only the shards a change touches.

    - Words (every whitespace-free piece of the folded title and author that is not made of ISBN
      characters only): ``postings`` maps each to the ids of its books, and ``grams`` each
      trigram to the words that contain it, so a query word is looked up in the words that hold
      all its trigrams (shorter query words: in every word).
    - ISBNs (and other pieces of three or more digits or x): ``digits`` maps each trigram to a bit
      set (an int) of the books whose ISBN-like pieces contain it; a candidate from the bits is
      checked against the book itself.
    """

    __slots__ = ("postings", "grams", "digits")

    def __init__(
        self,
        postings: list[dict[str, frozenset[int]]],
        grams: list[dict[str, frozenset[str]]],
        digits: dict[str, int] | None,
    ) -> None:
        self.postings, self.grams, self.digits = postings, grams, digits

    def with_digits(self, books: Mapping[int, Mapping[str, Any]]) -> SearchIndex:
        """This index with its ISBN part (built now if it has none)."""
        if self.digits is not None:
            return self
        return SearchIndex(self.postings, self.grams, self.build_digits(books))

    @classmethod
    def build(cls, books: Mapping[int, Mapping[str, Any]]) -> SearchIndex:
        words: dict[str, list[int]] = {}
        for bid, book in books.items():
            for token in _tokens(book):
                if not _isbnish(token):
                    words.setdefault(token, []).append(bid)
        postings: list[dict[str, frozenset[int]]] = [{} for _ in range(_WORD_SHARDS)]
        gram_words: dict[str, list[str]] = {}
        for word, ids in words.items():
            postings[hash(word) % _WORD_SHARDS][word] = frozenset(ids)
            for gram in _trigrams(word):
                gram_words.setdefault(gram, []).append(word)
        del words
        grams: list[dict[str, frozenset[str]]] = [{} for _ in range(_GRAM_SHARDS)]
        for gram, found in gram_words.items():
            grams[hash(gram) % _GRAM_SHARDS][gram] = frozenset(found)
        return cls(postings, grams, None)

    @staticmethod
    def build_digits(books: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
        """The ISBN part (built on the first query that could be in an ISBN): each trigram's bit set."""
        size = (max(books) // 8 + 1) if books else 1
        bits: dict[str, bytearray] = {}
        for bid, book in books.items():
            grams: set[str] = set()
            for token in _isbnish_tokens(book):
                grams.update(_trigrams(token))
            byte, bit = bid >> 3, 1 << (bid & 7)
            for gram in grams:
                found = bits.get(gram)
                if found is None:
                    found = bits[gram] = bytearray(size)
                found[byte] |= bit
        return {gram: int.from_bytes(found, "little") for gram, found in bits.items()}

    def patched(self, changes: list[tuple[int, Any, Any]]) -> SearchIndex:
        postings, grams = list(self.postings), list(self.grams)
        digits = dict(self.digits) if self.digits is not None else None
        copied: set[tuple[str, int]] = set()

        def shard(kind: str, table: list[dict[str, Any]], key: str, count: int) -> dict[str, Any]:
            at = hash(key) % count
            if (kind, at) not in copied:
                copied.add((kind, at))
                table[at] = dict(table[at])
            return table[at]

        for bid, before, after in changes:
            old = _tokens(before) if before is not None else set()
            new = _tokens(after) if after is not None else set()
            for word in old - new:
                if _isbnish(word):
                    continue
                words = shard("p", postings, word, _WORD_SHARDS)
                ids = words.get(word)
                if ids is None or bid not in ids:
                    raise _Stale
                if len(ids) > 1:
                    words[word] = ids - {bid}
                    continue
                del words[word]
                for gram in _trigrams(word):
                    holders = shard("g", grams, gram, _GRAM_SHARDS)
                    left = holders.get(gram, frozenset()) - {word}
                    if left:
                        holders[gram] = left
                    else:
                        holders.pop(gram, None)
            for word in new - old:
                if _isbnish(word):
                    continue
                words = shard("p", postings, word, _WORD_SHARDS)
                ids = words.get(word)
                if ids is None:
                    words[word] = frozenset((bid,))
                    for gram in _trigrams(word):
                        holders = shard("g", grams, gram, _GRAM_SHARDS)
                        holders[gram] = holders.get(gram, frozenset()) | {word}
                else:
                    words[word] = ids | {bid}
            if digits is None:
                continue
            old_grams = {g for t in old if _isbnish(t) for g in _trigrams(t)}
            new_grams = {g for t in new if _isbnish(t) for g in _trigrams(t)}
            bit = 1 << bid
            for gram in old_grams - new_grams:
                bits = digits.get(gram, 0)
                if not bits & bit:
                    raise _Stale
                bits &= ~bit
                if bits:
                    digits[gram] = bits
                else:
                    del digits[gram]
            for gram in new_grams - old_grams:
                digits[gram] = digits.get(gram, 0) | bit
        return SearchIndex(postings, grams, digits)

    def find(self, word: str, books: Mapping[int, Mapping[str, Any]]) -> set[int]:
        """Ids of the books whose folded title, author or ISBN contains ``word`` (folded, not empty)."""
        if any(c.isspace() for c in word):  # not from a query split on whitespace: check every book
            return {bid for bid, book in books.items() if _contains(book, word)}
        found: set[int] = set()
        for token in self._words_containing(word):
            found.update(self.postings[hash(token) % _WORD_SHARDS][token])
        if _ISBNISH.issuperset(word):
            if self.digits is None:
                raise ValueError("the index has no ISBN part: see with_digits")
            if len(word) <= 3:
                bits = 0
                for gram, gram_bits in self.digits.items():
                    if word in gram:
                        bits |= gram_bits
                found.update(_bit_ids(bits))
            else:
                bits = -1
                for gram in _trigrams(word):
                    bits &= self.digits.get(gram, 0)
                    if not bits:
                        break
                found.update(bid for bid in _bit_ids(bits) if bid in books and _contains(books[bid], word))
        return found

    def _words_containing(self, word: str) -> Iterable[str]:
        if len(word) < 3:
            return [token for words in self.postings for token in words if word in token]
        sets = []
        for gram in _trigrams(word):
            holders = self.grams[hash(gram) % _GRAM_SHARDS].get(gram)
            if not holders:
                return ()
            sets.append(holders)
        sets.sort(key=len)
        candidates = sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
        return candidates if len(word) == 3 else [token for token in candidates if word in token]


def _bit_ids(bits: int) -> list[int]:
    """The positions of the bits set in ``bits`` (a non-negative int)."""
    if bits <= 0:
        return []
    text = bin(bits)[:1:-1]  # least significant bit first
    found, at = [], text.find("1")
    while at >= 0:
        found.append(at)
        at = text.find("1", at + 1)
    return found


def _search_word(word: str) -> str:
    """A search word folded; an ISBN typed with hyphens is searched for as its digits."""
    word = fold(word)
    if len(word) > 1 and all(c in "0123456789-x" for c in word):
        return word.replace("-", "")
    return word


_ENCODED: dict[int, tuple[Any, tuple[str, str | None], tuple[bytes, str]]] = {}
_ENCODED_MAX = 16384
"""Books kept encoded: enough for the pages being read; a whole catalogue's would be a second copy."""


def etag_of(encoded: bytes) -> str:
    return '"' + hashlib.blake2b(encoded, digest_size=9).hexdigest() + '"'


def public_book(record: Mapping[str, Any], status: str, due_at: str | None) -> dict[str, Any]:
    book = {key: record.get(key) for key in PUBLIC_ORDER}
    book["status"] = status
    book["due_at"] = due_at
    return book


# -- list queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookQuery:
    """A validated ``GET /books`` query."""

    page: int = 1
    limit: int = 10
    sort_by: str = "id"
    genre: str | None = None
    author: str | None = None
    publisher: str | None = None
    publication_year: int | None = None
    status: str | None = None
    q: str | None = None


def list_books(view: CatalogueView, query: BookQuery) -> bytes:
    """The ``GET /books`` body for ``query``, as JSON bytes."""
    wanted, unwanted = _matching(view, query)
    start, end = (query.page - 1) * query.limit, query.page * query.limit
    if wanted is not None and unwanted:
        wanted, unwanted = wanted - unwanted, set()
    total = len(view.books) - len(unwanted) if wanted is None else len(wanted)
    page_ids = view.page(query.sort_by, start, end, wanted, unwanted) if total > start else []
    body = b",".join(view.encoded(bid) for bid in page_ids)
    pages = math.ceil(total / query.limit)
    tail = orjson.dumps({"total": total, "page": query.page, "limit": query.limit, "pages": pages})
    return b'{"books":[' + body + b"]," + tail[1:]


def _matching(view: CatalogueView, query: BookQuery) -> tuple[set[int] | None, set[int]]:
    """The ids ``query``'s filters keep (None: no filter narrows them) and the ids they drop."""
    narrowing: list[set[int]] = []
    if query.q is not None and query.q.split():
        narrowing.append(view.search(query.q.split()))
    for field in FILTER_FIELDS:
        value = getattr(query, field)
        if value is not None:
            narrowing.append(view.index(field).get(fold(value), _NONE))
    if query.publication_year is not None:
        narrowing.append(view.index("publication_year").get(query.publication_year, _NONE))
    unwanted: set[int] = set()
    if query.status is not None:
        by_status = view.unavailable()
        if query.status == "available":
            unwanted = set().union(*by_status.values())
        else:
            narrowing.append(by_status.get(query.status, _NONE))
    if not narrowing:
        return None, unwanted
    narrowing.sort(key=len)
    return narrowing[0].intersection(*narrowing[1:]), unwanted


_NONE: frozenset[int] = frozenset()


# -- writes ----------------------------------------------------------------------------------------


class WriterIndex:
    """The keys the upsert rules look up (ISBN-13, title+author+year), kept up to date from the
    store's change list instead of being rebuilt from every book on every write."""

    def __init__(self) -> None:
        self.seq = -1  # -1: rebuild before use
        self.mutations = 0
        self.failed_commits = 0
        self.by_isbn: dict[str, set[int]] = {}
        self.by_tay: dict[tuple[str, str, int | None], set[int]] = {}

    def refresh(self, store: Store | None, txn: Txn) -> None:
        """Bring the index up to ``txn`` (its snapshot, plus what earlier updaters of the same
        commit changed, which they applied here themselves). Without a store, rebuild it."""
        seq = txn.snapshot.seq
        failed = getattr(store, "failed_commits", 0)
        if failed != self.failed_commits:  # a batch that changed this index was not committed
            self.seq, self.failed_commits = -1, failed
        if self.seq == seq and store is not None:
            return
        changes = store.changes_between(self.seq, seq) if self.seq >= 0 and store is not None else None
        if changes is None:
            self.by_isbn, self.by_tay = {}, {}
            for _, book in txn.items("books"):
                self.add(book)
        else:
            # Re-applying a change already applied (our own last commit) leaves the index as it is.
            for _, change in changes:
                if change.collection == "books":
                    self.apply(change.before, change.after)
        self.seq = seq

    def apply(self, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        if before is not None:
            self.discard(before)
        if after is not None:
            self.add(after)

    def add(self, book: Mapping[str, Any]) -> None:
        self.mutations += 1
        if book.get("isbn"):
            self.by_isbn.setdefault(isbn13(book["isbn"]), set()).add(book["id"])
        self.by_tay.setdefault(tay_key(book), set()).add(book["id"])

    def discard(self, book: Mapping[str, Any]) -> None:
        self.mutations += 1
        if book.get("isbn"):
            self.by_isbn.get(isbn13(book["isbn"]), set()).discard(book["id"])
        self.by_tay.get(tay_key(book), set()).discard(book["id"])

    def find_isbn(self, isbn: str) -> int | None:
        ids = self.by_isbn.get(isbn13(isbn))
        return min(ids) if ids else None

    def find_tay(self, data: Mapping[str, Any]) -> int | None:
        ids = self.by_tay.get(tay_key(data))
        return min(ids) if ids else None


def tay_key(book: Mapping[str, Any]) -> tuple[str, str, int | None]:
    return (fold(book.get("title")), author_key(book.get("author")), book.get("publication_year"))


def upsert_book(txn: Txn, index: WriterIndex, data: dict[str, Any], now: str) -> tuple[dict[str, Any], str]:
    """Apply the ``POST /books`` rules to ``data`` (validated fields).

    :returns: the stored book and ``"created"``, ``"updated"`` or ``"unchanged"``.
    :raises ConflictError: when the ISBN belongs to a book by another author, or names one book
        while title, author and year name another.
    """
    by_isbn = index.find_isbn(data["isbn"]) if data.get("isbn") else None
    by_tay = index.find_tay(data)
    if by_isbn is not None:
        target = txn.get_or_fail("books", by_isbn, "Book not found")
        if author_key(target["author"]) != author_key(data["author"]):
            raise ConflictError("ISBN already exists")
        if by_tay is not None and by_tay != by_isbn:
            raise ConflictError(f"The ISBN belongs to book {by_isbn} but title, author and year match book {by_tay}")
    elif by_tay is not None:
        target = txn.get_or_fail("books", by_tay, "Book not found")
    else:
        book = txn.insert("books", _new_book(data, now))
        index.add(book)
        return book, "created"
    return _change_book(txn, index, target, {**target, **data}, now)


@dataclass
class Imported:
    """What :func:`import_book` did with a row: ``outcome`` is ``"created"``, ``"updated"``,
    ``"unchanged"`` or ``"merged"`` (a book an earlier row of the same import already gave);
    ``before`` is the book as it was (None when created); ``notes`` say what was not taken."""

    book: dict[str, Any]
    outcome: str
    before: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


def import_book(txn: Txn, index: WriterIndex, data: dict[str, Any], now: str, earlier: Container[int] = ()) -> Imported:
    """Apply the import rules to ``data`` (validated fields) and return what happened.

    A row with an ISBN is the book with that ISBN (10 and 13 alike), so rows with different ISBNs
    are never one book; when no book has it, an ISBN-less book with the same title, author and
    year takes it. A row without an ISBN is the book with the same title, author and year. When the
    ISBN's book has another author, the row is that book (its author kept) if the titles agree,
    else the ISBN is dropped and the row is matched as one without it. A book in ``earlier`` (met
    by an earlier row of the same import) only has its empty fields filled, so the first row wins
    and importing the same file again changes nothing.
    """
    notes: list[str] = []
    target: dict[str, Any] | None = None
    if data.get("isbn"):
        owner = index.find_isbn(data["isbn"])
        if owner is not None:
            found = txn.get_or_fail("books", owner, "Book not found")
            isbn, data = data["isbn"], {k: v for k, v in data.items() if k != "isbn"}  # the stored form stays
            if author_key(found["author"]) == author_key(data["author"]):
                target = found
            elif _same_title(found["title"], data["title"]):
                target = found
                if fold(found["author"]) != fold(data["author"]):
                    notes.append(
                        f"author {data['author']!r} not taken: book {owner} has this ISBN by {found['author']!r}"
                    )
                data = {k: v for k, v in data.items() if k != "author"}
            else:
                notes.append(f"isbn {isbn} dropped: it is book {owner}'s ({found['title']!r} by {found['author']!r})")
    if target is None:
        ids = index.by_tay.get(tay_key(data), set())
        if data.get("isbn"):  # only a book that has no ISBN yet can be this one
            ids = {i for i in ids if not (txn.get("books", i) or {}).get("isbn")}
        if ids:
            target = txn.get_or_fail("books", min(ids), "Book not found")
    if target is None:
        book = txn.insert("books", _new_book(data, now))
        index.add(book)
        return Imported(book, "created", None, tuple(notes))
    if target["id"] in earlier:
        filled = {k: v for k, v in data.items() if target.get(k) in (None, "") and v not in (None, "")}
        book, _ = _change_book(txn, index, target, {**target, **filled}, now)
        return Imported(book, "merged", target, tuple(notes))
    book, outcome = _change_book(txn, index, target, {**target, **data}, now)
    return Imported(book, outcome, target, tuple(notes))


def _same_title(one: str, other: str) -> bool:
    """Whether two titles are one, the shorter perhaps without the longer's subtitle."""
    one, other = fold(one), fold(other)
    short, long = sorted((one, other), key=len)
    return short == long or (bool(short) and long.startswith(short) and not long[len(short)].isalnum())


def replace_book(
    txn: Txn, index: WriterIndex, book_id: int, data: dict[str, Any], now: str, if_match: Any
) -> dict[str, Any]:
    """``PUT``: every writable field from ``data``, the ones left out cleared."""
    current = _current(txn, book_id, if_match)
    return _checked_change(txn, index, current, {**current, **dict.fromkeys(BOOK_FIELDS), **data}, now)


def patch_book(
    txn: Txn, index: WriterIndex, book_id: int, data: dict[str, Any], now: str, if_match: Any
) -> dict[str, Any]:
    """``PATCH``: only the fields given."""
    current = _current(txn, book_id, if_match)
    return _checked_change(txn, index, current, {**current, **data}, now)


def delete_book(txn: Txn, book_id: int, if_match: Any, now: str) -> dict[str, Any]:
    """``DELETE``; refused while the book is on loan. Holds waiting for it are cancelled."""
    _current(txn, book_id, if_match)
    if status_in(txn, book_id)[0] == "checked_out":
        raise ConflictError("The book is on loan; it can be deleted once it is returned")
    for hold in txn.where("holds", "book_id", book_id):
        if hold["status"] in ("waiting", "ready"):
            txn.put("holds", {**hold, "status": "cancelled", "closed_at": now})
    return txn.delete("books", book_id)


def _current(txn: Txn, book_id: int, if_match: Any) -> dict[str, Any]:
    current = txn.get_or_fail("books", book_id, "Book not found")
    if if_match is not None and not if_match.star_tag:
        # From the transaction's record: an earlier write in the same commit counts.
        status = status_in(txn, book_id)
        etag = etag_of(orjson.dumps(public_book(current, *status))).strip('"')
        if not if_match.contains(etag):
            raise PreconditionFailedError("The book changed since it was read (If-Match does not match)")
    return current


def status_in(txn: Txn, book_id: int) -> tuple[str, str | None]:
    """:meth:`CatalogueView.status` as the transaction sees it."""
    for loan in txn.where("loans", "book_id", book_id):
        if loan.get("returned_at") is None:
            return "checked_out", loan.get("due_at")
    if any(hold.get("status") == "ready" for hold in txn.where("holds", "book_id", book_id)):
        return "on_hold", None
    return "available", None


def _checked_change(
    txn: Txn, index: WriterIndex, current: dict[str, Any], new: dict[str, Any], now: str
) -> dict[str, Any]:
    if new.get("isbn"):
        owner = index.find_isbn(new["isbn"])
        if owner is not None and owner != current["id"]:
            raise ConflictError("ISBN already exists")
    return _change_book(txn, index, current, new, now)[0]


def _change_book(
    txn: Txn, index: WriterIndex, current: dict[str, Any], new: dict[str, Any], now: str
) -> tuple[dict[str, Any], str]:
    if new == current:
        return current, "unchanged"
    new["updated_at"] = now
    txn.put("books", new)
    index.apply(current, new)
    return new, "updated"


def _new_book(data: Mapping[str, Any], now: str) -> dict[str, Any]:
    book: dict[str, Any] = dict.fromkeys(BOOK_FIELDS)
    book.update(data)
    book.update(cover_url=None, document_url=None, created_at=now, updated_at=now)
    return book


def with_index(store: Store, index: WriterIndex, updater: Any) -> Any:
    """Run ``updater(txn)`` in a store transaction with ``index`` brought up to date first. If the
    transaction fails, the index (which it may have changed) is rebuilt next time."""

    refused = False

    def run(txn: Txn) -> Any:
        nonlocal refused
        index.refresh(store, txn)
        mutations = index.mutations
        try:
            return updater(txn)
        except BaseException:
            refused = True
            if index.mutations != mutations:
                index.seq = -1
            raise

    try:
        return store.update(run)
    except BaseException:
        if not refused:
            index.seq = -1  # the commit failed after the index took in the changes
        raise


# -- events ----------------------------------------------------------------------------------------


def describe(changes: list[Change], after: Snapshot, store: Store | None = None) -> list[dict[str, Any] | None]:
    """The public event for each change: a book created, updated or deleted. A change to a loan is
    an update of its book. Only the last change of a transaction to one book carries its event.

    Runs inside the commit, before the store lists these changes: a book's status is read from the
    last view when the commit left loans and holds as that view has them, else from ``after``."""
    books = after.tables["books"].records
    last = last_view(store) if store is not None else None
    if last is not None and all(last.tables[n] is after.tables.get(n) for n in ("loans", "holds")):
        status = last.status
    else:
        txn = Txn(after)

        def status(book_id: int) -> tuple[str, str | None]:
            return status_in(txn, book_id)

    events: list[dict[str, Any] | None] = [None] * len(changes)
    last_for_book: dict[int, int] = {}
    for i, change in enumerate(changes):
        if change.collection == "books":
            last_for_book[change.id] = i
        elif change.collection == "loans":
            for loan in (change.before, change.after):
                if loan is not None and loan.get("book_id") in books:
                    last_for_book[loan["book_id"]] = i
        elif change.collection == "holds":  # a book kept for a member, or no longer
            for hold in (change.before, change.after):
                if hold is not None and hold.get("status") == "ready" and hold.get("book_id") in books:
                    last_for_book[hold["book_id"]] = i
    for book_id, i in last_for_book.items():
        change = changes[i]
        if book_id in books:
            action = "created" if change.collection == "books" and change.before is None else "updated"
            events[i] = {"action": action, "book": public_book(books[book_id], *status(book_id))}
        elif change.collection == "books" and change.before is not None:
            events[i] = {"action": "deleted", "book": public_book(change.before, "available", None)}
    return events


def seed(txn: Txn, books: Iterable[dict[str, Any]]) -> int:
    """Fill a new catalogue with ``books`` (validated); returns how many were added."""
    index = WriterIndex()
    index.refresh(None, txn)
    now = utcnow()
    count = 0
    for data in books:
        try:
            _, outcome = upsert_book(txn, index, data, now)
        except ConflictError:
            continue
        count += outcome == "created"
    return count


def remove_sample(txn: Txn, index: WriterIndex, sample: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delete the books of ``sample`` (validated, as :func:`seed` took them) that no one has
    touched: the record still has the sample's fields, was never updated, has no cover or document,
    and was never borrowed or held. Returns the books deleted."""
    removed = []
    for data in sample:
        found = index.find_isbn(data["isbn"]) if data.get("isbn") else index.find_tay(data)
        book = txn.get("books", found) if found is not None else None
        if book is None or book["updated_at"] != book["created_at"]:
            continue
        if book.get("cover_url") or book.get("document_url"):
            continue
        if any(book.get(field) != data.get(field) for field in BOOK_FIELDS):
            continue
        if txn.where("loans", "book_id", book["id"]) or txn.where("holds", "book_id", book["id"]):
            continue
        removed.append(txn.delete("books", book["id"]))
        index.discard(book)
    return removed


__all__ = [
    "BookQuery",
    "CatalogueView",
    "ConflictError",
    "NotFoundError",
    "WriterIndex",
    "delete_book",
    "describe",
    "isbn13",
    "list_books",
    "normalize_isbn",
    "patch_book",
    "replace_book",
    "upsert_book",
    "import_book",
    "remove_sample",
]


def answer_book(store: Store, path: str) -> tuple[bytes, str] | None:
    """``GET /books/<id>`` answered from the current view: the book's JSON and ETag, or None for
    any path that is not exactly that of an existing book (the app then answers it)."""
    if not path.startswith("/books/"):
        return None
    digits = path[7:]
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0" or len(digits) > 18:
        return None
    view = CatalogueView.of(store.snapshot(), store)
    book_id = int(digits)
    if book_id not in view.books:
        return None
    return view.answer(book_id)
