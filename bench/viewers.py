"""Load test of a club evening: 200 page viewers on the default deploy, with browsers and writers.

    python bench/viewers.py [--books 10000] [--viewers 200] [--old 20] [--runs 3]

The server is the default deploy, as the Procfile starts it (gunicorn with gunicorn.conf.py and
none of its settings changed: 2 workers, their default threads and websocket slots), on a copy of
a synthetic catalogue (bench/run.py's). Then, in each run:

1. ``--viewers`` websocket clients connect, spread over four client processes: ``--old`` of them
   as older clients do (``/ws``, the whole catalogue as ``initial_load`` first), the rest as the
   page does (``/ws?catalogue=none``, only ``ready``). A viewer the server has no slot for (503)
   polls ``GET /changes`` every 3 s instead, as the page does, and is counted as refused.
2. Writers (threads of this process, signed in as a librarian) create books and borrow and return
   them through the API, one write after another each; browsers (another process) read pages of
   the catalogue, books, ``/genres`` and ``/changes`` meanwhile.
3. Every viewer must receive every write's event: the count of deliveries against writes x viewers,
   and the delay from each write's acknowledgement (the answer read by the writer) to its arrival
   at each viewer (one monotonic clock: all processes run on this machine), p50 and p99.
4. The workers' RSS before the viewers connect, while they are connected, after they leave, then
   after each of ``--rounds`` rounds of 60 more page views (``?catalogue=none``) and as many rounds
   of 60 older views (``initial_load``) that connect and leave, each after a write (a new seq, so
   a new catalogue message): memory must not grow with page views.

Figures are printed for each run and the median of the runs at the end; everything is written to
bench/results/viewers-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS_DIR, Server, catalogue_file  # noqa: E402

CLIENT_PROCESSES = 4
POLL_SECONDS = 3.0  # the page's polling interval when it has no websocket
EXTRA_VIEWS = 60


# -- viewers (in client processes) ---------------------------------------------------------------


class Viewer:
    """A page viewer: a websocket (or, refused, a poller of /changes) noting each event's arrival
    by (book id, how many events of that book came before)."""

    def __init__(self, port: int, old: bool) -> None:
        self.port = port
        self.arrivals: dict[str, float] = {}
        self.seen: dict[int, int] = {}
        self.refused = False
        self.first_bytes = 0
        self._stop = threading.Event()
        self._exit = contextlib.ExitStack()
        query = "" if old else "?catalogue=none"
        try:
            self.ws = self._exit.enter_context(
                connect(f"ws://127.0.0.1:{port}/ws{query}", max_size=None, proxy=None, open_timeout=60)
            )
        except InvalidStatus:
            self.ws = None
            self.refused = True
        if self.ws is not None:
            first = self.ws.recv(timeout=60)
            self.first_bytes = len(first)
            self.seq = json.loads(first)["seq"]
            self._thread = threading.Thread(target=self._listen, daemon=True)
        else:
            self.seq = get_json(port, "/changes?since=0&limit=1")["last_seq"]
            self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def note(self, event: dict[str, Any]) -> None:
        book_id = event["book"]["id"]
        count = self.seen.get(book_id, 0)
        self.seen[book_id] = count + 1
        self.arrivals[f"{book_id}:{count}"] = time.monotonic()

    def _listen(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in self.ws:
                self.note(json.loads(message))

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            answer = get_json(self.port, f"/changes?since={self.seq}&limit=500")
            for event in answer["changes"]:
                self.note(event)
            self.seq = answer["last_seq"]

    def close(self) -> None:
        self._stop.set()
        self._exit.close()


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:200])
        return json.loads(body)
    finally:
        conn.close()


def view_group(port: int, new: int, old: int, ready: Any, commands: Any, out: Any) -> None:
    """In a process of its own: ``new`` page viewers and ``old`` older ones; when told, report each
    one's arrivals and close them."""
    viewers = [Viewer(port, old=False) for _ in range(new)] + [Viewer(port, old=True) for _ in range(old)]
    ready.put(sum(v.refused for v in viewers))
    expected = commands.get()  # the events every viewer must get, once the writes are done
    deadline = time.monotonic() + 60
    while any(len(v.arrivals) < expected for v in viewers) and time.monotonic() < deadline:
        time.sleep(0.05)
    out.put([{"arrivals": v.arrivals, "refused": v.refused, "old": i >= new} for i, v in enumerate(viewers)])
    for viewer in viewers:
        viewer.close()


