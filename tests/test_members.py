"""Members, sign-in and roles: SPEC.md "Members, sign-in and roles", and the attacks on it."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import stat
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest
from websockets.sync.client import connect

from library import auth
from library_api import create_app
from tests.conftest import (
    BOOK,
    TEST_SECRET,
    Clock,
    add_member,
    app_on,
    assert_problem,
    client_as,
    stored_records,
    stored_text,
    token_for,
)
from tests.servers import gunicorn_server, librarian

PASSWORD = "correct horse battery"
WRONG = "wrong password!"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(data_dir, clock, backend):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "CLOCK": clock}
    with app_on(backend, data_dir, config) as made:
        yield made


def register(client, email: str = "ada@example.org", password: str = PASSWORD, **extra: Any):
    body = {"email": email, "password": password, "first_name": "Ada", "last_name": "Lovelace", **extra}
    return client.post("/auth/register", json=body)


def login(client, email: str = "ada@example.org", password: str = PASSWORD):
    return client.post("/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed_up(anon, email: str = "ada@example.org") -> tuple[dict[str, Any], dict[str, str]]:
    """Register and sign in; the member and the headers of their requests."""
    member = register(anon, email).get_json()
    return member, bearer(login(anon, email).get_json()["access_token"])


# -- registration ----------------------------------------------------------------------------------


def test_register_answers_the_member_without_any_password(anon, data_dir):
    response = register(anon)
    assert response.status_code == 201
    member = response.get_json()
    assert {"id", "email", "first_name", "last_name", "role", "created_at"} <= set(member)
    assert member["role"] == "member" and member["email"] == "ada@example.org"
    assert member["loans"] == [] and member["fines_due"] == 0
    assert response.headers["Location"].endswith(f"/members/{member['id']}")
    text = response.get_data(as_text=True)
    assert PASSWORD not in text and "password" not in text and "argon2" not in text and "token" not in text


def test_the_password_is_kept_only_as_an_argon2id_hash(anon, data_dir):
    register(anon)
    assert PASSWORD not in stored_text(anon.application, data_dir)
    stored = stored_records(anon.application, data_dir, "members")[0]["password_hash"]
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_a_role_in_the_register_body_is_refused_and_nothing_is_created(anon, client):
    body = assert_problem(register(anon, role="admin"), 422)
    assert "role" in body["errors"]
    assert client.get("/members?role=admin").get_json()["total"] == 0
    assert_problem(login(anon), 401)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"password": "short"}, "password"),
        ({"email": "not an email"}, "email"),
        ({"first_name": "  "}, "first_name"),
        ({"last_name": None}, "last_name"),
        ({"nickname": "Ada"}, "nickname"),
        ({"password": 12345678}, "password"),
    ],
)
def test_register_refuses_bad_fields(anon, change, field):
    body = {"email": "ada@example.org", "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace", **change}
    assert field in assert_problem(anon.post("/auth/register", json=body), 422)["errors"]


def test_register_refuses_malformed_and_non_json_bodies(anon):
    assert_problem(anon.post("/auth/register", data="{", content_type="application/json"), 400)
    assert_problem(anon.post("/auth/register", data="email=a", content_type="text/plain"), 415)
    assert_problem(anon.post("/auth/register", json=["a"]), 422)


def test_an_email_is_registered_once_whatever_its_case(anon):
    assert register(anon, "Ada@Example.org").status_code == 201
    assert_problem(register(anon, "ada@EXAMPLE.ORG"), 409, "A member with this email already exists")
    assert login(anon, "ADA@example.ORG").status_code == 200


def test_an_enrolled_email_cannot_be_registered_and_cannot_sign_in(anon, client):
    enrolled = client.post("/members", json={"email": "kid@example.org", "first_name": "Kid", "last_name": "Reader"})
    assert enrolled.status_code == 201
    assert_problem(register(anon, "KID@example.org"), 409)
    unknown = login(anon, "nobody@example.org", PASSWORD)
    no_password = login(anon, "kid@example.org", PASSWORD)
    assert no_password.status_code == 401 and no_password.get_json() == unknown.get_json()


# -- sign-in ---------------------------------------------------------------------------------------


def test_login_gives_a_bearer_token_that_signs_the_member_in(anon):
    member = register(anon).get_json()
    response = login(anon)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 86400
    me = anon.get("/members/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.get_json()["id"] == member["id"]
    claims = jwt.decode(body["access_token"], TEST_SECRET, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["exp"] - claims["iat"] == 86400


def test_unknown_email_and_wrong_password_get_the_same_401(anon):
    register(anon)
    unknown, wrong = login(anon, "nobody@example.org"), login(anon, password=WRONG)
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json() == wrong.get_json()
    assert unknown.get_json()["detail"] == "The email or password is wrong"
    assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]


def test_the_token_lifetime_comes_from_the_setting(data_dir):
    app = create_app({"DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "TOKEN_TTL": 60})
    anon = app.test_client()
    register(anon)
    assert login(anon).get_json()["expires_in"] == 60


def test_the_sixth_attempt_after_five_failures_is_429_even_with_the_right_password(anon, clock):
    register(anon)
    for attempt in range(5):
        clock.advance(minutes=2 if attempt else 0)
        assert_problem(login(anon, password=WRONG), 401)
    locked = login(anon)
    assert_problem(locked, 429)
    assert 0 < int(locked.headers["Retry-After"]) <= 15 * 60
    clock.advance(minutes=14)
    assert_problem(login(anon), 429)
    clock.advance(minutes=1, seconds=1)
    assert login(anon).status_code == 200


def test_unknown_emails_are_locked_out_alike(anon):
    for _ in range(5):
        assert_problem(login(anon, "nobody@example.org"), 401)
    assert_problem(login(anon, "NOBODY@example.org"), 429)
    register(anon)
    assert login(anon).status_code == 200  # another email is not affected


def test_failures_older_than_fifteen_minutes_do_not_count(anon, clock):
    register(anon)
    for _ in range(4):
        assert_problem(login(anon, password=WRONG), 401)
    clock.advance(minutes=16)
    for _ in range(4):
        assert_problem(login(anon, password=WRONG), 401)
    assert login(anon).status_code == 200


def test_a_success_before_the_lockout_resets_the_count(anon):
    register(anon)
    for _ in range(4):
        assert_problem(login(anon, password=WRONG), 401)
    assert login(anon).status_code == 200
    for _ in range(4):
        assert_problem(login(anon, password=WRONG), 401)
    assert login(anon).status_code == 200


def test_the_lockout_does_not_keep_the_emails_it_counts(anon, data_dir):
    for _ in range(2):
        login(anon, "typo-in-my-PASSWORD-field@example.org")
    kept = stored_text(anon.application, data_dir)
    assert "typo-in-my" not in kept.lower()


def test_the_lockout_forgets_emails_after_fifteen_minutes(anon, data_dir, clock):
    def kept() -> int:
        return len(stored_records(anon.application, data_dir, "logins"))

    for i in range(25):
        assert_problem(login(anon, f"user{i}@example.org"), 401)
    assert kept() == 25
    clock.advance(minutes=15, seconds=1)
    login(anon, "later@example.org")  # each attempt drops up to 20 records whose time is over
    assert kept() == 25 - 20 + 1
    login(anon, "later-still@example.org")
    assert kept() == 2


def test_sign_ins_and_members_leave_the_catalogue_etag_alone(anon, client):
    client.post("/books", json=BOOK)
    etag = anon.get("/books").headers["ETag"]
    register(anon)
    login(anon, password=WRONG)
    client.post("/members", json={"email": "kid@example.org", "first_name": "Kid", "last_name": "Reader"})
    assert anon.get("/books", headers={"If-None-Match": etag}).status_code == 304
    client.patch("/books/1", json={"genre": "Craft"})
    assert anon.get("/books", headers={"If-None-Match": etag}).status_code == 200


def _login_over_http(port: int, email: str, password: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"email": email, "password": password})
        conn.request("POST", "/auth/login", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_lockout_holds_across_servers_on_one_data_directory(tmp_path):
    """Two gunicorn servers (so certainly different processes) share the data directory: failures
    counted by one lock the email out on the other. Nothing secret reaches their logs or a live
    client."""
    data = tmp_path / "data"
    with (
        gunicorn_server(data, workers=2) as one,
        gunicorn_server(data, workers=2) as two,
        connect(f"ws://127.0.0.1:{two}/ws", proxy=None) as live,
    ):
        assert json.loads(live.recv(timeout=30))["action"] == "initial_load"
        conn = http.client.HTTPConnection("127.0.0.1", one, timeout=30)
        body = json.dumps({"email": "ada@example.org", "password": PASSWORD, "first_name": "A", "last_name": "L"})
        conn.request("POST", "/auth/register", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status == 201
        conn.close()
        for port in (one, two, one, two, one):
            assert _login_over_http(port, "ada@example.org", WRONG)[0] == 401
        for port in (two, one):
            status, problem = _login_over_http(port, "ada@example.org", PASSWORD)
            assert status == 429, problem
        conn = http.client.HTTPConnection("127.0.0.1", one, timeout=30)
        conn.request("POST", "/books", json.dumps(BOOK), librarian[one])
        assert conn.getresponse().status == 201
        conn.close()
        heard = live.recv(timeout=30)  # the book, and nothing of the sign-ins before it
    assert json.loads(heard)["book"]["title"] == BOOK["title"]
    assert "ada@example.org" not in heard and "argon2" not in heard and PASSWORD not in heard
    logs = "".join(p.read_text() for p in tmp_path.glob("gunicorn-*.log"))
    assert logs and PASSWORD not in logs and WRONG not in logs and "argon2" not in logs


# -- tokens ----------------------------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the key is short for HS512
        return jwt.encode(claims, TEST_SECRET, algorithm="HS512")


def _forged(app, member: dict[str, Any], admin: dict[str, Any]) -> dict[str, str]:
    """Tokens an attacker might send, by name."""
    good = token_for(app, member)
    claims = _claims(good)
    header, payload, signature = good.split(".")
    as_admin = _b64(orjson.dumps({**claims, "role": "admin"}))
    none_header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return {
        "alg none": f"{none_header}.{payload}.",
        "alg none, signature kept": f"{none_header}.{payload}.{signature}",
        "another key": jwt.encode(claims, "another-secret-that-is-long-enough-0123456789", algorithm="HS256"),
        "HS512 with our key": _hs512(claims),
        "tampered role claim": f"{header}.{as_admin}.{signature}",
        "tampered subject": f"{header}.{_b64(orjson.dumps({**claims, 'sub': str(admin['id'])}))}.{signature}",
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, TEST_SECRET, algorithm="HS256"),
        "not a jwt": "hello",
        "empty": "",
    }


def test_forged_tokens_are_refused(app, anon):
    member = add_member(app, "mallory@example.org", "member")
    admin = add_member(app, "boss@example.org", "admin")
    for name, token in _forged(app, member, admin).items():
        response = anon.post("/books", json=BOOK, headers=bearer(token))
        body = assert_problem(response, 401)
        assert "Bearer" in response.headers["WWW-Authenticate"], name
        assert "sign in" in body["detail"].lower() or "token" in body["detail"].lower(), name
        assert_problem(anon.get("/members/me", headers=bearer(token)), 401)
    assert anon.get("/books").get_json()["total"] == 0


def test_an_expired_token_is_refused(app, anon):
    member = add_member(app, "old@example.org", "librarian")
    long_ago = datetime.now(UTC) - timedelta(days=2)
    library = auth.library_of(app.extensions["library_store"].snapshot())
    token = auth.issue_token(TEST_SECRET.encode(), member, 3600, library, long_ago)
    assert_problem(anon.post("/books", json=BOOK, headers=bearer(token)), 401, "The token has expired; sign in again")


def test_other_authorization_schemes_are_refused(anon):
    for header in ("Basic YWRhOnB3", "Bearer", "Token abc", "bearer  "):
        assert_problem(anon.post("/books", json=BOOK, headers={"Authorization": header}), 401)


def test_a_deleted_members_token_stops_working(app):
    admin, member = client_as(app, "admin"), client_as(app, "librarian")
    assert member.get("/members/me").status_code == 200
    assert admin.delete(f"/members/{member.member['id']}").status_code == 200
    assert_problem(member.get("/members/me"), 401, "The token is no longer valid; sign in again")
    assert_problem(member.post("/books", json=BOOK), 401)


def test_a_demoted_librarians_token_stops_working(app):
    admin, librarian = client_as(app, "admin"), client_as(app, "librarian")
    assert librarian.post("/books", json=BOOK).status_code == 201
    demoted = admin.patch(f"/members/{librarian.member['id']}", json={"role": "member"})
    assert demoted.status_code == 200 and demoted.get_json()["role"] == "member"
    assert_problem(librarian.post("/books", json={**BOOK, "isbn": None, "title": "Another"}), 401)


def test_a_token_works_on_every_worker_of_the_data_directory(app, data_dir, anon):
    register(anon)
    token = login(anon).get_json()["access_token"]
    same_library = {"DATA_DIR": str(data_dir), "DATABASE_URL": app.config.get("DATABASE_URL") or ""}
    other = create_app({**same_library, "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}).test_client()
    assert other.get("/members/me", headers=bearer(token)).status_code == 200
    other.application.extensions["library_store"].close()


# -- the secret ------------------------------------------------------------------------------------


def test_a_short_secret_stops_start_up(data_dir):
    with pytest.raises(auth.SecretError, match="at least 32"):
        create_app({"DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": "too-short"})


def test_without_a_secret_one_is_generated_once_and_shared(data_dir):
    first = create_app({"DATA_DIR": str(data_dir), "SEED_FILE": ""})
    second = create_app({"DATA_DIR": str(data_dir), "SEED_FILE": ""})
    path = data_dir / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32
    assert first.extensions["library_secret"] == second.extensions["library_secret"]
    anon = first.test_client()
    register(anon)
    token = login(anon).get_json()["access_token"]
    assert second.test_client().get("/members/me", headers=bearer(token)).status_code == 200
    assert not [p for p in os.listdir(data_dir) if p.startswith("secret.key.")]


# -- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/books"), ("put", "/books/1"), ("patch", "/books/1"), ("delete", "/books/1")],
)
def test_book_writes_need_a_librarian(app, anon, method, path):
    librarian = client_as(app, "librarian")
    assert librarian.post("/books", json=BOOK).status_code == 201
    body = None if method == "delete" else BOOK
    assert_problem(getattr(anon, method)(path, json=body), 401)
    assert_problem(
        getattr(client_as(app, "member"), method)(path, json=body), 403, "Only librarians and admins can do this"
    )
    assert getattr(client_as(app, "admin"), method)(path, json=body).status_code in (200, 201)


def test_reading_the_catalogue_needs_no_sign_in(anon, client):
    client.post("/books", json=BOOK)
    assert anon.get("/books").get_json()["total"] == 1
    assert anon.get("/books/1").status_code == 200
    assert anon.get("/changes").status_code == 200


def test_a_librarian_enrols_a_member_who_never_signs_in(app, anon, client):
    body = {"email": "kid@example.org", "first_name": "Kid", "last_name": "Reader"}
    assert_problem(anon.post("/members", json=body), 401)
    assert_problem(client_as(app, "member").post("/members", json=body), 403)
    response = client.post("/members", json=body)
    assert response.status_code == 201
    assert response.get_json()["role"] == "member"
    assert_problem(client.post("/members", json={**body, "email": "KID@example.org"}), 409)
    assert (
        "role"
        in assert_problem(client.post("/members", json={**body, "role": "admin", "email": "x@y.org"}), 422)["errors"]
    )


def test_the_member_list_is_for_librarians_with_loans_and_fines(app, anon, client):
    for i in range(12):
        add_member(app, f"reader{i:02}@example.org")
    assert_problem(anon.get("/members"), 401)
    assert_problem(client_as(app, "member").get("/members"), 403)
    page = client.get("/members?limit=5&page=2&role=member&sort_by=-email").get_json()
    assert page["total"] == 13 and page["pages"] == 3 and page["page"] == 2 and page["limit"] == 5
    emails = [m["email"] for m in page["members"]]
    assert emails == sorted(emails, reverse=True)
    assert all(m["loans"] == [] and m["fines_due"] == 0 for m in page["members"])
    assert all("password_hash" not in m and "token_version" not in m for m in page["members"])
    found = client.get("/members?q=READER07").get_json()
    assert [m["email"] for m in found["members"]] == ["reader07@example.org"]
    assert_problem(client.get("/members?sort_by=password_hash"), 422)
    assert_problem(client.get("/members?limit=0"), 422)
    assert client.get("/members?page=9").get_json()["members"] == []


def test_a_member_sees_themself_and_nobody_else(app, anon):
    ada, headers = signed_up(anon)
    bob = add_member(app, "bob@example.org")
    assert anon.get(f"/members/{ada['id']}", headers=headers).get_json()["email"] == "ada@example.org"
    assert_problem(anon.get(f"/members/{bob['id']}", headers=headers), 403)
    assert_problem(anon.get("/members/999", headers=headers), 403)  # no hint whether it exists
    assert_problem(anon.get(f"/members/{bob['id']}"), 401)
    librarian = client_as(app, "librarian")
    assert librarian.get(f"/members/{bob['id']}").status_code == 200
    assert_problem(librarian.get("/members/999"), 404, "Member not found")
    assert_problem(librarian.get("/members/abc"), 404, "Member not found")


def test_a_member_changes_their_own_names_but_not_their_role(app, anon):
    ada, headers = signed_up(anon)
    changed = anon.patch(f"/members/{ada['id']}", json={"first_name": "Augusta"}, headers=headers)
    assert changed.status_code == 200 and changed.get_json()["first_name"] == "Augusta"
    assert_problem(anon.patch(f"/members/{ada['id']}", json={"role": "admin"}, headers=headers), 403)
    assert_problem(anon.patch(f"/members/{ada['id']}", json={"role": "member"}, headers=headers), 403)
    assert anon.get("/members/me", headers=headers).get_json()["role"] == "member"
    email_change = anon.patch(f"/members/{ada['id']}", json={"email": "mallory@example.org"}, headers=headers)
    assert_problem(email_change, 403, "Only a librarian can change the email a member signs in with")
    assert_problem(anon.patch("/members/999", json={"first_name": "X"}, headers=headers), 403)
    assert_problem(anon.delete("/members/999", headers=headers), 403)
    assert (
        "password"
        in assert_problem(anon.patch(f"/members/{ada['id']}", json={"password": "new password"}, headers=headers), 422)[
            "errors"
        ]
    )


def test_a_member_cannot_change_another_member(app, anon):
    _, headers = signed_up(anon)
    bob = add_member(app, "bob@example.org")
    assert_problem(anon.patch(f"/members/{bob['id']}", json={"first_name": "Robert"}, headers=headers), 403)
    assert_problem(anon.delete(f"/members/{bob['id']}", headers=headers), 403)
    assert client_as(app, "librarian").get(f"/members/{bob['id']}").get_json()["first_name"] == "Bob"


def test_librarians_correct_members_but_only_admins_change_roles(app):
    librarian, other_librarian = client_as(app, "librarian"), client_as(app, "librarian")
    bob = add_member(app, "bob@example.org")
    assert librarian.patch(f"/members/{bob['id']}", json={"last_name": "Smith"}).get_json()["last_name"] == "Smith"
    assert_problem(librarian.patch(f"/members/{bob['id']}", json={"role": "librarian"}), 403)
    assert_problem(librarian.patch(f"/members/{other_librarian.member['id']}", json={"last_name": "X"}), 403)
    admin = client_as(app, "admin")
    promoted = admin.patch(f"/members/{bob['id']}", json={"role": "librarian"})
    assert promoted.status_code == 200 and promoted.get_json()["role"] == "librarian"
    assert_problem(admin.patch(f"/members/{bob['id']}", json={"role": "owner"}), 422)


def test_an_email_change_stays_unique(app):
    librarian = client_as(app, "librarian")
    bob = add_member(app, "bob@example.org")
    add_member(app, "eve@example.org")
    assert_problem(librarian.patch(f"/members/{bob['id']}", json={"email": "EVE@example.org"}), 409)
    assert librarian.patch(f"/members/{bob['id']}", json={"email": "Bob@Example.org"}).status_code == 200


def test_the_last_admin_stays(app):
    admin = client_as(app, "admin")
    me = admin.member["id"]
    assert_problem(
        admin.patch(f"/members/{me}", json={"role": "member"}), 409, "The library must keep at least one admin"
    )
    assert_problem(admin.delete(f"/members/{me}"), 409)
    second = client_as(app, "admin")
    assert second.patch(f"/members/{me}", json={"role": "librarian"}).status_code == 200


def test_only_admins_delete_members_and_not_with_books_out(app, client):
    bob = add_member(app, "bob@example.org")
    assert_problem(client.delete(f"/members/{bob['id']}"), 403, "Only admins can do this")
    book = client.post("/books", json=BOOK).get_json()
    store = app.extensions["library_store"]
    loan = {"book_id": book["id"], "member_id": bob["id"], "borrowed_at": "2026-03-01T00:00:00Z"}
    loan.update(due_at="2026-03-15T00:00:00Z", returned_at=None, renewals=0)
    loan = store.update(lambda txn: txn.insert("loans", loan))
    admin = client_as(app, "admin")
    refused = assert_problem(admin.delete(f"/members/{bob['id']}"), 409)
    assert "on loan" in refused["detail"]
    listed = admin.get(f"/members/{bob['id']}").get_json()
    assert listed["loans"] == [
        {"loan_id": loan["id"], "book_id": book["id"], "title": BOOK["title"], "due_at": "2026-03-15T00:00:00Z"}
    ]
    store.update(lambda txn: txn.put("loans", {**loan, "returned_at": "2026-03-10T00:00:00Z"}))
    assert admin.delete(f"/members/{bob['id']}").get_json() == {"message": "Member deleted successfully"}
    assert_problem(admin.get(f"/members/{bob['id']}"), 404)
    assert_problem(admin.delete("/members/999"), 404, "Member not found")


def test_member_edits_honour_if_match(app):
    librarian = client_as(app, "librarian")
    bob = add_member(app, "bob@example.org")
    path = f"/members/{bob['id']}"
    etag = librarian.get(path).headers["ETag"]
    assert librarian.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert librarian.patch(path, json={"first_name": "Rob"}, headers={"If-Match": etag}).status_code == 200
    assert_problem(librarian.patch(path, json={"first_name": "Bobby"}, headers={"If-Match": etag}), 412)
    assert librarian.get(path).get_json()["first_name"] == "Rob"
    admin = client_as(app, "admin")
    assert_problem(admin.delete(path, headers={"If-Match": etag}), 412)


# -- create-admin ----------------------------------------------------------------------------------


def test_create_admin_makes_an_admin_who_signs_in(app, anon):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "Root@Example.org", "--password", PASSWORD, "--name", "Root Admin"]
    )
    assert result.exit_code == 0, result.output
    assert "created admin" in result.output and PASSWORD not in result.output
    token = login(anon, "root@example.org").get_json()["access_token"]
    assert anon.get("/members/me", headers=bearer(token)).get_json()["role"] == "admin"


def test_create_admin_prompts_for_the_password_and_promotes_an_existing_member(app, anon):
    ada, headers = signed_up(anon)
    result = app.test_cli_runner().invoke(
        args=["create-admin", "ada@example.org"], input="new password 1\nnew password 1\n"
    )
    assert result.exit_code == 0, result.output
    assert "new password 1" not in result.output
    assert_problem(anon.get("/members/me", headers=headers), 401)  # the old token is over
    assert_problem(login(anon), 401)
    token = login(anon, password="new password 1").get_json()["access_token"]
    assert (
        anon.get("/members/me", headers=bearer(token)).get_json() | {"role": "admin"}
        == anon.get("/members/me", headers=bearer(token)).get_json()
    )


def test_create_admin_refuses_a_short_password(app):
    result = app.test_cli_runner().invoke(args=["create-admin", "root@example.org", "--password", "short"])
    assert result.exit_code != 0 and "password" in result.output


# -- nothing secret leaks --------------------------------------------------------------------------


def test_no_password_or_hash_in_any_answer_log_or_feed(app, anon, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [register(anon)]
    answers.append(login(anon, password=WRONG))
    answers.append(login(anon))
    headers = bearer(answers[-1].get_json()["access_token"])
    answers.append(anon.get("/members/me", headers=headers))
    librarian = client_as(app, "librarian")
    answers += [librarian.get("/members"), librarian.get("/members/1"), anon.get("/changes"), anon.get("/openapi.json")]
    text = "".join(a.get_data(as_text=True) for a in answers) + caplog.text
    for secret in (PASSWORD, WRONG, "$argon2", "password_hash", "token_version"):
        assert secret not in text, secret
    assert anon.get("/changes").get_json()["changes"] == []  # members are never on the public feed


# -- the OpenAPI document --------------------------------------------------------------------------


def test_openapi_describes_the_bearer_scheme(anon):
    doc = anon.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    create = doc["paths"]["/books"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    assert {"401", "403"} <= set(create["responses"])
    assert "security" not in doc["paths"]["/books"]["get"]
    assert "429" in doc["paths"]["/auth/login"]["post"]["responses"]
    assert {"/auth/register", "/members", "/members/me", "/members/{member_id}"} <= set(doc["paths"])
    register_body = doc["paths"]["/auth/register"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = register_body["$ref"].split("/")[-1]
    assert "role" not in doc["components"]["schemas"][name]["properties"]
