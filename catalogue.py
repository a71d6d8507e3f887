"""The catalogue: ISBNs, the public form of a book, list queries, the POST upsert rules, events.

Pure Python over :mod:`storage` snapshots; no Flask. What is computed from a snapshot (a book's
status, sort orders, the search text) is cached on that snapshot, so it is computed once per change
of the data, not once per request.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading
from collections.abc import Iterable, Mapping
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


# -- the public form of a book ---------------------------------------------------------------------


class CatalogueView:
    """Everything read requests need from one snapshot, each part computed on first use."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.books = snap.tables["books"].records
        self._lock = threading.Lock()
        self._open_loans: dict[int, dict[str, Any]] | None = None
        self._kept: dict[int, dict[str, Any]] | None = None
        self._orders: dict[str, list[int]] = {}
        self._ranks: dict[str, dict[int, int]] = {}
        self._indexes: dict[str, dict[Any, set[int]]] = {}
        self._search: tuple[str, list[int], list[int]] | None = None

    @property
    def version(self) -> int:
        """The seq of the last change to what the catalogue shows (books, loans, holds): its ETag
        and the read cache's version. Sign-ins and member changes do not move it."""
        return catalogue_version(self.snap)

    @classmethod
    def of(cls, snap: Snapshot) -> CatalogueView:
        view = snap.derived.get(cls)
        if view is None:
            view = snap.derived.setdefault(cls, cls(snap))
        return view

    @property
    def open_loans(self) -> dict[int, dict[str, Any]]:
        """Open loans by book id."""
        if self._open_loans is None:
            loans = self.snap.tables["loans"].records
            self._open_loans = {loan["book_id"]: loan for loan in loans.values() if loan.get("returned_at") is None}
        return self._open_loans

    @property
    def kept(self) -> dict[int, dict[str, Any]]:
        """Holds that keep their book for a member (status ``ready``), by book id."""
        if self._kept is None:
            holds = self.snap.tables.get("holds")
            records = holds.records.values() if holds is not None else ()
            self._kept = {hold["book_id"]: hold for hold in records if hold.get("status") == "ready"}
        return self._kept

    def status(self, book_id: int) -> tuple[str, str | None]:
        """A book's status and, while it is checked out, when it is due back."""
        loan = self.open_loans.get(book_id) if self.snap.tables["loans"].records else None
        if loan is not None:
            return "checked_out", loan.get("due_at")
        if book_id in self.kept:
            return "on_hold", None
        return "available", None

    def public(self, book_id: int) -> dict[str, Any]:
        """The book as the API shows it: stored fields plus ``status`` and ``due_at``."""
        return public_book(self.books[book_id], *self.status(book_id))

    def encoded(self, book_id: int) -> bytes:
        """The book's public form as JSON bytes, cached for as long as neither it nor its status changes."""
        record = self.books[book_id]
        status = self.status(book_id)
        cached = _ENCODED.get(book_id)
        if cached is not None and cached[0] is record and cached[1] == status:
            return cached[2]
        data = orjson.dumps(public_book(record, *status))
        _ENCODED[book_id] = (record, status, data)
        return data

    def etag(self, book_id: int) -> str:
        """A strong ETag for one book: a digest of exactly what GET returns."""
        return etag_of(self.encoded(book_id))

    def order(self, sort_by: str) -> list[int]:
        """Book ids sorted by ``sort_by`` (``-field`` descending), ties by ascending id, empty last."""
        ids = self._orders.get(sort_by)
        if ids is not None:
            return ids
        field = sort_by.lstrip("-")
        descending = sort_by.startswith("-")
        if field == "id":
            ids = list(self.books)
            if descending:
                ids.reverse()
        else:
            books = self.books
            if field in ("title", "author"):
                keys = {bid: fold(book.get(field)) for bid, book in books.items()}
            else:
                keys = {bid: book.get(field) for bid, book in books.items()}
            present = [bid for bid in books if keys[bid] not in (None, "")]
            missing = [bid for bid in books if keys[bid] in (None, "")]
            # Python's sort is stable, also with reverse=True: equal keys keep ascending id order.
            present.sort(key=keys.__getitem__, reverse=descending)
            ids = present + missing
        self._orders[sort_by] = ids
        return ids

    def index(self, field: str) -> dict[Any, set[int]]:
        """Book ids by the value of ``field`` (folded text, or the value itself for numbers)."""
        found = self._indexes.get(field)
        if found is None:
            found = {}
            numeric = field == "publication_year"
            for bid, book in self.books.items():
                value = book.get(field)
                found.setdefault(value if numeric else fold(value), set()).add(bid)
            self._indexes[field] = found  # published whole, never half built
        return found

    def unavailable(self) -> dict[str, set[int]]:
        """The ids of the books that are not available, by status."""
        checked_out = {bid for bid in self.open_loans if bid in self.books}
        on_hold = {bid for bid in self.kept if bid in self.books and bid not in checked_out}
        return {"checked_out": checked_out, "on_hold": on_hold}

    def rank(self, sort_by: str) -> dict[int, int]:
        """Each book's position in :meth:`order`, to sort a few matches without walking them all."""
        ranks = self._ranks.get(sort_by)
        if ranks is None:
            # Built whole before it is shared: another thread must never see it half filled.
            ranks = {bid: i for i, bid in enumerate(self.order(sort_by))}
            self._ranks[sort_by] = ranks
        return ranks

    def search(self, words: list[str]) -> set[int]:
        """Ids of the books in whose title, author or ISBN every word appears (case-insensitive)."""
        if self._search is None:
            with self._lock:
                if self._search is None:
                    ids = list(self.books)
                    texts = [
                        f"{fold(b.get('title'))}\x1f{fold(b.get('author'))}\x1f{(b.get('isbn') or '').lower()}"
                        for b in self.books.values()
                    ]
                    starts, pos = [], 0
                    for text in texts:
                        starts.append(pos)
                        pos += len(text) + 1
                    self._search = ("\x00".join(texts), starts, ids)
        text, starts, ids = self._search
        words = sorted({_search_word(w) for w in words if fold(w)}, key=len, reverse=True)
        if not words:
            return set(self.books)
        # Find the longest word with str.find over one joined string (fast, in C), then check the
        # remaining words only in the books it found.
        first, rest = words[0], words[1:]
        found: set[int] = set()
        pos = text.find(first)
        while pos >= 0:
            index = bisect.bisect_right(starts, pos) - 1
            found.add(index)
            nxt = starts[index + 1] if index + 1 < len(starts) else len(text)
            pos = text.find(first, nxt)
        result = set()
        for index in found:
            end = starts[index + 1] - 1 if index + 1 < len(starts) else len(text)
            haystack = text[starts[index] : end]
            if all(w in haystack for w in rest):
                result.add(ids[index])
        return result


