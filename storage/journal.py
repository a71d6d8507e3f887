"""The change journal: an append-only JSON-lines file that is both the commit log and the live feed.

Layout, one JSON object per line::

    {"journal": 1, "floor": 0, "lineage": "5f0c…"}               header: every change after seq 0 is below
    {"seq": 7, "op": "put", "collection": "books", "id": 3, "record": {...}, "event": {...}}
    {"seq": 8, "op": "delete", "collection": "books", "id": 4, "event": {...}}
    {"commit": 8, "at": "2026-01-01T00:00:00Z", "files": {"books": [inode, size, mtime_ns]}}

Change lines only count once a commit line follows them: a writer appends its change lines and the
commit line in one ``write`` and fsyncs, and that is the moment the transaction is durable. The commit
line also records the identity of each collection file as the writer wrote it, so a reader can tell a
file written by another worker (which it learns about from the journal) from one edited by a person.
Lines after the last commit are an interrupted write and are cut off by the next writer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from storage.errors import CorruptFileError

FORMAT = 1
FileStat = tuple[int, int, int]
"""(inode, size, mtime_ns): enough to tell one version of a file from another."""


@dataclass
class Commit:
    """One committed transaction as read back from the journal."""

    seq: int
    lines: list[dict[str, Any]]
    files: dict[str, FileStat]


@dataclass
class ParsedJournal:
    """What :func:`parse` read: the header's floor (None when the bytes did not start at the
    header), the complete commits, and how many bytes and lines they took."""

    floor: int | None
    commits: list[Commit] = field(default_factory=list)
    lineage: str = ""  # the same through compactions; new each time the journal starts again
    consumed: int = 0
    lines: int = 0


def stat_of(path: Path) -> FileStat | None:
    """The identity of the file at ``path`` now, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def encode_header(floor: int, lineage: str | None = None) -> bytes:
    """The first line: the seq every later change follows, and the journal's lineage (kept by a
    compaction, new when the journal starts again, so that a process can tell a compacted journal
    it may follow from a restarted one whose seqs may mean other changes)."""
    return orjson.dumps({"journal": FORMAT, "floor": floor, "lineage": lineage or new_lineage()}) + b"\n"


def new_lineage() -> str:
    return os.urandom(8).hex()


def encode_change(seq: int, collection: str, record_id: int, record: Any, event: Any) -> bytes:
    line: dict[str, Any] = {"seq": seq, "op": "put" if record is not None else "delete"}
    line["collection"] = collection
    line["id"] = record_id
    if record is not None:
        line["record"] = record
    if event is not None:
        line["event"] = event
    return orjson.dumps(line) + b"\n"


def encode_commit(seq: int, at: str, files: dict[str, FileStat]) -> bytes:
    return orjson.dumps({"commit": seq, "at": at, "files": {k: list(v) for k, v in files.items()}}) + b"\n"


def parse(data: bytes, path: Path, first_line: int, at_start: bool) -> ParsedJournal:
    """Read complete commits out of ``data`` (journal bytes starting at a commit boundary).

    :param first_line: the line number of the first byte of ``data`` in the file, for messages.
    :param at_start: whether ``data`` starts at the beginning of the file (and so at the header).
    :raises CorruptFileError: when a complete line that is followed by a commit is not valid, or
        the header is missing.
    """
    result = ParsedJournal(floor=None)
    pending: list[dict[str, Any]] = []
    bad_line: tuple[int, str] | None = None
    offset = 0
    line_no = first_line - 1
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            break  # an incomplete last line: a write that is still going on, or was cut short
        line_no += 1
        raw = data[offset:end]
        offset = end + 1
        try:
            entry = orjson.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            bad_line = bad_line or (line_no, str(exc))
            continue
        if at_start and result.floor is None:
            if entry.get("journal") != FORMAT or not isinstance(entry.get("floor"), int):
                raise CorruptFileError(path, line_no, None, "the journal does not start with its header")
            result.floor = entry["floor"]
            result.lineage = str(entry.get("lineage", ""))
            result.consumed, result.lines = offset, line_no - first_line + 1
            continue
        if "commit" in entry:
            if bad_line is not None:
                raise CorruptFileError(path, bad_line[0], None, f"unreadable journal line ({bad_line[1]})")
            files = {str(k): tuple(v) for k, v in (entry.get("files") or {}).items()}
            result.commits.append(Commit(int(entry["commit"]), pending, files))  # type: ignore[arg-type]
            pending = []
            result.consumed, result.lines = offset, line_no - first_line + 1
        else:
            pending.append(entry)
    if at_start and result.floor is None and data:
        raise CorruptFileError(path, first_line, None, "the journal does not start with its header")
    return result


def append(path: Path, data: bytes) -> FileStat:
    """Append ``data`` to the journal in one write, fsync it, and return the journal's identity."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def write_atomically(path: Path, chunks: Iterable[bytes]) -> FileStat:
    """Write a whole file: a temporary file in the same folder, fsync, rename over ``path``,
    fsync the folder. A crash leaves either the old file or the new one, never a mix."""
    tmp, st = write_temp(path, chunks)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return st


def write_temp(path: Path, chunks: Iterable[bytes]) -> tuple[Path, FileStat]:
    """Write ``chunks`` to a new temporary file beside ``path`` (mode 600) and fsync it; the caller
    renames it into place. Nothing is left behind when it fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp, (st.st_ino, st.st_size, st.st_mtime_ns)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
