"""The collection files: how they are read (and checked), written as checkpoints, and told
apart (a checkpoint this store wrote, or a person's edit)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from storage.base import Record, Table
from storage.errors import CorruptFileError
from storage.journal import FileStat

log = logging.getLogger("library_api.storage")


RELOAD = "restarted by another process"


JOURNAL_NAME = "journal.jsonl"


HEAD_NAME = ".journal.head"


LOCK_NAME = "library.lock"


Validate = Callable[[str, Record], str | None]
"""Checks one record of a collection: None when it is fine, else what is wrong (naming the field)."""


Checkpoint = tuple[int, int, int, int]
"""A collection file as a checkpoint wrote it: (inode, size, mtime_ns, the seq in its header)."""


@dataclass
class _File:
    """What this process knows of one collection file."""

    expected: Checkpoint | None = None  # the last checkpoint recorded in the journal
    previous: Checkpoint | None = None  # the one before (its rename may not have happened yet)
    problem: str | None = None  # "missing" or "invalid" while writes to it are refused
    error: CorruptFileError | None = None  # why an invalid file was refused
    seen: FileStat | None = None  # the version judged invalid, not parsed again
    dirty_since: int | None = None  # first seq not in the file yet


def _known(now: FileStat | None, state: _File) -> bool:
    """Whether the file at a collection's path is one the journal recorded (or, before the first
    checkpoint, still absent)."""
    if state.expected is None:
        return now is None
    return _same(now, state.expected) or _same(now, state.previous)


def _same(now: FileStat | None, checkpoint: Checkpoint | tuple[int, ...] | None) -> bool:
    return now is not None and checkpoint is not None and tuple(checkpoint[:3]) == now


def _read_all(fd: int) -> bytes:
    return _read_from(fd, 0)


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _encode_table(table: Table) -> Iterator[bytes]:
    """The collection file: a small header, then one record per line, in id order."""
    name = json.dumps(table.name)
    yield f'{{"seq": {table.seq}, "next_id": {table.next_id}, {name}: ['.encode()
    batch: list[bytes] = []
    first = True
    for record in table.records.values():
        batch.append(orjson.dumps(record))
        if len(batch) >= 1024:
            yield (b"\n" if first else b",\n") + b",\n".join(batch)
            batch, first = [], False
    if batch:
        yield (b"\n" if first else b",\n") + b",\n".join(batch)
    yield b"\n]}\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


_ARRAY_GAP = re.compile(r"[\s,]*")


def item_lines(text: str, key: str | None) -> list[int]:
    """The 1-based line on which each item of a JSON array starts: the top-level array when ``key``
    is None, else the array under ``"key"``. Used to point at a bad record."""
    if key is None:
        start = text.find("[")
    else:
        match = re.search(rf'"{re.escape(key)}"\s*:\s*\[', text)
        start = match.end() - 1 if match else -1
    if start < 0:
        return []
    decoder = json.JSONDecoder()
    lines: list[int] = []
    line, counted, pos = 1, 0, start + 1
    while True:
        pos = _ARRAY_GAP.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return lines
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return lines
