"""Operations: export, backup and restore (also while the server writes), the ephemeral-disk warning."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import orjson
import pytest

from library import operations
from library.records import COLLECTIONS
from library_api import create_app
from storage import JsonStore
from tests.conftest import ROOT, TEST_SECRET, client_as, token_for
from tests.servers import SECRET, gunicorn_server, librarian


def flask(data_dir: Path, *args: str, seed: str = "") -> subprocess.CompletedProcess:
    """The ``flask --app library_api`` command, as a person runs it, in its own process."""
    env = {**os.environ, "LIBRARY_DATA_DIR": str(data_dir), "LIBRARY_SEED_FILE": seed, "LIBRARY_SECRET_KEY": SECRET}
    command = [sys.executable, "-m", "flask", "--app", "library_api", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with a digest of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "library.lock"
    }


def books_in(directory: Path) -> dict[int, dict]:
    store = JsonStore(directory, COLLECTIONS)
    try:
        return dict(store.snapshot().records("books"))
    finally:
        store.close()


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_export_imports_back_unchanged(seeded_app, tmp_path, fmt):
    path = tmp_path / f"catalogue.{fmt}"
    result = seeded_app.test_cli_runner().invoke(args=["export", "--format", fmt, "--output", str(path)])
    assert result.exit_code == 0, result.output
    again = seeded_app.test_cli_runner().invoke(args=["load-books", str(path)])
    assert "created 0, updated 0, unchanged 60, skipped 0" in again.output
    fresh = create_app({"DATA_DIR": str(tmp_path / "fresh"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    loaded = fresh.test_cli_runner().invoke(args=["load-books", str(path)])
    assert "created 60" in loaded.output

    def shown(app):
        fields = ("title", "author", "genre", "publisher", "publication_year", "isbn")
        books = app.extensions["library_store"].snapshot().records("books").values()
        return sorted(tuple(b.get(f) for f in fields) for b in books)

    assert shown(fresh) == shown(seeded_app)


def test_export_to_stdout(seeded_app):
    out = seeded_app.test_cli_runner().invoke(args=["export", "--format", "json"]).output
    assert len(orjson.loads(out)["books"]) == 60
    assert (
        seeded_app.test_cli_runner()
        .invoke(args=["export", "--format", "csv"])
        .output.startswith("id,title,author,genre,publisher,publication_year,isbn\n")
    )


# -- backup and restore ----------------------------------------------------------------------------


def test_a_backup_restores_to_the_same_data(tmp_path):
    source = tmp_path / "source"
    app = create_app({"DATA_DIR": str(source), "SECRET_KEY": TEST_SECRET})  # the sample catalogue
    librarian_client = client_as(app, "librarian")
    book = librarian_client.post("/books", json={"title": "Backed up", "author": "A"}).get_json()
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + bytes(40)
    cover = librarian_client.post(
        f"/books/{book['id']}/cover", data={"file": (io.BytesIO(png), "c.png")}, content_type="multipart/form-data"
    ).get_json()["cover_url"]
    archive = tmp_path / "backups" / "one.tar.gz"
    made = app.test_cli_runner().invoke(args=["backup", str(archive)])
    assert made.exit_code == 0 and "backed up" in made.output
    restored = tmp_path / "restored"
    result = flask(restored, "restore", str(archive))
    assert result.returncode == 0, result.stderr
    assert books_in(restored) == books_in(source)
    assert (restored / "uploads" / cover.rsplit("/", 1)[1]).read_bytes() == png
    served = create_app({"DATA_DIR": str(restored), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}).test_client()
    answer = served.get(cover)
    assert answer.get_data() == png
    answer.close()
    assert served.get("/books?limit=1").get_json()["total"] == 61


def test_restore_over_data_refuses_without_force_and_changes_nothing(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert flask(one, "load-books", str(ROOT / "books.json")).returncode == 0
    archive = tmp_path / "one.tar.gz"
    assert flask(one, "backup", str(archive)).returncode == 0
    app = create_app({"DATA_DIR": str(two), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    client_as(app, "librarian").post("/books", json={"title": "Only here", "author": "B"})
    app.extensions["library_store"].close()  # as a server leaves it when it stops
    before = fingerprint(two)
    refused = flask(two, "restore", str(archive))
    assert refused.returncode != 0
    assert "--force" in refused.stderr
    assert fingerprint(two) == before
    forced = flask(two, "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stderr
    assert books_in(two) == books_in(one)
    (aside,) = [p for p in two.iterdir() if p.name.startswith(operations.KEPT_ASIDE)]
    assert "Only here" in (aside / "books.json").read_text()  # the replaced data is recoverable


@pytest.mark.parametrize("damage", ["flipped byte", "not gzip", "path escape", "no manifest"])
def test_a_damaged_archive_is_refused_before_anything_is_touched(tmp_path, damage):
    source, target = tmp_path / "source", tmp_path / "target"
    assert flask(source, "load-books", str(ROOT / "books.json")).returncode == 0
    archive = tmp_path / "b.tar.gz"
    assert flask(source, "backup", str(archive)).returncode == 0
    with tarfile.open(archive) as original:
        members = {m.name: original.extractfile(m).read() for m in original.getmembers()}
    if damage == "flipped byte":
        members["books.json"] = members["books.json"].replace(b"Tolkien", b"Tolkein", 1)
    elif damage == "path escape":
        members["../escaped.json"] = b"{}"
    elif damage == "no manifest":
        del members[operations.MANIFEST]
    if damage == "not gzip":
        archive.write_bytes(b"this is not an archive")
    else:
        with tarfile.open(archive, "w:gz") as rewritten:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                rewritten.addfile(info, io.BytesIO(data))
    result = flask(target, "restore", str(archive), "--force")
    assert result.returncode != 0 and "Error" in result.stderr
    assert not (tmp_path / "escaped.json").exists()
    assert not (target / "books.json").exists()  # nothing of the archive was written
    assert not list(target.glob(operations.KEPT_ASIDE + "*"))


def _write_until(args: tuple[int, dict[str, str], int, str]) -> list[tuple[float, int, str]]:
    """Create books until ``stop`` exists; every acknowledged write with when it was acknowledged."""
    port, headers, writer, stop = args
    acked = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = 0
    while not os.path.exists(stop):
        title = f"Hammer {writer}-{n}"
        conn.request("POST", "/books", json.dumps({"title": title, "author": "Writer"}), headers)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 201, body
        acked.append((time.monotonic(), body["id"], title))
        n += 1
    conn.close()
    return acked


def test_a_backup_taken_while_four_writers_hammer_restores_a_committed_state(tmp_path):
    data, restored, stop = tmp_path / "data", tmp_path / "restored", tmp_path / "stop"
    archive = tmp_path / "hot.tar.gz"
    with (
        gunicorn_server(data, workers=2, LIBRARY_LOCK_TIMEOUT="60") as port,
        multiprocessing.get_context("fork").Pool(4) as pool,
    ):
        jobs = pool.map_async(_write_until, [(port, librarian[port], w, str(stop)) for w in range(4)])
        deadline = time.monotonic() + 60
        while books_count(port) < 40:  # the writers are under way
            assert time.monotonic() < deadline, "the writers did not start"
        started = time.monotonic()
        result = flask(data, "backup", str(archive))
        ended = time.monotonic()
        stop.touch()
        acked = [a for chunk in jobs.get(timeout=120) for a in chunk]
    assert result.returncode == 0, result.stderr
    assert flask(restored, "restore", str(archive)).returncode == 0
    books = books_in(restored)
    ids = sorted(books)
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the commits: one committed state
    by_id = {book_id: title for _, book_id, title in acked}
    assert all(books[i]["title"] == by_id[i] for i in ids if i in by_id)
    assert all(book_id in books for when, book_id, _ in acked if when < started)  # acknowledged before: kept
    assert any(when > ended for when, _, _ in acked)  # the writers went on during and after it


def books_count(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/books?limit=1")
        return json.loads(conn.getresponse().read())["total"]
    finally:
        conn.close()


# -- the ephemeral disk warning --------------------------------------------------------------------


def test_a_data_directory_inside_the_app_on_a_paas_is_called_ephemeral(tmp_path):
    app_root = tmp_path / "app"
    (app_root / "instance").mkdir(parents=True)
    reasons = operations.ephemeral_reasons(app_root / "instance", app_root, {"DYNO": "web.1"})
    assert reasons[0] == "running on Heroku" and "it is inside the application's own folder" in reasons
    assert operations.ephemeral_reasons(app_root / "instance", app_root, {}) == []  # not on a PaaS


def test_a_mounted_volume_is_not_ephemeral(tmp_path):
    volume = Path("/proc")  # a mount point on every Linux machine, standing in for a volume
    assert operations.ephemeral_reasons(volume, tmp_path, {"RENDER": "true"}) == []


def test_the_warning_is_loud_and_can_be_silenced(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLY_APP_NAME", "club-library")
    monkeypatch.setattr(operations, "_mount_point_of", lambda path: Path("/"))  # one disk for all
    caplog.set_level(logging.WARNING)
    create_app({"DATA_DIR": str(tmp_path / "a"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    assert "WILL PROBABLY BE LOST" in caplog.text and "Fly.io" in caplog.text
    caplog.clear()
    settings = {"DATA_DIR": str(tmp_path / "b"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    create_app({**settings, "WARN_EPHEMERAL_DISK": False})
    assert "WILL PROBABLY BE LOST" not in caplog.text


def test_a_restored_library_keeps_its_own_key_and_no_earlier_token_works(tmp_path):
    """Changed on purpose: a restore used to keep tokens valid (the archive carried the key), which
    let an old token act as whoever got its id after the restore."""
    source, restored = tmp_path / "source", tmp_path / "restored"
    app = create_app({"DATA_DIR": str(source), "SEED_FILE": ""})  # no LIBRARY_SECRET_KEY: one is generated
    member = client_as(app, "librarian").member
    token = token_for(app, member)
    archive = tmp_path / "b.tar.gz"
    assert app.test_cli_runner().invoke(args=["backup", str(archive)]).exit_code == 0
    with tarfile.open(archive) as made:
        assert "secret.key" not in made.getnames()  # a backup carries no signing key
    env = {k: v for k, v in os.environ.items() if k != "LIBRARY_SECRET_KEY"}
    command = [sys.executable, "-m", "flask", "--app", "library_api", "restore", str(archive)]
    env.update(LIBRARY_DATA_DIR=str(restored), LIBRARY_SEED_FILE="")
    assert subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120).returncode == 0
    assert (restored / "secret.key").read_bytes() != (source / "secret.key").read_bytes()
    again = create_app({"DATA_DIR": str(restored), "SEED_FILE": ""})
    assert again.test_client().get("/members/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    fresh = token_for(again, member)  # signing in again works
    assert again.test_client().get("/members/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
