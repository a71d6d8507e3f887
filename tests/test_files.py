"""What a person does to the data files while the server runs, through real gunicorn processes.

Each case asserts what a user sees (status codes, problem documents, the catalogue, the events) and
that every acknowledged write is still there after the server restarts.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.servers import ROOT, get_json, gunicorn_server, librarian

DEADLINE = 15.0  # seconds a background round may take to notice; the promise is about one


def request(port: int, method: str, path: str, body: object = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body) if body is not None else None
        conn.request(method, path, payload, headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, response.getheader("Content-Type"), json.loads(data) if data else None
    finally:
        conn.close()


def add_book(port: int, title: str) -> dict:
    status, _, body = request(port, "POST", "/books", {"title": title, "author": "A. Writer"}, librarian[port])
    assert status == 201, body
    return body


def wait_for(check: Callable[[], object], what: str) -> object:
    """Poll ``check`` until it returns something truthy (a background round is asynchronous)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def checkpointed(data: Path, titles: set[str]) -> bool:
    """Whether books.json holds ``titles`` (the background checkpoint has run)."""
    try:
        books = orjson.loads((data / "books.json").read_bytes())["books"]
    except (FileNotFoundError, orjson.JSONDecodeError):
        return False
    return titles <= {b["title"] for b in books}


def titles_of(port: int) -> set[str]:
    status, listed = get_json(port, "/books?limit=100")
    assert status == 200
    return {b["title"] for b in listed["books"]}


def health(port: int) -> tuple[int, dict]:
    return get_json(port, "/healthz")


def after_restart(data: Path) -> set[str]:
    with gunicorn_server(data, workers=1) as port:
        return titles_of(port)


def test_a_books_file_moved_aside_and_back(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data) as port:
        made = {add_book(port, f"Book {i}")["title"] for i in range(5)}
        wait_for(lambda: checkpointed(data, made), "the checkpoint")
        os.replace(data / "books.json", tmp_path / "aside.json")
        status, body = wait_for(lambda: (h := health(port))[0] == 503 and h, "healthz to report the missing file")
        assert body["status"] == "degraded" and "books.json" in body["problems"][0]["file"]
        # Never an empty catalogue: reads keep the last state...
        assert titles_of(port) == made
        # ...and writes that need the file are refused, naming it.
        status, kind, problem = request(port, "POST", "/books", {"title": "Refused", "author": "B"}, librarian[port])
        assert status == 503 and kind == "application/problem+json"
        assert "books.json is missing" in problem["detail"]
        assert not (data / "books.json").exists()  # nothing wrote an empty file in its place
        os.replace(tmp_path / "aside.json", data / "books.json")
        wait_for(lambda: health(port)[0] == 200, "healthz to recover")
        made.add(add_book(port, "After")["title"])
        assert titles_of(port) == made
        status, changes = get_json(port, "/changes?since=0&limit=1000")
        assert status == 200 and not [c for c in changes["changes"] if c["action"] == "deleted"]
    assert after_restart(data) == made


@pytest.mark.parametrize("damage", ["delete", "truncate", "header"])
def test_a_journal_damaged_under_the_running_server(tmp_path, damage):
    data = tmp_path / "data"
    journal = data / "journal.jsonl"
    with gunicorn_server(data) as port:
        made = {add_book(port, f"Book {i}")["title"] for i in range(5)}  # some only in the journal
        _, before = get_json(port, "/changes?since=0")
        if damage == "delete":
            journal.unlink()
        elif damage == "truncate":
            os.truncate(journal, 0)  # what logrotate's copytruncate does
        else:
            with open(journal, "r+b") as fh:
                fh.write(b"#" * 10)
        # Reads keep answering (never a dropped connection) from the last state each worker has:
        # after a delete, with every change the deleted journal holds (each worker still has it open).
        for _ in range(10):
            seen = titles_of(port)
            assert seen == made if damage == "delete" else seen <= made
        # A write is either refused with a problem document or taken once a worker repaired it.
        for i in range(20):
            status, kind, body = request(
                port, "POST", "/books", {"title": f"Later {i}", "author": "B"}, librarian[port]
            )
            assert status in (201, 503), body
            if status == 201:
                made.add(body["title"])
            else:
                assert kind == "application/problem+json" and "journal" in body["detail"]
        wait_for(lambda: health(port)[0] == 200, "the journal to be repaired")
        # The worker that answered /healthz may not be the one that takes the write: a 503 "being
        # repaired" (which stores nothing) is tried again.
        status, _, body = wait_for(
            lambda: (
                (r := request(port, "POST", "/books", {"title": "After the repair", "author": "B"}, librarian[port]))[0]
                == 201
                and r
            ),
            "a write after the repair",
        )
        made.add(body["title"])
        assert titles_of(port) == made
        # Clients that followed the old journal are told to reload.
        status, _ = get_json(port, f"/changes?since={before['last_seq'] - 3}")
        assert status == 410
        header = orjson.loads(journal.read_bytes().split(b"\n", 1)[0])
        assert header["journal"] == 1
    assert after_restart(data) == made


