"""Restores that cannot be turned against the server, and backups kept safe.

Every crafted archive here carries a correct manifest: its checksums are ones anyone can compute,
so they prove nothing about who made it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from library import auth, operations, records
from library.records import COLLECTIONS
from library_api import create_app
from storage import JsonStore
from tests.conftest import ROOT, TEST_SECRET, client_as
from tests.servers import SECRET, gunicorn_server
from tests.test_operations import flask

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + bytes(40)
UPLOAD = "0123456789abcdef0123456789abcdef.png"


# -- helpers ---------------------------------------------------------------------------------------


def library(directory: Path, title: str, with_cover: bool = False) -> None:
    """A small library in ``directory``: a book titled ``title``, a member, optionally a cover."""
    app = create_app({"DATA_DIR": str(directory), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    librarian = client_as(app, "librarian", f"{title.lower()}@example.org")
    book = librarian.post("/books", json={"title": title, "author": "A"}).get_json()
    if with_cover:
        librarian.post(
            f"/books/{book['id']}/cover", data={"file": (io.BytesIO(PNG), "c.png")}, content_type="multipart/form-data"
        )
    app.extensions["library_store"].close()


def backup_of(directory: Path, archive: Path) -> Path:
    result = flask(directory, "backup", str(archive))
    assert result.returncode == 0, result.stderr
    return archive


def members_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as made:
        return {m.name: made.extractfile(m).read() for m in made.getmembers() if m.name != operations.MANIFEST}


def craft(path: Path, files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """An archive of ``files`` with a correct format-2 manifest first, then whatever ``extra`` adds."""
    manifest = {
        "format": 2,
        "seq": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
    }
    with tarfile.open(path, "w:gz") as out:
        for name, data in {operations.MANIFEST: orjson.dumps(manifest), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(out)
    return path


def state(directory: Path) -> dict[str, object]:
    """What a person sees of a library: its records (but the identity record and the lockout) and
    its uploads. Opening it through the app completes or undoes a restore cut short."""
    app = create_app({"DATA_DIR": str(directory), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "TESTING": True})
    snap = app.extensions["library_store"].snapshot()
    seen = {c: dict(snap.records(c)) for c in COLLECTIONS if c not in ("library", "logins")}
    folder = directory / "uploads"
    seen["uploads"] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    app.extensions["library_store"].close()
    return seen


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "library.lock"
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A real backup (with a cover) and its files."""
    base = tmp_path_factory.mktemp("good")
    library(base / "data", "Archived", with_cover=True)
    archive = backup_of(base / "data", base / "good.tar.gz")
    return archive, members_of(archive)


# -- crafted archives ------------------------------------------------------------------------------


