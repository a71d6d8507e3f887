"""A PostgreSQL server for the tests, and a fresh database for each test.

``LIBRARY_TEST_DATABASE_URL`` names a server to use (a database the tests may create databases
from, e.g. ``postgresql://postgres@localhost/postgres``). Without it, a throwaway cluster is started
with ``initdb``/``pg_ctl`` in a temporary folder, run as an unprivileged user when the tests run as
root (PostgreSQL refuses to run as root), and stopped at exit. Without either, the tests that need
PostgreSQL fail, saying how to get it: they never pass without it.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

HOW = (
    "These tests need PostgreSQL: install it (Debian/Ubuntu: `apt-get install postgresql`, which "
    "provides initdb and pg_ctl) or set LIBRARY_TEST_DATABASE_URL to a server the tests may create "
    "databases on."
)

_lock = threading.RLock()
_server: str | None = None
_template_ready = False


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster() -> str:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail(HOW, pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="library-pg-"))
    data = folder / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = os.environ.get("LIBRARY_TEST_PG_USER", "nobody")
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "HOME": str(folder)}
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, env=env, cwd=folder,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=300 -c fsync=on"
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"],
        check=True, capture_output=True, env=env, cwd=folder,
    )  # fmt: skip

    def stop() -> None:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def server() -> str:
    """The URL of the server's maintenance database (started on first use)."""
    global _server
    with _lock:
        if _server is None:
            _server = os.environ.get("LIBRARY_TEST_DATABASE_URL") or _start_cluster()
        return _server


def _url_of(name: str) -> str:
    base = server()
    return base.rsplit("/", 1)[0] + "/" + name


def _template() -> str:
    """A database with the schema applied, copied for each test (much faster than migrating)."""
    global _template_ready
    from storage.postgres import migrate

    name = "library_test_template"
    with _lock:
        if not _template_ready:
            with psycopg.connect(server(), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name}")
                conn.execute(f"CREATE DATABASE {name}")
            migrate(_url_of(name))
            _template_ready = True
    return name


def fresh_database(tag: str) -> str:
    """The URL of a new, empty (migrated) database for one test."""
    name = "t_" + hashlib.sha1(f"{tag}-{os.getpid()}".encode()).hexdigest()[:20]
    template = _template()
    with psycopg.connect(server(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _url_of(name)


_by_place: dict[str, str] = {}


def database_for(place: Path) -> str:
    """The database of one place (the same URL each time the same place is opened)."""
    key = str(place)
    if key not in _by_place:
        _by_place[key] = fresh_database(key)
    return _by_place[key]


def drop_database(url: str) -> None:
    """Remove a database made by :func:`fresh_database` (its connections are cut)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
