"""The storage contract: ids, atomic transactions, the journal, other writers, hand edits, recovery."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import (
    CommitUnknownError,
    CorruptFileError,
    JournalTruncatedError,
    JsonStore,
    NotFoundError,
    StoreUnavailableError,
)

COLLECTIONS = ("books", "members")


def describe(changes, after):
    """Events like the catalogue's: one per book change."""
    events = []
    for c in changes:
        if c.collection != "books":
            events.append(None)
        else:
            action = "created" if c.before is None else "deleted" if c.after is None else "updated"
            events.append({"action": action, "book": c.after or c.before})
    return events


def open_store(path: Path, **kwargs) -> JsonStore:
    return JsonStore(path, COLLECTIONS, describe=describe, **kwargs)


def add(store: JsonStore, title: str) -> dict:
    return store.update(lambda txn: txn.insert("books", {"title": title}))


def checkpoint(store: JsonStore) -> None:
    """Write the collection files now, as the store's background round does once writes stop."""
    store.maintain(force=True)


def titles(store: JsonStore) -> list[str]:
    return [b["title"] for b in store.snapshot().records("books").values()]


def test_new_directory_is_created_with_journal_and_lock(tmp_path):
    store = open_store(tmp_path / "d")
    assert store.seq == 0
    assert (tmp_path / "d" / "journal.jsonl").exists()
    assert (tmp_path / "d" / "library.lock").exists()


def test_initial_runs_only_for_a_new_directory(tmp_path):
    fill = lambda txn: txn.insert("books", {"title": "seed"})  # noqa: E731
    open_store(tmp_path, initial=fill)
    store = open_store(tmp_path, initial=fill)
    assert titles(store) == ["seed"]


def test_ids_grow_and_are_never_reused(tmp_path):
    store = open_store(tmp_path)
    first, second = add(store, "a"), add(store, "b")
    assert (first["id"], second["id"]) == (1, 2)
    store.update(lambda txn: txn.delete("books", 2))
    assert add(store, "c")["id"] == 3
    store.update(lambda txn: txn.delete("books", 3))
    assert add(open_store(tmp_path), "d")["id"] == 4


def test_a_failing_updater_writes_nothing(tmp_path):
    store = open_store(tmp_path)
    add(store, "kept")
    checkpoint(store)
    before = (tmp_path / "books.json").read_bytes(), (tmp_path / "journal.jsonl").read_bytes()

    def fail(txn):
        txn.insert("books", {"title": "lost"})
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.update(fail)
    assert titles(store) == ["kept"]
    assert ((tmp_path / "books.json").read_bytes(), (tmp_path / "journal.jsonl").read_bytes()) == before


def test_an_unchanged_record_is_not_a_change(tmp_path):
    store = open_store(tmp_path)
    book = add(store, "same")
    seq = store.seq
    store.update(lambda txn: txn.put("books", dict(book)))
    assert store.seq == seq


def test_files_are_plain_json_with_one_record_per_line(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    add(store, "b")
    checkpoint(store)
    text = (tmp_path / "books.json").read_text()
    doc = orjson.loads(text)
    assert doc["books"] == [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}]
    assert doc["next_id"] == 3
    assert text.count("\n") == 4


