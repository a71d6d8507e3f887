"""HTTP conventions of SPEC.md: problem documents, media types, sizes, ETags, If-Match, service routes."""

from __future__ import annotations

import threading
import time
from typing import Any

import flask
import pytest

from tests.conftest import BOOK, add_member, assert_problem, client_as

# -- errors and media types ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/books/1/nope", "/book"])
def test_unknown_route_is_404_problem(client, path):
    assert_problem(client.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/books", {"GET", "POST"}),
        ("put", "/books", {"GET", "POST"}),
        ("post", "/books/1", {"GET", "PUT", "PATCH", "DELETE"}),
        ("post", "/healthz", {"GET"}),
    ],
)
def test_wrong_method_is_405_problem_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert_problem(response, 405)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize("data", ['{"title": ', "{'title': 'x'}", "not json", ""])
def test_malformed_json_is_400(client, book, method, data):
    path = "/books" if method == "post" else f"/books/{book['id']}"
    assert_problem(getattr(client, method)(path, data=data, content_type="application/json"), 400)
    assert client.get(f"/books/{book['id']}").get_json() == book


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": '{"title": "T", "author": "A"}', "content_type": "text/plain"},
        {"data": {"title": "T", "author": "A"}},
        {"data": '{"title": "T", "author": "A"}'},
        {"data": '{"title": "T", "author": "A"}', "content_type": "application/xml"},
    ],
)
def test_non_json_body_is_415(client, book, method, kwargs):
    path = "/books" if method == "post" else f"/books/{book['id']}"
    assert_problem(getattr(client, method)(path, **kwargs), 415)
    assert client.get("/books").get_json()["total"] == 1


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_body_over_1_mib_is_413(client, book, method):
    path = "/books" if method == "post" else f"/books/{book['id']}"
    response = getattr(client, method)(path, json={**BOOK, "genre": "x" * (1024 * 1024)})
    assert_problem(response, 413)
    assert client.get(f"/books/{book['id']}").get_json() == book


def test_body_just_under_1_mib_is_not_413(client):
    response = client.post("/books", json={**BOOK, "genre": "x" * (1024 * 1024 - 1000)})
    assert response.status_code != 413


@pytest.mark.parametrize("data", ["[]", '[{"title": "T", "author": "A"}]', "42", "null", '"text"'])
def test_json_that_is_not_an_object_is_422(client, data):
    assert_problem(client.post("/books", data=data, content_type="application/json"), 422)
    assert client.get("/books").get_json()["total"] == 0


BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("get", "/nope", {}),
    ("get", "/books/999", {}),
    ("get", "/books/abc", {}),
    ("get", "/books?limit=0", {}),
    ("get", "/books?page=abc", {}),
    ("get", "/books?colour=red", {}),
    ("delete", "/books", {}),
    ("post", "/books", {"data": "{", "content_type": "application/json"}),
    ("post", "/books", {"data": "x", "content_type": "text/plain"}),
    ("post", "/books", {"data": {"title": "x"}}),
    ("post", "/books", {"json": {**BOOK, "genre": "x" * (1024 * 1024 + 1)}}),
    ("post", "/books", {"json": []}),
    ("post", "/books", {"json": {}}),
    ("post", "/books", {"json": {**BOOK, "isbn": "123"}}),
    ("post", "/books", {"json": {**BOOK, "publication_year": "old"}}),
    ("post", "/books", {"json": {**BOOK, "title": {"nested": 1}}}),
    ("post", "/books", {"json": {**BOOK, "id": 1}}),
    ("post", "/books", {"json": {**BOOK, "author": "Other"}}),
    ("put", "/books/999", {"json": BOOK}),
    ("patch", "/books/1", {"json": {"title": ""}}),
    ("patch", "/books/1", {"json": {"title": "x"}, "headers": {"If-Match": '"stale"'}}),
    ("delete", "/books/999", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), BAD_REQUESTS)
def test_every_error_is_a_problem_document(client, book, method, path, kwargs):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code >= 400
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == response.status_code
    assert isinstance(body["detail"], str) and body["detail"].strip()
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "<html" not in text.lower()


