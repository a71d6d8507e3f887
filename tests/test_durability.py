"""Real processes: many writers at once lose nothing; a writer killed at any moment loses nothing it
acknowledged and never leaves a file that does not parse; a corrupt file stops the server cold."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from storage import JsonStore
from tests.conftest import ROOT
from tests.servers import get_json, gunicorn_server, librarian

WRITERS, WRITES = 8, 250


def _insert_many(args: tuple[str, int]) -> list[int]:
    directory, writer = args
    store = JsonStore(directory, ("books",), lock_timeout=120)  # a slow shared disk must not fail the count
    return [store.update(lambda txn, i=i: txn.insert("books", {"title": f"{writer}-{i}"}))["id"] for i in range(WRITES)]


def test_writer_processes_through_storage_lose_nothing(tmp_path):
    JsonStore(tmp_path, ("books",))
    with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
        ids = [i for chunk in pool.map(_insert_many, [(str(tmp_path), w) for w in range(WRITERS)]) for i in chunk]
    assert sorted(ids) == list(range(1, WRITERS * WRITES + 1))
    JsonStore(tmp_path, ("books",))  # start-up replays the journal into the file
    books = orjson.loads((tmp_path / "books.json").read_bytes())["books"]
    assert len(books) == WRITERS * WRITES
    assert {b["title"] for b in books} == {f"{w}-{i}" for w in range(WRITERS) for i in range(WRITES)}


def _post_many(args: tuple[int, int, dict[str, str]]) -> list[tuple[int, int]]:
    port, writer, headers = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    results = []
    for i in range(WRITES):
        body = json.dumps({"title": f"Concurrent {writer}-{i}", "author": f"Writer {writer}"})
        conn.request("POST", "/books", body, headers)
        response = conn.getresponse()
        results.append((response.status, json.loads(response.read())["id"]))
    conn.close()
    return results


def test_writers_through_gunicorn_with_three_workers_lose_nothing(tmp_path):
    with gunicorn_server(tmp_path / "data", workers=3, LIBRARY_LOCK_TIMEOUT="120") as port:
        with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
            jobs = [(port, w, librarian[port]) for w in range(WRITERS)]
            results = [r for chunk in pool.map(_post_many, jobs) for r in chunk]
        _, listed = get_json(port, "/books?limit=1")
    assert [status for status, _ in results] == [201] * (WRITERS * WRITES)
    assert len({book_id for _, book_id in results}) == WRITERS * WRITES
    assert listed["total"] == WRITERS * WRITES
    on_disk = orjson.loads((tmp_path / "data" / "books.json").read_bytes())["books"]
    assert len(on_disk) == WRITERS * WRITES


def _write_until_killed(directory: str, out: int, checkpoint_every: int) -> None:
    store = JsonStore(directory, ("books",), journal_keep=200)
    n = 0
    while True:
        book = store.update(lambda txn, n=n: txn.insert("books", {"title": f"{os.getpid()}-{n}"}))
        os.write(out, f"{book['id']} {book['title']}\n".encode())  # acknowledged only once durable
        n += 1
        if checkpoint_every and n % checkpoint_every == 0:
            store.maintain(force=True)  # rewrite books.json and compact the journal, as the background round does


def _one_round(directory: Path, rng: random.Random, checkpoint_every: int) -> dict[int, str]:
    """Start a writer, kill it after a random number of acknowledged writes; return its acks."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _write_until_killed(str(directory), write_end, checkpoint_every)
        finally:
            os._exit(1)
    os.close(write_end)
    lines: list[bytes] = []
    with os.fdopen(read_end, "rb") as acks:
        for _ in range(rng.randint(0, 3)):
            line = acks.readline()
            if not line:
                break
            lines.append(line)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines.extend(acks.read().splitlines())
    result = {}
    for line in lines:
        book_id, title = line.decode().split()
        result[int(book_id)] = title
    return result


@pytest.mark.parametrize("checkpoint_every", [0, 1], ids=["writing", "checkpointing"])
def test_sigkill_at_random_moments_300_times(tmp_path, checkpoint_every):
    """A writer killed at random moments: while it appends to the journal, and (checkpointing) while
    it rewrites books.json and compacts the journal after every write."""
    rng = random.Random(1122)
    JsonStore(tmp_path, ("books",))
    acknowledged: dict[int, str] = {}
    for _ in range(300):
        acknowledged.update(_one_round(tmp_path, rng, checkpoint_every))
        # Whatever moment the kill hit, the file on disk parses as it is, before any repair...
        if (tmp_path / "books.json").exists():
            on_disk = orjson.loads((tmp_path / "books.json").read_bytes())
            assert isinstance(on_disk["books"], list)
        # ...and, once a store has opened the directory, every acknowledged write is there.
        records = JsonStore(tmp_path, ("books",)).snapshot().records("books")
        missing = {i: t for i, t in acknowledged.items() if records.get(i, {}).get("title") != t}
        assert not missing
    assert len(acknowledged) > 300
    assert not list(tmp_path.glob(".*.tmp"))
    on_disk = orjson.loads((tmp_path / "books.json").read_bytes())["books"]
    assert {b["id"]: b["title"] for b in on_disk if b["id"] in acknowledged} == acknowledged


CORRUPT = b'{"seq": 3, "next_id": 3, "books": [\n{"id": 1, "title": "Dune"},\n{"id": 2, "title": Emma}\n]}\n'


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "flask", "--app", "library_api", "routes"],
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "library_api:create_app()"],
    ],
    ids=["flask", "gunicorn"],
)
def test_a_corrupt_books_file_stops_start_up_and_is_left_untouched(tmp_path, command):
    data = tmp_path / "data"
    data.mkdir()
    (data / "books.json").write_bytes(CORRUPT)
    env = {**os.environ, "LIBRARY_DATA_DIR": str(data), "PORT": "0", "HOST": "127.0.0.1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60, text=True)
    assert done.returncode != 0
    assert f"{data / 'books.json'}: not valid JSON" in done.stderr
    assert "line 3, column 20" in done.stderr
    assert (data / "books.json").read_bytes() == CORRUPT
    assert not (data / "journal.jsonl").exists()
