"""The catalogue's derived read data (sort orders, filter indexes, the search index, statuses), kept
up to date change by change, answers exactly what the definitions in SPEC.md give when computed from
scratch: after any sequence of book creates, updates and deletes, loans, returns and holds, and for
views of older snapshots read after newer ones were derived."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from library import catalogue, search
from library.books import fold, public_book
from library.catalogue import BookQuery
from library.readmodel import CatalogueView, catalogue_version
from library.records import COLLECTIONS
from storage import JsonStore

WORDS = ["the", "O'Brien", "2nd-hand", "Straße", "STRASSE", "night", "Knight", "light", "Ada", "ada", "x", "", "  "]
ISBNS = [None, "9780201616224", "020161622X", "9781491950357", "0596007124", "978-0-12"]


def text() -> st.SearchStrategy[str | None]:
    word = st.sampled_from(WORDS) | st.text(alphabet="aAbß-'x1 ", min_size=1, max_size=5)
    return st.none() | st.lists(word, min_size=1, max_size=4).map(" ".join)


def book_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "title": text(),
        "author": text(),
        "genre": st.sampled_from([None, "Fiction", "fiction", "Science  Fiction", ""]),
        "publisher": st.sampled_from([None, "Penguin", "penguin"]),
        "publication_year": st.sampled_from([None, 1999, 2000, 0]),
        "isbn": st.sampled_from(ISBNS),
        "created_at": st.sampled_from(["2026-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]),
        "updated_at": st.sampled_from([None, "2026-01-01T00:00:00Z", "2024-06-01T00:00:00Z"]),
    })  # fmt: skip


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), book_fields()),
        st.tuples(st.just("update"), st.integers(0, 30), book_fields()),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(
            st.just("lend"), st.integers(0, 30), st.sampled_from(["2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"])
        ),
        st.tuples(st.just("return"), st.integers(0, 30)),
        st.tuples(st.just("hold"), st.integers(0, 30), st.sampled_from(["waiting", "ready", "cancelled"])),
        st.tuples(
            st.just("read"),
        ),
    ),
    min_size=1,
    max_size=25,
)
QUERIES = ["ada", "ADA", "o'b", "'", "2nd-hand", "d-h", "strasse", "ß", "ight", "nig", "the ada", "x", "978", "978-0",
           "0201", "616224", "22x", "-", "--", "a b", "zzz", "1", "9", "97"]  # fmt: skip
SORTS = ["id", "-id", "title", "-title", "author", "-author", "publication_year", "-publication_year",
         "created_at", "-created_at", "updated_at", "-updated_at"]  # fmt: skip


# -- the definitions, computed from scratch ----------------------------------------------------------


def status_of(snap: Any, book_id: int) -> tuple[str, str | None]:
    loans = [ln for ln in snap.records("loans").values() if ln["book_id"] == book_id and ln["returned_at"] is None]
    if loans:
        return "checked_out", loans[-1]["due_at"]
    if any(h["book_id"] == book_id and h["status"] == "ready" for h in snap.records("holds").values()):
        return "on_hold", None
    return "available", None


def matches_q(book: dict[str, Any], q: str) -> bool:
    haystacks = [fold(book.get("title")), fold(book.get("author")), (book.get("isbn") or "").lower()]
    for word in q.split():
        word = fold(word)
        if len(word) > 1 and all(c in "0123456789-x" for c in word):
            word = word.replace("-", "")
        if not any(word in h for h in haystacks):
            return False
    return True


def expected(snap: Any, query: BookQuery) -> dict[str, Any]:
    books = list(snap.records("books").values())
    chosen = []
    for book in books:
        status = status_of(snap, book["id"])
        if query.q is not None and not matches_q(book, query.q):
            continue
        if query.genre is not None and fold(book.get("genre")) != fold(query.genre):
            continue
        if query.publication_year is not None and book.get("publication_year") != query.publication_year:
            continue
        if query.status is not None and status[0] != query.status:
            continue
        chosen.append(public_book(book, *status))
    field = query.sort_by.lstrip("-")

    def value(book: dict[str, Any]) -> Any:
        v = book.get(field)
        return fold(v) if field in ("title", "author") else v

    present = sorted((b for b in chosen if value(b) not in (None, "")), key=lambda b: b["id"])
    missing = [b for b in chosen if value(b) in (None, "")]
    present.sort(key=value, reverse=query.sort_by.startswith("-"))
    ordered = present + missing
    start = (query.page - 1) * query.limit
    page = ordered[start : start + query.limit]
    return {"ids": [b["id"] for b in page], "books": page, "total": len(chosen)}


# -- applying the actions ----------------------------------------------------------------------------


def apply(store: JsonStore, action: tuple[Any, ...]) -> None:
    snap = store.snapshot()
    ids = list(snap.records("books"))

    def pick(n: int) -> int | None:
        return ids[n % len(ids)] if ids else None

    kind = action[0]

    def run(txn: Any) -> None:
        if kind == "create":
            txn.insert("books", {**action[1], "cover_url": None, "document_url": None})
        elif kind == "update" and pick(action[1]) is not None:
            txn.put("books", {**txn.get("books", pick(action[1])), **action[2]})
        elif kind == "delete" and pick(action[1]) is not None:
            txn.delete("books", pick(action[1]))
        elif kind == "lend" and pick(action[1]) is not None:
            book_id = pick(action[1])
            if not any(ln["returned_at"] is None for ln in txn.where("loans", "book_id", book_id)):
                txn.insert("loans", {"book_id": book_id, "member_id": 1, "due_at": action[2], "returned_at": None})
        elif kind == "return" and pick(action[1]) is not None:
            for loan in txn.where("loans", "book_id", pick(action[1])):
                if loan["returned_at"] is None:
                    txn.put("loans", {**loan, "returned_at": "2026-02-02T00:00:00Z"})
        elif kind == "hold" and pick(action[1]) is not None:
            book_id = pick(action[1])
            holds = txn.where("holds", "book_id", book_id)
            if holds:
                txn.put("holds", {**holds[0], "status": action[2]})
            else:
                txn.insert("holds", {"book_id": book_id, "member_id": 1, "status": action[2]})

    store.update(run)


def check(store: JsonStore, snap: Any, queries: list[BookQuery]) -> None:
    view = CatalogueView.of(snap, store)
    for query in queries:
        want = expected(snap, query)
        got = catalogue.orjson.loads(catalogue.list_books(view, query))
        assert [b["id"] for b in got["books"]] == want["ids"], query
        assert got["books"] == want["books"], query
        assert got["total"] == want["total"], query


def some_queries(data: Any) -> list[BookQuery]:
    queries = [BookQuery(sort_by=data.draw(st.sampled_from(SORTS)), limit=100)]
    queries.append(BookQuery(q=data.draw(st.sampled_from(QUERIES)), sort_by=data.draw(st.sampled_from(SORTS))))
    queries.append(
        BookQuery(q=data.draw(st.sampled_from(QUERIES)) + " " + data.draw(st.sampled_from(QUERIES)), limit=100)
    )
    genre = data.draw(st.sampled_from(["fiction", "science fiction", "penguin"]))
    status = data.draw(st.sampled_from([None, "available", "checked_out", "on_hold"]))
    sort_by, page = data.draw(st.sampled_from(SORTS)), data.draw(st.integers(1, 3))
    queries.append(BookQuery(genre=genre, status=status, sort_by=sort_by, page=page, limit=2))
    queries.append(BookQuery(publication_year=data.draw(st.sampled_from([1999, 2000, 0])), sort_by="-title"))
    return queries


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One fresh store per example (hypothesis runs many examples in one test call)."""
    count = iter(range(10**6))

    def make() -> JsonStore:
        return JsonStore(tmp_path_factory.mktemp(f"catalogue{next(count)}"), COLLECTIONS, describe=catalogue.describe)

    return make


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(actions=ACTIONS, data=st.data())
def test_views_derived_change_by_change_answer_as_computed_from_scratch(
    stores: Any, actions: list[Any], data: Any
) -> None:
    store = stores()
    try:
        seen = []
        for action in actions:
            apply(store, action)
            snap = store.snapshot()
            seen.append(snap)
            if action[0] == "read" or data.draw(st.booleans()):
                check(store, snap, some_queries(data))
        # Views of older snapshots asked for after newer ones (a slow reader): derived backwards.
        for snap in seen[::-3]:
            check(store, snap, some_queries(data))
        # And the final state from scratch, for comparison with the derived one.
        final = store.snapshot()
        fresh = CatalogueView(final)
        for query in some_queries(data):
            assert catalogue.list_books(fresh, query) == catalogue.list_books(CatalogueView.of(final, store), query)
    finally:
        store.close()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    books=st.lists(st.tuples(text(), text(), st.sampled_from(ISBNS)), max_size=12),
    words=st.lists(
        st.sampled_from(QUERIES) | st.text(alphabet="aAbß-'x19 ", min_size=1, max_size=4), min_size=1, max_size=3
    ),
    edits=st.lists(st.tuples(st.integers(0, 11), text(), st.sampled_from(ISBNS)), max_size=6),
)
def test_the_search_index_finds_exactly_the_books_that_contain_every_word(books, words, edits) -> None:
    records = {i + 1: {"id": i + 1, "title": t, "author": a, "isbn": n} for i, (t, a, n) in enumerate(books)}
    index = search.SearchIndex.build(records).with_digits(records)
    changes = []
    for n, title, isbn in edits:
        if records:
            bid = list(records)[n % len(records)]
            new = {**records[bid], "title": title, "isbn": isbn}
            changes.append((bid, records[bid], new))
            records = {**records, bid: new}
    index = index.patched(changes)
    query = " ".join(words)
    want = {bid for bid, book in records.items() if matches_q(book, query)}
    folded = [w for w in (search._search_word(w) for w in query.split()) if w]
    got = set(records)
    for word in folded:
        got &= index.find(word, records)
    assert got == want
    assert index.patched([]).find("a", records) == search.SearchIndex.build(records).with_digits(records).find(
        "a", records
    )


def test_a_loan_leaves_the_book_structures_shared(tmp_path) -> None:
    store = JsonStore(tmp_path, COLLECTIONS, describe=catalogue.describe)
    store.update(
        lambda txn: [txn.insert("books", {"title": f"Book {i}", "author": "A", "isbn": None}) for i in range(5)]
    )
    before = CatalogueView.of(store.snapshot(), store)
    order, search = before.order("title"), before.search(["book"])
    store.update(
        lambda txn: txn.insert("loans", {"book_id": 2, "member_id": 1, "due_at": "2026-01-01", "returned_at": None})
    )
    after = CatalogueView.of(store.snapshot(), store)
    assert after.order("title") is order
    assert after.state.built[("search",)] is before.state.built[("search",)]
    assert after.search(["book"]) == search
    assert after.status(2) == ("checked_out", "2026-01-01") and before.status(2) == ("available", None)
    assert after.version > before.version
    # The version is the snapshot's own, so every worker gives the same ETag for the same data.
    assert after.version == catalogue_version(store.snapshot())
    assert CatalogueView(store.snapshot()).version == after.version
    store.close()
