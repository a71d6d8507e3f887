"""Real processes on one PostgreSQL database: two gunicorn servers (each with two workers), as
several app servers behind a load balancer would run."""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from library.records import COLLECTIONS
from storage.postgres import ADVISORY_KEY, PgStore
from tests.postgres import fresh_database
from tests.servers import ROOT, SECRET, free_port, get_json, sign_in_to, wait_until_healthy
from tests.test_live import Listener


@contextlib.contextmanager
def server(url: str, folder: Path, wait: bool = True, **env: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """gunicorn with the project's config on ``url``; yields its port and process (its own group)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "LIBRARY_DATABASE_URL": url,
        "LIBRARY_DATA_DIR": str(folder / f"cache-{port}"),
        "LIBRARY_SEED_FILE": "",
        "LIBRARY_SECRET_KEY": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "library_api:create_app()"]
    with open(folder / f"gunicorn-{port}.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if wait:
                wait_until_healthy(port, process)
            yield port, process
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def sign_in(url: str, role: str, count: int = 1) -> list[dict[str, str]]:
    return sign_in_to(PgStore(url, COLLECTIONS), role, count)


def request(port: int, method: str, path: str, headers: dict[str, str], body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def borrow(args: tuple[int, int, dict[str, str]]) -> int:
    port, book_id, headers = args
    return request(port, "POST", f"/books/{book_id}/borrow", headers, {"days": 7})[0]


def create_book(port: int, headers: dict[str, str], title: str) -> int:
    status, body = request(port, "POST", "/books", headers, {"title": title, "author": "Racer"})
    assert status == 201, body
    return body["id"]


def test_a_write_on_one_server_reaches_a_websocket_client_of_the_other_within_a_second(tmp_path):
    url = fresh_database(str(tmp_path))
    with server(url, tmp_path) as (a, _), server(url, tmp_path) as (b, _):
        (librarian,) = sign_in(url, "librarian")
        listener = Listener(b)
        try:
            assert listener.wait_for(1)[0]["action"] == "initial_load"
            for n in range(3):
                before = len(listener.messages)
                book_id = create_book(a, librarian, f"Live {n}")
                acknowledged = time.monotonic()
                listener.wait_for(before + 1, timeout=5)
                arrived = next(t for t, m in listener.messages if m.get("book", {}).get("id") == book_id)
                assert arrived - acknowledged < 1.0
        finally:
            listener.close()
        status, body = get_json(b, "/changes?since=0")
        assert status == 200 and any(e.get("book", {}).get("id") == book_id for e in body["changes"])


def test_twenty_members_racing_for_one_book_through_two_servers_get_one_loan(tmp_path):
    url = fresh_database(str(tmp_path))
    with server(url, tmp_path) as (a, _), server(url, tmp_path) as (b, _):
        (librarian,) = sign_in(url, "librarian")
        book_id = create_book(a, librarian, "Wanted")
        racers = sign_in(url, "member", 20)
        jobs = [((a, b)[i % 2], book_id, h) for i, h in enumerate(racers)]
        with multiprocessing.get_context("fork").Pool(20) as pool:
            statuses = pool.map(borrow, jobs)
        assert sorted(statuses) == [201] + [409] * 19
        assert get_json(b, f"/books/{book_id}")[1]["status"] == "checked_out"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM library_records WHERE collection = 'loans'").fetchone()[0] == 1


def test_one_member_racing_past_the_loan_limit_through_two_servers_gets_no_more(tmp_path):
    url = fresh_database(str(tmp_path))
    with server(url, tmp_path) as (a, _), server(url, tmp_path) as (b, _):
        (librarian,) = sign_in(url, "librarian")
        books = [create_book(a, librarian, f"Book {i}") for i in range(12)]
        (racer,) = sign_in(url, "member")
        with multiprocessing.get_context("fork").Pool(12) as pool:
            statuses = pool.map(borrow, [((a, b)[i % 2], book_id, racer) for i, book_id in enumerate(books)])
    assert sorted(statuses) == [201] * 5 + [409] * 7
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM library_records WHERE collection = 'loans'").fetchone()[0] == 5


def test_sigkill_of_a_server_mid_write_loses_no_acknowledged_write(tmp_path):
    url = fresh_database(str(tmp_path))
    acknowledged: list[int] = []
    with server(url, tmp_path) as (b, _):
        (librarian,) = sign_in(url, "librarian")
        with server(url, tmp_path) as (a, victim):
            stop = threading.Event()

            def writer() -> None:
                n = 0
                while not stop.is_set():
                    try:
                        status, body = request(a, "POST", "/books", librarian, {"title": f"W{n}", "author": "K"})
                    except (OSError, http.client.HTTPException):
                        return  # the server is gone (before or during its answer): never acknowledged
                    if status == 201:
                        acknowledged.append(body["id"])
                    n += 1

            threads = [threading.Thread(target=writer) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(acknowledged) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(victim.pid, signal.SIGKILL)  # master and workers, in the middle of writes
            victim.wait()
            stop.set()
            for thread in threads:
                thread.join()
        assert len(acknowledged) >= 40
        seen = set()
        page = 1
        while True:
            status, body = request(b, "GET", f"/books?limit=100&page={page}", librarian)
            assert status == 200
            seen |= {book["id"] for book in body["books"]}
            if len(body["books"]) < 100:
                break
            page += 1
        assert set(acknowledged) <= seen


def test_a_server_started_while_another_migrates_waits_and_comes_up(tmp_path):
    url = fresh_database(str(tmp_path)).rsplit("/", 1)[0] + "/postgres"
    name = f"migrating_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    target = url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(target, autocommit=True) as migrating:
        migrating.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))  # as a migrating server holds it
        with server(target, tmp_path, wait=False) as (port, process):
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # it waits: not up, not gone
                assert process.poll() is None
                assert get_status(port) != 200
                time.sleep(0.1)
            migrating.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
            wait_until_healthy(port, process)
            status, body = get_json(port, "/healthz")
            assert status == 200 and body["schema_version"] >= 1


def get_status(port: int) -> int | None:
    try:
        return get_json(port, "/healthz")[0]
    except OSError:
        return None