def test_a_record_of_the_wrong_type_is_refused_until_fixed(tmp_path):
    data = tmp_path / "data"
    path = data / "books.json"
    with gunicorn_server(data) as port:
        made = {add_book(port, f"Book {i}")["title"] for i in range(3)}
        wait_for(lambda: checkpointed(data, made), "the checkpoint")
        good = path.read_text()
        bad = good.replace('"title":"Book 1"', '"title":123')
        assert bad != good
        path.write_text(bad)
        # (the file is truncated, then written, as an editor may: a look in between sees it empty)
        status, body = wait_for(
            lambda: (h := health(port))[0] == 503 and "must be text" in h[1]["problems"][0]["problem"] and h,
            "healthz to report the bad record",
        )
        detail = body["problems"][0]["problem"]
        assert "books.json" in detail and '"title" must be text' in detail and "line 3" in detail
        # Sorted lists, search and PATCH keep working on the last good state (never a 500).
        status, listed = get_json(port, "/books?sort_by=-title&q=book")
        assert status == 200 and [b["title"] for b in listed["books"]] == ["Book 2", "Book 1", "Book 0"]
        status, kind, problem = request(port, "PATCH", "/books/2", {"genre": "x"}, librarian[port])
        assert status == 503 and kind == "application/problem+json"
        assert '"title" must be text' in problem["detail"] and "line 3" in problem["detail"]
        assert path.read_text() == bad  # left as the person wrote it
        path.write_text(good.replace('"title":"Book 1"', '"title":"Book One"'))
        wait_for(lambda: "Book One" in titles_of(port) and health(port)[0] == 200, "the fix to be taken in")
        assert titles_of(port) == {"Book 0", "Book One", "Book 2"}
        status, _, _ = request(port, "PATCH", "/books/2", {"genre": "x"}, librarian[port])
        assert status == 200
        _, changes = get_json(port, "/changes?since=0&limit=1000")
        assert changes["changes"][-1]["book"]["title"] == "Book One"
    assert after_restart(data) == {"Book 0", "Book One", "Book 2"}


def test_an_editor_save_of_a_file_behind_the_journal_keeps_both(tmp_path):
    data = tmp_path / "data"
    path = data / "books.json"
    with gunicorn_server(data) as port:
        for title in ("Dune", "Emma", "Ulysses"):
            add_book(port, title)
        wait_for(lambda: checkpointed(data, {"Dune", "Emma", "Ulysses"}), "the checkpoint")
        opened = path.read_text()  # the person opens the file...
        add_book(port, "Middlemarch")  # ...while the desk goes on writing
        status, _, _ = request(port, "PATCH", "/books/2", {"genre": "Classics"}, librarian[port])
        assert status == 200
        _, before = get_json(port, "/changes?since=0&limit=1000")
        path.write_text(opened.replace('"title":"Ulysses"', '"title":"Ulysses (annotated)"'))  # ...and saves
        wait_for(lambda: "Ulysses (annotated)" in titles_of(port), "the edit to be taken in")
        assert titles_of(port) == {"Dune", "Emma", "Ulysses (annotated)", "Middlemarch"}
        _, emma = get_json(port, "/books/2")
        assert emma["genre"] == "Classics"
        _, changes = get_json(port, f"/changes?since={before['last_seq']}")
        assert [(c["action"], c["book"]["title"]) for c in changes["changes"]] == [("updated", "Ulysses (annotated)")]
    assert after_restart(data) == {"Dune", "Emma", "Ulysses (annotated)", "Middlemarch"}


HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def test_readers_answer_while_another_process_holds_the_lock(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data) as port:
        add_book(port, "First")
        _, first = get_json(port, "/changes?since=0")
        # Another process commits, so that every worker has something to catch up with...
        from library.records import COLLECTIONS
        from storage import JsonStore

        writer = JsonStore(data, COLLECTIONS)
        writer.update(lambda txn: txn.insert("books", {"title": "Second", "author": "B"}))
        writer.close()
        # ...and then holds the lock for two seconds.
        with subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(data / "library.lock"), "2"], cwd=ROOT, stdout=subprocess.PIPE
        ) as holder:
            assert holder.stdout.readline() == b"held\n"
            took = []
            for path in ("/books", "/books/2", f"/changes?since={first['last_seq']}", "/healthz", "/books?q=sec"):
                for _ in range(3):
                    started = time.monotonic()
                    status, body = get_json(port, path)
                    took.append(time.monotonic() - started)
                    assert status == 200, path
            # A read that waited for the lock would take its 2 s; on a busy machine a read may
            # take a scheduler's slice longer than usual, so the bound is on the median.
            assert max(took) < 1.0
            assert statistics.median(took) < 0.1
            assert titles_of(port) == {"First", "Second"}
            assert holder.poll() is None, "the lock was let go before the reads were done"
