"""The ``flask --app library_api`` commands: load-books, create-admin, overdue, export, backup, restore."""

from __future__ import annotations

import logging
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg
from flask import current_app
from flask.cli import with_appcontext
from marshmallow import ValidationError

from library import auth, catalogue, circulation, loader, members, operations, records
from library.context import (
    data_dir,
    now,
    rules,
    stamp,
    store,
    view,
    write_books,
    writer_index,
)
from library.importer import DryRun, _clip, _import_fields, _reason, import_file
from library.records import COLLECTIONS
from library.schemas import (
    RegisterSchema,
)
from storage import JsonStore, StorageError, convert

log = logging.getLogger("library_api")


@click.command("load-books")
@with_appcontext
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option(
    "--replace-sample", is_flag=True, help="First remove the sample books no one has touched (see remove-sample)."
)
def load_books_command(path: Path, dry_run: bool, replace_sample: bool) -> None:
    """Import books from a JSON or CSV file, or a Goodreads CSV or LibraryThing TSV export (the
    format told from the file's content): a row with an ISBN is the book with that ISBN, one
    without is matched by title, author and year."""
    try:
        book_file = loader.read_file(path)
    except loader.UnreadableFileError as exc:
        raise click.ClickException(str(exc)) from None
    rows = book_file.rows
    if replace_sample and not dry_run:
        click.echo(f"removed {len(remove_sample())} untouched sample books")
    if loader.wants_progress(len(rows), sys.stderr):
        label = f"{'Checking' if dry_run else 'Importing'} {path.name}"
        with click.progressbar(length=len(rows), label=label, file=sys.stderr) as bar:
            report = import_file(book_file, path.name, dry_run, progress=bar.update)
    else:
        report = import_file(book_file, path.name, dry_run)
    for line in report["lines"]:
        click.echo(f"line {line['line']}: {line['text']}")
    if report["unchanged_lines"]:
        click.echo(f"unchanged (each the same as its book): {_line_ranges(report['unchanged_lines'])}")
    prefix = "dry run: would have " if dry_run else ""
    click.echo(
        f"{prefix}created {report['created']}, updated {report['updated']}, "
        f"unchanged {report['unchanged']}, skipped {report['skipped']}, "
        f"merged {report['merged']}, warnings {report['warnings']} "
        f"(of {report['rows']} rows in {report['file']}, read as {report['format_name']})"
    )


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Asked for when left out.")
@click.option("--name", default=None, help='A new admin\'s name, "First Last"; asked for when left out.')
@click.option("--first-name", default=None, help="Instead of --name.")
@click.option("--last-name", default=None, help="Instead of --name.")
def create_admin_command(
    email: str, password: str, name: str | None, first_name: str | None, last_name: str | None
) -> None:
    """Make EMAIL an admin who signs in with PASSWORD (a new member, or an existing one promoted)."""
    try:
        data = RegisterSchema(only=("email", "password")).load({"email": email, "password": password})
    except ValidationError as exc:
        raise click.ClickException(_reason(exc.messages)) from None
    names: dict[str, str] = {}
    if members.by_email(store().snapshot()).get(members.email_key(data["email"])) is None:
        names = admin_names(name, first_name, last_name)
    password_hash = auth.hash_password(data["password"])
    moment = utc_stamp()
    member, created = store().update(lambda txn: members.make_admin(txn, data["email"], password_hash, moment, names))
    what = "created admin" if created else "made an admin (with the new password):"
    click.echo(f"{what} {member['first_name']} {member['last_name']} <{member['email']}> (member {member['id']})")


def admin_names(name: str | None, first_name: str | None, last_name: str | None) -> dict[str, str]:
    """A new admin's first and last names: from ``--name`` (split at its last space), from
    ``--first-name`` and ``--last-name``, or asked for; checked like a registration's."""
    if name is not None:
        first_name, _, last_name = name.strip().rpartition(" ")
        if not first_name:
            first_name, last_name = last_name, ""
    if first_name is None:
        first_name = click.prompt("First name")
    if not last_name:
        last_name = click.prompt("Last name")
    try:
        return RegisterSchema(only=("first_name", "last_name")).load({"first_name": first_name, "last_name": last_name})
    except ValidationError as exc:
        raise click.ClickException(_reason(exc.messages)) from None


@click.command("overdue")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def overdue_command(as_json: bool) -> None:
    """Report the loans past their due date: who, which book, how late, the fine so far."""
    report = circulation.overdue(store().snapshot(), now(), rules())
    if as_json:
        click.echo(orjson.dumps({"overdue": report}, option=orjson.OPT_INDENT_2).decode())
        return
    if not report:
        click.echo("No loan is overdue.")
        return
    headers = ("Loan", "Member", "Email", "Book", "Due", "Days late", "Fine")
    rows = [
        (
            str(r["loan_id"]),
            r["member"],
            r["email"] or "",
            _clip(r["title"] or f"book {r['book_id']}", 40),
            r["due_at"][:10],
            str(r["days_late"]),
            f"{r['fine']:.2f}",
        )
        for r in report
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    right = {0, 5, 6}
    for row in (headers, *rows):
        click.echo(
            "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    total = sum(r["fine"] for r in report)
    click.echo(f"{len(report)} overdue loan{'s' if len(report) > 1 else ''}, fines so far {total:.2f}")


def utc_stamp() -> str:
    return stamp(datetime.now(UTC))


@click.command("export")
@with_appcontext
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="A file instead of stdout.")
def export_command(fmt: str, output: Path | None) -> None:
    """Write the catalogue as CSV or JSON; load-books reads either back unchanged."""
    current = view()
    data = operations.export_books((current.public(book_id) for book_id in current.books), fmt)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"exported {len(current.books)} books to {output}", err=True)


