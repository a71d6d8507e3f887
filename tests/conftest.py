"""Fixtures: an app on a fresh data directory under tmp_path, its client and CLI runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from library_api import create_app  # noqa: E402


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path):
    """An app whose data directory starts empty (no sample catalogue)."""
    return create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": ""})


@pytest.fixture
def seeded_app(data_dir: Path):
    """An app whose data directory starts with the sample catalogue of books.json."""
    return create_app({"TESTING": True, "DATA_DIR": str(data_dir)})


@pytest.fixture
def client(app):
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
