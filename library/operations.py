"""Living with the data: backups, restores, exports, and a warning when the disk will not last.

No Flask here. A backup is one ``.tar.gz`` of the data directory taken under the store's lock, so
it is one committed state even while gunicorn keeps serving: the collection files and the journal
are read (and the uploaded files they point at hard-linked) while the lock is held, which takes
milliseconds; the archive is written after the lock is released. Its first member is a manifest
naming every other file with its size and SHA-256. The signing key is not in it: a restore signs
everyone out anyway, and a key that came with an archive would let whoever made the archive sign
tokens.

A restore trusts nothing in the archive. It streams it once, member by member, into a staging
folder inside the data directory, refusing at the first thing a backup does not write (a name or a
type off the allow-list, a link, a size over the manifest's or :data:`MAX_FILE_MB`'s); then it
checks every record as the store checks a hand edit, and the journal. Only then does it touch the
library, crash-safely: a marker (:data:`PENDING`) written and fsync'd after the staging folder is
complete says "the new library is ready"; the swap that follows is a few renames that
:func:`finish_restore` completes at the next start if a crash cuts it short. Before the marker a
crash leaves the old library (the staging folder is removed at the next start); after it, the new.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from filelock import FileLock, Timeout

from library import auth, uploads
from storage import JsonStore, journal
from storage.errors import CorruptFileError
from storage.journal import fsync_dir

MANIFEST = "backup.json"
FORMAT = 2
"""2: the manifest comes first and gives each file's size; 1 (still restored): hashes only, last."""
JOURNAL = "journal.jsonl"
KEY = "secret.key"
LOCK = "library.lock"
KEPT_ASIDE = ".before-restore-"
"""Restore moves the data it replaces into ``<data dir>/.before-restore-<time>/``."""
STAGING = ".restore-staging-"
"""Where a restore unpacks the archive, inside the data directory (one filesystem, so renames)."""
PENDING = ".restore-pending.json"
"""Present from the moment a checked archive is ready to be swapped in until the swap is done."""
KEEP = {LOCK, KEY, PENDING}
"""What a restore leaves in place: the lock, the directory's own signing key, the marker."""
MAX_FILE_MB = 512
"""The default cap on any one file of an archive (``restore --max-file-mb``)."""
MAX_MANIFEST = 16 * 1024 * 1024
CHUNK = 1024 * 1024
BACKUPS = "backups"
"""The default folder of ``backup``, beside the data directory."""

Validate = Callable[[str, dict[str, Any]], str | None]


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    seq: int
    files: int
    size: int


# -- backup ----------------------------------------------------------------------------------------


def default_target(directory: Path, moment: str) -> Path:
    """Where ``backup`` writes without a path: ``backups/`` beside the data directory."""
    return directory.resolve().parent / BACKUPS / f"library-backup-{moment}.tar.gz"


def git_work_tree(path: Path) -> Path | None:
    """The git work tree ``path`` would be inside (a folder holding ``.git``), or None."""
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / ".git").exists():
            return folder
    return None