@click.command("backup")
@with_appcontext
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--allow-git-tree",
    is_flag=True,
    help="Write the archive even inside a git work tree (it holds the password hashes; never commit it).",
)
def backup_command(path: Path | None, allow_git_tree: bool) -> None:
    """Write one consistent archive of the library (safe while the server runs): to PATH, or by
    default to backups/ beside the data directory (mode 700; archives 600). Copy archives off the
    machine: a backup on the disk it backs up is lost with it."""
    moment = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = path or operations.default_target(data_dir(), moment)
    tree = operations.git_work_tree(target.parent)
    if tree is not None and not allow_git_tree:
        raise click.ClickException(
            f"{target} is inside the git work tree {tree}; an archive holds the members' password hashes "
            "and must not be committed. Give a PATH outside it, or pass --allow-git-tree"
        )
    try:
        if getattr(store(), "backend", "json") != "json":
            # The database's state written out as a data directory: the archive is the same either
            # way, and restores into either store.
            with tempfile.TemporaryDirectory(prefix="library-backup-") as folder:
                convert.write_directory(store(), data_dir(), Path(folder) / "data", COLLECTIONS)
                copy = JsonStore(Path(folder) / "data", COLLECTIONS)
                try:
                    report = operations.backup(copy, target, COLLECTIONS)
                finally:
                    copy.close()
        else:
            report = operations.backup(store(), target, COLLECTIONS)
    except OSError as exc:
        raise click.ClickException(f"no backup written to {target}: {operations.disk_problem(exc)}") from None
    click.echo(f"backed up {report.files} files at seq {report.seq} to {report.path} ({report.size} bytes)")


@click.command("restore")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace the data already there (it is kept aside, not deleted).")
@click.option(
    "--max-file-mb",
    type=click.IntRange(min=1),
    default=operations.MAX_FILE_MB,
    show_default=True,
    envvar="LIBRARY_RESTORE_MAX_FILE_MB",
    help="Refuse an archive holding a file larger than this (unpacked).",
)
def restore_command(path: Path, force: bool, max_file_mb: int) -> None:
    """Put a backup back into the data directory, after checking it whole. Everyone signs in again."""
    if getattr(store(), "backend", "json") != "json":
        raise click.ClickException(
            "restore puts a backup into a data directory: run it with LIBRARY_DATABASE_URL and DATABASE_URL "
            "unset and LIBRARY_DATA_DIR set to a new folder, then copy that into an empty database with "
            "migrate-data --to"
        )
    directory = data_dir()
    if current_app.extensions.get("library_was_empty"):
        force = True  # only what this command's own start-up wrote is there
    store().close()  # this command's own view of the directory must not outlive the swap
    try:
        aside = operations.restore(path, directory, COLLECTIONS, force, records.problem, max_file_mb)
    except operations.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {path} into {directory}")
    click.echo("every token issued before the restore no longer works: members sign in again")
    if aside is not None:
        click.echo(f"the data it replaced is kept in {aside}")


@click.command("migrate-data")
@with_appcontext
@click.option("--to", "url", required=True, help="postgresql://user:password@host/database, an empty database.")
def migrate_data_command(url: str) -> None:
    """Copy the data directory (every collection, the journal's sequence number, the uploads, the
    signing key) into an empty PostgreSQL database, and check the counts read back."""
    source = store()
    if getattr(source, "backend", "json") != "json":
        raise click.ClickException(
            "migrate-data copies a data directory: run it with LIBRARY_DATABASE_URL and DATABASE_URL unset"
        )
    try:
        copied = convert.copy_to_database(source, data_dir(), url, COLLECTIONS)
    except (StorageError, psycopg.Error) as exc:
        raise click.ClickException(str(exc).strip()) from None
    counts = ", ".join(f"{n} {name}" for name, n in copied.counts.items())
    click.echo(f"copied {counts}, {copied.files} files at seq {copied.seq}; counts verified")
    click.echo("now set LIBRARY_DATABASE_URL to that database and restart the servers")


def _line_ranges(spans: str) -> str:
    """ "2-4, 7" as "lines 2-4, 7" ("line 7" alone)."""
    return f"line{'s' if ',' in spans or '-' in spans else ''} {spans}"


@click.command("remove-sample")
@with_appcontext
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def remove_sample_command(dry_run: bool) -> None:
    """Remove the sample books (of the seed file) that no one has touched: never edited, never
    borrowed or held, without a cover or a document."""
    removed = remove_sample(dry_run)
    for book in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} book {book['id']}: {book['title']!r}")
    click.echo(f"{'dry run: would have ' if dry_run else ''}removed {len(removed)} sample books")


def remove_sample(dry_run: bool = False) -> list[dict[str, Any]]:
    """Delete the untouched books of the sample catalogue (``SEED_FILE``); returns them."""
    seed_file = current_app.config["SEED_FILE"] or Path(current_app.root_path) / "books.json"
    sample = [_import_fields(fields)[0] for _, fields in loader.read_rows(Path(seed_file))]
    index = writer_index()

    def remove(txn: Any) -> list[dict[str, Any]]:
        removed = catalogue.remove_sample(txn, index, sample)
        if dry_run:
            raise DryRun(removed)
        return removed

    try:
        return write_books(remove)
    except DryRun as exc:
        return exc.args[0]
