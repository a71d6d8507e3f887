"""What read requests need from one snapshot (sort orders, filter indexes, the search index,
which books are out or kept), derived once and then kept up to date change by change: the view
of a new snapshot is the view of the one before it plus the changes in between
(``Store.changes_between``). Structures are shared between views and never changed once a view
has published them (readers of older snapshots run at the same time): a view that has changes
to apply copies what they touch, and only when a request first needs that structure. A loan
changes no sort key and no searched text, so it leaves every book structure shared as it is."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from library import memory
from library.books import etag_of, fold, public_book
from library.search import _ISBNISH, SearchIndex, _contains, _search_word, _Stale
from storage import Change, Snapshot, Store

_HOLDERS_LOCK = threading.Lock()
_TWICE = object()
"""A key in an open-loans or kept map that holds two records for one book (never patched)."""


MESSAGE_SLICE = 500
"""Books encoded together when building the websocket's catalogue message."""


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
        self.collections = {name: snap.records(name) for name in CATALOGUE_TABLES}
        self.books = snap.records("books")
        self._lock = threading.Lock()
        # What the next view is derived from. The store's holder keeps this (not the view, which
        # holds the snapshot's records: they must go with their snapshot, in the commit that
        # replaces it, not on the first read after it).
        self.state = _State(self.seq, self.version, _table_seqs(snap))
        self._built = self.state.built
        self._pending = self.state.pending
        self._unavailable: dict[str, set[int]] | None = None
        self._catalogue_lock = threading.Lock()
        self._catalogue_message: bytes | None = None
        self._genres: list[str] | None = None

    @classmethod
    def of(cls, snap: Snapshot, store: Store | None = None) -> CatalogueView:
        """The view of ``snap``, derived from the last view made for ``store`` when there is one."""
        if store is None:
            return snap.memo(cls, lambda: cls(snap))
        holder = _holder(store)

        def derive() -> CatalogueView:
            with holder.lock:
                return holder.view_of(snap, store)

        return snap.memo(cls, derive)

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
        records = self.collections["loans"]
        return self._get(
            ("open_loans",), lambda: _by_book(records, _is_open), lambda b, c: _patch_by_book(b, c, _is_open)
        )

    @property
    def kept(self) -> dict[int, dict[str, Any]]:
        """Holds that keep their book for a member (status ``ready``), by book id."""
        records = self.collections["holds"]
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

    def catalogue_message(self) -> bytes:
        """The websocket's ``initial_load`` message of this view: the whole catalogue, encoded
        once for every connection that asks at this seq (it goes with the view, so with the
        snapshot: a write replaces it, and the next connection builds the next one)."""
        found = self._catalogue_message
        if found is None:
            self.unavailable()  # built outside the lock below (they take the view's own lock)
            with self._catalogue_lock:
                found = self._catalogue_message
                if found is None:
                    found = self._catalogue_message = self._build_catalogue_message()
                    memory.give_back()  # what building it freed would otherwise stay in the RSS
        return found

    def _build_catalogue_message(self) -> bytes:
        # In slices of books: never every book's dict at once, nor a bytes object per book (orjson
        # gives each at least 4 KB: 40 MB for 10,000 books of 300 bytes).
        ids = list(self.books)
        pieces = [b'{"action":"initial_load","seq":%d,"books":[' % self.seq]
        for start in range(0, len(ids), MESSAGE_SLICE):
            if start:
                pieces.append(b",")
            pieces.append(orjson.dumps([self.public(book_id) for book_id in ids[start : start + MESSAGE_SLICE]])[1:-1])
        pieces.append(b"]}")
        return b"".join(pieces)

    def genres(self) -> list[str]:
        """The genres of the catalogue, sorted case-insensitively, each as first written (of the
        book with the lowest id among those that share it, whatever their case)."""
        found = self._genres
        if found is None:
            names = [self.books[min(ids)].get("genre") for key, ids in self.index("genre").items() if key]
            found = self._genres = sorted((n for n in names if n), key=lambda name: (fold(name), name))
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
        # A copy of exactly its size: orjson's bytes take at least 4 KB, and this one is kept.
        data = bytes(memoryview(orjson.dumps(public_book(record, *status))))
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
    return max(snap.collection_seq(name) for name in CATALOGUE_TABLES)


def _table_seqs(snap: Snapshot) -> tuple[int | None, ...]:
    return tuple(snap.collection_seq(name) for name in CATALOGUE_TABLES)


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


_ENCODED: dict[int, tuple[Any, tuple[str, str | None], tuple[bytes, str]]] = {}


_ENCODED_MAX = 16384
"""Books kept encoded: enough for the pages being read; a whole catalogue's would be a second copy."""


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
