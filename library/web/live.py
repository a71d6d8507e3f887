"""Live updates: the polling feed (``/changes``) and the websocket (``/ws``)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.exceptions import (
    ServiceUnavailable,
)

from library import live
from library.context import (
    store,
    view,
)
from library.schemas import (
    ChangesQuerySchema,
    ChangesSchema,
    changes_query_schema,
)
from library.web.http import documented, json_response
from storage import (
    JournalTruncatedError,
)

bp = Blueprint("live", __name__)


log = logging.getLogger("library_api")


sock = Sock()


@bp.get("/changes")
@documented(query=ChangesQuerySchema, response=ChangesSchema, errors=(410, 422))
def list_changes() -> Response:
    """Catalogue changes after ``since``, oldest first: the polling form of the websocket."""
    args = changes_query_schema.load(request.args.to_dict())
    events, last_seq = store().raw_events_since(args["since"], args["limit"])
    body = b'{"changes":[' + b",".join(data for _, data in events) + b'],"last_seq":' + str(last_seq).encode() + b"}"
    return json_response(body, **{"Cache-Control": "no-cache"})


@sock.route("/ws")
def live_updates(ws: Any) -> None:
    """Every change of the catalogue as it happens: ``initial_load`` first (``{"action": "ready",
    "seq": N}`` instead with ``?catalogue=none``), or what was missed after ``?since=<seq>``.
    Messages from the client are ignored."""
    ws.sock = live.LockedSocket(ws.sock)
    feed: live.Feed = current_app.extensions["library_feed"]
    with_catalogue = request.args.get("catalogue") != "none"
    since = request.args.get("since", type=int)
    if since is not None:
        try:
            store().raw_events_since(since, 1)  # can the journal answer from there?
        except JournalTruncatedError:
            since = None
    last = send_start(ws, with_catalogue) if since is None else since
    while ws.connected and not feed.stopped:
        shared = feed.events_after(last)
        if shared is not None:
            events, last = shared
        else:  # further back than the worker keeps: read the journal
            try:
                found, last = store().raw_events_since(last, 500)
            except JournalTruncatedError:  # the client was away longer than the journal remembers
                last = send_start(ws, with_catalogue)
                continue
            events = [data for _, data in found]
        for event in events:
            send_text(ws, event)
        while ws.receive(timeout=0) is not None:
            pass
        if shared is not None:
            feed.wait_beyond(last, timeout=1.0)


def send_start(ws: Any, with_catalogue: bool) -> int:
    """Send the first message, the whole catalogue as ``initial_load`` (encoded once per seq and
    shared by every connection) or only ``ready`` with the seq; returns that seq. Either tells the
    client to take what it shows afresh (also after a ``since`` the journal no longer reaches)."""
    current = view()
    if with_catalogue:
        send_text(ws, current.catalogue_message())
    else:
        send_text(ws, b'{"action":"ready","seq":%d}' % current.seq)
    return current.seq


def send_text(ws: Any, payload: bytes) -> None:
    """Send JSON bytes as a text message, the same bytes for every connection: no per-connection
    copy, decode or compression (and so no compressor kept per connection).

    :raises ConnectionClosed: when the client is gone (the route then ends quietly).
    """
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    try:
        ws.sock.send_text(payload)
    except OSError:
        raise ConnectionClosed(ws.close_reason, ws.close_message) from None


def reserve_live_slot() -> None:
    """Refuse a websocket beyond the worker's limit before it takes a thread for good."""
    if request.path == "/ws" and request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        if not current_app.extensions["library_feed"].acquire():
            raise ServiceUnavailable("This worker has no room for another live connection; poll GET /changes instead")
        g.live_slot = True


def release_live_slot(exc: BaseException | None) -> None:
    if g.pop("live_slot", False):
        current_app.extensions["library_feed"].release()