def _symlink(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("uploads/" + UPLOAD)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    out.addfile(info)


def _hardlink(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("uploads/" + UPLOAD)
    info.type, info.linkname = tarfile.LNKTYPE, "books.json"
    out.addfile(info)


def _fifo(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("uploads/" + UPLOAD)
    info.type = tarfile.FIFOTYPE
    out.addfile(info)


def _folder(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("keys")
    info.type = tarfile.DIRTYPE
    out.addfile(info)


def _with(files: dict[str, bytes], **changes: bytes | None) -> dict[str, bytes]:
    changed = dict(files)
    for name, data in changes.items():
        if data is None:
            changed.pop(name, None)
        else:
            changed[name] = data
    return changed


def _records(name: str, records: list) -> bytes:
    return orjson.dumps({"seq": 1, "next_id": 9, name: records})


CRAFTED: dict[str, tuple[Callable[[dict[str, bytes]], dict[str, bytes]], Callable | None, str]] = {
    "a regular file named uploads": (lambda f: _with(f, uploads=b"not a folder"), None, "must be a folder"),
    "a garbage journal": (lambda f: _with(f, **{"journal.jsonl": b"garbage\n"}), None, "journal.jsonl is not"),
    "a journal with a torn last line": (
        lambda f: _with(f, **{"journal.jsonl": f["journal.jsonl"] + b'{"seq": 99, "op"'}),
        None,
        "journal.jsonl is not",
    ),
    "members without ids": (
        lambda f: _with(
            f,
            **{
                "members.json": _records(
                    "members", [{"email": "a@b.c", "first_name": "A", "last_name": "B", "role": "admin"}]
                )
            },
        ),
        None,
        "positive whole number",
    ),
    "a member with an unknown role": (
        lambda f: _with(
            f,
            **{
                "members.json": _records(
                    "members", [{"id": 1, "email": "a@b.c", "first_name": "A", "last_name": "B", "role": "root"}]
                )
            },
        ),
        None,
        '"role" must be one of',
    ),
    "two books with one id": (
        lambda f: _with(f, **{"books.json": _records("books", [{"id": 1, "title": "T", "author": "A"}] * 2)}),
        None,
        "of another record",
    ),
    "books that are not a list": (lambda f: _with(f, **{"books.json": b'{"books": {}}'}), None, "no list of books"),
    "a collection that is not JSON": (lambda f: _with(f, **{"loans.json": b"{"}), None, "not valid JSON"),
    "a short secret.key": (lambda f: _with(f, **{"secret.key": b"short\n"}), None, "secret.key is not a key"),
    "only its manifest": (lambda f: {}, None, "would empty the library"),
    "no members file": (lambda f: _with(f, **{"members.json": None}), None, "lacks members.json"),
    "a foreign gunicorn.conf.py": (
        lambda f: _with(f, **{"gunicorn.conf.py": b"import os; os.system('id')\n"}),
        None,
        "not a file a backup writes",
    ),
    "a ../ name": (lambda f: _with(f, **{"../escaped.json": b"{}"}), None, "not a name a backup writes"),
    "an absolute name": (lambda f: _with(f, **{"/tmp/escaped.json": b"{}"}), None, "not a name a backup writes"),
    "a hidden name": (lambda f: _with(f, **{".journal.head": b"999"}), None, "not a name a backup writes"),
    "an upload with a name we never generate": (
        lambda f: _with(f, **{"uploads/shell.php": b"<?php"}),
        None,
        "not a file a backup writes",
    ),
    "an upload in a sub-folder": (
        lambda f: _with(f, **{f"uploads/x/{UPLOAD}": PNG}),
        None,
        "not a file a backup writes",
    ),
    "a symbolic link": (lambda f: f, _symlink, "is a link"),
    "a hard link": (lambda f: f, _hardlink, "is a link"),
    "a fifo": (lambda f: f, _fifo, "not a file"),
    "a folder other than uploads": (lambda f: f, _folder, "is a folder"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_archive_is_refused_before_anything_is_touched(tmp_path, good, case):
    _, files = good
    change, extra, reason = CRAFTED[case]
    archive = craft(tmp_path / "crafted.tar.gz", change(files), extra)
    target = tmp_path / "target"
    library(target, "Current")
    before = fingerprint(target)
    result = flask(target, "restore", str(archive), "--force")
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert reason in result.stderr, result.stderr
    assert fingerprint(target) == before  # nothing of the archive written, nothing moved aside
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".restore")) == []
    assert not (tmp_path / "escaped.json").exists() and not Path("/tmp/escaped.json").exists()
    assert state(target)["books"][1]["title"] == "Current"


def test_a_file_larger_than_its_manifest_says_is_refused_at_its_header(tmp_path, good):
    _, files = good
    archive = tmp_path / "lying.tar.gz"
    craft(archive, files)
    with tarfile.open(archive) as made:
        entries = [(m, made.extractfile(m).read()) for m in made.getmembers()]
    with tarfile.open(archive, "w:gz") as out:
        for info, data in entries:
            if info.name == "books.json":
                data = data + b" " * 4096
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    result = flask(tmp_path / "target", "restore", str(archive))
    assert result.returncode == 1 and "not the" in result.stderr and "its manifest says" in result.stderr


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


MEASURE = """
import resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.monotonic() - started)
print(done.stderr, file=sys.stderr)
"""


def test_a_small_archive_of_a_gibibyte_of_zeros_is_refused_fast_in_little_memory(tmp_path, good):
    _, files = good
    size = 1 << 30
    digest = hashlib.sha256()
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(chunk)
    archive = tmp_path / "bomb.tar.gz"
    craft(archive, {**files, "books.json": b""})
    # the same archive, but books.json a gibibyte of zeros that the manifest declares truthfully
    with tarfile.open(archive) as made:
        entries = [(m, made.extractfile(m).read()) for m in made.getmembers()]
    manifest = orjson.loads(entries[0][1])
    manifest["files"]["books.json"] = {"sha256": digest.hexdigest(), "size": size}
    with tarfile.open(archive, "w:gz", compresslevel=9) as out:
        for info, data in entries:
            if info.name == operations.MANIFEST:
                data = orjson.dumps(manifest)
                info.size = len(data)
            if info.name == "books.json":
                info.size = size
                out.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))
                continue
            out.addfile(info, io.BytesIO(data))
    assert archive.stat().st_size < 2 * 1024 * 1024  # a 1 MB archive
    target = tmp_path / "target"
    env = {**os.environ, "LIBRARY_DATA_DIR": str(target), "LIBRARY_SEED_FILE": "", "LIBRARY_SECRET_KEY": SECRET}
    command = [sys.executable, "-m", "flask", "--app", "library_api", "restore", str(archive)]
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    code, peak_kib, seconds = measured.stdout.split()
    assert code == "1" and "more than the 512 MB allowed" in measured.stderr, measured.stderr
    print(f"1 GiB-of-zeros archive refused in {float(seconds):.2f} s, peak RSS {int(peak_kib) // 1024} MiB")
    assert int(peak_kib) < 250 * 1024  # what the app needs to start; it took 1.1 GB before
    assert float(seconds) < 60
    assert not (target / "books.json").exists()


# -- what a restore leaves ------------------------------------------------------------------------


def test_restored_files_have_the_modes_of_a_new_library(tmp_path, good):
    archive, _ = good
    target = tmp_path / "target"
    library(target, "Current", with_cover=True)
    result = flask(target, "restore", str(archive), "--force")
    assert result.returncode == 0, result.stderr
    (aside,) = target.glob(operations.KEPT_ASIDE + "*")
    assert stat.S_IMODE(aside.stat().st_mode) == 0o700
    for path in target.rglob("*"):
        if path.name == "library.lock" or aside in path.parents:
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert len(list((target / "uploads").iterdir())) == 1


def test_a_restore_keeps_the_identity_and_moves_the_generation_past_both_libraries(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    library(source, "Archived")
    library(target, "Current")
    for _ in range(3):  # the archive's library is at generation 4
        JsonStore(source, COLLECTIONS).update(auth.sign_everyone_out)
    archive = backup_of(source, tmp_path / "b.tar.gz")
    store = JsonStore(target, COLLECTIONS)
    here = auth.library_of(store.snapshot())
    store.close()
    assert flask(target, "restore", str(archive), "--force").returncode == 0
    store = JsonStore(target, COLLECTIONS)
    after = auth.library_of(store.snapshot())
    store.close()
    assert after["identity"] == here["identity"]
    assert after["generation"] == 5


# -- the mallory scenario, through real processes ---------------------------------------------------


def call(port: int, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def join(port: int, name: str) -> tuple[int, str]:
    person = {"email": f"{name}@example.org", "password": f"{name} has a long passphrase 42"}
    status, member = call(port, "POST", "/auth/register", {**person, "first_name": name.title(), "last_name": "X"})
    assert status == 201, member
    status, body = call(port, "POST", "/auth/login", person)
    assert status == 200, body
    return member["id"], body["access_token"]


def test_after_a_restore_an_old_token_does_not_act_as_the_member_who_gets_its_id(tmp_path):
    data = tmp_path / "data"
    archive = tmp_path / "before-mallory.tar.gz"
    with gunicorn_server(data, workers=1) as port:
        join(port, "alice")
        backup_of(data, archive)
        mallory_id, mallory = join(port, "mallory")
        assert call(port, "GET", "/members/me", token=mallory)[0] == 200
    result = flask(data, "restore", str(archive), "--force")
    assert result.returncode == 0, result.stderr
    with gunicorn_server(data, workers=1) as port:
        kate_id, kate = join(port, "kate")
        store = JsonStore(data, COLLECTIONS)
        someone = store.snapshot().get("members", mallory_id)
        store.close()
        assert someone["email"] != "mallory@example.org"  # the ids rolled back: another member has mallory's
        status, body = call(port, "GET", "/members/me", token=mallory)
        assert status == 401 and body["detail"] == "The token is no longer valid; sign in again"
        assert call(port, "GET", "/loans", token=mallory)[0] == 401
        assert call(port, "GET", "/members/me", token=kate)[1]["email"] == "kate@example.org"


# -- SIGKILL during a restore ------------------------------------------------------------------------

HELPER = """
import os, sys, time
from library_api import create_app
print("ready", flush=True)
for line in sys.stdin:
    data_dir, archive = line.split()
    child = os.fork()
    if child == 0:
        os.environ["LIBRARY_DATA_DIR"] = data_dir
        started = time.monotonic()
        app = create_app()
        opened = time.monotonic() - started
        result = app.test_cli_runner().invoke(args=["restore", "--force", archive])
        with open(data_dir + ".timing", "w") as timing:  # when the restore began, and ended
            timing.write(f"{opened} {time.monotonic() - started} {result.exit_code}")
        os._exit(0)
    print(child, flush=True)
    print(os.waitpid(child, 0)[1], flush=True)
"""


def test_sigkill_at_random_moments_of_a_restore_leaves_the_old_library_or_the_new(tmp_path, good):
    archive, _ = good
    template = tmp_path / "template"
    library(template, "Current", with_cover=True)
    old = state(template)
    new = state(_restored_copy(tmp_path, template, archive))
    assert old != new
    env = {**os.environ, "LIBRARY_SEED_FILE": "", "LIBRARY_SECRET_KEY": SECRET, "LIBRARY_WARN_EPHEMERAL_DISK": "0"}
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert helper.stdout.readline().strip() == "ready"

        def run(directory: Path, kill_after: float | None) -> int:
            helper.stdin.write(f"{directory} {archive}\n")
            helper.stdin.flush()
            child = int(helper.stdout.readline())
            if kill_after is not None:
                time.sleep(kill_after)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            return int(helper.stdout.readline())

        timed = tmp_path / "timed"
        shutil.copytree(template, timed)
        assert run(timed, None) == 0
        began, ended, code = (tmp_path / "timed.timing").read_text().split()
        assert code == "0"
        began, ended = float(began), float(ended)
        rng = random.Random(15)
        outcomes = {"old": 0, "new": 0, "cut in the swap": 0}
        for attempt in range(100):
            directory = tmp_path / f"kill-{attempt}"
            shutil.copytree(template, directory)
            # during the restore itself, and every other time near its end, where the swap is
            run(directory, rng.uniform(began * 0.9, ended * 1.1) if attempt % 2 else rng.uniform(ended * 0.8, ended))
            if (directory / operations.PENDING).exists():
                outcomes["cut in the swap"] += 1
            seen = state(directory)  # the next start: recovers, and the store opens
            assert seen in (old, new), f"attempt {attempt}: neither the old library nor the new"
            outcomes["old" if seen == old else "new"] += 1
            assert not [p for p in directory.iterdir() if p.name.startswith(".restore")]
            shutil.rmtree(directory)
        print(f"100 SIGKILLs between {began:.3f} s and {ended:.3f} s after the command started: {outcomes}")
        assert outcomes["old"] and outcomes["new"]
    finally:
        helper.stdin.close()
        helper.wait(timeout=30)
        helper.stdout.close()


def _restored_copy(tmp_path: Path, template: Path, archive: Path) -> Path:
    copy = tmp_path / "restored-once"
    shutil.copytree(template, copy)
    assert flask(copy, "restore", str(archive), "--force").returncode == 0
    return copy


class Crash(BaseException):
    """A stand-in for the power going off between two renames."""


def test_a_crash_between_any_two_renames_of_the_swap_is_completed_at_the_next_start(tmp_path, good, monkeypatch):
    archive, _ = good
    template = tmp_path / "template"
    library(template, "Current", with_cover=True)
    old = state(template)
    new = state(_restored_copy(tmp_path, template, archive))
    real_replace = os.replace
    step = 0
    while True:
        directory = tmp_path / f"crash-{step}"
        shutil.copytree(template, directory)
        calls = 0

        def replace(src, dst, *, _limit=step):
            nonlocal calls
            calls += 1
            if calls > _limit:
                raise Crash
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            operations.restore(archive, directory, COLLECTIONS, True, lambda name, record: None)
            finished = True
        except Crash:
            finished = False
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        assert state(directory) in (old, new), f"a crash after {step} renames"
        if finished:
            break
        step += 1
    assert step > 10  # every rename of the staging, the marker and the swap was cut once


# -- backup ---------------------------------------------------------------------------------------


def test_backup_writes_by_default_into_a_private_backups_folder_beside_the_data(tmp_path):
    data = tmp_path / "site" / "data"
    library(data, "Current")
    result = flask(data, "backup")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "site" / "backups"
    (archive,) = folder.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert archive.name.startswith("library-backup-") and archive.name.endswith(".tar.gz")
    assert not list(Path(ROOT).glob("library-backup-*"))  # not into the current folder


def test_backup_refuses_a_git_work_tree_unless_told(tmp_path):
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    data = clone / "instance"
    library(data, "Current")
    refused = flask(data, "backup")
    assert refused.returncode == 1 and "--allow-git-tree" in refused.stderr and "Traceback" not in refused.stderr
    assert not (clone / "backups").exists() or not list((clone / "backups").iterdir())
    explicit = flask(data, "backup", str(clone / "b.tar.gz"))
    assert explicit.returncode == 1 and not (clone / "b.tar.gz").exists()
    allowed = flask(data, "backup", "--allow-git-tree")
    assert allowed.returncode == 0, allowed.stderr
    outside = flask(data, "backup", str(tmp_path / "elsewhere" / "b.tar.gz"))
    assert outside.returncode == 0, outside.stderr


def test_backup_on_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path):
    data, full = tmp_path / "data", tmp_path / "full"
    library(data, "Current")
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with contextlib.suppress(OSError):
            (full / "filler").write_bytes(b"x" * 65536)  # the disk full
        result = flask(data, "backup", str(full / "b.tar.gz"))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "the disk is full" in result.stderr, result.stderr
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_two_hundred_randomly_damaged_archives_are_each_refused_cleanly_or_restored_whole(tmp_path, good):
    """Bytes of the tar inside the gzip flipped, cut or repeated (the gzip layer is made again, so
    the damage reaches the tar reader): each restore either refuses with a BackupError, touching
    nothing, or restores a library that opens. Never another exception."""
    archive, _ = good
    tar = gzip.decompress(archive.read_bytes())
    template = tmp_path / "template"
    library(template, "Current")
    before = fingerprint(template)
    rng = random.Random(200)
    outcomes = {"refused": 0, "restored": 0}
    for attempt in range(200):
        damaged = bytearray(tar)
        kind = attempt % 3
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:
            del damaged[rng.randrange(len(damaged)) :]
        else:
            start = rng.randrange(len(damaged))
            damaged[start:start] = damaged[start : start + rng.randint(1, 2048)]
        path = tmp_path / "damaged.tar.gz"
        path.write_bytes(gzip.compress(bytes(damaged)))
        target = tmp_path / f"target-{attempt}"
        shutil.copytree(template, target)
        try:
            operations.restore(path, target, COLLECTIONS, True, records.problem)
        except operations.BackupError:
            assert fingerprint(target) == before, f"attempt {attempt}"
            outcomes["refused"] += 1
        else:
            state(target)  # opens
            outcomes["restored"] += 1
        assert not [p for p in target.iterdir() if p.name.startswith(".restore")]
        shutil.rmtree(target)
    print(f"200 damaged archives: {outcomes}")


@pytest.mark.parametrize("version", [True, "2", 3, None])
def test_a_manifest_of_an_unknown_format_is_refused(tmp_path, good, version):
    _, files = good
    archive = craft(tmp_path / "odd.tar.gz", files)
    with tarfile.open(archive) as made:
        entries = [(m, made.extractfile(m).read()) for m in made.getmembers()]
    with tarfile.open(archive, "w:gz") as out:
        for info, data in entries:
            if info.name == operations.MANIFEST:
                data = orjson.dumps({**orjson.loads(data), "format": version})
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    with pytest.raises(operations.BackupError, match="backup format"):
        operations.restore(archive, tmp_path / "target", COLLECTIONS, True, records.problem)


def test_a_manifest_too_large_to_be_one_is_refused(tmp_path, good):
    _, files = good
    archive = tmp_path / "big-manifest.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        info = tarfile.TarInfo(operations.MANIFEST)
        info.size = operations.MAX_MANIFEST + 1
        out.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    with pytest.raises(operations.BackupError, match="too large to be one"):
        operations.restore(archive, tmp_path / "target", COLLECTIONS, True, records.problem)


def test_an_empty_collection_comes_back_with_its_ids_from_one(tmp_path, good):
    archive, files = good
    assert orjson.loads(files["loans.json"]) == {"seq": 0, "next_id": 1, "loans": []}  # never written there
    target = tmp_path / "target"
    operations.restore(archive, target, COLLECTIONS, True, records.problem)
    store = JsonStore(target, COLLECTIONS)
    try:
        hold = {"book_id": 1, "member_id": 1, "status": "waiting", "created_at": "2026-01-01T00:00:00Z"}
        assert store.update(lambda txn: txn.insert("holds", hold))["id"] == 1
    finally:
        store.close()


def test_a_generation_still_only_in_the_journal_is_passed_too(tmp_path, good):
    """A sign-out-everyone not yet checkpointed into library.json still counts."""
    archive, _ = good
    target = tmp_path / "target"
    library(target, "Current")
    store = JsonStore(target, COLLECTIONS, checkpoint_changes=1000)
    for _ in range(4):
        store.update(auth.sign_everyone_out)  # generation 5, in the journal only
    assert orjson.loads((target / "library.json").read_bytes())["library"][0]["generation"] == 1
    operations.restore(archive, target, COLLECTIONS, True, records.problem)
    store = JsonStore(target, COLLECTIONS)
    try:
        assert auth.library_of(store.snapshot())["generation"] == 6
    finally:
        store.close()
