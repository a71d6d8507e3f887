"""Living with the data: backups, restores, exports, and a warning when the disk will not last.

No Flask here. A backup is one ``.tar.gz`` of the data directory taken under the store's lock, so
it is one committed state even while gunicorn keeps serving: the collection files and the journal
are read (and the uploaded files they point at hard-linked) while the lock is held, which takes
milliseconds; the archive is written after the lock is released. It carries a manifest with each
file's SHA-256, which :func:`restore` checks before it touches anything.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from library import uploads
from storage import JsonStore, journal
from storage.journal import fsync_dir

MANIFEST = "backup.json"
FORMAT = 1
KEPT_ASIDE = ".before-restore-"
"""Restore moves the data it replaces into ``<data dir>/.before-restore-<time>/``."""
SKIPPED = {"library.lock"}


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    seq: int
    files: int
    size: int


def backup(store: JsonStore, target: Path) -> BackupReport:
    """Write one archive of the data directory to ``target`` (a consistent, committed state).

    :raises LockTimeoutError: when the lock could not be taken.
    """
    directory = store.directory
    staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=directory))
    try:
        contents: dict[str, bytes] = {}
        with store.exclusive() as snap:
            for path in sorted(directory.iterdir()):
                if path.is_file() and not path.name.startswith(".") and path.name not in SKIPPED:
                    contents[path.name] = path.read_bytes()
            linked = []
            for name in sorted(_referenced(snap.records("books").values())):
                source = directory / uploads.FOLDER / name
                if source.exists():  # a name pointing at nothing is restored as it was found
                    os.link(source, staging / name)
                    linked.append(name)
            seq = snap.seq
        manifest: dict[str, Any] = {"format": FORMAT, "seq": seq, "created_at": _now(), "files": {}}
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with tarfile.open(partial, "w:gz") as archive:
                for name, data in contents.items():
                    manifest["files"][name] = _sha256(data)
                    _add(archive, name, data)
                for name in linked:
                    data = (staging / name).read_bytes()
                    manifest["files"][f"{uploads.FOLDER}/{name}"] = _sha256(data)
                    _add(archive, f"{uploads.FOLDER}/{name}", data)
                _add(archive, MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            with open(partial, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return BackupReport(target, seq, len(manifest["files"]), target.stat().st_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def verify(archive_path: Path, collections: Iterable[str]) -> dict[str, bytes]:
    """Read a backup whole and check it: safe names, every file in the manifest with its SHA-256,
    every collection file valid JSON of the right shape. Returns the files by name.

    :raises BackupError: saying what is wrong.
    """
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            files: dict[str, bytes] = {}
            for member in archive.getmembers():
                name = member.name
                if not member.isfile() or not _safe(name):
                    raise BackupError(f"{archive_path.name}: {name!r} is not a file this backup can hold")
                extracted = archive.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{archive_path}: not a readable backup archive ({exc})") from None
    if MANIFEST not in files:
        raise BackupError(f"{archive_path.name}: no {MANIFEST}; not a library_api backup")
    try:
        manifest = orjson.loads(files.pop(MANIFEST))
        listed: Mapping[str, str] = manifest["files"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise BackupError(f"{archive_path.name}: its manifest cannot be read") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive_path.name}: backup format {manifest.get('format')!r} is not {FORMAT}")
    if set(listed) != set(files):
        missing, extra = sorted(set(listed) - set(files)), sorted(set(files) - set(listed))
        raise BackupError(f"{archive_path.name}: files missing {missing} or not in the manifest {extra}")
    for name, data in files.items():
        if _sha256(data) != listed[name]:
            raise BackupError(f"{archive_path.name}: {name} is damaged (its SHA-256 does not match)")
    for collection in collections:
        data = files.get(f"{collection}.json")
        if data is None:
            continue
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BackupError(f"{archive_path.name}: {collection}.json is not valid JSON ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get(collection), list):
            raise BackupError(f"{archive_path.name}: {collection}.json has no list of {collection}")
    return files


def has_data(directory: Path) -> bool:
    """Whether the data directory holds anything a restore would overwrite."""
    if not directory.exists():
        return False
    return any(
        p.name not in SKIPPED and not p.name.startswith(".") and (p.is_file() or any(p.iterdir()))
        for p in directory.iterdir()
    )


def restore(archive_path: Path, directory: Path, collections: Iterable[str], force: bool) -> Path | None:
    """Put a backup back into ``directory``. The archive is verified first; data already there is
    refused without ``force``, and with it moved aside (returned), never deleted. Runs under the
    directory's lock so that no write of a running server lands in the middle.

    :raises BackupError: for a bad archive, or data in the way without ``force``.
    """
    files = verify(archive_path, collections)
    directory.mkdir(parents=True, exist_ok=True)
    if has_data(directory) and not force:
        raise BackupError(
            f"{directory} already holds data; restoring would replace it. Stop the server, then run "
            "restore again with --force (the current data is kept aside, not deleted)"
        )
    from filelock import FileLock

    with FileLock(directory / "library.lock", thread_local=False).acquire(timeout=30):
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=directory))
        try:
            # The backup's collection files hold every change (backup checkpoints them first), so
            # its journal's lines are not needed. The journal starts again after every seq this
            # directory has used, so that a server still running here reloads the restored
            # files instead of taking them for an older copy of its own.
            floor = max(_last_seq(directory / "journal.jsonl") + 1, _last_seq_of(files.get("journal.jsonl", b"")))
            files = {**files, "journal.jsonl": journal.encode_header(floor)}
            for name, data in files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            aside = None
            present = [p for p in directory.iterdir() if p.name not in SKIPPED and not p.name.startswith(".")]
            if present:
                aside = directory / f"{KEPT_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                aside.mkdir()
                for path in present:
                    os.replace(path, aside / path.name)
            for path in staging.iterdir():
                os.replace(path, directory / path.name)
            fsync_dir(directory)
            return aside
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def finish_restore(directory: Path) -> None:
    pass


def _last_seq(path: Path) -> int:
    try:
        return _last_seq_of(path.read_bytes())
    except FileNotFoundError:
        return 0


def _last_seq_of(data: bytes) -> int:
    """The last seq a journal's bytes name (its floor, or its last commit), 0 when unreadable."""
    last = 0
    for line in data.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            for key in ("floor", "commit", "seq"):
                if isinstance(entry.get(key), int):
                    last = max(last, entry[key])
    return last