def come_and_go(port: int, count: int, old: bool, out: Any) -> None:
    """In a process of its own: ``count`` views connect, get their first message, and leave."""
    viewers = [Viewer(port, old=old) for _ in range(count)]
    refused = sum(v.refused for v in viewers)
    for viewer in viewers:
        viewer.close()
    out.put(refused)


# -- browsers ------------------------------------------------------------------------------------


def browse(port: int, books: int, stop: Any, out: Any, threads: int = 4) -> None:
    """In a process of its own: ``threads`` readers of the catalogue until ``stop`` is set; report
    the latencies in ms."""
    latencies: list[float] = []
    errors = [0]

    def read(seed: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = seed
        paths = [
            lambda n: f"/books?page={n % 50 + 1}&limit=20",
            lambda n: f"/books/{n * 7919 % books + 1}",
            lambda n: "/genres",
            lambda n: f"/books?q=the&sort_by=-publication_year&page={n % 5 + 1}",
            lambda n: "/changes?since=0&limit=1",
        ]
        while not stop.is_set():
            path = paths[i % len(paths)](i)
            started = time.monotonic()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors[0] += 1
            except OSError:
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies.append((time.monotonic() - started) * 1000)
            i += 1
            time.sleep(0.02)  # a person clicking, many of them
        conn.close()

    workers = [threading.Thread(target=read, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put({"latencies": latencies, "errors": errors[0]})


# -- writers -------------------------------------------------------------------------------------


class Writer:
    """Creates a book, borrows it, returns it, again and again; notes each write's acknowledgement
    under the key its event arrives with."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name
        self.acks: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.counts: dict[int, int] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", **self.server.authorization()}
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        data = response.read()
        assert response.status in (200, 201), (method, path, response.status, data[:300])
        return json.loads(data)

    def write(self, method: str, path: str, body: Any, book_id: int | None = None) -> dict[str, Any]:
        started = time.monotonic()
        answer = self.call(method, path, body)
        acked = time.monotonic()
        book_id = book_id if book_id is not None else answer["id"]
        count = self.counts.get(book_id, 0)
        self.counts[book_id] = count + 1
        self.starts[f"{book_id}:{count}"] = started
        self.acks[f"{book_id}:{count}"] = acked
        return answer

    def run(self, cycles: int, pause: float) -> None:
        for n in range(cycles):
            book = self.write("POST", "/books", {"title": f"Club evening {self.name}-{n}", "author": "Viewers Bench"})
            time.sleep(pause)
            self.write("POST", f"/books/{book['id']}/borrow", {"days": 7}, book["id"])
            time.sleep(pause)
            self.write("POST", f"/books/{book['id']}/return", None, book["id"])
            time.sleep(pause)
        self.conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# -- one run -------------------------------------------------------------------------------------


def one_run(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    port = server.port
    rss = {"start": round(server.workers_rss_mb(), 1)}
    ready, out = context.Queue(), context.Queue()
    commands = [context.Queue() for _ in range(CLIENT_PROCESSES)]
    new_total = args.viewers - args.old
    news = [new_total // CLIENT_PROCESSES + (i < new_total % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
    olds = [args.old // CLIENT_PROCESSES + (i < args.old % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
    began = time.monotonic()
    groups = [
        context.Process(target=view_group, args=(port, n, o, ready, commands[i], out))
        for i, (n, o) in enumerate(zip(news, olds, strict=True))
    ]
    for group in groups:
        group.start()
    refused = sum(ready.get(timeout=300) for _ in groups)
    connect_s = time.monotonic() - began
    server.settle(30)
    rss["viewers_connected"] = round(server.workers_rss_mb(), 1)
    stop, browsed = context.Event(), context.Queue()
    browser = context.Process(target=browse, args=(port, args.books, stop, browsed))
    browser.start()
    writers = [Writer(server, f"w{n}") for n in range(args.writers)]
    threads = [threading.Thread(target=w.run, args=(args.cycles, args.pause)) for w in writers]
    write_began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    write_s = time.monotonic() - write_began
    acks = {k: v for w in writers for k, v in w.acks.items()}
    starts = {k: v for w in writers for k, v in w.starts.items()}
    for queue in commands:
        queue.put(len(acks))
    reports = [r for _ in groups for r in out.get(timeout=300)]
    for group in groups:
        group.join()
    stop.set()
    reads = browsed.get(timeout=120)
    browser.join()
    server.settle(30)
    rss["viewers_gone"] = round(server.workers_rss_mb(), 1)
    heard = [r["arrivals"] for r in reports if not r["refused"]]
    after_ack = [(got[k] - a) * 1000 for got in heard for k, a in acks.items() if k in got]
    after_start = [(got[k] - s) * 1000 for got in heard for k, s in starts.items() if k in got]
    polled = [
        (got[k] - a) * 1000 for r in reports if r["refused"] for k, a in acks.items() if k in (got := r["arrivals"])
    ]
    delivered = sum(1 for r in reports for k in acks if k in r["arrivals"])
    extra = []
    for old in (False, True):
        for _ in range(args.rounds):
            Writer(server, "x").write("POST", "/books", {"title": f"Between views {time.monotonic()}", "author": "X"})
            gone = context.Queue()
            proc = context.Process(target=come_and_go, args=(port, EXTRA_VIEWS, old, gone))
            proc.start()
            turned_away = gone.get(timeout=300)
            proc.join()
            server.settle(30)
            extra.append({"old": old, "refused": turned_away, "rss_mb": round(server.workers_rss_mb(), 1)})
    return {
        "viewers": args.viewers,
        "old_style": args.old,
        "refused": refused,
        "connect_s": round(connect_s, 1),
        "writes": len(acks),
        "write_s": round(write_s, 1),
        "expected": len(acks) * args.viewers,
        "delivered": delivered,
        "p50_ms_after_ack": round(percentile(after_ack, 0.5), 1),
        "p99_ms_after_ack": round(percentile(after_ack, 0.99), 1),
        "max_ms_after_ack": round(max(after_ack), 1) if after_ack else None,
        "p50_ms_after_start": round(percentile(after_start, 0.5), 1),
        "p99_ms_after_start": round(percentile(after_start, 0.99), 1),
        "polled_p50_ms_after_ack": round(percentile(polled, 0.5), 1) if polled else None,
        "reads": len(reads["latencies"]),
        "read_errors": reads["errors"],
        "read_p50_ms": round(percentile(reads["latencies"], 0.5), 1),
        "read_p99_ms": round(percentile(reads["latencies"], 0.99), 1),
        "rss_mb": rss,
        "extra_views": extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=10000, help="catalogue size (default 10000)")
    parser.add_argument("--viewers", type=int, default=200, help="websocket viewers (default 200)")
    parser.add_argument("--old", type=int, default=20, help="of them, older clients taking initial_load (default 20)")
    parser.add_argument("--writers", type=int, default=4, help="writer threads (default 4)")
    parser.add_argument("--cycles", type=int, default=10, help="create-borrow-return cycles per writer (default 10)")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between a writer's writes (default 0.1)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 60 views coming and going, of each kind")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server (default 3)")
    args = parser.parse_args()
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "LIBRARY_WS_MAX_CONNECTIONS"):
        os.environ.pop(name, None)  # the default deploy
    runs = []
    for n in range(args.runs):
        with Server(catalogue_file(args.books), workers=None) as server:
            result = one_run(server, args)
            result["log_problems"] = server.log_problems()[:10]
        runs.append(result)
        print(f"run {n + 1}: {json.dumps(result)}", flush=True)
    summary = {
        key: statistics.median(r[key] for r in runs)
        for key in ("refused", "delivered", "expected", "p50_ms_after_ack", "p99_ms_after_ack",
                    "p50_ms_after_start", "p99_ms_after_start", "read_p50_ms", "read_p99_ms", "connect_s")
    }  # fmt: skip
    for stage in runs[0]["rss_mb"]:
        summary[f"rss_{stage}_mb"] = statistics.median(r["rss_mb"][stage] for r in runs)
    for i, step in enumerate(runs[0]["extra_views"]):
        kind = "initial_load" if step["old"] else "catalogue=none"
        summary[f"rss_after_60_{kind}_views_{i % args.rounds + 1}_mb"] = statistics.median(
            r["extra_views"][i]["rss_mb"] for r in runs
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"viewers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": runs, "median": summary}, indent=2))
    print(f"median of {len(runs)} runs: {json.dumps(summary, indent=2)}")
    print(f"results written to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
