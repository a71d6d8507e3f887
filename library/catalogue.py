"""The catalogue: list queries, the POST upsert rules, imports and events.

Pure Python over :mod:`storage` snapshots; no Flask. What is computed from a snapshot (a book's
status, sort orders, the search text) is cached on that snapshot, so it is computed once per change
of the data, not once per request.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from library.books import BOOK_FIELDS, FILTER_FIELDS, author_key, etag_of, fold, isbn13, public_book, utcnow
from library.readmodel import CatalogueView, last_view
from storage import Change, ConflictError, NotFoundError, PreconditionFailedError, Snapshot, Store, Txn

log = logging.getLogger("library_api")

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
        self.lock = threading.RLock()  # held while an updater reads or changes the index
        self._building = threading.Lock()
        self._started = 0

    def start(self, store: Store) -> None:
        """Build the index in a background thread of this process, once (a worker's first write then
        finds it ready instead of building it: tens of seconds at a million books)."""
        if self._started == os.getpid():
            return
        self._started = os.getpid()

        def build() -> None:
            try:
                self.prepare(store)
            except Exception:  # the first write builds it then
                log.exception("building the writer index failed")

        threading.Thread(target=build, name="library-writer-index", daemon=True).start()

    def prepare(self, store: Store) -> None:
        """Build the index from the store's latest snapshot when it must be rebuilt, before the
        store's lock is taken: a rebuild costs a pass over every book (seconds at a million), which
        would otherwise hold up every writer of every server. :meth:`refresh`, under the lock, then
        only takes in the changes committed since."""
        if self.seq >= 0:
            return
        with self._building:  # one build at a time; the others wait for it, outside the store's lock
            if self.seq >= 0:
                return
            snap = store.snapshot()
            fresh = WriterIndex()
            for book in snap.records("books").values():
                fresh.add(book)
            with self.lock:
                if self.seq < 0:
                    self.by_isbn, self.by_tay = fresh.by_isbn, fresh.by_tay
                    self.mutations += 1
                    # Built from a committed snapshot, untouched by any updater: clean whatever
                    # commits failed before.
                    self.failed_commits = getattr(store, "failed_commits", 0)
                    self.seq = snap.seq

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

    refused = ran = False

    def run(txn: Txn) -> Any:
        nonlocal refused, ran
        with index.lock:
            ran = True
            index.refresh(store, txn)
            mutations = index.mutations
            try:
                return updater(txn)
            except BaseException:
                refused = True
                if index.mutations != mutations:
                    index.seq = -1
                raise

    index.prepare(store)
    try:
        return store.update(run)
    except BaseException:
        if ran and not refused:  # (a write that never got the lock changed nothing)
            with index.lock:
                index.seq = -1  # the commit failed after the index took in the changes
        raise


# -- events ----------------------------------------------------------------------------------------


def describe(changes: list[Change], after: Snapshot, store: Store | None = None) -> list[dict[str, Any] | None]:
    """The public event for each change: a book created, updated or deleted. A change to a loan is
    an update of its book. Only the last change of a transaction to one book carries its event.

    Runs inside the commit, before the store lists these changes: a book's status is read from the
    last view when the commit left loans and holds as that view has them, else from ``after``."""
    books = after.records("books")
    last = last_view(store) if store is not None else None
    if last is not None and all(last.collections[n] is after.records(n) for n in ("loans", "holds")):
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
    "list_books",
    "patch_book",
    "replace_book",
    "upsert_book",
    "import_book",
    "remove_sample",
]
