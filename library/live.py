"""Following the journal for live clients: one watcher thread per worker, many waiting connections.

Every worker process runs one :class:`Feed`. Its thread looks at the store every ``interval``
seconds (a few ``stat`` calls, see :meth:`storage.JsonStore.snapshot`) and wakes the connections
waiting on it when the journal's sequence number moves, whichever process made the change. The
connections then read what they missed from the store's journal, so every client of every worker
gets the same events, in ``seq`` order.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
from typing import Any

from storage import JournalTruncatedError, Store

log = logging.getLogger("library_api.live")
WINDOW = 2000  # events kept in memory per worker for the connections to share


class Feed:
    """Wakes waiting connections when the store's journal moves on.

    :param store: the store to watch.
    :param max_connections: how many connections may wait at once (each holds a server thread).
    :param interval: seconds between two looks at the store.
    """

    def __init__(self, store: Store, max_connections: int, interval: float = 0.05) -> None:
        self.store = store
        self.max_connections = max_connections
        self.interval = interval
        self._seq = -1
        # The events of the recent past, fetched once per change and shared by every connection.
        self._window: list[tuple[int, bytes]] = []
        self._window_start = 0
        self._connections = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def acquire(self) -> bool:
        """Take a connection slot; False when all are taken."""
        with self._changed:
            if self._connections >= self.max_connections:
                return False
            self._connections += 1
            if self._thread is None:
                self._seq = self._window_start = self.store.snapshot().seq
                self._thread = threading.Thread(target=self._watch, name="library-feed", daemon=True)
                self._thread.start()
            return True

    def release(self) -> None:
        """Give a connection slot back."""
        with self._changed:
            self._connections -= 1

    @property
    def connections(self) -> int:
        return self._connections

    def events_after(self, seq: int) -> tuple[list[bytes], int] | None:
        """The events after ``seq`` that this feed has seen, and the seq they lead up to; None when
        ``seq`` is older than what it keeps (ask the store then)."""
        with self._changed:
            if seq < self._window_start:
                return None
            if seq >= self._seq:
                return [], seq
            start = bisect.bisect_right(self._window, seq, key=lambda item: item[0])
            return [data for _, data in self._window[start:]], self._seq

    def wait_beyond(self, seq: int, timeout: float) -> int:
        """Wait until the journal is past ``seq`` (or ``timeout`` seconds); return its seq."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seq or self._stopped.is_set(), timeout)
            return self._seq

    @property
    def stopped(self) -> bool:
        """Whether the worker is shutting down (connections should end)."""
        return self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                seq = self.store.snapshot().seq
            except Exception:  # a broken data file is logged by the store; keep watching
                log.exception("the live feed could not read the store")
                continue
            if seq != self._seq:
                self._take_in()

    def _take_in(self) -> None:
        try:
            events, last = self.store.raw_events_since(self._seq, WINDOW)
        except JournalTruncatedError:  # the journal started again: keep nothing from before
            events, last = [], self.store.snapshot().seq
            with self._changed:
                self._window, self._window_start = [], last
        with self._changed:
            self._window.extend(events)
            if len(self._window) > WINDOW:
                del self._window[: len(self._window) - WINDOW]
                self._window_start = self._window[0][0] - 1
            self._seq = last
            self._changed.notify_all()


def text_frame_header(length: int) -> bytes:
    """The header of an unfragmented, unmasked websocket text frame of ``length`` bytes (RFC 6455
    5.2): what a server sends before the payload. The same for every connection, so a message is
    encoded once and its bytes sent as they are to each (an uncompressed frame is valid whether or
    not the connection negotiated permessage-deflate: RFC 7692 7.2.3)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


class LockedSocket:
    """A socket whose sends hold a lock and send everything: a websocket connection's frames are
    sent both by its handler and by the websocket library's own thread (pings, pongs, close)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def send_text(self, payload: bytes) -> None:
        """Send ``payload`` (UTF-8 JSON) as one text frame, without copying it into the frame."""
        with self._lock:
            self._sock.sendall(text_frame_header(len(payload)))
            self._sock.sendall(payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