def _search_word(word: str) -> str:
    """A search word folded; an ISBN typed with hyphens is searched for as its digits."""
    word = fold(word)
    if len(word) > 1 and all(c in "0123456789-x" for c in word):
        return word.replace("-", "")
    return word


CATALOGUE_TABLES = ("books", "loans", "holds")


def catalogue_version(snap: Snapshot) -> int:
    return max(snap.tables[name].seq for name in CATALOGUE_TABLES if name in snap.tables)


_ENCODED: dict[int, tuple[Any, tuple[str, str | None], bytes]] = {}


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
    order = view.order(query.sort_by)
    wanted, unwanted = _matching(view, query)
    start, end = (query.page - 1) * query.limit, query.page * query.limit
    if wanted is None and not unwanted:
        total = len(order)
        page_ids = order[start:end]
    elif wanted is None:
        total = len(order) - len(unwanted)
        page_ids = [bid for bid in order if bid not in unwanted][start:end]
    else:
        wanted = wanted - unwanted if unwanted else wanted
        total = len(wanted)
        if total <= start:
            page_ids = []
        elif total * 8 < len(order):  # few matches: sorting them beats walking the whole order
            page_ids = sorted(wanted, key=view.rank(query.sort_by).__getitem__)[start:end]
        else:
            page_ids = [bid for bid in order if bid in wanted][start:end]
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
    return (fold(book.get("title")), fold(book.get("author")), book.get("publication_year"))


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
        if fold(target["author"]) != fold(data["author"]):
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


def describe(changes: list[Change], after: Snapshot) -> list[dict[str, Any] | None]:
    """The public event for each change: a book created, updated or deleted. A change to a loan is
    an update of its book. Only the last change of a transaction to one book carries its event."""
    view = CatalogueView.of(after)
    events: list[dict[str, Any] | None] = [None] * len(changes)
    last_for_book: dict[int, int] = {}
    for i, change in enumerate(changes):
        if change.collection == "books":
            last_for_book[change.id] = i
        elif change.collection == "loans":
            for loan in (change.before, change.after):
                if loan is not None and loan.get("book_id") in view.books:
                    last_for_book[loan["book_id"]] = i
        elif change.collection == "holds":  # a book kept for a member, or no longer
            for hold in (change.before, change.after):
                if hold is not None and hold.get("status") == "ready" and hold.get("book_id") in view.books:
                    last_for_book[hold["book_id"]] = i
    for book_id, i in last_for_book.items():
        change = changes[i]
        if book_id in view.books:
            action = "created" if change.collection == "books" and change.before is None else "updated"
            events[i] = {"action": action, "book": view.public(book_id)}
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
]