# -- ETag and If-None-Match ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/books", "/books?genre=computing&sort_by=-title", "/books/{id}"])
def test_get_sends_etag_and_if_none_match_gets_304(client, book, path):
    path = path.format(id=book["id"])
    first = client.get(path)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    assert etag
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == etag


def test_if_none_match_with_other_etag_gets_200(client, book):
    response = client.get(f"/books/{book['id']}", headers={"If-None-Match": '"something-else"'})
    assert response.status_code == 200
    assert response.get_json() == book


def test_list_etag_changes_after_a_write(client, book):
    old = client.get("/books").headers["ETag"]
    assert client.post("/books", json={"title": "New", "author": "Someone"}).status_code == 201
    response = client.get("/books", headers={"If-None-Match": old})
    assert response.status_code == 200
    assert response.headers["ETag"] != old
    assert response.get_json()["total"] == 2


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("patch", {"json": {"genre": "Software"}}), ("put", {"json": {"title": "T", "author": "A"}}), ("delete", {})],
)
def test_list_etag_changes_after_each_kind_of_write(client, book, method, kwargs):
    old = client.get("/books").headers["ETag"]
    assert getattr(client, method)(f"/books/{book['id']}", **kwargs).status_code == 200
    response = client.get("/books", headers={"If-None-Match": old})
    assert response.status_code == 200
    assert response.headers["ETag"] != old


def test_item_etag_changes_after_a_write(client, book):
    path = f"/books/{book['id']}"
    old = client.get(path).headers["ETag"]
    assert client.patch(path, json={"genre": "Software"}).status_code == 200
    response = client.get(path, headers={"If-None-Match": old})
    assert response.status_code == 200
    assert response.headers["ETag"] != old
    assert response.get_json()["genre"] == "Software"


# -- If-Match ------------------------------------------------------------------------------------

WRITES = [
    ("put", {"json": {**BOOK, "genre": "Software"}}),
    ("patch", {"json": {"genre": "Software"}}),
    ("delete", {}),
]


@pytest.mark.parametrize(("method", "kwargs"), WRITES)
def test_if_match_with_current_etag_succeeds(client, book, method, kwargs):
    path = f"/books/{book['id']}"
    etag = client.get(path).headers["ETag"]
    response = getattr(client, method)(path, headers={"If-Match": etag}, **kwargs)
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "kwargs"), WRITES)
def test_if_match_star_succeeds(client, book, method, kwargs):
    response = getattr(client, method)(f"/books/{book['id']}", headers={"If-Match": "*"}, **kwargs)
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "kwargs"), WRITES)
def test_stale_if_match_is_412_and_changes_nothing(client, book, method, kwargs):
    path = f"/books/{book['id']}"
    stale = client.get(path).headers["ETag"]
    assert client.patch(path, json={"publisher": "Someone Else"}).status_code == 200
    current = client.get(path).get_json()
    response = getattr(client, method)(path, headers={"If-Match": stale}, **kwargs)
    assert_problem(response, 412)
    assert client.get(path).get_json() == current


@pytest.mark.parametrize(("method", "kwargs"), WRITES)
def test_if_match_with_unknown_etag_is_412(client, book, method, kwargs):
    path = f"/books/{book['id']}"
    assert_problem(getattr(client, method)(path, headers={"If-Match": '"not-an-etag"'}, **kwargs), 412)
    assert client.get(path).get_json() == book


def test_two_librarians_editing_at_once(app, book):
    alice, bob = client_as(app, "librarian"), client_as(app, "librarian")
    path = f"/books/{book['id']}"
    etag_a = alice.get(path).headers["ETag"]
    etag_b = bob.get(path).headers["ETag"]
    assert alice.put(path, json={**BOOK, "genre": "Alice's genre"}, headers={"If-Match": etag_a}).status_code == 200
    assert_problem(bob.put(path, json={**BOOK, "genre": "Bob's genre"}, headers={"If-Match": etag_b}), 412)
    assert bob.get(path).get_json()["genre"] == "Alice's genre"


