"""Covers and documents: what a file is (from its first bytes), and keeping it safely on disk.

No Flask here. The request parser streams a file into a temporary file in the uploads folder
(:func:`spool`; never held whole in memory). Its kind is decided from its first bytes only (never
from its name or the type the client claims), then it is fsync'd and renamed to a generated name,
and only after that does a book point at it. A crash leaves at worst an orphan file, which
:func:`clean` removes at start-up. Images are never decoded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from library.errors import UploadError
from storage import Store
from storage.journal import fsync_dir

log = logging.getLogger("library_api")

FOLDER = "uploads"
CHUNK = 64 * 1024
ORPHAN_AGE = 300
"""Seconds after which a file no book points at is an orphan (younger ones may be on their way)."""


@dataclass(frozen=True)
class Kind:
    name: str
    extension: str
    media_type: str


JPEG = Kind("JPEG", "jpg", "image/jpeg")
PNG = Kind("PNG", "png", "image/png")
WEBP = Kind("WebP", "webp", "image/webp")
GIF = Kind("GIF", "gif", "image/gif")
PDF = Kind("PDF", "pdf", "application/pdf")
EPUB = Kind("EPUB", "epub", "application/epub+zip")

KINDS = {"cover": (JPEG, PNG, WEBP, GIF), "document": (PDF, EPUB)}
BY_EXTENSION = {kind.extension: kind for kinds in KINDS.values() for kind in kinds}
HEAD = 512
"""How many first bytes :func:`sniff` needs."""

NAME = re.compile(r"[0-9a-f]{32}\.(jpg|png|webp|gif|pdf|epub)\Z")
"""A name :func:`save` gives (use ``fullmatch``)."""


def sniff(head: bytes) -> Kind | None:
    """The kind of a file from its first :data:`HEAD` bytes, or None when it is none we take.

    Each check asks for more than the magic number: the header that must follow it, so that a
    truncated or forged header is refused.
    """
    if head[:3] == b"\xff\xd8\xff" and len(head) >= 4 and head[3] in range(0xC0, 0x100):
        return JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        # The IHDR chunk must come first: length 13, type, width and height > 0.
        if len(head) >= 33 and head[8:16] == b"\x00\x00\x00\x0dIHDR":
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if width > 0 and height > 0:
                return PNG
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] in (b"VP8 ", b"VP8L", b"VP8X"):
        return WEBP
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 13:
        width, height = int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
        return GIF if width > 0 and height > 0 else None
    if head[:5] == b"%PDF-" and re.match(rb"%PDF-\d\.\d", head):
        return PDF
    # EPUB (OCF): a ZIP whose first entry is the stored (uncompressed) file "mimetype" saying so.
    if head[:4] == b"PK\x03\x04" and len(head) >= 30 and head[8:10] == b"\x00\x00":
        name_length = int.from_bytes(head[26:28], "little")
        extra_length = int.from_bytes(head[28:30], "little")
        start = 30 + name_length + extra_length
        if head[30 : 30 + name_length] == b"mimetype" and head[start : start + 20] == b"application/epub+zip":
            return EPUB
    return None


def folder(data_dir: Path) -> Path:
    path = data_dir / FOLDER
    path.mkdir(exist_ok=True)
    return path


def spool(data_dir: Path) -> BinaryIO:
    """A temporary file in the uploads folder for the request parser to write an upload into as it
    arrives (instead of memory or the system's temporary folder): :func:`save` then only has to
    check it and rename it. It is locked while open, which tells :func:`clean` it is in use."""
    stream = open(folder(data_dir) / f".{uuid.uuid4().hex}.tmp", "w+b")  # noqa: SIM115
    fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
    return stream


def save(spooled: BinaryIO, purpose: str, limit: int) -> tuple[str, Kind, int]:
    """Keep a file the request parser wrote into :func:`spool` as a cover or a document: check it,
    fsync it and rename it to a generated name.

    :returns: the generated file name, its kind and its size.
    :raises UploadError: 413 beyond ``limit`` bytes, 422 when empty, 415 when its bytes are not
        a kind ``purpose`` takes. Nothing is left on disk then.
    """
    temp = Path(spooled.name)
    try:
        size = spooled.seek(0, os.SEEK_END)
        if size > limit:
            raise UploadError(f"The file is larger than the limit of {limit // (1024 * 1024)} MB", 413)
        if size == 0:
            raise UploadError("The file is empty", 422)
        spooled.seek(0)
        kind = _judge(spooled.read(HEAD), purpose)
        spooled.flush()
        os.fsync(spooled.fileno())
        name = f"{uuid.uuid4().hex}.{kind.extension}"
        os.replace(temp, temp.parent / name)
        fsync_dir(temp.parent)
        return name, kind, size
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _judge(head: bytes, purpose: str) -> Kind:
    kind = sniff(head)
    if kind is None or kind not in KINDS[purpose]:
        names = ", ".join(k.name for k in KINDS[purpose])
        raise UploadError(f"The file is not one of: {names} (judged from its bytes, not its name)", 415)
    return kind


def remove(store: Store, name: str | None) -> None:
    """Delete an uploaded file no book points at any more (missing is fine), through the store:
    on PostgreSQL every app server's copy goes too."""
    if name and NAME.fullmatch(name):
        store.remove_file(f"{FOLDER}/{name}")


def clean(store: Store, referenced: set[str], now: float | None = None) -> list[str]:
    """Remove what interrupted uploads left: temporary files no process holds open (an upload in
    progress keeps its file locked), and files no book points at that are older than
    :data:`ORPHAN_AGE`. Returns the names removed."""
    where = Path(store.directory) / FOLDER
    if not where.is_dir():
        return []
    moment = time.time() if now is None else now
    removed = []
    for path in where.iterdir():
        name = path.name
        if name.endswith(".tmp") and name.startswith("."):
            if _in_use(path):
                continue
        elif NAME.fullmatch(name):
            if name in referenced or moment - path.stat().st_mtime < ORPHAN_AGE:
                continue
        else:
            continue
        log.info("removing %s, left by an interrupted upload or a delete", path)
        if name.startswith("."):
            path.unlink(missing_ok=True)
        else:
            store.remove_file(f"{FOLDER}/{name}")
        removed.append(name)
    return removed


def _in_use(path: Path) -> bool:
    """Whether some process (this one too) holds ``path`` open and locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone already: nothing to remove
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock taken here
    return False