# -- export ----------------------------------------------------------------------------------------

EXPORT_FIELDS = ("id", "title", "author", "genre", "publisher", "publication_year", "isbn")


def export_books(books: Iterable[Mapping[str, Any]], fmt: str) -> bytes:
    """The catalogue as CSV (the columns ``load-books`` reads, plus ``id``) or JSON
    (``{"books": [...]}``, each book as the API shows it): either imports back unchanged."""
    rows = list(books)
    if fmt == "json":
        return orjson.dumps({"books": rows}, option=orjson.OPT_INDENT_2) + b"\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for book in rows:
        writer.writerow({k: "" if book.get(k) is None else book[k] for k in EXPORT_FIELDS})
    return out.getvalue().encode()


# -- the disk a PaaS gives ---------------------------------------------------------------------------

PAAS_MARKERS = {
    "DYNO": "Heroku",
    "RENDER": "Render",
    "RAILWAY_ENVIRONMENT": "Railway",
    "FLY_APP_NAME": "Fly.io",
    "K_SERVICE": "Cloud Run",
    "KOYEB_APP_NAME": "Koyeb",
    "WEBSITE_SITE_NAME": "Azure App Service",
    "DIGITALOCEAN_APP_PLATFORM_COMPONENT_NAME": "DigitalOcean App Platform",
}


def ephemeral_reasons(directory: Path, app_root: Path, environ: Mapping[str, str]) -> list[str]:
    """Why the data directory looks like it will be lost at the next deploy or restart: on a PaaS
    (known by its environment variables), a data directory on the same filesystem as the
    application's own files is the platform's throw-away disk, unless it is a mount point."""
    platforms = [name for var, name in PAAS_MARKERS.items() if environ.get(var)]
    if not platforms:
        return []
    reasons = []
    resolved = directory.resolve()
    if _mount_point_of(resolved) == _mount_point_of(app_root.resolve()):
        reasons.append(f"it is on the same filesystem as the application ({_mount_point_of(resolved)})")
    if resolved == app_root.resolve() or app_root.resolve() in resolved.parents:
        reasons.append("it is inside the application's own folder")
    if not reasons:
        return []
    return [f"running on {', '.join(platforms)}", *reasons]


def _mount_point_of(path: Path) -> Path:
    path = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


# -- helpers ---------------------------------------------------------------------------------------


def _referenced(books: Iterable[Mapping[str, Any]]) -> set[str]:
    names = set()
    for book in books:
        for field in ("cover_url", "document_url"):
            url = book.get(field)
            if url:
                names.add(url.rsplit("/", 1)[-1])
    return names


def _safe(name: str) -> bool:
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return False
    if len(parts) == 1:
        return True
    return len(parts) == 2 and parts[0] == uploads.FOLDER and bool(uploads.NAME.match(parts[1]))


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