def test_every_change_gets_a_growing_seq_and_an_event(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    store.update(lambda txn: txn.insert("members", {"email": "m@example.org"}))
    add(store, "b")
    store.update(lambda txn: txn.delete("books", 1))
    events, last = store.events_since(0, 100)
    assert [(e["action"], e["book"]["title"]) for e in events] == [("created", "a"), ("created", "b"), ("deleted", "a")]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert last == store.seq == 4
    assert store.events_since(seqs[0], 1) == ([events[1]], seqs[1])
    assert store.events_since(last, 10) == ([], last)


def test_a_since_the_journal_cannot_answer_is_refused(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    with pytest.raises(JournalTruncatedError):
        store.events_since(store.seq + 5, 10)


def test_another_store_on_the_same_directory_sees_each_write(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    add(a, "from a")
    assert titles(b) == ["from a"]
    add(b, "from b")
    assert titles(a) == ["from a", "from b"]
    assert [e["book"]["title"] for e in a.events_since(0, 10)[0]] == ["from a", "from b"]
    assert a.events_since(0, 10) == b.events_since(0, 10)


def test_another_writer_is_followed_through_the_journal_not_a_reparse(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    for i in range(5):
        add(a, f"book {i}")
    b.snapshot()
    add(a, "one more")
    changes = b.changes_between(b.snapshot().seq - 1, b.snapshot().seq)
    assert changes is not None and [c.after["title"] for _, c in changes] == ["one more"]


def test_a_hand_edit_is_taken_in_by_the_next_round_and_published(tmp_path):
    store = open_store(tmp_path)
    add(store, "typo")
    add(store, "other")
    checkpoint(store)
    path = tmp_path / "books.json"
    path.write_text(path.read_text().replace('"typo"', '"fixed"'))
    store.maintain()
    assert titles(store) == ["fixed", "other"]
    events, _ = store.events_since(2, 10)
    assert [(e["action"], e["book"]["title"]) for e in events] == [("updated", "fixed")]
    assert titles(open_store(tmp_path)) == ["fixed", "other"]


def test_a_hand_edit_that_adds_and_removes_records(tmp_path):
    store = open_store(tmp_path)
    add(store, "gone")
    checkpoint(store)
    path = tmp_path / "books.json"
    path.write_text('[{"id": 7, "title": "typed in"}]')
    store.maintain()
    assert titles(store) == ["typed in"]
    assert add(store, "next")["id"] == 8
    events, _ = store.events_since(1, 10)
    assert {(e["action"], e["book"]["title"]) for e in events} >= {("created", "typed in"), ("deleted", "gone")}


def test_a_file_edited_while_stopped_restarts_the_journal(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    seq = store.seq
    path = tmp_path / "books.json"
    path.write_text(path.read_text().replace('"a"', '"b"'))
    reopened = open_store(tmp_path)
    assert titles(reopened) == ["b"]
    assert reopened.seq > seq
    store.maintain()
    assert titles(store) == ["b"] and store.seq == reopened.seq
    with pytest.raises(JournalTruncatedError):
        reopened.events_since(0, 10)


def test_corrupt_file_at_start_is_refused_and_left_untouched(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    path = tmp_path / "books.json"
    broken = b'{"seq": 1, "next_id": 2, "books": [\n{"id":1,"title":"a"},\n{"id":2,"title": oops}\n]}\n'
    path.write_bytes(broken)
    with pytest.raises(CorruptFileError) as caught:
        open_store(tmp_path)
    assert caught.value.path == path and caught.value.line == 3
    assert "books.json" in str(caught.value) and "line 3" in str(caught.value)
    assert path.read_bytes() == broken


def test_a_record_without_an_id_is_named_by_its_line(tmp_path):
    (tmp_path / "books.json").write_text('{"books": [\n  {"id": 1, "title": "a"},\n  {"title": "b"}\n]}')
    with pytest.raises(CorruptFileError) as caught:
        open_store(tmp_path)
    assert caught.value.line == 3


def test_corrupt_file_while_running_refuses_writes_and_keeps_serving(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    path = tmp_path / "books.json"
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"a"', b"a"))
    store.maintain()
    assert titles(store) == ["a"]
    with pytest.raises(StoreUnavailableError, match="books.json.*not valid JSON.*line 2"):
        add(store, "b")
    store.update(lambda txn: txn.insert("members", {"email": "m@example.org"}))  # other files still take writes
    assert not store.health()["writable"]
    checkpoint(store)
    assert path.read_bytes() == good.replace(b'"a"', b"a")
    path.write_bytes(good.replace(b'"a"', b'"A"'))
    add(store, "b")
    assert titles(store) == ["A", "b"]


def test_orphan_temporary_files_are_removed_at_start(tmp_path):
    open_store(tmp_path)
    orphan = tmp_path / ".books.json.12345.tmp"
    orphan.write_text("half a file")
    open_store(tmp_path)
    assert not orphan.exists()


def test_writes_the_files_lack_are_replayed_from_the_journal_at_start(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    add(store, "b")  # in the journal only, as after a kill -9
    assert titles(open_store(tmp_path)) == ["a", "b"]
    assert orjson.loads((tmp_path / "books.json").read_bytes())["books"][1]["title"] == "b"


def test_a_checkpoint_recorded_but_not_renamed_is_not_taken_for_an_edit(tmp_path):
    """The state a crash between a checkpoint's journal record and its rename leaves behind."""
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    path = tmp_path / "books.json"
    os.link(path, tmp_path / "old")
    add(store, "b")
    checkpoint(store)
    os.replace(tmp_path / "old", path)  # as if the rename never happened
    reopened = open_store(tmp_path)
    assert titles(reopened) == ["a", "b"]
    assert reopened.events_since(0, 10)[0]  # the journal went on: it was no edit


def test_a_torn_journal_tail_is_cut_off(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    journal = tmp_path / "journal.jsonl"
    with open(journal, "ab") as fh:
        fh.write(b'{"seq": 99, "op": "put", "collection": "books", "id": 5, "rec')
    reopened = open_store(tmp_path)
    assert titles(reopened) == ["a"]
    add(reopened, "b")
    assert titles(open_store(tmp_path)) == ["a", "b"]


def test_uncommitted_journal_lines_are_ignored(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    line = {"seq": 2, "op": "put", "collection": "books", "id": 2, "record": {"id": 2, "title": "ghost"}}
    with open(tmp_path / "journal.jsonl", "ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")
    assert titles(store) == ["a"]
    assert titles(open_store(tmp_path)) == ["a"]


def test_the_journal_is_compacted_and_followers_keep_up(tmp_path):
    a = open_store(tmp_path, journal_keep=5)
    b = open_store(tmp_path, journal_keep=5)
    for i in range(30):
        add(a if i % 3 else b, f"book {i}")
    checkpoint(a)
    lines = (tmp_path / "journal.jsonl").read_bytes().count(b"\n")
    assert lines < 40
    assert titles(a) == titles(b) == [f"book {i}" for i in range(30)]
    with pytest.raises(JournalTruncatedError):
        a.events_since(0, 100)
    recent, _ = b.events_since(b.seq - 3, 100)
    assert [e["book"]["title"] for e in recent] == ["book 27", "book 28", "book 29"]


def test_a_missing_record_is_not_found(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(NotFoundError):
        store.update(lambda txn: txn.delete("books", 42))


def test_files_are_private_to_the_owner(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    for name in ("books.json", "journal.jsonl"):
        assert os.stat(tmp_path / name).st_mode & 0o077 == 0


def test_concurrent_updaters_in_one_process_each_commit_or_fail_alone(tmp_path):
    store = open_store(tmp_path)
    results: dict[int, object] = {}

    def write(n: int) -> None:
        def updater(txn):
            txn.insert("books", {"title": f"t{n}"})
            if n % 3 == 0:
                raise ValueError(n)
            return n

        try:
            results[n] = store.update(updater)
        except ValueError as exc:
            results[n] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(titles(store)) == sorted(f"t{n}" for n in range(24) if n % 3)
    assert all(isinstance(results[n], ValueError) == (n % 3 == 0) for n in range(24))
    assert sorted(titles(open_store(tmp_path))) == sorted(titles(store))


def test_updaters_committed_together_see_each_others_changes(tmp_path):
    """A check-then-insert by eight threads held back and committed in one batch inserts once."""
    store = open_store(tmp_path)

    def insert_once(txn):
        if any(book["title"] == "only one" for _, book in txn.items("books")):
            return None
        return txn.insert("books", {"title": "only one"})

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.update(insert_once))) for _ in range(8)]
    with store.exclusive():
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while store.waiting_writes < 8:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert titles(store) == ["only one"]
    assert sum(r is not None for r in results) == 1


def test_where_finds_records_by_a_field_through_the_transaction(tmp_path):
    store = JsonStore(tmp_path, ("loans",))
    store.update(lambda txn: [txn.insert("loans", {"book_id": b, "open": True}) for b in (1, 2, 1)])

    def check(txn):
        assert [r["id"] for r in txn.where("loans", "book_id", 1)] == [1, 3]
        txn.put("loans", {"id": 1, "book_id": 2, "open": False})  # moved to another book
        txn.insert("loans", {"book_id": 1, "open": True})
        txn.delete("loans", 3)
        assert [r["id"] for r in txn.where("loans", "book_id", 1)] == [4]
        child = txn.child()
        child.insert("loans", {"book_id": 1})
        assert [r["id"] for r in child.where("loans", "book_id", 1)] == [4, 5]
        assert [r["id"] for r in txn.where("loans", "book_id", 2)] == [1, 2]

    store.update(check)


def test_a_torn_tail_met_by_a_running_store_is_cut_before_its_next_commit(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    with open(tmp_path / "journal.jsonl", "ab") as fh:  # another writer died mid-write
        fh.write(b'{"seq": 99, "op": "put", "collection": "books", "id": 5, "rec')
    add(store, "b")
    assert titles(open_store(tmp_path)) == ["a", "b"]
    assert b'"rec\n' not in (tmp_path / "journal.jsonl").read_bytes()
    assert [e["book"]["title"] for e in store.events_since(0, 10)[0]] == ["a", "b"]  # the journal went on


def test_a_record_added_by_hand_while_stopped_never_has_its_id_given_again(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    path = tmp_path / "books.json"
    doc = orjson.loads(path.read_bytes())
    doc["books"].append({"id": 50, "title": "typed in"})  # next_id left as it was
    path.write_bytes(orjson.dumps(doc))
    reopened = open_store(tmp_path)
    assert add(reopened, "next")["id"] == 51


def test_a_crash_before_a_new_files_first_rename_leaves_the_journal_whole(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")  # books.json does not exist yet: the journal alone holds the write
    (tmp_path / ".books.json.1.1.tmp").write_text('{"seq": 1, "next_id": 2, "books": [\n{"id": 1, "tit')
    assert titles(open_store(tmp_path)) == ["a"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_deleted_ids_are_not_given_again_after_a_replay(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    add(store, "b")
    store.update(lambda txn: txn.delete("books", 2))  # only in the journal
    assert add(open_store(tmp_path), "c")["id"] == 3


def _commit_past_a_file_size_limit(directory: str, out: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    store = JsonStore(directory, COLLECTIONS, describe=describe)
    size = os.stat(store.journal_path).st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 600, size + 600))
    outcomes = []
    for i in range(6):
        try:
            store.update(lambda txn, i=i: txn.insert("books", {"title": f"t{i}", "padding": "x" * 150}))
            outcomes.append("ok")
        except OSError:
            outcomes.append("failed")
    os.write(out, orjson.dumps([outcomes, store.failed_commits]))
    os._exit(0)


def test_a_commit_that_cannot_be_written_is_refused_and_leaves_nothing_behind(tmp_path):
    """A real failure of the journal's write (a file size limit, like a full disk): the writes that
    fit are acknowledged, the others fail, and the journal holds exactly the acknowledged ones."""
    open_store(tmp_path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _commit_past_a_file_size_limit(str(tmp_path), write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        outcomes, failed_commits = orjson.loads(fh.read())
    os.waitpid(pid, 0)
    assert "ok" in outcomes and "failed" in outcomes
    assert failed_commits == outcomes.count("failed")
    reopened = open_store(tmp_path)
    assert titles(reopened) == [f"t{i}" for i, outcome in enumerate(outcomes) if outcome == "ok"]
    add(reopened, "after")  # the journal was left whole: it takes the next write
    assert titles(open_store(tmp_path))[-1] == "after"


def test_a_missing_file_refuses_only_writes_to_it_and_resumes_when_moved_back(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    os.replace(tmp_path / "books.json", tmp_path / "aside")
    store.maintain()
    assert titles(store) == ["a"]
    with pytest.raises(StoreUnavailableError, match="books.json is missing"):
        add(store, "b")
    store.update(lambda txn: txn.insert("members", {"email": "m@example.org"}))
    checkpoint(store)
    assert not (tmp_path / "books.json").exists()
    assert store.health()["problems"][0]["file"].endswith("books.json")
    os.replace(tmp_path / "aside", tmp_path / "books.json")
    store.maintain()
    assert store.health()["writable"]
    add(store, "b")
    assert titles(open_store(tmp_path)) == ["a", "b"]


def test_an_edit_of_a_file_behind_the_journal_keeps_the_later_writes(tmp_path):
    store = open_store(tmp_path)
    for title in ("a", "b", "c"):
        add(store, title)
    checkpoint(store)
    path = tmp_path / "books.json"
    opened = path.read_text()
    store.update(lambda txn: txn.put("books", {"id": 2, "title": "b, changed by a writer"}))
    add(store, "d")
    seq = store.seq
    path.write_text(opened.replace('"title":"c"', '"title":"c, edited"').replace('"title":"b"', '"title":"b?"'))
    store.maintain()
    assert titles(store) == ["a", "b, changed by a writer", "c, edited", "d"]
    events, _ = store.events_since(seq, 10)
    assert [e["book"]["title"] for e in events] == ["c, edited"]
    assert titles(open_store(tmp_path)) == titles(store)


def test_an_edit_older_than_the_journal_reaches_is_refused(tmp_path):
    store = open_store(tmp_path, journal_keep=2)
    add(store, "a")
    checkpoint(store)
    path = tmp_path / "books.json"
    opened = path.read_text()
    for i in range(10):
        add(store, f"later {i}")
    checkpoint(store)  # compacts the journal past what the opened file knows
    path.write_text(opened.replace('"title":"a"', '"title":"A"'))
    store.maintain()
    assert not store.health()["writable"]
    assert "older than the journal reaches" in store.health()["problems"][0]["problem"]
    assert titles(store)[0] == "a"
    doc = orjson.loads(opened.replace('"title":"a"', '"title":"A"'))
    del doc["seq"]  # the way out the message names: applied on top of the current state
    path.write_bytes(orjson.dumps(doc))
    store.maintain()
    assert store.health()["writable"]
    assert titles(store) == ["A"]


def test_a_wrong_typed_record_is_refused_like_invalid_json(tmp_path):
    def validate(collection, record):
        return None if isinstance(record.get("title"), str) else '"title" must be text'

    store = open_store(tmp_path, validate=validate)
    add(store, "a")
    add(store, "b")
    checkpoint(store)
    path = tmp_path / "books.json"
    path.write_text(path.read_text().replace('"title":"b"', '"title":123'))
    store.maintain()
    assert titles(store) == ["a", "b"]
    with pytest.raises(StoreUnavailableError, match=r'record 2 \(id 2\): "title" must be text at line 3'):
        add(store, "c")
    with pytest.raises(CorruptFileError, match="line 3"):
        open_store(tmp_path, validate=validate)


def test_a_failure_after_the_commit_point_does_not_fail_the_write(tmp_path):
    store = open_store(tmp_path)
    (tmp_path / ".journal.head").unlink()
    (tmp_path / ".journal.head").mkdir()  # the hint beside the journal cannot be written any more
    assert add(store, "a")["id"] == 1
    assert titles(open_store(tmp_path)) == ["a"]
    (tmp_path / "journal.jsonl").unlink()  # and the journal is repaired without the hint
    add(store, "b")
    assert titles(open_store(tmp_path)) == ["a", "b"]


def test_a_checkpoint_recorded_but_never_renamed_is_written_again_before_compaction(tmp_path):
    """Its writer died between recording the checkpoint and renaming it into place: another
    process must not take the old file for the new one and compact away what it lacks."""
    a = open_store(tmp_path, journal_keep=2)
    add(a, "old")
    checkpoint(a)
    path = tmp_path / "books.json"
    os.link(path, tmp_path / "before")
    add(a, "ACKED")
    checkpoint(a)
    os.replace(tmp_path / "before", path)  # the rename that never happened
    b = open_store(tmp_path, journal_keep=2)
    for i in range(20):  # other collections move on, and the journal is compacted
        b.update(lambda txn, i=i: txn.insert("members", {"email": f"m{i}@example.org"}))
    checkpoint(b)
    assert titles(open_store(tmp_path)) == ["old", "ACKED"]


def test_a_process_that_missed_a_repair_reloads_instead_of_following_the_new_journal(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    add(a, "base")
    b.snapshot()
    add(b, "only b knew this")  # then the journal is cut before a reads it...
    os.truncate(tmp_path / "journal.jsonl", 0)
    (tmp_path / ".journal.head").unlink()  # ...and a cannot tell that it lacks a change
    a.maintain()  # a repairs from what it holds: a new journal, a new lineage
    acked = add(a, "acknowledged by a")
    assert acked["id"] == 2
    b.maintain()  # b must not take the new journal's seq 2 for its own
    assert titles(b) == titles(a) == ["base", "acknowledged by a"]
    checkpoint(b)
    assert titles(open_store(tmp_path)) == ["base", "acknowledged by a"]


def test_a_store_opened_before_a_fork_writes_from_the_child(tmp_path):
    """gunicorn --preload forks workers from a process that already opened the store."""
    store = open_store(tmp_path)
    add(store, "parent")
    pid = os.fork()
    if pid == 0:
        try:
            add(store, "child")
            store.maintain(force=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert titles(store) == ["parent", "child"]


def test_a_sync_the_disk_refuses_is_never_reported_as_not_saved(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    add(store, "before")

    def refuse(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(CommitUnknownError, match="whether it was kept is unknown"):
        add(store, "unknown")
    monkeypatch.undo()
    with pytest.raises(StoreUnavailableError, match="takes no more writes"):
        add(store, "after")
    assert not store.health()["writable"]
    assert titles(open_store(tmp_path)) == ["before", "unknown"]  # what the disk kept, replayed


def test_a_store_opened_while_the_journal_is_gone_waits_for_the_one_that_holds_the_changes(tmp_path):
    """A worker (re)started while its journal is missing must not start a new one from files that
    lack the latest commits: it waits while the worker holding them writes them out."""
    holder = open_store(tmp_path)
    add(holder, "in the journal only")  # no checkpoint yet: books.json does not hold it
    (tmp_path / "journal.jsonl").unlink()
    opened: list[JsonStore] = []
    late = threading.Thread(target=lambda: opened.append(open_store(tmp_path)))
    late.start()
    holder.maintain()  # the holder notices and writes every change out, with a new journal
    late.join(timeout=30)
    assert opened and titles(opened[0]) == ["in the journal only"]


def on_disk(directory: Path, name: str = "books.json") -> list[str] | None:
    """The titles the collection file holds (None when there is no file)."""
    path = directory / name
    if not path.exists():
        return None
    return [b["title"] for b in orjson.loads(path.read_bytes())["books"]]


def test_the_journal_keeps_journal_keep_changes_and_is_compacted_once_it_holds_twice_that(tmp_path):
    store = open_store(tmp_path, journal_keep=5)
    for i in range(10):
        add(store, f"t{i}")
    checkpoint(store)
    assert len(store.events_since(0, 100)[0]) == 10  # not compacted before it holds more than 2 x 5
    add(store, "t10")
    checkpoint(store)
    assert [e["book"]["title"] for e in store.events_since(store.seq - 5, 100)[0]] == [f"t{i}" for i in range(6, 11)]
    with pytest.raises(JournalTruncatedError):
        store.events_since(store.seq - 6, 100)


def test_a_negative_since_is_refused(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(JournalTruncatedError):
        store.events_since(-1, 10)


def test_changes_between_reaches_back_two_batches_then_one(tmp_path):
    from storage.base import CHANGES_KEPT

    store = open_store(tmp_path)
    store.update(lambda txn: [txn.insert("members", {"n": i}) for i in range(2 * CHANGES_KEPT)])
    assert len(store.changes_between(0, store.seq)) == 2 * CHANGES_KEPT
    add(store, "one more")  # past twice the batch: the older changes are let go
    assert store.changes_between(0, store.seq) is None
    assert len(store.changes_between(store.seq - CHANGES_KEPT, store.seq)) == CHANGES_KEPT
    assert store.changes_between(store.seq - CHANGES_KEPT - 1, store.seq) is None


def test_the_background_round_checkpoints_once_writes_stop_or_enough_changes_gather(tmp_path):
    idle = open_store(tmp_path / "idle", checkpoint_idle=0)
    add(idle, "a")
    idle.maintain()
    assert on_disk(tmp_path / "idle") == ["a"]

    busy = open_store(tmp_path / "busy", checkpoint_idle=3600, checkpoint_changes=3)
    add(busy, "a")
    add(busy, "b")
    busy.maintain()
    assert on_disk(tmp_path / "busy") is None  # writes go on and only two changes gathered
    add(busy, "c")
    busy.maintain()
    assert on_disk(tmp_path / "busy") == ["a", "b", "c"]


def test_a_checkpoint_by_another_process_restarts_the_count_of_changes(tmp_path):
    a = open_store(tmp_path)
    b = open_store(tmp_path, checkpoint_idle=3600, checkpoint_changes=3)
    add(a, "a")
    add(a, "b")
    checkpoint(a)
    add(a, "c")
    b.maintain()  # one change since a's checkpoint: not due
    assert on_disk(tmp_path) == ["a", "b"]
    add(a, "d")
    add(a, "e")
    b.maintain()
    assert on_disk(tmp_path) == ["a", "b", "c", "d", "e"]


def test_the_background_thread_writes_the_checkpoints(tmp_path):
    store = open_store(tmp_path, checkpoint_idle=0)
    store.start(interval=0.01)
    store.start(interval=0.01)  # idempotent
    add(store, "a")
    deadline = time.monotonic() + 5
    while on_disk(tmp_path) != ["a"]:
        assert time.monotonic() < deadline, "the background round never wrote books.json"
        time.sleep(0.01)
    store.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_close_writes_the_checkpoints_and_releases_every_file(tmp_path):
    def open_files() -> list[str]:
        """The files of the data directory this process has open (other tests' threads and
        connections may open and close files of their own meanwhile)."""
        gc.collect()  # what earlier tests left for the collector closes now, not between the counts
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed since it was listed
                continue
            if target.startswith(str(tmp_path)):
                names.append(target)
        return sorted(names)

    open_store(tmp_path).close()
    before = open_files()
    for i in range(3):
        store = open_store(tmp_path, checkpoint_idle=3600)
        add(store, f"checkpointed {i}")
        checkpoint(store)
        add(store, f"journal only {i}")
        store.close()
        assert on_disk(tmp_path)[-2:] == [f"checkpointed {i}", f"journal only {i}"]
    assert open_files() == before


def test_a_directory_started_from_a_hand_made_file(tmp_path):
    """Records in any order, no header: read in id order, and the file is taken over at the first
    start, so a second process does not take it for an edit and restart the journal."""
    (tmp_path / "books.json").write_text('[{"id": 3, "title": "c"}, {"id": 1, "title": "a"}, {"id": 2, "title": "b"}]')
    first = open_store(tmp_path)
    assert list(first.snapshot().records("books")) == [1, 2, 3]
    assert titles(first) == ["a", "b", "c"]
    second = open_store(tmp_path)
    assert second.seq == first.seq
    second.events_since(0, 10)  # the journal went on
    assert add(second, "d")["id"] == 4


def test_a_journal_truncated_under_two_servers_is_repaired_by_the_one_that_holds_every_change(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    add(a, "a")
    add(a, "b")  # b has not looked since
    os.truncate(tmp_path / "journal.jsonl", 0)
    with pytest.raises(StoreUnavailableError, match="repairing"):
        add(b, "from b")  # b lacks changes 1 and 2: it must not start a journal without them
    a.maintain()
    assert a.health()["writable"]
    add(b, "from b")
    assert titles(b) == ["a", "b", "from b"]
    assert titles(open_store(tmp_path)) == ["a", "b", "from b"]


def test_an_invalid_edit_is_kept_aside_when_the_journal_is_repaired(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    store.update(lambda txn: txn.insert("members", {"email": "m@example.org"}))
    checkpoint(store)
    (tmp_path / "books.json").write_bytes(b"not json")
    store.maintain()
    assert not store.health()["writable"]
    os.truncate(tmp_path / "journal.jsonl", 0)
    store.maintain()
    assert store.health()["writable"]
    assert [p.read_bytes() for p in tmp_path.glob("books.json.rejected-*")] == [b"not json"]
    assert not list(tmp_path.glob("members.json.rejected-*"))
    assert titles(open_store(tmp_path)) == ["a"]


def test_an_edit_while_stopped_of_a_current_file_the_journal_no_longer_reaches_is_taken_in(tmp_path):
    store = open_store(tmp_path, journal_keep=2)
    add(store, "a")
    checkpoint(store)  # books.json holds seq 1 and is never behind after it
    for i in range(10):
        store.update(lambda txn, i=i: txn.insert("members", {"n": i}))
    checkpoint(store)  # compacts the journal past seq 1
    store.close()
    path = tmp_path / "books.json"
    path.write_text(path.read_text().replace('"title":"a"', '"title":"A"'))
    assert titles(open_store(tmp_path)) == ["A"]


def test_a_followers_compaction_keeps_the_changes_a_hand_edited_file_lacks(tmp_path):
    a = open_store(tmp_path)
    add(a, "a")
    add(a, "b")
    checkpoint(a)
    b = open_store(tmp_path, journal_keep=2, checkpoint_idle=3600)
    path = tmp_path / "books.json"
    opened = path.read_text()
    a.update(lambda txn: txn.put("books", {"id": 2, "title": "b, changed by a writer"}))
    path.write_text(opened.replace('"title":"a"', '"title":"A"'))  # made on the file before that write
    for i in range(6):  # the first of these writes takes the edit in
        a.update(lambda txn, i=i: txn.insert("members", {"n": i}))
    b.maintain()  # compacts the journal while books.json still lacks the writer's change
    assert titles(b) == ["A", "b, changed by a writer"]
    # as after a crash of both: the files and the journal must still hold every change
    assert titles(open_store(tmp_path)) == ["A", "b, changed by a writer"]


def _journal_problem(store: JsonStore) -> str:
    store.snapshot()
    return " ".join(p["problem"] for p in store.health()["problems"])


def _append_bad_commit(journal: Path) -> int:
    """Append an unreadable line and a commit after it; returns the bad line's number."""
    lines = journal.read_bytes().count(b"\n")
    with open(journal, "ab") as fh:
        fh.write(b"garbage\n" + orjson.dumps({"commit": 999, "at": "x", "files": {}}) + b"\n")
    return lines + 1


def test_an_unreadable_journal_line_is_reported_by_its_line_number(tmp_path):
    store = open_store(tmp_path / "torn")
    add(store, "a")
    journal = tmp_path / "torn" / "journal.jsonl"
    with open(journal, "ab") as fh:
        fh.write(b'{"seq": 2, "op": "put", "rec')  # a write still going on when the store looks
    store.snapshot()
    bad = journal.read_bytes().count(b"\n") + 1
    with open(journal, "ab") as fh:
        fh.write(b"\n" + orjson.dumps({"commit": 2, "at": "x", "files": {}}) + b"\n")
    assert f"at line {bad}." in _journal_problem(store)

    store = open_store(tmp_path / "repaired")
    add(store, "a")
    journal = tmp_path / "repaired" / "journal.jsonl"
    os.truncate(journal, 0)
    store.maintain()  # a new journal, started from this process's memory
    add(store, "b")
    bad = _append_bad_commit(journal)
    assert f"at line {bad}." in _journal_problem(store)


def test_a_record_typed_in_with_a_lower_id_is_listed_in_id_order(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    add(store, "b")
    store.update(lambda txn: txn.delete("books", 1))
    checkpoint(store)
    path = tmp_path / "books.json"
    doc = orjson.loads(path.read_bytes())
    doc["books"].append({"id": 1, "title": "a, typed back in"})
    path.write_bytes(orjson.dumps(doc))
    store.maintain()
    assert list(store.snapshot().records("books")) == [1, 2]
    assert titles(store) == ["a, typed back in", "b"]


def _checkpoint_past_a_file_size_limit(directory: str, out: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = JsonStore(directory, COLLECTIONS, describe=describe, journal_keep=1)
    size = os.stat(store.journal_path).st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, size + 1000))  # the journal fits, books.json not
    store.update(lambda txn: txn.put("books", {"id": 1, "title": "changed"}))
    open_files = len(os.listdir("/proc/self/fd"))
    try:
        store.maintain(force=True)
        outcome = "written"
    except OSError:
        outcome = "failed"
    leaked = len(os.listdir("/proc/self/fd")) - open_files
    os.write(out, orjson.dumps([outcome, leaked]))
    os._exit(0)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_a_checkpoint_that_cannot_be_written_leaves_the_file_and_the_journal_as_they_were(tmp_path):
    store = open_store(tmp_path, journal_keep=1)
    store.update(lambda txn: [txn.insert("books", {"title": f"book {i}", "padding": "x" * 40}) for i in range(60)])
    for i in range(3):
        store.update(lambda txn, i=i: txn.insert("members", {"n": i}))
    checkpoint(store)  # compacted: the journal is now much smaller than books.json
    store.close()
    before = (tmp_path / "books.json").read_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _checkpoint_past_a_file_size_limit(str(tmp_path), write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        outcome, leaked = orjson.loads(fh.read())
    os.waitpid(pid, 0)
    assert (outcome, leaked) == ("failed", 0)
    assert (tmp_path / "books.json").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    reopened = open_store(tmp_path)
    assert titles(reopened)[:2] == ["changed", "book 1"]  # the acknowledged write is in the journal


def test_a_delete_returns_the_record_it_removed(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    assert store.update(lambda txn: txn.delete("books", 1)) == {"id": 1, "title": "a"}
    assert store.failed_commits == 0


def test_the_journal_starts_with_its_format_header(tmp_path):
    open_store(tmp_path)
    first = (tmp_path / "journal.jsonl").read_bytes().split(b"\n")[0]
    header = orjson.loads(first)
    assert (header["journal"], header["floor"]) == (1, 0) and len(header["lineage"]) == 16


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ('{"books": [{"id": 0, "title": "zero"}]}', 1, None, '"id" must be a positive whole number'),
        ('"just text"', 1, 1, 'an object with a "books" list'),
        ('{"\\u0062ooks": [{"title": "no id"}]}', None, None, '"id" must be a positive whole number'),
    ],
)
def test_a_file_that_is_not_a_collection_is_refused(tmp_path, text, line, column, reason):
    (tmp_path / "books.json").write_text(text)
    with pytest.raises(CorruptFileError, match=reason) as caught:
        open_store(tmp_path)
    assert (caught.value.line, caught.value.column) == (line, column)


def test_a_journal_replaced_by_another_file_is_reported(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    (tmp_path / "other").write_text("hello\n")
    os.replace(tmp_path / "other", tmp_path / "journal.jsonl")
    assert "replaced by a file that is not a journal" in _journal_problem(store)
    assert not store.health()["writable"]


def test_the_stores_left_open_write_their_checkpoints_at_exit(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    script = (
        "import sys; from storage import JsonStore; "
        "s = JsonStore(sys.argv[1], ['books', 'members'], checkpoint_idle=3600); "
        "s.update(lambda txn: txn.insert('books', {'title': 'a'}))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=root, check=True, timeout=30)
    assert on_disk(tmp_path) == ["a"]


def test_opening_a_directory_whose_files_are_current_rewrites_nothing(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    store.close()
    files = {name: os.stat(tmp_path / name).st_ino for name in ("books.json", "journal.jsonl")}
    reopened = open_store(tmp_path)
    reopened.maintain()
    assert {name: os.stat(tmp_path / name).st_ino for name in files} == files
    assert reopened.events_since(0, 10)[0]


def test_a_journal_keep_below_one_keeps_one_change(tmp_path):
    store = open_store(tmp_path, journal_keep=0)
    for title in ("a", "b", "c"):
        add(store, title)
    checkpoint(store)
    assert [e["book"]["title"] for e in store.events_since(store.seq - 1, 10)[0]] == ["c"]


def test_a_compaction_that_would_drop_nothing_leaves_the_journal_alone(tmp_path):
    store = open_store(tmp_path, journal_keep=1, checkpoint_idle=3600)
    for title in ("a", "b", "c"):
        add(store, title)  # books.json does not hold them yet: the journal must keep them all
    inode = os.stat(tmp_path / "journal.jsonl").st_ino
    store.maintain()
    assert os.stat(tmp_path / "journal.jsonl").st_ino == inode
    assert len(store.events_since(0, 10)[0]) == 3


def test_a_journal_deleted_under_two_servers_is_repaired_from_what_it_still_holds(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    add(a, "a")
    add(a, "b")  # b has not looked since, but still has the deleted journal open
    (tmp_path / "journal.jsonl").unlink()
    add(b, "from b")
    assert titles(b) == ["a", "b", "from b"]
    assert titles(open_store(tmp_path)) == ["a", "b", "from b"]


def test_a_process_that_had_not_looked_never_answers_without_what_others_committed_before_a_repair(tmp_path):
    """Two workers: b took no request while a committed, then the journal was deleted and a
    repaired it. b's readers must not answer from the state b had before (an empty catalogue)."""
    a, b = open_store(tmp_path), open_store(tmp_path)
    for i in range(3):
        add(a, f"Book {i}")  # b has not looked since it opened
    (tmp_path / "journal.jsonl").unlink()
    assert titles(b) == ["Book 0", "Book 1", "Book 2"]  # still in the journal b has open
    assert not b.health()["writable"]
    add(a, "Later")  # a repairs the journal (a new one, from its files) and commits to it
    assert titles(b) == ["Book 0", "Book 1", "Book 2", "Later"]
    assert b.health()["writable"]
    add(b, "From b")
    assert titles(a) == titles(open_store(tmp_path)) == ["Book 0", "Book 1", "Book 2", "Later", "From b"]


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_reader_takes_in_a_repair_by_another_process_before_it_answers(tmp_path, damage):
    a, b = open_store(tmp_path), open_store(tmp_path)
    add(a, "before")
    assert titles(b) == ["before"]
    if damage == "delete":
        (tmp_path / "journal.jsonl").unlink()
    else:
        os.truncate(tmp_path / "journal.jsonl", 0)
    a.maintain()  # a repairs: b's background round has not run yet
    add(a, "acknowledged after the repair")
    assert titles(b) == ["before", "acknowledged after the repair"]
    assert b.health()["writable"]


def test_a_list_file_typed_by_hand_gives_out_ids_from_1(tmp_path):
    (tmp_path / "books.json").write_text("[]")  # no header: no next_id
    assert add(open_store(tmp_path), "first")["id"] == 1


def test_a_collection_file_that_appears_while_stopped_restarts_the_journal(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    store.close()
    (tmp_path / "members.json").write_text('[{"id": 1, "email": "typed@example.org"}]')
    reopened = open_store(tmp_path)
    assert reopened.snapshot().get("members", 1)["email"] == "typed@example.org"
    with pytest.raises(JournalTruncatedError):  # what changed is unknown: clients reload
        reopened.events_since(0, 10)


def test_a_replay_at_start_is_recorded_so_the_next_start_keeps_the_journal(tmp_path):
    store = open_store(tmp_path)
    add(store, "a")
    checkpoint(store)
    add(store, "b")  # only in the journal: the next start replays it into books.json
    open_store(tmp_path)
    third = open_store(tmp_path)
    assert titles(third) == ["a", "b"]
    events, _ = third.events_since(0, 10)  # the journal went on: no restart, no reload
    assert [e["book"]["title"] for e in events] == ["a", "b"]


def test_items_skip_what_the_transaction_deleted_and_keep_the_rest(tmp_path):
    store = open_store(tmp_path)
    for title in ("a", "b", "c"):
        add(store, title)

    def look(txn):
        txn.delete("books", 2)
        txn.put("books", {"id": 3, "title": "c2"})
        return [(rid, rec["title"]) for rid, rec in txn.items("books")]

    with pytest.raises(RuntimeError):
        store.update(lambda txn: (look(txn), (_ for _ in ()).throw(RuntimeError("look only"))))
    assert store.update(look) == [(1, "a"), (3, "c2")]


def test_compaction_while_a_file_is_missing_keeps_what_it_lacks(tmp_path):
    store = open_store(tmp_path, journal_keep=2)
    add(store, "a")
    checkpoint(store)
    add(store, "b")
    checkpoint(store)  # books.json recorded twice: now a previous and a latest checkpoint
    add(store, "c")  # the journal alone holds it
    os.replace(tmp_path / "books.json", tmp_path / "aside")
    for i in range(10):  # other writes go on, and the journal is compacted meanwhile
        store.update(lambda txn, i=i: txn.insert("members", {"email": f"m{i}@example.org"}))
    checkpoint(store)
    os.replace(tmp_path / "aside", tmp_path / "books.json")
    store.maintain()
    store.close()
    assert titles(open_store(tmp_path)) == ["a", "b", "c"]


def test_following_a_compaction_leaves_no_descriptor_open(tmp_path):
    a, b = open_store(tmp_path, journal_keep=2), open_store(tmp_path, journal_keep=2)
    fds = len(os.listdir("/proc/self/fd"))
    for round_ in range(5):
        for i in range(6):
            add(a, f"{round_}-{i}")
        checkpoint(a)  # a new journal file each time...
        b.snapshot()  # ...which b follows
    assert len(os.listdir("/proc/self/fd")) <= fds + 1


def test_compaction_while_a_file_with_one_checkpoint_is_missing_keeps_what_it_lacks(tmp_path):
    store = open_store(tmp_path, journal_keep=2)
    add(store, "a")
    checkpoint(store)  # books.json's one and only checkpoint
    add(store, "b")  # the journal alone holds it
    os.replace(tmp_path / "books.json", tmp_path / "aside")
    for i in range(10):
        store.update(lambda txn, i=i: txn.insert("members", {"email": f"m{i}@example.org"}))
    checkpoint(store)  # compacts: must keep "b", which no file holds
    os.replace(tmp_path / "aside", tmp_path / "books.json")
    store.maintain()
    store.close()
    assert titles(open_store(tmp_path)) == ["a", "b"]


def test_reloading_after_a_repair_elsewhere_leaves_no_descriptor_open(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    for round_ in range(4):
        add(a, f"book {round_}")
        b.snapshot()
        os.truncate(tmp_path / "journal.jsonl", 0)
        a.maintain()  # a holds every change: it repairs, with a new lineage...
        b.maintain()  # ...and b reloads from the files
        assert titles(b) == titles(a)
    assert len(os.listdir("/proc/self/fd")) <= fds + 1


def test_count_is_the_number_of_records(tmp_path):
    store = open_store(tmp_path)
    for title in ("a", "b"):
        add(store, title)
    assert store.snapshot().count("books") == 2 and store.snapshot().count("members") == 0


def test_events_of_another_process_are_there_without_a_read_first(tmp_path):
    a, b = open_store(tmp_path), open_store(tmp_path)
    start = b.seq
    add(a, "from a")
    events, _ = b.events_since(start, 10)  # no snapshot() call in between
    assert [e["book"]["title"] for e in events] == ["from a"]


def test_a_file_edited_while_stopped_older_than_the_journal_reaches_is_refused_at_start(tmp_path):
    store = open_store(tmp_path, journal_keep=2)
    add(store, "a")
    checkpoint(store)
    opened = (tmp_path / "books.json").read_text()
    for i in range(10):
        add(store, f"later {i}")
    checkpoint(store)
    store.close()
    (tmp_path / "books.json").write_text(opened.replace('"title":"a"', '"title":"A"'))
    with pytest.raises(CorruptFileError, match="older than the journal reaches"):
        open_store(tmp_path, journal_keep=2)


def test_a_bad_first_record_is_named_by_its_line(tmp_path):
    (tmp_path / "books.json").write_text('{"seq": 1, "next_id": 2, "books": [\n  {"title": "no id"}\n]}')
    with pytest.raises(CorruptFileError) as caught:
        open_store(tmp_path)
    assert caught.value.line == 2


def test_following_compactions_of_another_process_leaves_no_descriptor_open(tmp_path):
    a, b = open_store(tmp_path, journal_keep=2), open_store(tmp_path, journal_keep=2)
    b.snapshot()
    fds = len(os.listdir("/proc/self/fd"))
    for round_ in range(5):
        for i in range(6):
            add(a, f"{round_}-{i}")
        checkpoint(a)
        b.maintain()  # follows a's compacted journal under the lock
    assert len(os.listdir("/proc/self/fd")) <= fds + 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.one_of(st.integers(1, 1500), st.integers(1, 1 << 21)),  # within a bucket, across groups
                st.one_of(st.none(), st.integers(0, 9)),
            ),
            min_size=1,
            max_size=40,
        ),
        max_size=25,
    )
)
def test_records_derived_change_by_change_hold_what_a_dict_would_and_leave_their_base_as_it_was(batches):
    """A collection's records after any run of puts and removals (a few ids or a bulk, in any
    order, near each other or a million apart): looked up, iterated both ways and counted as a
    plain dict of the same changes would be, and every earlier state unchanged."""
    from storage.base import Records

    model: dict[int, dict] = {}
    states: list[tuple[Records, list]] = [(Records(), [])]
    for batch in batches:
        entries = [(rid, None if value is None else {"id": rid, "v": value}) for rid, value in batch]
        for rid, record in entries:
            if record is None:
                model.pop(rid, None)
            else:
                model[rid] = record
        records = states[-1][0].with_changes(entries)
        ids = sorted(model)
        assert list(records) == ids and list(reversed(records)) == ids[::-1]
        assert list(records.items()) == [(rid, model[rid]) for rid in ids] and len(records) == len(ids)
        assert records.last_id() == (ids[-1] if ids else 0)
        for rid, _ in batch:
            assert records.get(rid) == model.get(rid) and (rid in records) == (rid in model)
        states.append((records, list(records.items())))
    for records, items in states:
        assert list(records.items()) == items
