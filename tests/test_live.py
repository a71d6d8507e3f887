"""Live updates: the websocket and the polling feed, across gunicorn workers and other processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from library import books, catalogue
from library.records import COLLECTIONS
from storage import JsonStore
from tests.conftest import BOOK, TEST_SECRET, assert_problem, client_as
from tests.servers import get_json, gunicorn_server, librarian, running

PUBLIC_BOOK_FIELDS = set(books.PUBLIC_ORDER)


def post_book(port: int, title: str) -> dict[str, Any]:
    """Create a book on a new connection (so that writes spread over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"title": title, "author": "Live Tester"})
        conn.request("POST", "/books", body, librarian[port])
        response = conn.getresponse()
        assert response.status == 201
        return json.loads(response.read())
    finally:
        conn.close()


class Listener:
    """A websocket client on its own thread, noting when each message arrived."""

    def __init__(self, port: int, query: str = "") -> None:
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(f"ws://127.0.0.1:{port}/ws{query}", max_size=None, proxy=None))
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                with self._arrived:
                    self.messages.append((time.monotonic(), json.loads(data)))
                    self._arrived.notify_all()
        except ConnectionClosed:
            return

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._exit.close()
        self._thread.join(timeout=10)


def store_for(data_dir: Path) -> JsonStore:
    """The data directory opened by this test process: one more writer beside the workers."""
    return JsonStore(data_dir, COLLECTIONS, describe=catalogue.describe)


def test_every_client_gets_every_write_of_every_process_in_order_within_a_second(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=3) as port:
        listeners = [Listener(port) for _ in range(3)]
        start = [listener.wait_for(1)[0] for listener in listeners]
        assert all(m["action"] == "initial_load" and m["books"] == [] for m in start)
        other_process = store_for(data)
        acked: dict[str, float] = {}
        for i in range(20):
            title = f"Write {i}"
            if i % 2:
                post_book(port, title)
            else:
                other_process.update(
                    lambda txn, t=title: txn.insert(
                        "books", catalogue._new_book({"title": t, "author": "X"}, "2026-01-01T00:00:00Z")
                    )
                )
            acked[title] = time.monotonic()
        for listener in listeners:
            messages = listener.wait_for(21)
            events = [m for _, m in listener.messages[1:]]
            assert [e["book"]["title"] for e in events] == [f"Write {i}" for i in range(20)]
            seqs = [e["seq"] for e in events]
            assert seqs == sorted(seqs) and len(set(seqs)) == 20
            delays = [arrived - acked[m["book"]["title"]] for arrived, m in listener.messages[1:]]
            assert max(delays) < 1.0, delays
            assert len(messages) == 21
            listener.close()


def test_a_client_that_reconnects_with_since_gets_exactly_what_it_missed(tmp_path):
    with gunicorn_server(tmp_path / "data", workers=2) as port:
        first = Listener(port)
        seq = first.wait_for(1)[0]["seq"]
        first.close()
        missed = [post_book(port, f"Missed {i}")["id"] for i in range(5)]
        again = Listener(port, f"?since={seq}")
        replayed = again.wait_for(5)
        assert [e["book"]["id"] for e in replayed] == missed
        post_book(port, "After")
        assert [e["book"]["title"] for e in again.wait_for(6)][5:] == ["After"]
        again.close()


def test_changes_and_the_websocket_carry_the_same_events(tmp_path):
    with gunicorn_server(tmp_path / "data", workers=2) as port:
        listener = Listener(port)
        seq = listener.wait_for(1)[0]["seq"]
        book = post_book(port, "Same everywhere")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for method, body in (("PATCH", json.dumps({"genre": "Drama"})), ("DELETE", None)):
            conn.request(method, f"/books/{book['id']}", body, librarian[port])
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        conn.close()
        over_ws = listener.wait_for(4)[1:]
        status, polled = get_json(port, f"/changes?since={seq}")
        assert status == 200
        assert polled["changes"] == over_ws
        assert [e["action"] for e in over_ws] == ["created", "updated", "deleted"]
        assert polled["last_seq"] == over_ws[-1]["seq"]
        for event in over_ws:
            assert set(event) == {"seq", "action", "book"}
            assert set(event["book"]) == PUBLIC_BOOK_FIELDS
        listener.close()


def connect_when_possible(port: int, timeout: float = 10.0) -> Listener:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Listener(port)
        except InvalidStatus:
            assert time.monotonic() < deadline, "no room for a new live connection"
            time.sleep(0.05)


VANISHING_CLIENT = """
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], max_size=None, proxy=None) as ws:
    ws.recv(timeout=10)
    print("connected", flush=True)
    sys.stdin.read()
"""


