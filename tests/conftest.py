"""Fixtures: an app on a fresh data directory under tmp_path, its client and CLI runner."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from library import auth, members
from library_api import create_app

ROOT = Path(__file__).resolve().parent.parent

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path):
    """An app whose data directory starts empty (no sample catalogue)."""
    return create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})


@pytest.fixture
def seeded_app(data_dir: Path):
    """An app whose data directory starts with the sample catalogue of books.json."""
    return create_app({"TESTING": True, "DATA_DIR": str(data_dir)})


class Clock:
    """A clock the tests move by hand (the app reads it through ``CLOCK``)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def add_member(app, email: str, role: str = "member", password: str | None = None) -> dict[str, Any]:
    """A member put straight into the store (no password hashing unless ``password`` is given)."""
    password_hash = auth.hash_password(password) if password else None
    data = {"email": email, "first_name": email.split("@")[0].title(), "last_name": "Tester"}
    store = app.extensions["library_store"]
    return store.update(lambda txn: members.create(txn, data, "2026-01-01T00:00:00Z", password_hash, role))


def token_for(app, member: dict[str, Any], ttl: int = 3600) -> str:
    library = auth.library_of(app.extensions["library_store"].snapshot())
    return auth.issue_token(app.extensions["library_secret"], member, ttl, library)


def client_as(app, role: str, email: str | None = None):
    """A test client signed in as a new member with ``role``; the member is ``client.member``."""
    member = add_member(app, email or f"{role}-{uuid.uuid4().hex[:8]}@example.org", role)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(app, member)}"
    client.member = member
    return client


@pytest.fixture
def client(app):
    """A librarian's client: the catalogue tests write books with it."""
    return client_as(app, "librarian")


@pytest.fixture
def anon(app):
    """Nobody signed in."""
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def assert_problem(response: Any, status: int, detail: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with ``status`` (and ``detail`` when given)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    if detail is not None:
        assert body["detail"] == detail
    return body


BOOK = {
    "title": "The Pragmatic Programmer",
    "author": "Andrew Hunt and David Thomas",
    "genre": "Computing",
    "publisher": "Addison-Wesley",
    "publication_year": 1999,
    "isbn": "020161622X",
}


@pytest.fixture
def book(client) -> dict[str, Any]:
    """One book created through the API."""
    response = client.post("/books", json=BOOK)
    assert response.status_code == 201
    return response.get_json()
