"""Fixtures: an app on a fresh data directory under tmp_path, its client and CLI runner."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from library import auth, members
from library_api import create_app

ROOT = Path(__file__).resolve().parent.parent

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


BOTH_BACKENDS = {
    "test_books_api",
    "test_catalogue_index",
    "test_circulation",
    "test_http",
    "test_members",
    "test_readcache",
    "test_uploads",
}
"""The API test modules run against both stores (the others test the JSON files themselves).
LIBRARY_TEST_BACKEND=json or =postgresql runs them against one only."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        backends = ["json", "postgresql"] if module in BOTH_BACKENDS else ["json"]
        only = os.environ.get("LIBRARY_TEST_BACKEND")
        if only and module in BOTH_BACKENDS:
            backends = [only]
        metafunc.parametrize("backend", backends)


def backend_config(backend: str, data_dir: Path) -> dict[str, Any]:
    """What an app needs to run on ``backend``: a fresh database for PostgreSQL."""
    if backend == "postgresql":
        from tests.postgres import fresh_database

        return {"DATABASE_URL": fresh_database(str(data_dir))}
    return {"DATABASE_URL": ""}


@contextlib.contextmanager
def app_on(backend: str, data_dir: Path, config: dict[str, Any]) -> Iterator[Any]:
    """An app made from ``config`` on ``backend`` (a fresh database for PostgreSQL, dropped after)."""
    made = create_app({**config, **backend_config(backend, data_dir)})
    try:
        yield made
    finally:
        if backend == "postgresql":
            from tests.postgres import drop_database

            made.extensions["library_store"].close()  # its connections
            drop_database(made.config["DATABASE_URL"])


def stored_text(app: Any, data_dir: Path) -> str:
    """Everything the library keeps, as text: the JSON files and the journal, or on PostgreSQL the
    records and the changes (after a checkpoint, as once writes stop)."""
    url = app.config.get("DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT record::text FROM library_records").fetchall()
            rows += conn.execute("SELECT coalesce(record::text, '') FROM library_changes").fetchall()
        return "\n".join(row[0] for row in rows)
    app.extensions["library_store"].maintain(force=True)
    return "".join(path.read_text() for path in sorted(data_dir.glob("*.json*")))


def stored_records(app: Any, data_dir: Path, collection: str) -> list[dict[str, Any]]:
    """The records of ``collection`` as kept (see :func:`stored_text`)."""
    url = app.config.get("DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT record FROM library_records WHERE collection = %s ORDER BY id", (collection,)
            ).fetchall()
        return [row[0] for row in rows]
    app.extensions["library_store"].maintain(force=True)
    return orjson.loads((data_dir / f"{collection}.json").read_bytes())[collection]


@pytest.fixture
def app(data_dir: Path, backend: str):
    """An app whose data directory (or database) starts empty (no sample catalogue)."""
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    made = create_app({**config, **backend_config(backend, data_dir)})
    yield made
    if backend == "postgresql":
        from tests.postgres import drop_database

        made.extensions["library_store"].close()  # its connections
        drop_database(made.config["DATABASE_URL"])


@pytest.fixture
def seeded_app(data_dir: Path, backend: str):
    """An app whose data directory (or database) starts with the sample catalogue of books.json."""
    made = create_app({"TESTING": True, "DATA_DIR": str(data_dir), **backend_config(backend, data_dir)})
    yield made
    if backend == "postgresql":
        from tests.postgres import drop_database

        made.extensions["library_store"].close()  # its connections
        drop_database(made.config["DATABASE_URL"])


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
