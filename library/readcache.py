"""A response cache in front of the Flask app for the catalogue's public GET routes.

Most requests to a library catalogue are the same few pages asked again and again (page 1, a genre,
a search) by pages that poll. Flask's own request handling costs more than serving such a page from
memory, so this WSGI layer answers a repeated GET from the bytes Flask produced the first time, for
as long as the data they came from has not changed.

Only responses the app marks cacheable are kept (it puts ``library.cache_version`` in the WSGI
environ: the data version its answer was computed from). A kept answer is served only while
``current_version()`` still returns that version, so a write by any worker, or a hand edit of a data
file, is seen on the very next request. Requests with credentials or cookies always go to the app.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.http import parse_etags

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ENVIRON_KEY = "library.cache_version"
_NOT_MODIFIED_DROP = {"content-type", "content-length"}


class _Entry:
    __slots__ = ("version", "status", "headers", "body", "etag", "headers_304")

    def __init__(self, version: Any, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body
        self.etag = next((v for k, v in headers if k.lower() == "etag"), None)
        self.headers_304 = [(k, v) for k, v in headers if k.lower() not in _NOT_MODIFIED_DROP]


class ReadCache:
    """Wraps a WSGI app; see the module docstring.

    :param app: the WSGI app to put the cache in front of.
    :param current_version: returns the data version now (cheap: it runs on every GET).
    :param max_entries: how many answers to keep; the oldest go first.
    :param max_bytes: how many body bytes to keep at most; 0 turns the cache off.
    :param direct: answers a path from the data itself, without the app: ``(body, etag)``, or None
        to let the app answer (a single book, of which there are too many to keep each answer).
    """

    def __init__(
        self,
        app: WSGIApp,
        current_version: Callable[[], Any],
        max_entries: int,
        max_bytes: int,
        direct: Callable[[str], tuple[bytes, str] | None] | None = None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.current_version = current_version
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._version: Any = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            not self.max_bytes
            or environ["REQUEST_METHOD"] != "GET"
            or "HTTP_AUTHORIZATION" in environ
            or "HTTP_COOKIE" in environ
        ):
            return self.app(environ, start_response)
        if self.direct is not None and not environ.get("QUERY_STRING") and "HTTP_ORIGIN" not in environ:
            found = self.direct(environ.get("PATH_INFO", ""))
            if found is not None:
                return self._answer_direct(found, environ, start_response)
        key = (environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), environ.get("HTTP_ORIGIN", ""))
        version = self.current_version()
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            match = environ.get("HTTP_IF_NONE_MATCH")
            if entry.etag and match and parse_etags(match).contains(entry.etag.strip('"')):
                start_response("304 NOT MODIFIED", entry.headers_304)
                return []
            start_response(entry.status, entry.headers)
            return [entry.body]
        return self._call_app(key, environ, start_response)

    @staticmethod
    def _answer_direct(
        found: tuple[bytes, str], environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        body, etag = found
        match = environ.get("HTTP_IF_NONE_MATCH")
        if match and parse_etags(match).contains(etag.strip('"')):
            start_response(
                "304 NOT MODIFIED",
                [
                    ("ETag", etag),
                    ("Cache-Control", "no-cache"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"),
                ],
            )
            return []
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("ETag", etag),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
        ]
        start_response("200 OK", headers)
        return [body]

    def _call_app(
        self, key: tuple[str, str, str], environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = self.app(environ, capture)
        version = environ.get(ENVIRON_KEY)
        if version is None or not captured.get("status", "").startswith("200"):
            return result
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        self._keep(key, _Entry(version, captured["status"], list(captured["headers"]), body))
        return [body]

    def _keep(self, key: tuple[str, str, str], entry: _Entry) -> None:
        size = len(entry.body)
        if size > self.max_bytes // 4:
            return
        with self._lock:
            if self._version is not None and entry.version < self._version:
                return  # computed from older data than what is already kept
            if entry.version != self._version:
                # The data changed: every answer kept so far is stale, drop them all at once.
                self._entries.clear()
                self._bytes = 0
                self._version = entry.version
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)
