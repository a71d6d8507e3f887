"""Moving a library between the stores: a data directory into an empty PostgreSQL database, and any
store's state out as a data directory (what a backup archives, whichever store it came from)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg

from storage import journal
from storage.base import Store
from storage.errors import StorageError
from storage.files import _encode_table
from storage.postgres import FILE_FOLDERS, migrate

SKIPPED = {"library.lock", "journal.jsonl", "journal.head"}
"""Files of a data directory that are the JSON store's own machinery, not data to carry over."""


class NotEmptyError(StorageError):
    """The target database already holds a library."""


@dataclass(frozen=True)
class Copied:
    seq: int
    counts: dict[str, int]
    files: int


def data_files(directory: Path, collections: Sequence[str]) -> dict[str, Path]:
    """The files of a data directory that are not its collections or journal (the signing key,
    the uploads), by their name relative to it."""
    names = {f"{name}.json" for name in collections} | SKIPPED
    found: dict[str, Path] = {}
    if directory.exists():
        for path in directory.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name not in names:
                found[path.name] = path
    for folder in FILE_FOLDERS:
        sub = directory / folder
        if sub.is_dir():
            for path in sub.iterdir():
                if path.is_file() and not path.name.startswith("."):
                    found[f"{folder}/{path.name}"] = path
    return found


def copy_to_database(source: Store, directory: Path, url: str, collections: Sequence[str]) -> Copied:
    """Copy every collection of ``source`` (its records, ids to come, and its sequence number) and
    the files of ``directory`` into the empty database at ``url``, in one transaction, and check
    the counts read back.

    :raises NotEmptyError: when the database already holds data.
    :raises StorageError: when the counts read back differ (nothing is kept).
    """
    migrate(url)
    with psycopg.connect(url) as conn, source.exclusive() as snap:
        seq, filled = conn.execute("SELECT seq, filled FROM library_seq FOR UPDATE").fetchone()
        if seq or filled or conn.execute("SELECT EXISTS (SELECT 1 FROM library_records)").fetchone()[0]:
            raise NotEmptyError("That database already holds a library: migrate-data copies into an empty one only")
        with conn.cursor() as cur, cur.copy("COPY library_records (collection, id, record, seq) FROM STDIN") as copy:
            for name in collections:
                table_seq = snap.collection_seq(name)
                for rid, record in snap.records(name).items():
                    copy.write_row((name, rid, orjson.dumps(record).decode(), table_seq))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO library_next_ids (collection, next_id) VALUES (%s, %s)",
                [(name, snap.tables[name].next_id) for name in collections if name in snap.tables],
            )
            files = data_files(directory, collections)
            cur.executemany(
                "INSERT INTO library_files (name, data, seq) VALUES (%s, %s, 1)",
                [(name, path.read_bytes()) for name, path in sorted(files.items())],
            )
        conn.execute("UPDATE library_seq SET seq = %s, floor = %s, filled = true, files = 1", (snap.seq, snap.seq))
        counts = dict(conn.execute("SELECT collection, count(*) FROM library_records GROUP BY collection").fetchall())
        expected = {name: snap.count(name) for name in collections if name in snap.tables}
        if any(counts.get(name, 0) != n for name, n in expected.items()):
            conn.rollback()
            raise StorageError(f"The copy holds {counts}, not {expected}: nothing was kept")
        stored = conn.execute("SELECT count(*) FROM library_files").fetchone()[0]
        if stored != len(files):
            conn.rollback()
            raise StorageError(f"The copy holds {stored} files, not {len(files)}: nothing was kept")
        conn.commit()
    return Copied(snap.seq, expected, len(files))


def write_directory(source: Store, directory: Path, target: Path, collections: Sequence[str]) -> int:
    """Write ``source``'s state as a data directory into the empty folder ``target``: the
    collection files, a journal starting at its sequence number, and the files of ``directory``
    (the signing key, the uploads). A JSON store opens it as it was. Returns the seq."""
    target.mkdir(parents=True, exist_ok=True)
    with source.exclusive() as snap:
        for name in collections:
            if name not in snap.tables:
                continue
            with open(target / f"{name}.json", "wb") as out:
                for chunk in _encode_table(snap.tables[name]):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        (target / "journal.jsonl").write_bytes(journal.encode_header(snap.seq))
        for name, path in data_files(directory, collections).items():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
        return snap.seq
