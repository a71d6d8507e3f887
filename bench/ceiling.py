"""The ceiling: a bare WSGI app that answers fixed bytes, for run.py to serve with gunicorn exactly
as library_api is served (gunicorn.conf.py: same worker class, workers and threads).

run.py captures library_api's real answer to each read scenario once (status, headers and body),
writes it into the directory named by ``BENCH_CEILING_DIR`` as ``<name>.body`` + ``<name>.json``,
and starts::

    gunicorn --config gunicorn.conf.py --pythonpath bench ceiling:app

Then ``GET /<name>`` answers those bytes, with nothing computed per request: the req/s of this app
is what gunicorn, the network stack and wrk manage on this machine for an answer of that size, the
most library_api could reach. ``GET /healthz`` answers ``{"ok": true}`` (run.py waits for it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

# Headers that gunicorn writes itself (or that describe the captured connection, not the answer).
HOP_HEADERS = {"connection", "content-length", "date", "keep-alive", "server", "transfer-encoding"}

Answer = tuple[str, list[tuple[str, str]], list[bytes]]


def fixed(status: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
    """One prepared answer: its status line, its headers with Content-Length, its body."""
    kept = [(name, value) for name, value in headers if name.lower() not in HOP_HEADERS]
    return status, [*kept, ("Content-Length", str(len(body)))], [body]


def load(directory: Path) -> dict[str, Answer]:
    """The answers captured in ``directory``, by path."""
    answers = {"/healthz": fixed("200 OK", [("Content-Type", "application/json")], b'{"ok": true}')}
    for body_file in sorted(directory.glob("*.body")):
        meta = json.loads(body_file.with_suffix(".json").read_text(encoding="utf-8"))
        answers["/" + body_file.stem] = fixed(
            meta["status"], [tuple(h) for h in meta["headers"]], body_file.read_bytes()
        )
    return answers


ANSWERS = load(Path(os.environ["BENCH_CEILING_DIR"]))
NOT_FOUND = fixed("404 NOT FOUND", [("Content-Type", "text/plain")], b"not captured\n")


def app(environ: dict, start_response: Callable[..., object]) -> Iterable[bytes]:
    """Answer the prepared bytes for the request's path."""
    status, headers, body = ANSWERS.get(environ["PATH_INFO"], NOT_FOUND)
    start_response(status, list(headers))
    return body
