"""Benchmark of the live feed: how long a write takes to reach 100 websocket clients, and how many
idle websocket clients one deployment holds while still answering plain requests.

    python bench/live.py [--clients 100] [--writes 50] [--idle 300]

The server runs as the Procfile starts it (gunicorn, 2 workers) on a 1,000-book catalogue, with
GUNICORN_THREADS and LIBRARY_WS_MAX_CONNECTIONS raised so that --idle clients fit. The writes are
signed in as a librarian (made with `flask create-admin`, see run.py's Server); the GETs and the
websocket clients are anonymous.
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
from run import RESULTS_DIR, Server, catalogue_file, children_of, rss_kib  # noqa: E402


class Client:
    """A websocket client noting when each event (by book title) arrives."""

    def __init__(self, url: str) -> None:
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(url, max_size=None, proxy=None, open_timeout=30))
        self.ws.recv(timeout=30)  # initial_load
        self.arrivals: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in self.ws:
                event = json.loads(message)
                self.arrivals[event["book"]["title"]] = time.monotonic()

    def close(self) -> None:
        self._exit.close()


def post_book(server: Server, title: str) -> None:
    """Add a book, signed in as the benchmark's librarian."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **server.authorization()}
        conn.request("POST", "/books", json.dumps({"title": title, "author": "Live"}), headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 201, response.status
    finally:
        conn.close()


def get_ms(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.monotonic()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return (time.monotonic() - started) * 1000
    finally:
        conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def listen(url: str, count: int, writes: int, ready: Any, out: Any) -> None:
    """In a process of its own: ``count`` clients; report each one's arrival times when done."""
    listeners = [Client(url) for _ in range(count)]
    ready.put(True)
    deadline = time.monotonic() + 60
    while any(len(c.arrivals) < writes for c in listeners) and time.monotonic() < deadline:
        time.sleep(0.05)
    out.put([dict(c.arrivals) for c in listeners])
    for listener in listeners:
        listener.close()


def delivery(server: Server, clients: int, writes: int, processes: int = 4) -> dict[str, Any]:
    """Write ``writes`` books one after another with ``clients`` connected (spread over a few
    client processes, so that the clients' own work does not delay what they measure); the delay
    is from the start of each write to its arrival at each client (one monotonic clock)."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    context = multiprocessing.get_context("spawn")
    ready, out = context.Queue(), context.Queue()
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [context.Process(target=listen, args=(url, n, writes, ready, out)) for n in shares]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    started: dict[str, float] = {}
    for i in range(writes):
        title = f"Delivery {i}"
        started[title] = time.monotonic()
        post_book(server, title)
    arrivals = [a for _ in procs for a in out.get(timeout=120)]
    for proc in procs:
        proc.join()
    delays = [(a[t] - s) * 1000 for a in arrivals for t, s in started.items() if t in a]
    missing = clients * writes - len(delays)
    return {
        "clients": clients,
        "writes": writes,
        "delivered": len(delays),
        "missing": missing,
        "p50_ms": round(percentile(delays, 0.50), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
    }


def idle_capacity(server: Server, idle: int) -> dict[str, Any]:
    """Open ``idle`` clients that only listen; measure memory and plain GET latency meanwhile."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    before = [get_ms(server.port, "/books?page=2") for _ in range(200)]
    opened: list[Client] = []
    refused = 0
    for _ in range(idle + 10):
        try:
            opened.append(Client(url))
        except InvalidStatus:
            refused += 1
    during = [get_ms(server.port, "/books?page=3") for _ in range(200)]
    rss_mb = sum(rss_kib(pid) for pid in children_of(server.proc.pid)) / 1024
    for client in opened:
        client.close()
    return {
        "asked": idle + 10,
        "held": len(opened),
        "refused": refused,
        "workers_rss_mb": round(rss_mb, 1),
        "get_p50_ms_before": round(statistics.median(before), 2),
        "get_p50_ms_while_held": round(statistics.median(during), 2),
        "get_p99_ms_while_held": round(percentile(during, 0.99), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="clients for the delivery delay (default 100)")
    parser.add_argument("--writes", type=int, default=50, help="writes for the delivery delay (default 50)")
    parser.add_argument("--idle", type=int, default=300, help="idle clients the deployment is sized for (default 300)")
    args = parser.parse_args()
    per_worker = (args.idle + 1) // 2
    os.environ["LIBRARY_WS_MAX_CONNECTIONS"] = str(per_worker)
    os.environ["GUNICORN_THREADS"] = str(per_worker + 16)
    with Server(catalogue_file(1000), workers=2) as server:
        result = {
            "settings": {"workers": 2, "ws_max_connections": per_worker, "threads": per_worker + 16},
            "delivery": delivery(server, args.clients, args.writes),
            "idle": idle_capacity(server, args.idle),
        }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"live-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    d, i = result["delivery"], result["idle"]
    print(f"2 workers x {per_worker} websocket slots, {per_worker + 16} threads each")
    print(
        f"| write -> delivery, {d['clients']} clients x {d['writes']} writes | p50 {d['p50_ms']} ms | "
        f"p99 {d['p99_ms']} ms | max {d['max_ms']} ms | missing {d['missing']} |"
    )
    print(
        f"| idle clients held | {i['held']} of {i['asked']} asked ({i['refused']} refused with 503) | "
        f"workers' RSS {i['workers_rss_mb']} MB | GET p50 {i['get_p50_ms_before']} ms before, "
        f"{i['get_p50_ms_while_held']} ms while held (p99 {i['get_p99_ms_while_held']} ms) |"
    )
    print(f"results written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
