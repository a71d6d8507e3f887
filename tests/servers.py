"""Running the real server for tests: gunicorn as the Procfile starts it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from storage import Store

ROOT = Path(__file__).resolve().parent.parent


running: dict[int, subprocess.Popen] = {}
"""The gunicorn master of each server started by :func:`gunicorn_server`, by port."""

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"

librarian: dict[int, dict[str, str]] = {}
"""Headers signing a librarian in, for each server started by :func:`gunicorn_server`, by port."""


def sign_in(data_dir: Path, role: str = "member", count: int = 1) -> list[dict[str, str]]:
    """Put ``count`` members with ``role`` into the data directory (another process writing it,
    as any worker does) and return the headers of requests signed in as each of them."""
    from library.records import COLLECTIONS
    from storage import JsonStore

    return sign_in_to(JsonStore(data_dir, COLLECTIONS), role, count)


def sign_in_to(store: Store, role: str = "member", count: int = 1) -> list[dict[str, str]]:
    """Put ``count`` members with ``role`` into ``store`` (which is then closed) and return the
    headers of requests signed in as each of them."""
    from library import auth, members

    tag = f"{os.getpid()}-{time.monotonic_ns()}"

    def add(txn: object) -> list[dict[str, object]]:
        return [
            members.create(
                txn,
                {"email": f"{role}-{tag}-{i}@example.org", "first_name": "T", "last_name": "T"},
                "2026-01-01T00:00:00Z",
                None,
                role,
            )
            for i in range(count)
        ]

    people = store.update(add)
    library = store.update(auth.ensure_library)
    store.close()
    return [
        {
            "Authorization": f"Bearer {auth.issue_token(SECRET.encode(), m, 3600, library)}",
            "Content-Type": "application/json",
        }
        for m in people
    ]


def sign_in_librarian(data_dir: Path) -> dict[str, str]:
    return sign_in(data_dir, "librarian")[0]


def get_json(port: int, path: str) -> tuple[int, object]:
    """One GET on its own connection: status and parsed body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll /healthz until it answers 200; fail if the server exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)  # readiness polling, not a timing assumption
    raise RuntimeError("the server did not become healthy in time")


@contextlib.contextmanager
def gunicorn_server(data_dir: Path, workers: int = 2, **env: str) -> Iterator[int]:
    """Run gunicorn with the project's config on a free port; yields the port."""
    port = free_port()
    environment = {
        **os.environ,
        "LIBRARY_DATA_DIR": str(data_dir),
        "LIBRARY_SEED_FILE": "",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": str(workers),
        "LIBRARY_SECRET_KEY": SECRET,
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "library_api:create_app()"]
    log_path = Path(data_dir).parent / f"gunicorn-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - a file, not a pipe: a full pipe would stall the server
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    running[port] = process
    try:
        wait_until_healthy(port, process)
        librarian[port] = sign_in_librarian(Path(data_dir))
        yield port
    finally:
        running.pop(port, None)
        librarian.pop(port, None)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
