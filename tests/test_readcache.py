"""The read cache never serves a page older than the data: not after a write by this worker, another
worker, or a person editing books.json."""

from __future__ import annotations

import pytest

from library_api import create_app
from tests.conftest import BOOK, TEST_SECRET, client_as


@pytest.fixture
def two_workers(data_dir):
    """Two apps on one data directory, as two gunicorn workers are: a reader and a librarian."""
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    return create_app(config).test_client(), client_as(create_app(config), "librarian")


def titles(client, path="/books"):
    return [b["title"] for b in client.get(path).get_json()["books"]]


def test_a_repeated_page_is_the_same_answer(anon, book):
    first, second = anon.get("/books"), anon.get("/books")
    assert first.get_data() == second.get_data()
    assert first.headers["ETag"] == second.headers["ETag"]


def test_a_write_by_another_worker_is_seen_on_the_next_request(two_workers):
    a, b = two_workers
    assert titles(a) == []
    assert titles(a) == []  # now cached in a
    assert b.post("/books", json=BOOK).status_code == 201
    assert titles(a) == [BOOK["title"]]
    book_id = a.get("/books").get_json()["books"][0]["id"]
    assert a.get(f"/books/{book_id}").get_json()["genre"] == "Computing"
    assert b.patch(f"/books/{book_id}", json={"genre": "Craft"}).status_code == 200
    assert a.get(f"/books/{book_id}").get_json()["genre"] == "Craft"


def test_a_hand_edit_is_seen_on_the_next_request(anon, book, data_dir, backend):
    if backend == "postgresql":
        pytest.skip("on PostgreSQL the data is not in hand-editable files")
    client = anon
    assert titles(client) == [BOOK["title"]]
    store = client.application.extensions["library_store"]
    store.maintain(force=True)
    path = data_dir / "books.json"
    path.write_text(path.read_text().replace("The Pragmatic Programmer", "The Pragmatic Programmer, 2nd ed."))
    store.maintain()  # the store's background round, every quarter second in a server
    assert titles(client) == ["The Pragmatic Programmer, 2nd ed."]
    assert client.get(f"/books/{book['id']}").get_json()["title"] == "The Pragmatic Programmer, 2nd ed."


def test_if_none_match_on_a_kept_page_is_304(anon, book):
    etag = anon.get("/books").headers["ETag"]
    cached = anon.get("/books", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.get_data() == b""
    assert cached.headers["ETag"] == etag


def test_the_cache_can_be_turned_off(data_dir):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "READ_CACHE_MB": 0}
    config["SECRET_KEY"] = TEST_SECRET
    client = client_as(create_app(config), "librarian")
    client.post("/books", json=BOOK)
    assert titles(client) == [BOOK["title"]]


def test_a_book_is_answered_without_the_app_exactly_as_the_app_answers_it(app, anon, book):
    direct = anon.get(f"/books/{book['id']}")
    through_the_app = anon.get(f"/books/{book['id']}", headers={"Cookie": "x=1"})  # the cache steps aside
    assert direct.status_code == through_the_app.status_code == 200
    assert direct.get_data() == through_the_app.get_data()
    for name in ("Content-Type", "ETag", "Cache-Control", "Content-Length"):
        assert direct.headers[name] == through_the_app.headers[name]
    again = anon.get(f"/books/{book['id']}", headers={"If-None-Match": direct.headers["ETag"]})
    assert again.status_code == 304 and again.headers["ETag"] == direct.headers["ETag"]
    assert anon.get("/books/999").status_code == 404  # a missing book is the app's to answer
