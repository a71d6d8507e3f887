"""gunicorn settings for library_api (the Procfile uses this file).

Every worker serves the same data directory: writes are serialized by the directory's lock and each
worker follows the others' changes through the journal. The gthread worker is used because a
websocket holds one thread for as long as it is open.
"""

import ctypes
import ctypes.util
import os
import signal

from dotenv import load_dotenv

load_dotenv()

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each live websocket holds a thread for as long as it is open (LIBRARY_WS_MAX_CONNECTIONS per
# worker, 200 by default: a club evening's 200 page viewers fit even if one worker takes them all);
# the other 40 serve ordinary requests. Threads are started as they are needed: an idle deploy
# runs a few, and an idle websocket costs under 0.1 MB (see the README, Performance).
threads = int(os.environ.get("GUNICORN_THREADS", "240"))
timeout = 30
graceful_timeout = 10
keepalive = 5
# Any URL a browser sends reaches the app, which answers it in JSON (a long search included):
# gunicorn's default (4094 bytes) answered a 5,000-character ?q= with its own HTML 414 page. 0 is
# gunicorn's largest request line (1 MiB); the app refuses what it cannot use with a 422 problem.
limit_request_line = 0
# Browsers send some 20 headers; a Referer (capped at 4 KiB by browsers) or a token fits in 16 KiB.
limit_request_fields = 100
limit_request_field_size = 16384
# Slow clients: a thread reads a request's body as it arrives, so a few dozen clients trickling
# bytes hold every thread. gunicorn cannot buffer bodies: put a proxy that does in front (a PaaS
# router, or nginx with its default proxy_request_buffering on; see the README, Deploying). What
# it can do here is drop idle keep-alive connections after 5 s (keepalive above).
# Each worker opens the data directory itself (no preload): start-up recovery runs under the lock.
preload_app = False
# No runtime control socket: nothing uses it, and two servers on one machine would share its path.
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"


M_ARENA_MAX = -8  # glibc's mallopt parameter


def post_fork(server, worker):
    """Two malloc arenas per worker instead of glibc's eight per core: with a thread per live
    connection, memory one thread frees (a catalogue message built for a new seq) is otherwise
    kept in that thread's arena for it alone, and a worker's RSS grows with every thread that once
    built something large."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallopt"):  # glibc (musl and macOS have no such arenas)
        libc.mallopt(M_ARENA_MAX, int(os.environ.get("MALLOC_ARENA_MAX", "2")))


def post_worker_init(worker):
    """On SIGTERM, close this worker's live websockets at once instead of holding the shutdown for
    the whole graceful timeout: clients reconnect (with ?since=) to whichever worker is up."""
    feed = getattr(worker.wsgi, "extensions", {}).get("library_feed")
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        if feed is not None:
            feed.stop()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, stop)
