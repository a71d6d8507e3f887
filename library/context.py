"""What every part of the app needs from the current app: its store, its writer index, its one
clock, its lending rules, and the one way to write books. No request is read here, so updaters
built from these values can run on any thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app, g

from library import auth, catalogue, circulation
from library.catalogue import WriterIndex
from library.errors import TokenEnded
from library.readmodel import CatalogueView
from storage import (
    JsonStore,
)

log = logging.getLogger("library_api")


MAX_JSON_BYTES = 1024 * 1024


UPLOAD_OVERHEAD = 64 * 1024
"""Room for the multipart framing around an upload of the largest allowed size."""


def store() -> JsonStore:
    return current_app.extensions["library_store"]


def writer_index() -> WriterIndex:
    return current_app.extensions["library_writer_index"]


def view() -> CatalogueView:
    library_store = store()
    return CatalogueView.of(library_store.snapshot(), library_store)


def write_books(updater: Callable[..., Any], actor: dict[str, Any] | None = None) -> Any:
    """Run a catalogue write in one transaction, with the writer's index up to date; ``actor``
    must still be a librarian (or admin) as the transaction sees them."""

    # The library the actor's token was issued by (its identity and generation), as signing in
    # read it: with the member's token version, checked again here, under the lock, whatever
    # state the signing-in was read against (a book write's is the one its server holds).
    issued = None
    if actor is not None:
        issued = g.get("signed_in_library")
        if issued is None:
            raise RuntimeError("write_books(actor=...) needs the actor signed in by signed_in() first")

    # Group commit may run this updater on another request's thread (or the housekeeper's): it
    # must not touch the request or the app context, only what was captured here.
    def run(txn: Any) -> Any:
        if actor is not None:
            current = txn.get("members", actor["id"])
            library = auth.library_of(txn)
            if (
                current is None
                or current.get("token_version", 0) != actor.get("token_version", 0)
                or library is None
                or (library["identity"], library["generation"]) != issued
            ):  # gone, their role changed, or everyone was signed out since the token was read
                raise TokenEnded("The token is no longer valid; sign in again")
        return updater(txn)

    return catalogue.with_index(store(), writer_index(), run)


def now() -> datetime:
    """The current time; tests set ``CLOCK`` in the config to control it."""
    clock = current_app.config.get("CLOCK")
    return clock() if clock is not None else datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def data_dir() -> Path:
    return Path(store().directory)


def rules() -> circulation.Rules:
    return current_app.extensions["library_rules"]
