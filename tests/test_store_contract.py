"""The storage contract (storage.base.Store), run against every implementation.

Each backend is one entry of ``BACKENDS``: a factory that opens a store on a fresh place (and the
same place again, for what must survive a reopening). A new backend passes this file unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import JournalTruncatedError, JsonStore, NotFoundError, Store

COLLECTIONS = ("books", "members")


def describe(changes, after):
    return [
        {"action": "deleted" if c.after is None else "created" if c.before is None else "updated", "id": c.id}
        if c.collection == "books"
        else None
        for c in changes
    ]


def json_store(place: Path) -> Store:
    return JsonStore(place, COLLECTIONS, describe=describe)


def pg_store(place: Path) -> Store:
    from storage.postgres import PgStore
    from tests.postgres import database_for

    return PgStore(database_for(place), COLLECTIONS, describe=describe, directory=place)


BACKENDS: dict[str, Callable[[Path], Store]] = {"json": json_store, "postgresql": pg_store}


@pytest.fixture(params=sorted(BACKENDS))
def opener(request, tmp_path):
    """Opens a store on one place; every call opens it again (another process, or a restart)."""
    stores: list[Store] = []

    def open_store() -> Store:
        store = BACKENDS[request.param](tmp_path / "place")
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        store.close()


def insert(store: Store, title: str, collection: str = "books") -> dict:
    return store.update(lambda txn: txn.insert(collection, {"title": title}))


def titles(store: Store) -> list[str]:
    return [record["title"] for record in store.snapshot().records("books").values()]


def test_ids_are_positive_growing_and_never_given_twice(opener):
    store = opener()
    ids = [insert(store, f"b{i}")["id"] for i in range(3)]
    assert ids == sorted(ids) and ids[0] >= 1
    store.update(lambda txn: txn.delete("books", ids[-1]))
    assert insert(store, "after a delete")["id"] > ids[-1]
    assert insert(opener(), "after a reopening")["id"] > ids[-1] + 1


def test_a_transaction_is_all_or_nothing(opener):
    store = opener()
    insert(store, "kept")
    seq = store.snapshot().seq

    def half(txn):
        txn.insert("books", {"title": "half"})
        txn.insert("members", {"title": "other half"})
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        store.update(half)
    assert titles(store) == ["kept"] and store.snapshot().count("members") == 0
    assert store.snapshot().seq == seq


def test_an_updater_sees_its_own_changes_and_returns_its_value(opener):
    store = opener()

    def both(txn):
        first = txn.insert("books", {"title": "one"})
        assert txn.get("books", first["id"]) == first
        txn.put("books", {**first, "title": "one, changed"})
        return [b["title"] for _, b in txn.items("books")]

    assert store.update(both) == ["one, changed"]
    assert titles(store) == ["one, changed"]


def test_missing_records_are_not_found(opener):
    store = opener()
    with pytest.raises(NotFoundError):
        store.update(lambda txn: txn.delete("books", 99))
    with pytest.raises(NotFoundError):
        store.update(lambda txn: txn.put("books", {"id": 99, "title": "x"}))


def test_a_snapshot_never_changes_after_it_is_taken(opener):
    store = opener()
    book = insert(store, "before")
    old = store.snapshot()
    store.update(lambda txn: txn.put("books", {**book, "title": "after"}))
    assert old.get("books", book["id"])["title"] == "before"
    assert store.snapshot().get("books", book["id"])["title"] == "after"
    assert store.snapshot().seq > old.seq


def test_every_change_has_a_growing_seq_and_its_event(opener):
    store = opener()
    start = store.snapshot().seq
    a = insert(store, "a")
    insert(store, "m", collection="members")
    store.update(lambda txn: txn.delete("books", a["id"]))
    events, last = store.events_since(start, 100)
    assert [(e["action"], e["id"]) for e in events] == [("created", a["id"]), ("deleted", a["id"])]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert last == store.snapshot().seq
    assert store.events_since(start, 1) == ([events[0]], events[0]["seq"])
    assert store.events_since(last, 10) == ([], last)
    with pytest.raises(JournalTruncatedError):
        store.events_since(last + 1, 10)


def test_changes_between_give_each_record_before_and_after(opener):
    store = opener()
    book = insert(store, "a")
    seq = store.snapshot().seq
    store.update(lambda txn: txn.put("books", {**book, "title": "b"}))
    changes = store.changes_between(seq, store.snapshot().seq)
    if changes is None:
        pytest.skip("this backend does not keep record changes in memory")
    [(_, change)] = changes
    assert (change.collection, change.id) == ("books", book["id"])
    assert (change.before["title"], change.after["title"]) == ("a", "b")


def test_where_finds_records_by_a_field_with_the_transactions_own_changes(opener):
    store = opener()
    store.update(lambda txn: [txn.insert("books", {"title": "t", "shelf": s}) for s in (1, 2, 1)])

    def look(txn):
        txn.insert("books", {"title": "new", "shelf": 1})
        return [b["title"] for b in txn.where("books", "shelf", 1)]

    assert store.update(look) == ["t", "t", "new"]


def test_no_write_is_lost_when_threads_write_at_once(opener):
    store = opener()
    errors = []

    def writer(n):
        try:
            for i in range(25):
                insert(store, f"{n}-{i}")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(titles(store)) == sorted(f"{n}-{i}" for n in range(6) for i in range(25))
    assert len(titles(opener())) == 150


def test_one_refused_updater_does_not_refuse_the_others(opener):
    store = opener()
    outcomes = []

    def attempt(n):
        def updater(txn):
            txn.insert("books", {"title": f"w{n}"})
            if n % 2:
                raise ValueError("no")

        try:
            store.update(updater)
            outcomes.append(("ok", n))
        except ValueError:
            outcomes.append(("refused", n))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(titles(store)) == sorted(f"w{n}" for n in range(0, 8, 2))
    assert sorted(outcomes) == sorted([("ok", n) for n in range(0, 8, 2)] + [("refused", n) for n in range(1, 8, 2)])


def test_another_opening_sees_every_commit(opener):
    a, b = opener(), opener()
    insert(a, "from a")
    insert(b, "from b")
    assert titles(a) == titles(b) == ["from a", "from b"]


def test_a_healthy_store_takes_writes_and_keeps_them_through_maintenance(opener):
    store = opener()
    insert(store, "a")
    store.maintain(force=True)
    assert store.health()["writable"]
    assert titles(opener()) == ["a"]


def test_exclusive_holds_back_every_other_commit(opener):
    store, other = opener(), opener()
    insert(store, "a")
    done = threading.Event()
    with store.exclusive() as snap:
        assert [b["title"] for b in snap.records("books").values()] == ["a"]
        writer = threading.Thread(target=lambda: (insert(other, "b"), done.set()))
        writer.start()
        assert not done.wait(0.3)  # the other writer waits for the lock
    writer.join()
    assert titles(store) == ["a", "b"]


def test_the_thread_holding_exclusive_commits_with_the_writes_queued_behind_it(opener):
    store, other = opener(), opener()
    insert(store, "a")
    done = threading.Event()
    queued = []
    with store.exclusive():
        writers = [threading.Thread(target=lambda n=n: queued.append(insert(store, f"q{n}"))) for n in range(3)]
        for writer in writers:
            writer.start()
        for _ in range(1000):  # until the three wait for this block's lock
            if store.waiting_writes >= 3:
                break
            threading.Event().wait(0.01)
        assert store.waiting_writes >= 3
        insert(store, "from the block")  # committed now, with the queued writes
        assert sorted(titles(store)) == ["a", "from the block", "q0", "q1", "q2"]
        outsider = threading.Thread(target=lambda: (insert(other, "outside"), done.set()))
        outsider.start()
        assert not done.wait(0.3)  # the block still holds the lock after its commit
    outsider.join()
    for writer in writers:
        writer.join()
    assert len(queued) == 3
    assert sorted(titles(opener())) == ["a", "from the block", "outside", "q0", "q1", "q2"]


def test_writes_queued_while_a_commit_waits_for_the_lock_are_committed_with_it(opener):
    store, other = opener(), opener()
    ran_on: dict[str, int] = {}

    def write(title):
        def updater(txn):
            ran_on[title] = threading.get_ident()  # updaters of one commit run on its thread
            return txn.insert("books", {"title": title})

        return store.update(updater)

    def held_elsewhere() -> bool:  # the store's commit mutex, held by another thread
        if store._commit_mutex.acquire(blocking=False):
            store._commit_mutex.release()
            return False
        return True

    def until(condition):
        for _ in range(1000):
            if condition():
                return
            threading.Event().wait(0.01)
        raise AssertionError("never happened")

    with other.exclusive():  # another server holds the lock
        first = threading.Thread(target=write, args=("first",))
        first.start()
        until(lambda: held_elsewhere() and store.waiting_writes == 0)  # first took its batch, waits for the lock
        late = [threading.Thread(target=write, args=(f"late {n}",)) for n in range(2)]
        for thread in late:
            thread.start()
        until(lambda: store.waiting_writes == 2)
    for thread in [first, *late]:
        thread.join()
    assert sorted(titles(store)) == ["first", "late 0", "late 1"]
    assert ran_on["late 0"] == ran_on["late 1"] == ran_on["first"] == first.ident
