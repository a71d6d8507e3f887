"""Live seats: the default deploy holds a club evening's page viewers, and the page's websocket
(``/ws?catalogue=none``) starts without the catalogue."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from websockets.sync.client import connect

from library import readmodel
from library.readmodel import CatalogueView
from tests.conftest import BOOK
from tests.servers import get_json, gunicorn_server
from tests.test_live import Listener, post_book


def test_the_default_deploy_holds_well_over_48_viewers_and_each_gets_every_event(tmp_path):
    """Two workers with gunicorn.conf.py's and the settings' defaults (once 2 x 24 seats)."""
    with gunicorn_server(tmp_path / "data", workers=2) as port, contextlib.ExitStack() as stack:
        viewers = []
        for _ in range(120):  # refused (503) would raise InvalidStatus here
            ws = stack.enter_context(connect(f"ws://127.0.0.1:{port}/ws?catalogue=none", proxy=None, open_timeout=30))
            assert json.loads(ws.recv(timeout=30))["action"] == "ready"
            viewers.append(ws)
        book = post_book(port, "For everyone")
        for ws in viewers:
            event = json.loads(ws.recv(timeout=30))
            assert (event["action"], event["book"]["id"]) == ("created", book["id"])


def test_the_page_s_websocket_starts_with_ready_and_the_seq_then_every_event(tmp_path):
    with gunicorn_server(tmp_path / "data", workers=2) as port:
        first = post_book(port, "Before")
        status, changes = get_json(port, "/changes?since=0")
        assert status == 200
        page = Listener(port, "?catalogue=none")
        assert page.wait_for(1) == [{"action": "ready", "seq": changes["last_seq"]}]
        older = Listener(port)
        start = older.wait_for(1)[0]
        assert start["action"] == "initial_load" and start["seq"] == changes["last_seq"]
        assert [b["id"] for b in start["books"]] == [first["id"]]
        second = post_book(port, "After")
        for listener in (page, older):
            assert listener.wait_for(2)[1]["book"]["id"] == second["id"]
        back = Listener(port, f"?catalogue=none&since={changes['last_seq']}")  # catching up: no ready
        assert [m["book"]["id"] for m in back.wait_for(1)] == [second["id"]]
        for listener in (page, older, back):
            listener.close()


@pytest.mark.parametrize("books_per_slice", [2, 500])
def test_the_catalogue_message_is_built_once_per_seq_and_is_the_whole_catalogue(
    app, client, monkeypatch, books_per_slice
):
    monkeypatch.setattr(readmodel, "MESSAGE_SLICE", books_per_slice)
    ids = [client.post("/books", json={**BOOK, "isbn": None, "title": f"Book {n}"}).get_json()["id"] for n in range(3)]
    client.post(f"/books/{ids[1]}/borrow")
    store = app.extensions["library_store"]
    view = CatalogueView.of(store.snapshot(), store)
    message = view.catalogue_message()
    assert CatalogueView.of(store.snapshot(), store).catalogue_message() is message  # shared, not rebuilt
    sent: dict[str, Any] = json.loads(message)
    listed = client.get("/books?limit=100&sort_by=id").get_json()["books"]
    assert sent == {"action": "initial_load", "seq": view.seq, "books": listed}
    assert sent["books"][1]["status"] == "checked_out"
    client.post("/books", json={**BOOK, "isbn": None, "title": "Book 3"})
    later = CatalogueView.of(store.snapshot(), store).catalogue_message()
    assert later is not message and len(json.loads(later)["books"]) == 4


def test_the_catalogue_message_of_an_empty_catalogue(app):
    store = app.extensions["library_store"]
    message = CatalogueView.of(store.snapshot(), store).catalogue_message()
    assert json.loads(message) == {"action": "initial_load", "seq": store.snapshot().seq, "books": []}