def backup(store: JsonStore, target: Path, collections: Iterable[str]) -> BackupReport:
    """Write one archive of the data directory to ``target`` (a consistent, committed state), mode
    600, in a folder that is made mode 700 when it does not exist.

    :raises LockTimeoutError: when the lock could not be taken.
    :raises OSError: when the archive cannot be written (a full disk: nothing is left behind).
    """
    directory = store.directory
    staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=directory))
    try:
        contents: dict[str, bytes] = {}
        with store.exclusive() as snap:
            for name in collections:
                path = directory / f"{name}.json"
                if path.exists():
                    contents[path.name] = path.read_bytes()
                else:  # never written: an empty collection, so that the archive holds every one
                    contents[path.name] = orjson.dumps({"seq": snap.collection_seq(name), "next_id": 1, name: []})
            contents[JOURNAL] = (directory / JOURNAL).read_bytes()
            linked = []
            for name in sorted(_referenced(snap.records("books").values())):
                source = directory / uploads.FOLDER / name
                if source.exists():  # a name pointing at nothing is restored as it was found
                    os.link(source, staging / name)
                    linked.append(name)
            seq = snap.seq
        listed = {name: _described(data) for name, data in contents.items()}
        for name in linked:
            with open(staging / name, "rb") as upload:
                listed[f"{uploads.FOLDER}/{name}"] = _described_stream(upload)
        manifest = {"format": FORMAT, "seq": seq, "created_at": _now(), "files": listed}
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700, parents=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
                _add(archive, MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
                for name, data in contents.items():
                    _add(archive, name, data)
                for name in linked:
                    with open(staging / name, "rb") as upload:
                        info = _info(f"{uploads.FOLDER}/{name}", listed[f"{uploads.FOLDER}/{name}"]["size"])
                        archive.addfile(info, upload)
            with open(partial, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(partial, target)
            fsync_dir(target.parent)
        finally:
            partial.unlink(missing_ok=True)
        return BackupReport(target, seq, len(listed), target.stat().st_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def disk_problem(exc: OSError) -> str:
    """A sentence for an OSError of writing a file."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno == errno.EFBIG:
        return "the file grew past the largest size allowed here"
    return exc.strerror or str(exc)


# -- restore: reading and checking the archive ----------------------------------------------------


@dataclass
class Unpacked:
    """What :func:`unpack` found: the manifest (``files`` as name -> sha256 and size), and the
    size of each file it staged."""

    manifest: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)


def unpack(
    archive_path: Path, staging: Path, collections: Iterable[str], max_bytes: int, validate: Validate
) -> Unpacked:
    """Stream the archive into ``staging`` and check it whole: names and types on the allow-list,
    each file's size and SHA-256 as its manifest says (and no larger than ``max_bytes``), every
    collection present and each record as the store checks a hand edit, the journal readable.
    Memory stays bounded: files are copied in chunks, and one collection file is parsed at a time.

    :raises BackupError: saying what is wrong, at the first problem.
    """
    collections = tuple(collections)
    allowed = {f"{name}.json" for name in collections} | {JOURNAL, KEY, MANIFEST}
    label = archive_path.name
    manifest: dict[str, Any] | None = None
    declared: dict[str, dict[str, Any]] | None = None  # a format-2 manifest, read before the files
    sizes: dict[str, int] = {}
    digests: dict[str, str] = {}
    seen: set[str] = set()
    try:
        with tarfile.open(archive_path, mode="r|gz") as archive:
            for member in archive:
                name = member.name
                if name in seen:
                    raise BackupError(f"{label}: {name!r} is in it twice")
                seen.add(name)
                _check_member(label, member, allowed)
                if member.isdir():
                    continue
                if member.size > max_bytes:
                    raise BackupError(
                        f"{label}: {name} would unpack to {member.size} bytes, more than the "
                        f"{max_bytes // (1024 * 1024)} MB allowed for one file (restore --max-file-mb)"
                    )
                stream = archive.extractfile(member)
                if stream is None:  # pragma: no cover - _check_member let only regular files by
                    raise BackupError(f"{label}: {name} is not a regular file")
                if name == MANIFEST:
                    if member.size > MAX_MANIFEST:
                        raise BackupError(f"{label}: its manifest is too large to be one")
                    manifest = _read_manifest(label, stream.read(), allowed)
                    if manifest["format"] == 2:
                        if sizes:
                            raise BackupError(f"{label}: its manifest is not its first file")
                        declared = manifest["files"]
                    continue
                if declared is not None:
                    expected = declared.get(name)
                    if expected is None:
                        raise BackupError(f"{label}: {name} is not in the manifest")
                    if member.size != expected["size"]:
                        raise BackupError(
                            f"{label}: {name} is {member.size} bytes, not the {expected['size']} its manifest says"
                        )
                digests[name] = _copy(stream, staging / name, member.size)
                sizes[name] = member.size
    except BackupError:
        raise
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BackupError(f"{label}: the disk is full; the archive could not be unpacked") from None
        raise BackupError(f"{label}: not a readable backup archive ({exc})") from None
    if manifest is None:
        raise BackupError(f"{label}: no {MANIFEST}; not a library_api backup")
    listed = manifest["files"]
    if set(listed) != set(sizes):
        missing, extra = sorted(set(listed) - set(sizes)), sorted(set(sizes) - set(listed))
        raise BackupError(f"{label}: files missing {missing} or not in the manifest {extra}")
    for name, digest in digests.items():
        if digest != listed[name]["sha256"] or listed[name]["size"] not in (None, sizes[name]):
            raise BackupError(f"{label}: {name} is damaged (its SHA-256 does not match)")
    unpacked = Unpacked(manifest, sizes)
    _check_contents(label, staging, unpacked, collections, validate)
    return unpacked


def _check_member(label: str, member: tarfile.TarInfo, allowed: set[str]) -> None:
    """Refuse a member whose name or type a backup never writes."""
    name = member.name
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
    ):
        raise BackupError(f"{label}: {name!r} is not a name a backup writes")
    if name == uploads.FOLDER:
        if not member.isdir():
            raise BackupError(f"{label}: {name!r} must be a folder, and is not")
        return
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = "a link" if member.issym() or member.islnk() else "a folder" if member.isdir() else "not a file"
        raise BackupError(f"{label}: {name!r} is {kind}; a backup holds only regular files")
    if len(parts) == 1 and name in allowed:
        return
    if len(parts) == 2 and parts[0] == uploads.FOLDER and uploads.NAME.fullmatch(parts[1]):
        return
    raise BackupError(f"{label}: {name!r} is not a file a backup writes")


def _read_manifest(label: str, data: bytes, allowed: set[str]) -> dict[str, Any]:
    """The manifest with ``files`` as name -> {"sha256", "size"} (size None for format 1)."""
    try:
        manifest = orjson.loads(data)
        listed = manifest["files"]
        version = manifest.get("format")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise BackupError(f"{label}: its manifest cannot be read") from None
    if version not in (1, 2) or type(version) is not int:
        raise BackupError(f"{label}: backup format {version!r} is not {FORMAT} (or 1)")
    if not isinstance(listed, dict):
        raise BackupError(f"{label}: its manifest cannot be read")
    files: dict[str, dict[str, Any]] = {}
    for name, entry in listed.items():
        sha, size = (entry, None) if version == 1 else (_get(entry, "sha256"), _get(entry, "size"))
        if not (isinstance(sha, str) and len(sha) == 64) or not (size is None or (type(size) is int and size >= 0)):
            raise BackupError(f"{label}: its manifest's entry for {name!r} cannot be read")
        if version == 2 and size is None:
            raise BackupError(f"{label}: its manifest gives no size for {name!r}")
        files[name] = {"sha256": sha, "size": size}
    return {**manifest, "files": files}


def _get(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else None


def _copy(stream: IO[bytes], path: Path, size: int) -> str:
    """Copy ``size`` bytes of ``stream`` to a new file (mode 600, fsync'd); their SHA-256."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                raise EOFError(f"{path.name} ends early")
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _check_contents(
    label: str, staging: Path, unpacked: Unpacked, collections: tuple[str, ...], validate: Validate
) -> None:
    """Every collection a backup writes present and valid, the journal a journal, a key (of an
    older backup, not installed) long enough."""
    names = set(unpacked.files)
    if unpacked.manifest["format"] == 2:
        required = {f"{name}.json" for name in collections} | {JOURNAL}
    else:  # an older backup held the files that existed; a library in use has these
        required = {"books.json", "members.json", JOURNAL}
    missing = sorted(required - names)
    if missing:
        raise BackupError(
            f"{label}: it lacks {', '.join(missing)}; restoring it would empty the library, so it is not a backup"
        )
    for name in collections:
        if f"{name}.json" in names:
            _check_collection(label, name, (staging / f"{name}.json").read_bytes(), validate)
    data = (staging / JOURNAL).read_bytes()
    try:
        parsed = journal.parse(data, Path(JOURNAL), 1, at_start=True)
    except (CorruptFileError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BackupError(f"{label}: {JOURNAL} is not a journal ({exc})") from None
    if parsed.floor is None or parsed.consumed != len(data):
        raise BackupError(f"{label}: {JOURNAL} is not a journal (it has lines after its last commit)")
    if KEY in names:
        key = (staging / KEY).read_bytes().strip()
        if len(key) < auth.MIN_SECRET_BYTES or not key.isascii() or not key.decode().isprintable():
            raise BackupError(f"{label}: its {KEY} is not a key (fewer than {auth.MIN_SECRET_BYTES} bytes)")


def _check_collection(label: str, name: str, data: bytes, validate: Validate) -> None:
    """A collection file as the store reads one: each record an object with its own positive id,
    each passing ``validate``."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"{label}: {name}.json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(name), list):
        raise BackupError(f"{label}: {name}.json has no list of {name}")
    if any(key in doc and type(doc[key]) is not int for key in ("seq", "next_id")):
        raise BackupError(f"{label}: {name}.json has a header that is not whole numbers")
    seen: set[int] = set()
    for index, record in enumerate(doc[name], 1):
        rid = record.get("id") if isinstance(record, dict) else None
        if not isinstance(record, dict):
            problem = "is not an object"
        elif type(rid) is not int or rid < 1:
            problem = 'has no "id" that is a positive whole number'
        elif rid in seen:
            problem = f'has the "id" {rid} of another record'
        else:
            problem = validate(name, record)
        if problem:
            raise BackupError(f"{label}: {name}.json, record {index}: {problem}")
        seen.add(rid)
    if name == auth.LIBRARY and len(seen) > 1:
        raise BackupError(f"{label}: {name}.json holds more than one library")


# -- restore: the swap -------------------------------------------------------------------------------


def has_data(directory: Path) -> bool:
    """Whether the data directory holds anything a restore would overwrite."""
    if not directory.exists():
        return False
    return any(
        p.name != LOCK and not p.name.startswith(".") and (p.is_file() or any(p.iterdir())) for p in directory.iterdir()
    )


def restore(
    archive_path: Path,
    directory: Path,
    collections: Iterable[str],
    force: bool,
    validate: Validate,
    max_file_mb: int = MAX_FILE_MB,
) -> Path | None:
    """Put a backup back into ``directory``: checked whole first (:func:`unpack`), then swapped in
    crash-safely. Data already there is refused without ``force``, and with it moved aside
    (returned), never deleted. The library keeps its identity and its own signing key, and its
    token generation moves past both its own and the archive's, so every token issued before
    (here, or by the library the archive came from) stops working.

    :raises BackupError: for a bad archive, data in the way without ``force``, or a lock held.
    """
    collections = tuple(collections)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if has_data(directory) and not force:
        raise BackupError(
            f"{directory} already holds data; restoring would replace it. Stop the server, then run "
            "restore again with --force (the current data is kept aside, not deleted)"
        )
    finish_restore(directory)
    try:
        lock = FileLock(directory / LOCK, thread_local=False).acquire(timeout=30)
    except Timeout:
        raise BackupError(f"{directory} is locked by a server that is writing; stop it, then restore") from None
    with lock:
        staging = directory / f"{STAGING}{uuid.uuid4().hex[:12]}"
        staging.mkdir(mode=0o700)
        (staging / uploads.FOLDER).mkdir(mode=0o700)
        try:
            unpacked = unpack(archive_path, staging, collections, max_file_mb * 1024 * 1024, validate)
            _prepare(directory, staging, unpacked)
            aside = f"{KEPT_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            plan = {"staging": staging.name, "aside": aside, "names": sorted(os.listdir(staging))}
            tmp, _ = journal.write_temp(directory / PENDING, [orjson.dumps(plan)])
            os.replace(tmp, directory / PENDING)  # from here on the new library is the library
            fsync_dir(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _swap(directory, plan)


def finish_restore(directory: Path) -> None:
    """At start-up: complete a restore a crash cut short after its archive was checked and staged
    (the marker says so), and remove staging folders a crash left before that."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    if PENDING not in names and not any(n.startswith(STAGING) for n in names):
        return
    with FileLock(directory / LOCK, thread_local=False).acquire(timeout=60):
        marker = directory / PENDING
        if marker.exists():
            try:
                plan = orjson.loads(marker.read_bytes())
            except orjson.JSONDecodeError:
                raise BackupError(f"{marker} cannot be read; finish or undo the restore by hand") from None
            _swap(directory, plan)
        for name in os.listdir(directory):
            if name.startswith(STAGING):
                shutil.rmtree(directory / name, ignore_errors=True)


def _swap(directory: Path, plan: Mapping[str, Any]) -> Path | None:
    """Move the old library aside and the staged one in, as the marker's plan says. Each step can
    be done again after a crash: a name still in the staging folder has not been moved in yet."""
    staging, aside = directory / plan["staging"], directory / plan["aside"]
    names = set(plan["names"])
    aside.mkdir(mode=0o700, exist_ok=True)
    for name in sorted(os.listdir(directory)):
        if name in KEEP or name in (staging.name, aside.name) or name.startswith((KEPT_ASIDE, STAGING, ".backup-")):
            continue
        if name in names and not (staging / name).exists():
            continue  # already the new library's
        os.replace(directory / name, aside / name)  # the old library's (its journal's head hint too)
    fsync_dir(aside)
    for name in sorted(names):
        if (staging / name).exists():
            os.replace(staging / name, directory / name)
    fsync_dir(directory)
    (directory / PENDING).unlink(missing_ok=True)
    fsync_dir(directory)
    shutil.rmtree(staging, ignore_errors=True)
    if not any(aside.iterdir()):
        aside.rmdir()
        return None
    return aside


def _prepare(directory: Path, staging: Path, unpacked: Unpacked) -> None:
    """Make the staged files the new library: the journal starts again after every seq either
    library used (so a server still running here reloads the files instead of taking them for an
    older copy of its own); the library keeps its identity, with a generation past both; an older
    archive's signing key is not installed."""
    (staging / KEY).unlink(missing_ok=True)
    old_journal = _read(directory / JOURNAL)
    new_journal = (staging / JOURNAL).read_bytes()
    floor = max(_last_seq_of(old_journal) + 1, _last_seq_of(new_journal))
    _write(staging / JOURNAL, journal.encode_header(floor))
    here = _library_in(_read(directory / f"{auth.LIBRARY}.json"))
    there = _library_in(_read(staging / f"{auth.LIBRARY}.json"))
    generation = 1 + max(
        here.get("generation", 0),
        there.get("generation", 0),
        _generation_in_journal(old_journal),
        _generation_in_journal(new_journal),
    )
    identity = here.get("identity") or auth.new_library()["identity"]
    record = {"id": 1, "identity": identity, "generation": generation}
    _write(staging / f"{auth.LIBRARY}.json", orjson.dumps({"seq": 0, "next_id": 2, auth.LIBRARY: [record]}))
    for folder in (staging / uploads.FOLDER, staging):
        fsync_dir(folder)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _write(path: Path, data: bytes) -> None:
    tmp, _ = journal.write_temp(path, [data])
    os.replace(tmp, path)


def _library_in(data: bytes) -> dict[str, Any]:
    """The identity record of a ``library.json``'s bytes, {} when there is none or it is not one."""
    try:
        records = orjson.loads(data)[auth.LIBRARY] if data else []
        record = records[0] if records else {}
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return {}
    good = (
        isinstance(record, dict) and type(record.get("generation")) is int and isinstance(record.get("identity"), str)
    )
    return record if good and len(record["identity"]) >= 16 else {}


def _generation_in_journal(data: bytes) -> int:
    """The highest generation a journal's lines give the library (changes not yet in its file)."""
    highest = 0
    for line in data.splitlines():
        if b'"library"' not in line:
            continue
        try:
            entry = orjson.loads(line)
            generation = entry["record"]["generation"] if entry.get("collection") == auth.LIBRARY else 0
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
        if type(generation) is int:
            highest = max(highest, generation)
    return highest


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
        for name in ("cover_url", "document_url"):
            url = book.get(name)
            if url:
                names.add(url.rsplit("/", 1)[-1])
    return names


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time())
    info.mode = 0o600
    return info


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    archive.addfile(_info(name, len(data)), io.BytesIO(data))


def _described(data: bytes) -> dict[str, Any]:
    return {"sha256": _sha256(data), "size": len(data)}


def _described_stream(stream: IO[bytes]) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