# -- service routes ------------------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.is_json


def test_openapi_document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert "openapi" in doc
    assert {"/books", "/books/{book_id}"} <= set(doc["paths"])
    assert {"get", "post"} <= set(doc["paths"]["/books"])
    assert {"get", "put", "patch", "delete"} <= set(doc["paths"]["/books/{book_id}"])
    properties = doc["components"]["schemas"]["Book"]["properties"]
    assert {
        "id", "title", "author", "genre", "publisher", "publication_year", "isbn",
        "status", "due_at", "cover_url", "document_url", "created_at", "updated_at",
    } <= set(properties)  # fmt: skip


def test_docs_page(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    response.close()


def test_concurrent_puts_with_one_etag_let_exactly_one_through(app, client, book):
    """Eight librarians saving over the same version at once: one wins, the others get 412, even
    when all eight are committed together (held back until all are waiting, then released)."""
    etag = client.get(f"/books/{book['id']}").headers["ETag"]
    store = app.extensions["library_store"]
    statuses: list[int] = []

    def save(n: int) -> None:
        body = {**{k: book[k] for k in ("title", "author", "isbn")}, "genre": f"edit {n}"}
        statuses.append(client.put(f"/books/{book['id']}", json=body, headers={"If-Match": etag}).status_code)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
    with store.exclusive():  # no commit can start until every save is queued
        for thread in threads:
            thread.start()
        wait_until(lambda: store.waiting_writes == 8)
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [412] * 7


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_bugs_the_fuzzer_found_stay_fixed(client, book):
    """Found by tests/test_fuzz.py: each answered 500."""
    created = client.post("/books", json={"title": "Empty genre", "author": "A", "genre": "", "publisher": "  "})
    assert created.status_code == 201 and created.get_json()["genre"] is None
    assert client.patch(f"/books/{book['id']}", json={"publisher": ""}).get_json()["publisher"] is None
    assert_problem(client.get("/books?page=18446744073709551616"), 422)
    assert_problem(client.patch("/members/me", json={"first_name": "X"}), 405)
    assert_problem(client.delete("/members/me"), 405)
    member = client.post("/members", json={"email": "m@example.org", "first_name": "M", "last_name": "N"})
    payment = client.post(f"/members/{member.get_json()['id']}/payments", json={"amount": 1e26})
    assert "amount" in assert_problem(payment, 422)["errors"]


def test_an_updater_that_reads_the_request_fails_loudly(app):
    """Group commit may run an updater on another request's thread: it must not see any request
    (nor the app), so one that tries fails instead of reading another request's values."""
    store = app.extensions["library_store"]
    with app.test_request_context("/books", headers={"X-Who": "this request"}):
        assert flask.request.headers["X-Who"] == "this request"
        with pytest.raises(RuntimeError, match="outside of request context"):
            store.update(lambda txn: flask.request.headers.get("X-Who"))
        with pytest.raises(RuntimeError, match="outside of application context"):
            store.update(lambda txn: flask.current_app.config["SECRET_KEY"])


@pytest.mark.parametrize("path", ["/", "/docs", "/books", "/books/1", "/healthz", "/nothing-here", "/openapi.json"])
def test_every_answer_forbids_sniffing_and_framing(anon, book, path):
    for _ in range(2):  # the second answer of a list page or a book comes from the read cache
        with anon.get(path) as response:
            headers, mimetype = response.headers, response.mimetype
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
    if mimetype == "text/html":
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "4102444800"},  # a string
        {"exp": 1e300},  # a number far past the configured lifetime
        {"exp": True},
    ],
)
def test_a_token_signed_with_the_key_but_an_impossible_expiry_is_refused(app, claims):
    import jwt

    member = add_member(app, "exp@example.org")
    now = int(time.time())
    token = jwt.encode(
        {"sub": str(member["id"]), "ver": 0, "role": "member", "iat": now, **claims},
        app.extensions["library_secret"],
        algorithm="HS256",
    )
    response = app.test_client().get("/members/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)
