"""library_api: a small library server keeping its catalogue in plain JSON files.

The entry point (``flask --app library_api``, the Procfile's ``library_api:create_app()``): the
settings table, opening the data directory, and ``create_app``, which wires the package
``library`` (its blueprints, error handlers and commands) onto a Flask app.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from library import (
    auth,
    catalogue,
    circulation,
    live,
    loader,
    operations,
    readcache,
    readmodel,
    records,
    uploads,
)
from library.catalogue import WriterIndex
from library.commands import (
    backup_command,
    create_admin_command,
    export_command,
    load_books_command,
    migrate_data_command,
    overdue_command,
    remove_sample_command,
    restore_command,
)
from library.context import MAX_JSON_BYTES
from library.importer import _import_fields
from library.readmodel import CatalogueView
from library.records import COLLECTIONS
from library.web import register_blueprints
from library.web.books import file_name
from library.web.http import (
    CloseUnreadBodies,
    FreshReads,
    IdConverter,
    LibraryRequest,
    NoSessions,
    OrjsonProvider,
    drop_spools,
    safe_headers,
)
from library.web.limits import init_limits
from library.web.live import release_live_slot, reserve_live_slot, sock
from library.web.problems import DataDirectoryGuard, register_errors
from storage import (
    JsonStore,
    Store,
    StoreUnavailableError,
)

HERE = Path(__file__).resolve().parent


log = logging.getLogger("library_api")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


SETTINGS = (
    Setting(
        "DATA_DIR", "", "Folder of the data files (books.json, journal.jsonl, ...). Empty: Flask's instance folder."
    ),
    Setting(
        "SEED_FILE", str(HERE / "books.json"), 'Catalogue a new, empty data directory starts with. "" starts empty.'
    ),
    Setting(
        "DATABASE_URL",
        "",
        "postgresql://user:password@host/database: keep the data in PostgreSQL, shared by several app servers "
        "(DATA_DIR then only caches the files). Empty: DATABASE_URL, the PaaS convention, if set; else the data "
        "directory's JSON files.",
    ),
    Setting("LOCK_TIMEOUT", 10.0, "Seconds a write waits for the data directory's lock before answering 503."),
    Setting("JOURNAL_KEEP", 10000, "Changes the journal keeps for clients catching up; older ones answer 410."),
    Setting(
        "CHECKPOINT_CHANGES",
        20000,
        "Changes after which the collection files are rewritten even while writes go on (else about a second "
        "after writes stop).",
    ),
    Setting(
        "READ_CACHE_MB", 32, "Memory per worker for repeated catalogue pages (served without Flask); 0 turns it off."
    ),
    Setting("CORS_ORIGINS", "", 'Other origins whose pages may use the API: comma-separated, or "*".'),
    Setting(
        "WS_MAX_CONNECTIONS",
        200,
        "Live websocket clients per worker (each holds a thread while open); keep it below GUNICORN_THREADS.",
    ),
    Setting("WS_PING_SECONDS", 25, "Seconds between keep-alive pings; a client silent for two is dropped."),
    Setting(
        "SECRET_KEY",
        "",
        "Signs sign-in tokens; at least 32 bytes. Empty: one is generated into the data directory "
        "(secret.key) and shared by every worker.",
    ),
    Setting("TOKEN_TTL", 86400, "Seconds a sign-in token stays valid."),
    Setting("MAX_LOANS", 5, "Books one member may have on loan at once."),
    Setting("LOAN_DAYS", 14, "Days of a loan when the borrower does not say."),
    Setting("MAX_LOAN_DAYS", 60, "The longest loan a borrower may ask for, in days."),
    Setting("MAX_RENEWALS", 2, "How many times one loan may be renewed."),
    Setting("FINE_PER_DAY", "0.50", "Fine for each UTC calendar day a book is returned late."),
    Setting("FINE_GRACE_DAYS", 0, "Days late that cost nothing; beyond them every late day counts."),
    Setting("MAX_FINE", "20.00", "The most one loan's fine can reach."),
    Setting("MAX_FINES_DUE", "10.00", "A member who owes more than this cannot borrow until they pay."),
    Setting("HOLD_DAYS", 3, "Days a returned book is kept for the first member waiting for it."),
    Setting("MAX_UPLOAD_MB", 10, "The largest cover, document or imported book file accepted, in MB (413 beyond it)."),
    Setting("NAME", "Library", "The library's name, as GET /library and the page show it."),
    Setting(
        "REGISTRATION",
        "open",
        "open: anyone may register (POST /auth/register); closed: only librarians enrol members "
        "(and create-admin makes admins).",
    ),
    Setting(
        "SIGNIN_RATE_LIMIT",
        "30 per minute;300 per hour",
        'Sign-ins one client address may try (429 beyond), per worker; "" turns it off.',
    ),
    Setting(
        "REGISTER_RATE_LIMIT",
        "20 per hour",
        'Registrations one client address may try (429 beyond), per worker; "" turns it off.',
    ),
    Setting(
        "RATELIMIT_STORAGE_URI",
        "memory://",
        "Where the rate limits count: memory:// (each worker its own), or e.g. redis://host:6379 shared by all.",
    ),
    Setting(
        "PROXY_COUNT",
        0,
        "Proxies in front of gunicorn (a PaaS router, nginx) whose X-Forwarded-For names the client; 0 trusts none.",
    ),
    Setting(
        "WARN_EPHEMERAL_DISK",
        True,
        "Warn at start-up when, on a PaaS, the data directory looks like the platform's throw-away disk.",
    ),
)


"""Every setting: ``LIBRARY_<NAME>`` in the environment (or ``.env``), ``<NAME>`` in app.config."""


def database_url(config: Any) -> str:
    """The PostgreSQL database to use: LIBRARY_DATABASE_URL, else DATABASE_URL, else "" (JSON files)."""
    return str(config.get("DATABASE_URL") or os.environ.get("DATABASE_URL") or "")


def open_store(app: Flask) -> Store:
    """Open (and on first use fill) the data directory, or the database when one is configured."""
    data_dir = Path(app.config["DATA_DIR"] or app.instance_path)
    seed_file = app.config["SEED_FILE"]

    def fill(txn: Any) -> None:
        if seed_file:
            rows = loader.read_rows(Path(seed_file))
            catalogue.seed(txn, [_import_fields(fields)[0] for _, fields in rows])

    opened: list[Store] = []  # the store, once it is open: events read statuses from its last view

    def describe(changes: list[Any], after: Any) -> list[dict[str, Any] | None]:
        return catalogue.describe(changes, after, opened[0] if opened else None)

    url = database_url(app.config)
    library_store: Store
    if url:
        from storage.postgres import PgStore

        library_store = PgStore(
            url,
            COLLECTIONS,
            directory=data_dir,
            describe=describe,
            initial=fill,
            lock_timeout=float(app.config["LOCK_TIMEOUT"]),
            journal_keep=int(app.config["JOURNAL_KEEP"]),
        )
    else:
        library_store = JsonStore(
            data_dir,
            COLLECTIONS,
            describe=describe,
            initial=fill,
            validate=records.problem,
            lock_timeout=float(app.config["LOCK_TIMEOUT"]),
            journal_keep=int(app.config["JOURNAL_KEEP"]),
            checkpoint_changes=int(app.config["CHECKPOINT_CHANGES"]),
        )
    opened.append(library_store)
    return library_store


def lending_rules(config: Any) -> circulation.Rules:
    """The lending rules from the settings.

    :raises ValueError: naming the setting that is not valid.
    """
    values: dict[str, int] = {}
    for name in ("MAX_LOANS", "LOAN_DAYS", "MAX_LOAN_DAYS", "MAX_RENEWALS", "FINE_GRACE_DAYS", "HOLD_DAYS"):
        try:
            values[name.lower()] = int(config[name])
        except (TypeError, ValueError):
            raise ValueError(f"LIBRARY_{name} must be a whole number, not {config[name]!r}") from None
    for name in ("FINE_PER_DAY", "MAX_FINE", "MAX_FINES_DUE"):
        try:
            values[name.lower()] = circulation.cents(config[name])
        except ValueError:
            raise ValueError(f"LIBRARY_{name} must be an amount like 0.50, not {config[name]!r}") from None
    if min(values.values()) < 0 or values["loan_days"] < 1 or values["loan_days"] > values["max_loan_days"]:
        raise ValueError("The lending settings must not be negative, and LOAN_DAYS must be 1..MAX_LOAN_DAYS")
    return circulation.Rules(**values)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: settings, storage, errors, routes, commands."""
    app = Flask(__name__, instance_relative_config=True, static_folder=str(HERE / "static"))
    app.request_class = LibraryRequest
    app.session_interface = NoSessions()
    app.config.from_mapping({s.name: s.default for s in SETTINGS})
    app.config.from_prefixed_env("LIBRARY")
    if test_config:
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BYTES
    app.json = OrjsonProvider(app)
    app.url_map.converters["id"] = IdConverter
    app.url_map.strict_slashes = False
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    directory = Path(app.config["DATA_DIR"] or app.instance_path)
    operations.finish_restore(directory)  # a restore cut short: completed (or undone) before reading
    app.extensions["library_was_empty"] = not operations.has_data(directory)
    app.extensions["library_store"] = open_store(app)
    if auth.library_of(app.extensions["library_store"].snapshot()) is None:
        try:
            app.extensions["library_store"].update(auth.ensure_library)
        except StoreUnavailableError as exc:  # library.json refused (a bad hand edit): no token works
            log.error("no token can be checked until the library's identity is readable: %s", exc)
    warn = app.config["WARN_EPHEMERAL_DISK"] not in (False, 0, "0", "false", "False", "no", "")
    if warn and not database_url(app.config):  # on PostgreSQL the folder only caches the files
        reasons = operations.ephemeral_reasons(directory, HERE, os.environ)
        if reasons:
            log.warning(
                "\n%s\nTHE DATA DIRECTORY %s WILL PROBABLY BE LOST at the next deploy or restart: %s.\n"
                "Mount a persistent volume and set LIBRARY_DATA_DIR to it (see the README, Deploying),\n"
                "or set LIBRARY_WARN_EPHEMERAL_DISK=0 if this disk is persistent.\n%s",
                "=" * 78, directory, "; ".join(reasons), "=" * 78,
            )  # fmt: skip
    app.extensions["library_writer_index"] = WriterIndex()
    app.extensions["library_rules"] = lending_rules(app.config)
    books = app.extensions["library_store"].snapshot().records("books").values()
    referenced = {file_name(b.get(f)) for b in books for f in ("cover_url", "document_url") if b.get(f)}
    uploads.clean(app.extensions["library_store"], referenced)
    if str(app.config["REGISTRATION"]).strip().lower() not in ("open", "closed"):
        raise ValueError(f"LIBRARY_REGISTRATION must be open or closed, not {app.config['REGISTRATION']!r}")
    app.config["REGISTRATION"] = str(app.config["REGISTRATION"]).strip().lower()
    if int(app.config["TOKEN_TTL"]) < 1:
        raise ValueError("LIBRARY_TOKEN_TTL must be at least 1 (seconds)")
    clock = app.config.get("CLOCK") or (lambda: datetime.now(UTC))
    housekeeper = circulation.Housekeeper(app.extensions["library_store"], app.extensions["library_rules"], clock)
    app.extensions["library_housekeeper"] = housekeeper
    if not app.testing:  # tests run it by hand, on their own clock
        app.before_request(housekeeper.start)  # in the worker, after gunicorn forked it
        # The writer index too, in the background from the worker's first request, so that its first
        # write does not wait for a pass over every book.
        writer = app.extensions["library_writer_index"]
        app.before_request(lambda: writer.start(app.extensions["library_store"]))
        # Checkpoints, hand edits and journal repairs, in every worker from its start (a worker
        # that serves nothing must still follow the journal); started again after a fork
        # (gunicorn --preload). Tests call store.maintain() themselves.
        app.extensions["library_store"].start()
        app.before_request(app.extensions["library_store"].start)
    # Refuses (auth.SecretError) to start with a configured secret shorter than 32 bytes. A generated
    # key is made once for every app server of the store (and the files they share are shared).
    with app.extensions["library_store"].sharing_files():
        app.extensions["library_secret"] = auth.load_secret(
            str(app.config["SECRET_KEY"] or ""), Path(app.extensions["library_store"].directory)
        )
    register_errors(app)
    app.after_request(safe_headers)
    register_blueprints(app)
    init_limits(app)
    library_store = app.extensions["library_store"]
    app.extensions["library_feed"] = live.Feed(library_store, int(app.config["WS_MAX_CONNECTIONS"]))
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": float(app.config["WS_PING_SECONDS"]),
        "max_message_size": 65536,
    }
    app.before_request(reserve_live_slot)
    app.teardown_request(release_live_slot)
    app.teardown_request(drop_spools)
    sock.init_app(app)
    origins = [o.strip() for o in str(app.config["CORS_ORIGINS"]).split(",") if o.strip()]
    if origins:
        CORS(
            app,
            origins="*" if "*" in origins else origins,
            expose_headers=["ETag", "Location"],
            allow_headers=["Content-Type", "If-Match", "If-None-Match", "Authorization"],
            max_age=600,
        )
    if int(app.config["PROXY_COUNT"]) > 0:  # the client's address (for the rate limits) from the proxies' header
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["PROXY_COUNT"]))  # type: ignore[method-assign]
    app.wsgi_app = readcache.ReadCache(  # type: ignore[method-assign]
        app.wsgi_app,
        lambda: CatalogueView.of(library_store.snapshot(), library_store).version,
        max_entries=10_000,
        max_bytes=int(float(app.config["READ_CACHE_MB"]) * 1024 * 1024),
        direct=lambda path: readmodel.answer_book(library_store, path),
    )
    app.wsgi_app = DataDirectoryGuard(app.wsgi_app, Path(library_store.directory))  # type: ignore[method-assign]
    app.wsgi_app = FreshReads(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = CloseUnreadBodies(app.wsgi_app)  # type: ignore[method-assign]  # outermost: gets gunicorn's start_response
    app.cli.add_command(load_books_command)
    app.cli.add_command(remove_sample_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(overdue_command)
    app.cli.add_command(export_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    app.cli.add_command(migrate_data_command)
    return app


if __name__ == "__main__":  # pragma: no cover - `flask --app library_api run` is the way in
    create_app().run(port=int(os.environ.get("PORT", "5000")))