def test_a_client_that_vanishes_is_dropped_and_the_others_keep_receiving(tmp_path):
    env = {"WEB_CONCURRENCY": "1", "LIBRARY_WS_MAX_CONNECTIONS": "2", "GUNICORN_THREADS": "6"}
    with gunicorn_server(tmp_path / "data", workers=1, **env) as port:
        staying = Listener(port)
        staying.wait_for(1)
        vanishing = subprocess.Popen(
            [sys.executable, "-c", VANISHING_CLIENT, f"ws://127.0.0.1:{port}/ws"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert vanishing.stdout.readline() == b"connected\n"
        with pytest.raises(InvalidStatus):  # both slots are taken
            Listener(port)
        os.kill(vanishing.pid, signal.SIGKILL)  # gone without a close frame
        vanishing.wait()
        vanishing.stdin.close()
        vanishing.stdout.close()
        post_book(port, "Still live")
        assert staying.wait_for(2)[1]["book"]["title"] == "Still live"
        newcomer = connect_when_possible(port)  # the dead client's slot was given back
        assert newcomer.wait_for(1)[0]["action"] == "initial_load"
        staying.close()
        newcomer.close()


def test_with_every_live_slot_taken_plain_requests_are_still_served(tmp_path):
    env = {"LIBRARY_WS_MAX_CONNECTIONS": "2", "GUNICORN_THREADS": "4"}
    with gunicorn_server(tmp_path / "data", workers=1, **env) as port:
        listeners = [Listener(port) for _ in range(2)]
        with pytest.raises(InvalidStatus):
            Listener(port)
        started = time.monotonic()
        status, body = get_json(port, "/books")
        assert status == 200 and body["total"] == 0
        assert time.monotonic() - started < 2.0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        response = conn.getresponse()
        assert response.status == 503 and response.getheader("Retry-After")
        assert json.loads(response.read())["detail"].endswith("poll GET /changes instead")
        conn.close()
        for listener in listeners:
            listener.close()


# -- /changes in-process -------------------------------------------------------------------------


def test_changes_lists_events_oldest_first_with_the_cursor(client):
    ids = [client.post("/books", json={**BOOK, "isbn": None, "title": f"B{i}"}).get_json()["id"] for i in range(3)]
    body = client.get("/changes").get_json()
    assert [c["book"]["id"] for c in body["changes"]] == ids
    assert body["last_seq"] == body["changes"][-1]["seq"]
    page = client.get("/changes?since=0&limit=2").get_json()
    assert [c["book"]["id"] for c in page["changes"]] == ids[:2]
    rest = client.get(f"/changes?since={page['last_seq']}").get_json()
    assert [c["book"]["id"] for c in rest["changes"]] == ids[2:]
    assert client.get(f"/changes?since={rest['last_seq']}").get_json() == {"changes": [], "last_seq": rest["last_seq"]}


def test_the_list_etag_is_the_journal_seq(client):
    client.post("/books", json=BOOK)
    last_seq = client.get("/changes").get_json()["last_seq"]
    assert client.get("/books").headers["ETag"] == f'"{last_seq}"'


@pytest.mark.parametrize("query", ["since=-1", "since=x", "limit=0", "limit=1001", "from=3"])
def test_bad_changes_parameters_are_422(client, query):
    assert_problem(client.get(f"/changes?{query}"), 422)


def test_a_since_older_than_the_journal_is_410(data_dir):
    from library_api import create_app

    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "JOURNAL_KEEP": 2, "SECRET_KEY": TEST_SECRET}
    client = client_as(create_app(config), "librarian")
    for i in range(8):
        assert client.post("/books", json={"title": f"B{i}", "author": "A"}).status_code == 201
    client.application.extensions["library_store"].maintain(force=True)  # the background round compacts
    assert_problem(client.get("/changes?since=0"), 410)
    last = client.get("/changes?since=0&limit=1000")
    assert last.status_code == 410
    recent = client.get("/books").headers["ETag"].strip('"')
    assert client.get(f"/changes?since={recent}").status_code == 200


def test_a_failed_write_publishes_nothing(client, book):
    before = client.get("/changes").get_json()["last_seq"]
    assert client.post("/books", json={**BOOK, "author": "Someone Else"}).status_code == 409
    assert client.put(f"/books/{book['id']}", json={"title": ""}).status_code == 422
    assert client.get("/changes").get_json()["last_seq"] == before


def test_plain_get_of_ws_explains_itself(client):
    assert_problem(client.get("/ws"), 400, "Open /ws as a websocket, or poll GET /changes")


# -- CORS ------------------------------------------------------------------------------------------


def test_other_origins_are_refused_by_default(client):
    response = client.get("/books", headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_an_allowed_origin_can_read_and_poll_with_the_etag(data_dir):
    from library_api import create_app

    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "CORS_ORIGINS": "https://club.example"}
    client = create_app(config).test_client()
    response = client.get("/books", headers={"Origin": "https://club.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://club.example"
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]
    again = client.get("/books", headers={"Origin": "https://club.example"})  # from the read cache
    assert again.headers["Access-Control-Allow-Origin"] == "https://club.example"
    other = client.get("/books", headers={"Origin": "https://other.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/books",
        headers={
            "Origin": "https://club.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, If-Match",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://club.example"
    assert "if-match" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_stopping_the_server_closes_live_connections_at_once(tmp_path):
    """A deploy restarts workers: open websockets must not hold the shutdown for its full
    graceful timeout (10 s); they are closed and the client reconnects elsewhere."""
    with gunicorn_server(tmp_path / "data", workers=2) as port:
        listeners = [Listener(port) for _ in range(2)]
        for listener in listeners:
            listener.wait_for(1)
        master = running[port].pid
        started = time.monotonic()
        os.kill(master, signal.SIGTERM)
        for listener in listeners:
            listener._thread.join(timeout=8)
            assert not listener._thread.is_alive(), "the connection was not closed"
        assert time.monotonic() - started < 8
        for listener in listeners:
            listener.close()
