"""The edges of HTTP and of sign-in, through a real gunicorn: bodies however they arrive, long URLs,
a data directory that disappears, concurrent guesses at one password."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from library import auth, members
from library.records import COLLECTIONS
from storage import JsonStore
from tests.servers import SECRET, gunicorn_server

pytestmark = pytest.mark.timeout(120)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` as it is on one connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def add_reader(data_dir: Path, email: str, password: str) -> None:
    store = JsonStore(data_dir, COLLECTIONS)
    hashed = auth.hash_password(password)
    data = {"email": email, "first_name": "Kate", "last_name": "Reader"}
    store.update(lambda txn: members.create(txn, data, "2026-01-01T00:00:00Z", hashed))
    store.close()


def add_stale_lockouts(data_dir: Path, email: str, count: int) -> None:
    """Lockout records whose time is over, the email's own among them (as after a quiet night)."""
    store = JsonStore(data_dir, COLLECTIONS)
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys = [auth.email_key(SECRET.encode(), email)] + [f"{i:032x}" for i in range(count - 1)]

    def fill(txn):
        for key in keys:
            txn.insert("logins", {"key": key, "failures": [past] * 3, "locked_until": None, "expires_at": past})

    store.update(fill)
    store.close()


@pytest.mark.parametrize("stale", [0, 30])
def test_eight_concurrent_wrong_passwords_are_five_401s_and_three_429s(tmp_path, stale):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=2) as port:
        add_reader(data, "kate@example.org", "the right password")
        if stale:
            add_stale_lockouts(data, "kate@example.org", stale)
        body = json.dumps({"email": "kate@example.org", "password": "a wrong password"}).encode()
        headers = {"Content-Type": "application/json"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: request(port, "POST", "/auth/login", body, headers), range(8)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [401] * 5 + [429] * 3, [a[2] for a in answers]
        locked = next(json.loads(b) for s, _, b in answers if s == 429)
        assert "try again after" in locked["detail"]


def test_a_chunked_json_body_over_the_limit_is_413_not_truncated(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        from tests.servers import librarian

        token = librarian[port]["Authorization"]
        title = "x" * 400
        book = json.dumps({"title": title, "author": "A. Writer", "genre": "g" * (1024 * 1024)}).encode()
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(book[i : i + 8192]), book[i : i + 8192]) for i in range(0, len(book), 8192)
        )
        head = (
            b"POST /books HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = raw(port, head + chunks + b"0\r\n\r\n")
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 413 " in status_line, answer[:500]
        assert b"application/problem+json" in rest
        status, _, body = request(port, "GET", "/books")
        assert json.loads(body)["total"] == 0


def test_a_chunked_json_body_under_the_limit_is_taken_whole(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        from tests.servers import librarian

        book = json.dumps({"title": "Chunked", "author": "A. Writer", "genre": "g" * 400}).encode()
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(book[i : i + 100]), book[i : i + 100]) for i in range(0, len(book), 100)
        )
        head = (
            b"POST /books HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Authorization: " + librarian[port]["Authorization"].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = raw(port, head + chunks + b"0\r\n\r\n")
        assert b" 201 " in answer.partition(b"\r\n")[0], answer[:500]
        created = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert created["title"] == "Chunked" and created["genre"] == "g" * 400


def test_a_413_that_did_not_read_the_body_closes_the_connection(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/auth/login")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(5 * 1024 * 1024))
        conn.endheaders()
        conn.send(b"{" + b" " * 65536)
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Connection", "").lower() == "close"
        conn.close()


def test_a_refusal_before_a_large_body_was_read_closes_the_connection(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/books")  # no token: 401 before the body is read
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(50 * 1024 * 1024))
        conn.endheaders()
        conn.send(b"{" * 1000)
        response = conn.getresponse()
        assert response.status == 401
        assert response.getheader("Connection", "").lower() == "close"
        conn.close()
        status, headers, _ = request(port, "POST", "/books", b"{}", {"Content-Type": "application/json"})
        assert status == 401 and headers.get("Connection", "").lower() == "keep-alive"  # a small body is read past


def test_a_long_query_reaches_the_app(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        status, headers, body = request(port, "GET", "/books?q=" + "a" * 5000)
        assert status == 200, body[:300]
        assert json.loads(body)["total"] == 0
        status, headers, body = request(port, "GET", "/books?q=" + "a" * 20000)
        assert status == 422, body[:300]  # beyond any real search: still our answer, in JSON
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["errors"]["q"] == ["Must be at most 10000 characters."]


def test_a_missing_data_directory_answers_503_problems_on_every_route_and_logs_once(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        from tests.servers import librarian

        book = json.dumps({"title": "Kept", "author": "A. Writer"}).encode()
        assert request(port, "POST", "/books", book, librarian[port])[0] == 201
        log_path = next(tmp_path.glob("gunicorn-*.log"))
        data.rename(tmp_path / "unmounted")  # a volume unmounted, or the folder moved away
        for path in ("/healthz", "/books", "/books/1", "/changes", "/members/me", "/", "/docs"):
            for _ in range(10):
                status, headers, body = request(port, "GET", path)
                assert status == 503, (path, body[:300])
                assert headers["Content-Type"] == "application/problem+json", (path, body[:200])
                assert "data directory is missing" in json.loads(body)["detail"]
                assert headers["X-Content-Type-Options"] == "nosniff"
        status, _, _ = request(port, "POST", "/books", book, librarian[port])
        assert status == 503
        assert not data.exists()  # nothing was written onto the disk below
        (tmp_path / "unmounted").rename(data)
        status, _, body = request(port, "GET", "/books")
        assert status == 200 and json.loads(body)["total"] == 1
        assert request(port, "POST", "/books", book, librarian[port])[0] == 200  # the same book again
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert text.count("is missing") == 1 and text.count("is back: serving") == 1, text[-3000:]


def test_a_deleted_data_directory_is_not_made_again_from_memory(tmp_path):
    data = tmp_path / "data"
    # One worker: a second one may still be opening the directory when the first answers, and a
    # worker that opens a missing directory makes a new one (as a first start must).
    with gunicorn_server(data, workers=1) as port:
        shutil.rmtree(data)
        for _ in range(20):
            status, headers, body = request(port, "GET", "/healthz")
            assert status == 503 and headers["Content-Type"] == "application/problem+json"
        time.sleep(1)  # several rounds of each worker's background upkeep (every 0.25 s)
        assert not data.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem of its own (tmpfs), so that it can really be filled."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, check=False
        )
    except OSError:  # no mount command at all
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_answers_507_and_logs_once(small_disk, caplog):
    from library_api import create_app
    from tests.conftest import TEST_SECRET, client_as

    app = create_app(
        {"TESTING": True, "DATA_DIR": str(small_disk / "data"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    )
    librarian = client_as(app, "librarian")
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 512)
    os.close(fd)
    answers = []
    for i in range(40):
        response = librarian.post("/books", json={"title": f"Book {i} " + "x" * 400, "author": "A. Writer"})
        answers.append(response.status_code)
        if response.status_code != 201:
            break
    assert answers[-1] == 507, answers
    assert response.mimetype == "application/problem+json"
    assert "disk is full" in response.get_json()["detail"]
    for _ in range(5):
        assert librarian.post("/books", json={"title": "Another " + "y" * 400, "author": "B"}).status_code == 507
    assert [r.message for r in caplog.records].count(
        "The disk of the data directory is full: writes answer 507 until there is room"
    ) == 1
    assert "Traceback" not in caplog.text
    (small_disk / "filler").unlink()
    assert librarian.post("/books", json={"title": "Room again", "author": "B"}).status_code == 201
