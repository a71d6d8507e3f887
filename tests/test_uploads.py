"""Covers and documents: SPEC.md "Books" (the upload routes), safely."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
import zipfile
import zlib
from pathlib import Path

import orjson
import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from library_api import create_app
from storage import JsonStore
from tests.conftest import BOOK, TEST_SECRET, app_on, assert_problem, client_as
from tests.servers import gunicorn_server, librarian, running


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) + b"\xff\xd9"


def webp() -> bytes:
    body = b"WEBPVP8L" + (5).to_bytes(4, "little") + b"\x2f\x00\x00\x00\x00" + b"\x00"
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def gif() -> bytes:
    screen = b"\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    return b"GIF89a" + screen + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def epub() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", "<container/>", compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


@pytest.fixture
def app(data_dir, backend):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    with app_on(backend, data_dir, {**config, "MAX_UPLOAD_MB": 1}) as made:
        yield made


@pytest.fixture
def book_id(client) -> int:
    return client.post("/books", json=BOOK).get_json()["id"]


def send(client, book_id: int, purpose: str, content: bytes, filename: str = "file.bin", **kwargs):
    """A multipart upload, its body built here (in memory: the test client would spool a large one
    to a temporary file it never closes)."""
    media_type = kwargs.pop("content_type", "application/octet-stream")
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(content), filename, content_type=media_type)})
    content_type = f"multipart/form-data; boundary={boundary}"
    return client.post(f"/books/{book_id}/{purpose}", data=body, content_type=content_type, **kwargs)


def stored(data_dir: Path) -> list[str]:
    folder = data_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("purpose", "make", "media_type"),
    [
        ("cover", jpeg, "image/jpeg"),
        ("cover", png, "image/png"),
        ("cover", webp, "image/webp"),
        ("cover", gif, "image/gif"),
        ("document", pdf, "application/pdf"),
        ("document", epub, "application/epub+zip"),
    ],
)
def test_each_accepted_type_round_trips_byte_for_byte(client, anon, book_id, data_dir, purpose, make, media_type):
    content = make()
    response = send(client, book_id, purpose, content, "whatever.txt", content_type="text/plain")
    assert response.status_code == 200, response.get_data(as_text=True)
    url = response.get_json()[f"{purpose}_url"]
    assert url.startswith("/uploads/")
    assert anon.get(f"/books/{book_id}").get_json()[f"{purpose}_url"] == url
    served = anon.get(url)
    assert served.status_code == 200 and served.get_data() == content
    assert served.mimetype == media_type
    assert "immutable" in served.headers["Cache-Control"] and served.headers["X-Content-Type-Options"] == "nosniff"
    again = anon.get(url, headers={"If-None-Match": served.headers["ETag"]})
    assert again.status_code == 304
    served.close()
    again.close()
    assert len(stored(data_dir)) == 1


@pytest.mark.parametrize(
    ("purpose", "content", "filename", "status"),
    [
        ("cover", b"<?php system($_GET['c']); ?>", "cover.png", 415),
        ("cover", b"", "cover.png", 422),
        ("cover", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIH", "cover.png", 415),
        ("cover", pdf(), "cover.jpg", 415),
        ("document", b"", "book.pdf", 422),
        ("document", png(), "book.pdf", 415),
        ("document", b"PK\x03\x04" + bytes(60), "book.epub", 415),
        ("cover", png(), "../../etc/cover.png", 422),
        ("cover", png(), "cover\x00.png", 422),
        ("cover", png(), "..\\cover.png", 422),
    ],
    ids=[
        "php named png",
        "empty",
        "truncated png",
        "pdf as cover",
        "empty pdf",
        "png as document",
        "zip not epub",
        "dot-dot",
        "nul",
        "backslash",
    ],  # fmt: skip
)
def test_refused_files_leave_nothing_behind(client, anon, book_id, data_dir, purpose, content, filename, status):
    before = anon.get(f"/books/{book_id}").get_json()
    assert_problem(send(client, book_id, purpose, content, filename), status)
    assert anon.get(f"/books/{book_id}").get_json() == before
    assert stored(data_dir) == []


def test_the_size_limit_is_exact(client, book_id, data_dir):
    limit = 1024 * 1024
    at_limit = jpeg() + bytes(limit - len(jpeg()))
    assert send(client, book_id, "cover", at_limit).status_code == 200
    body = assert_problem(send(client, book_id, "cover", at_limit + b"\x00"), 413)
    assert "1 MB" in body["detail"]
    assert len(stored(data_dir)) == 1


def test_a_body_announced_too_large_is_refused_before_it_is_read(client, book_id, data_dir):
    response = client.post(
        f"/books/{book_id}/cover",
        input_stream=io.BytesIO(b"never read"),
        content_type="multipart/form-data; boundary=x",
        environ_overrides={"CONTENT_LENGTH": str(50 * 1024 * 1024)},
    )
    assert_problem(response, 413)
    assert stored(data_dir) == []


def test_uploads_need_a_librarian(app, anon, book_id, data_dir):
    assert_problem(send(anon, book_id, "cover", png()), 401)
    assert_problem(send(client_as(app, "member"), book_id, "cover", png()), 403)
    assert_problem(send(client_as(app, "member"), book_id, "document", pdf()), 403)
    assert stored(data_dir) == []


def test_bad_requests(client, book_id, data_dir):
    assert_problem(send(client, 999, "cover", png()), 404, "Book not found")
    assert_problem(client.post(f"/books/{book_id}/cover", json={"file": "x"}), 415)
    missing = client.post(f"/books/{book_id}/cover", data={"other": "x"}, content_type="multipart/form-data")
    assert "file" in assert_problem(missing, 422)["errors"]
    assert_problem(client.get("/uploads/../books.json"), 404)
    assert_problem(client.get("/uploads/" + "0" * 32 + ".png"), 404)
    assert stored(data_dir) == []


def test_a_new_cover_replaces_the_old_file_and_a_deleted_book_takes_its_files(client, anon, book_id, data_dir):
    first = send(client, book_id, "cover", png()).get_json()["cover_url"]
    second = send(client, book_id, "cover", jpeg()).get_json()["cover_url"]
    assert first != second and stored(data_dir) == [second.rsplit("/", 1)[1]]
    assert_problem(anon.get(first), 404)
    send(client, book_id, "document", pdf())
    assert len(stored(data_dir)) == 2
    assert client.delete(f"/books/{book_id}").status_code == 200
    assert stored(data_dir) == []


def test_a_cover_change_is_an_update_on_the_feed(client, anon, book_id):
    since = anon.get("/changes").get_json()["last_seq"]
    url = send(client, book_id, "cover", gif()).get_json()["cover_url"]
    events = anon.get(f"/changes?since={since}").get_json()["changes"]
    assert [(e["action"], e["book"]["cover_url"]) for e in events] == [("updated", url)]


def test_start_up_removes_what_interrupted_uploads_left(client, book_id, data_dir):
    kept = send(client, book_id, "cover", png()).get_json()["cover_url"].rsplit("/", 1)[1]
    folder = data_dir / "uploads"
    old_orphan, young_orphan = folder / ("a" * 32 + ".png"), folder / ("b" * 32 + ".pdf")
    dead_temp = folder / ".999999999-0123.tmp"
    for path in (old_orphan, young_orphan, dead_temp):
        path.write_bytes(b"x")
    long_ago = time.time() - 3600
    os.utime(old_orphan, (long_ago, long_ago))
    os.utime(folder / kept, (long_ago, long_ago))
    same_library = {"DATA_DIR": str(data_dir), "DATABASE_URL": client.application.config.get("DATABASE_URL") or ""}
    again = create_app({"TESTING": True, **same_library, "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    again.extensions["library_store"].close()
    assert stored(data_dir) == sorted([kept, young_orphan.name])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Whether any thread of ``pid`` is still alive: a killed process's first thread is a zombie
    before its other threads have exited, and its files are let go only after the last one."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except FileNotFoundError:
            continue
    return False


def test_a_crash_during_an_upload_leaves_the_book_unchanged(tmp_path):
    """The server is SIGKILLed (master and workers) while a cover is half sent: the book does not
    point at anything, and the next start removes what the upload left."""
    data = tmp_path / "data"
    with gunicorn_server(data, workers=1) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        headers = librarian[port]
        created = socket.create_connection(("127.0.0.1", port))
        body = orjson.dumps(BOOK)
        created.sendall(
            b"POST /books HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b" 201 " in created.recv(65536).split(b"\r\n", 1)[0]
        created.close()
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + png()
        size = 5 * 1024 * 1024
        conn.sendall(
            f"POST /books/1/cover HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n".encode()
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {size}\r\n\r\n".encode()
            + head
            + bytes(512 * 1024)
        )
        deadline = time.monotonic() + 30
        while not list((data / "uploads").glob(".*.tmp")):  # the worker is writing the upload
            assert time.monotonic() < deadline, "the upload did not start"
            time.sleep(0.01)
        master = running[port].pid
        workers = _children(master)
        for pid in [master, *workers]:  # the master first: it must not start a new worker
            os.kill(pid, signal.SIGKILL)
        running[port].wait()
        for pid in workers:  # a killed process lets go of its files when it is gone (or a zombie)
            while _running(pid):
                assert time.monotonic() < deadline + 30, f"worker {pid} did not die"
                time.sleep(0.01)
        conn.close()
    assert JsonStore(data, ("books",)).snapshot().get("books", 1)["cover_url"] is None
    assert list((data / "uploads").glob(".*.tmp"))  # what the crash left, until the next start
    create_app({"DATA_DIR": str(data), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    assert stored(data) == []


def test_openapi_describes_the_uploads(anon):
    doc = anon.get("/openapi.json").get_json()
    body = doc["paths"]["/books/{book_id}/cover"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert {"401", "403", "413", "415"} <= set(doc["paths"]["/books/{book_id}/document"]["post"]["responses"])


def test_a_temporary_file_still_being_written_survives_a_start_up(client, data_dir):
    from library import uploads

    live = uploads.spool(data_dir)  # an upload in progress in another worker holds its file locked
    (data_dir / "uploads" / ".left-by-a-crash.tmp").write_bytes(b"x")
    create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    assert stored(data_dir) == [Path(live.name).name]
    live.close()


def test_one_file_per_upload(client, book_id, data_dir):
    boundary, body = encode_multipart(
        {"file": [FileStorage(io.BytesIO(png()), "a.png"), FileStorage(io.BytesIO(gif()), "b.gif")]}
    )
    two = client.post(f"/books/{book_id}/cover", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert "file" in assert_problem(two, 422)["errors"]
    parts = {f"f{i}": FileStorage(io.BytesIO(b"x"), f"{i}.txt") for i in range(10)}
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(png()), "a.png"), **parts})
    many = client.post(f"/books/{book_id}/cover", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert "file" in assert_problem(many, 422)["errors"]  # not "too large": it is small
    assert stored(data_dir) == []


def test_real_world_variants_of_the_formats(client, book_id):
    exif = b"\xff\xd8\xff\xe1\x00\x16Exif\x00\x00" + bytes(300) + b"\xff\xd9"
    assert send(client, book_id, "cover", exif).status_code == 200
    assert_problem(send(client, book_id, "cover", b"GIF89a" + bytes(20)), 415)  # 0x0 pixels
    with_extra = io.BytesIO()
    with zipfile.ZipFile(with_extra, "w") as archive:
        info = zipfile.ZipInfo("mimetype")
        info.extra = b"\x55\x54\x05\x00\x01\x00\x00\x00\x00"  # a timestamp field, as zip(1) writes
        archive.writestr(info, "application/epub+zip", compress_type=zipfile.ZIP_STORED)
    assert send(client, book_id, "document", with_extra.getvalue()).status_code == 200


def test_documents_download_and_nothing_uploaded_runs_in_the_page(client, anon, book_id):
    url = send(client, book_id, "document", pdf()).get_json()["document_url"]
    served = anon.get(url)
    assert served.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in served.headers["Content-Security-Policy"]
    served.close()
    name = url.rsplit("/", 1)[1]
    assert_problem(anon.get(f"/uploads/{name}%0A"), 404)
