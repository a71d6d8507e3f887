#!/usr/bin/env python3
"""Benchmark of circulation under gunicorn: lending and returning, signing in, and the librarian's
member and loan listings.

Each run starts the server as the Procfile does (run.py's Server: gunicorn, gunicorn.conf.py, its
2 workers) on a fresh data directory holding --books books (run.py's cached synthetic catalogue) and
--members members (written into members.json before the server starts, as run.py does with the
books), signs a librarian in, and measures, in this order:

1. borrow -> return: --clients wrk connections (one per wrk thread), each lending its own books to
   its own member as the librarian (``member_id``) and taking them back, for --duration seconds;
2. sign-in: a member registers (``POST /auth/register``), then signs in 20 times in a row;
3. the librarian's reads: ``GET /members?limit=100`` and ``GET /loans?status=active&limit=100``,
   4 wrk connections, --read-duration seconds each, once --loans open loans (at most
   LIBRARY_MAX_LOANS per member) have been lent through the API.

The medians over --runs runs are printed as a markdown table and saved to
bench/results/circulation-<timestamp>.json.

    python bench/circulation.py [--books 10000] [--members 1000] [--clients 8] [--duration 5] [--runs 3]

Standard library only; needs ``wrk``, as run.py does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    CREATED_AT,
    DATA_CACHE,
    FIRST_NAMES,
    GUNICORN,
    LAST_NAMES,
    RESULTS_DIR,
    ROOT,
    Scenario,
    Server,
    ServerError,
    WrkError,
    catalogue_file,
    children_cpu_seconds,
    machine_cpu_seconds,
    parse_duration,
    run_watched,
    scenario_warnings,
    stop_on_sigterm,
    summarize,
    write_collection,
)

T = TypeVar("T")

BOOKS_PER_CLIENT = 50  # each borrow -> return client lends these books in turn
SIGN_INS = 20
READ_CLIENTS = 4  # wrk connections (over 2 threads) for the librarian's reads
READ_THREADS = 2
LENDERS = 8  # Python threads lending the open loans before the reads
READER_EMAIL = "reader@example.org"  # the member who registers and signs in
MAX_LOANS = int(os.environ.get("LIBRARY_MAX_LOANS", "5"))  # the server gets this environment too
WRITES = "borrow+return"
LENDING = "lend open loans"
SIGN_IN = "sign-in"
READS = (("members page", "/members?limit=100"), ("active loans page", "/loans?status=active&limit=100"))


# -- the members -------------------------------------------------------------------------------------


def members_file(count: int) -> Path:
    """The cached members.json of ``count`` members enrolled without a password (ids 1..count),
    in the server's stored form; generated on first use."""
    path = DATA_CACHE / "members" / str(count) / "members.json"
    if not path.exists():
        print(f"generating {count} members into {path.relative_to(ROOT)}", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [
            {
                "id": member_id,
                "email": f"member{member_id:06d}@example.org",
                "first_name": FIRST_NAMES[member_id % len(FIRST_NAMES)],
                "last_name": LAST_NAMES[member_id // len(FIRST_NAMES) % len(LAST_NAMES)],
                "role": "member",
                "password_hash": None,
                "token_version": 0,
                "created_at": CREATED_AT,
                "updated_at": CREATED_AT,
            }
            for member_id in range(1, count + 1)
        ]
        write_collection(path, records)
    return path


# -- Python clients ----------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP connection to the server, optionally signed in with a bearer token."""

    def __init__(self, server: Server, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Send one request; returns the status and the decoded JSON body (None when empty)."""
        headers = {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, data, headers)
        answer = self.conn.getresponse()
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else None

    def close(self) -> None:
        self.conn.close()


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` of 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def own_cpu_seconds() -> float:
    """CPU time of this process (every thread), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def watched(server: Server, work: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``work()`` and what run.py's run_watched measures around a wrk run, for work done by this
    script's own threads: ``server_cpu_s`` (master and workers), and the shares of the machine's
    CPUs that others took meanwhile (``other_cpu``) and the hypervisor stole (``steal``)."""
    began = time.monotonic()
    used, stolen = machine_cpu_seconds()
    server_cpu, own_cpu = server.cpu_seconds(), own_cpu_seconds()
    value = work()
    used_after, stolen_after = machine_cpu_seconds()
    server_cpu = server.cpu_seconds() - server_cpu
    own_cpu = own_cpu_seconds() - own_cpu
    elapsed = time.monotonic() - began
    capacity = elapsed * (os.cpu_count() or 1)
    return value, {
        "elapsed_s": elapsed,
        "server_cpu_s": server_cpu,
        "client_cpu": own_cpu / capacity,
        "other_cpu": max(0.0, used_after - used - server_cpu - own_cpu) / capacity,
        "steal": (stolen_after - stolen) / capacity,
    }


def as_run(latencies_s: list[float], statuses: Counter[int], watch: dict[str, float]) -> dict[str, Any]:
    """Python clients' measurements in the form of run.py's wrk runs (for its summarize)."""
    requests = len(latencies_s)
    return {
        "requests": requests,
        "req_per_s": requests / watch["elapsed_s"],
        "p50_ms": statistics.median(latencies_s) * 1000,
        "p99_ms": percentile(latencies_s, 0.99) * 1000,
        "statuses": dict(statuses),
        "non_2xx": sum(n for code, n in statuses.items() if not 200 <= code < 300),
        "socket_errors": 0,
        "cpu_ms_per_req": watch["server_cpu_s"] * 1000 / requests if requests else None,
        "client_cpu": watch["client_cpu"],
        "other_cpu": watch["other_cpu"],
        "steal": watch["steal"],
    }


# -- the measurements --------------------------------------------------------------------------------


def measure_writes(server: Server, wrk: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    """borrow -> return cycles by --clients wrk connections, one per thread (so each connection is
    one client with its own member, 1..clients, and its own books, 1..clients * BOOKS_PER_CLIENT)."""
    scenario = Scenario(WRITES, "circulate.lua", lambda _: ["1", "1", str(BOOKS_PER_CLIENT)], writes=True)
    began, wrk_cpu = time.monotonic(), children_cpu_seconds()
    result = run_watched(server, wrk, scenario, None, run, args.duration, args.clients, args.clients)  # type: ignore[arg-type]
    wrk_cpu = children_cpu_seconds() - wrk_cpu
    result["client_cpu"] = wrk_cpu / ((time.monotonic() - began) * (os.cpu_count() or 1))
    ok = sum(n for code, n in result["statuses"].items() if 200 <= code < 300)
    result["ok_per_s"] = result["req_per_s"] * ok / result["requests"] if result["requests"] else 0.0
    return result


def measure_sign_in(server: Server) -> dict[str, Any]:
    """Register a member, then sign them in SIGN_INS times in a row on one connection (always with
    the right password: 5 wrong ones would lock the email)."""
    password = "bench-" + os.urandom(12).hex()
    client = Client(server)
    try:
        body = {"email": READER_EMAIL, "password": password, "first_name": "Rea", "last_name": "Der"}
        status, answer = client.call("POST", "/auth/register", body)
        if status != 201:
            raise ServerError(f"POST /auth/register answered {status}: {answer}\n{server.log_tail()}")

        def sign_in() -> tuple[list[float], Counter[int]]:
            latencies, statuses = [], Counter()
            for _ in range(SIGN_INS):
                start = time.perf_counter()
                status, _ = client.call("POST", "/auth/login", {"email": READER_EMAIL, "password": password})
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
            return latencies, statuses

        (latencies, statuses), watch = watched(server, sign_in)
    finally:
        client.close()
    return as_run(latencies, statuses, watch)


def loan_pairs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(member, book) for the open loans of the reads: members after the writing clients' ones,
    MAX_LOANS books each, books from the top of the catalogue (the writes use the bottom)."""
    members = range(args.clients + 1, args.members + 1)
    books = range(args.books, args.clients * BOOKS_PER_CLIENT, -1)
    count = min(args.loans, len(members) * MAX_LOANS, len(books))
    return [(members[i // MAX_LOANS], books[i]) for i in range(count)]


def lend_open_loans(server: Server, pairs: list[tuple[int, int]]) -> dict[str, Any]:
    """Lend each (member, book) as the librarian, with LENDERS Python threads."""
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    def lend(chunk: list[tuple[int, int]]) -> None:
        client = Client(server, server.token)
        mine, counted = [], Counter()
        try:
            for member, book in chunk:
                start = time.perf_counter()
                status, _ = client.call("POST", f"/books/{book}/borrow", {"days": 14, "member_id": member})
                mine.append(time.perf_counter() - start)
                counted[status] += 1
        finally:
            client.close()
        with lock:
            latencies.extend(mine)
            statuses.update(counted)

    def lend_all() -> None:
        with ThreadPoolExecutor(LENDERS) as pool:
            list(pool.map(lend, [pairs[i::LENDERS] for i in range(LENDERS)]))

    _, watch = watched(server, lend_all)
    return as_run(latencies, statuses, watch)


def totals(server: Server) -> dict[str, int]:
    """What the server holds: members, open loans and every loan, as its listings count them."""
    client = Client(server, server.token)
    try:
        found = {}
        for name, path in (
            ("members", "/members?limit=1"),
            ("open_loans", "/loans?status=active&limit=1"),
            ("loans", "/loans?limit=1"),
        ):
            status, body = client.call("GET", path)
            if status != 200:
                raise ServerError(f"GET {path} answered {status}: {body}")
            found[name] = body["total"]
        return found
    finally:
        client.close()


def measure_read(server: Server, wrk: str, name: str, path: str, run: int, duration: int) -> dict[str, Any]:
    """One signed-in GET by READ_CLIENTS wrk connections."""
    scenario = Scenario(name, "signed_get.lua", lambda _: [path], writes=True)  # writes: wrk gets the token
    began, wrk_cpu = time.monotonic(), children_cpu_seconds()
    result = run_watched(server, wrk, scenario, None, run, duration, READ_THREADS, READ_CLIENTS)  # type: ignore[arg-type]
    result["client_cpu"] = (children_cpu_seconds() - wrk_cpu) / ((time.monotonic() - began) * (os.cpu_count() or 1))
    return result


def one_run(run: int, args: argparse.Namespace, wrk: str, files: tuple[Path, Path], log_copy: Path) -> dict[str, Any]:
    """One fresh server, every measurement once; returns the measurements by name and what was seen."""
    catalogue, members_path = files
    measured: dict[str, dict[str, Any]] = {}
    warnings = []
    with Server(catalogue, None, {"members.json": members_path}) as server:
        first_workers = server.worker_pids()
        if server.health.get("books") != args.books:
            warnings.append(f"/healthz reported {server.health.get('books')} books, expected {args.books}")
        measured[WRITES] = measure_writes(server, wrk, args, run)
        after_writes = totals(server)
        server.wait_idle()
        measured[SIGN_IN] = measure_sign_in(server)
        server.wait_idle()
        pairs = loan_pairs(args)
        measured[LENDING] = lend_open_loans(server, pairs)
        seen = totals(server)
        server.wait_idle()
        for name, path in READS:
            measured[name] = measure_read(server, wrk, name, path, run, args.read_duration)
            server.check_alive()
        if server.worker_pids() != first_workers:
            warnings.append("gunicorn replaced workers during the run (a crash or a timeout)")
        server.stop()
        problems = server.log_problems()
        if problems:
            log_copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(server.log_path, log_copy)
            shown = "\n    ".join(problems[:6])
            warnings.append(
                f"{len(problems)} error line(s) in the server log (kept in {log_copy.relative_to(ROOT)}), "
                f"e.g.:\n    {shown}"
            )
    return {
        "run": run + 1,
        "workers": len(first_workers),
        "startup_s": round(server.startup_s, 3),
        "loans_after_writes": after_writes["loans"],
        "loans_lent": len(pairs),
        "during_reads": seen,
        "measured": measured,
        "warnings": warnings,
    }


# -- reporting ---------------------------------------------------------------------------------------


def labels(args: argparse.Namespace) -> dict[str, str]:
    return {
        WRITES: f"borrow → return, {args.clients} clients (wrk)",
        SIGN_IN: f"POST /auth/login, {SIGN_INS} in a row",
        LENDING: f"borrow (setting up the open loans), {LENDERS} Python clients",
        READS[0][0]: f"GET {READS[0][1]}, {READ_CLIENTS} clients (wrk)",
        READS[1][0]: f"GET {READS[1][1]}, {READ_CLIENTS} clients (wrk)",
    }


def summarize_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """run.py's summary (medians; errors summed) of each measurement, with the median successful
    operations per second, the largest steal and the largest share of the CPUs the client took."""
    rows = []
    for name in (WRITES, SIGN_IN, LENDING, *(name for name, _ in READS)):
        each = [run["measured"][name] for run in runs]
        row = summarize(name, each)
        row["ok_per_s"] = statistics.median(m.get("ok_per_s", m["req_per_s"]) for m in each)
        row["steal"] = max(m["steal"] for m in each)
        row["client_cpu"] = max(m["client_cpu"] for m in each)
        rows.append(row)
    return rows


def format_row(row: dict[str, Any], label: str) -> str:
    flag = " ⚠" if row["non_2xx"] or row["socket_errors"] else ""
    cpu_ms = "–" if row["cpu_ms_per_req"] is None else f"{row['cpu_ms_per_req']:.2f}"
    return (
        f"| {label} | {row['ok_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {cpu_ms} "
        f"| {row['non_2xx']}{flag} | {row['socket_errors']} | {row['client_cpu']:.0%} | {row['steal']:.0%} |"
    )


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    data, runs = report["dataset"], report["runs"]
    named = labels(args)
    loans_after_writes = statistics.median(run["loans_after_writes"] for run in runs)
    reads = runs[-1]["during_reads"]
    lines = [
        f"### {data['books']:,} books, {data['members']:,} members",
        "",
        f"{len(runs)} run(s), each on a fresh server (gunicorn as the Procfile, "
        f"{report['workers']} workers); medians, errors summed. borrow → return: {args.duration} s per run, "
        f"{int(loans_after_writes):,} loan records after it (median). Reads: {args.read_duration} s each, "
        f"with {reads['open_loans']:,} open loans of {reads['loans']:,} loan records and {reads['members']:,} "
        "members.",
        "",
        "| measurement | ok/s | p50 ms | p99 ms | cpu ms/req | non-2xx | socket errors | client CPU | steal |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(format_row(row, named[row["scenario"]]) for row in report["rows"]),
        "",
        f"CPU steal over the whole benchmark: {report['steal']:.0%} of {report['machine']['cpus']} CPU(s).",
    ]
    if report["warnings"]:
        lines += ["", *(f"- **warning:** {warning}" for warning in report["warnings"])]
    return "\n".join([*lines, ""])


# -- command line ------------------------------------------------------------------------------------


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--books", type=positive, default=10000, help="books in the catalogue (default: 10000)")
    parser.add_argument("--members", type=positive, default=1000, help="members enrolled (default: 1000)")
    parser.add_argument("--clients", type=positive, default=8, help="borrow -> return clients (default: 8)")
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=5,
        help="borrow -> return run length: 5, 5s or 1m (default: 5s)",
    )
    parser.add_argument("--read-duration", type=parse_duration, default=3, help="length of each read run (default: 3s)")
    parser.add_argument("--loans", type=positive, default=2000, help="open loans lent before the reads (default: 2000)")
    parser.add_argument("--runs", type=positive, default=3, help="runs, each on a fresh server; medians (default: 3)")
    args = parser.parse_args(argv)
    if args.members <= args.clients:
        parser.error("--members must be more than --clients (each client lends to its own member)")
    if args.books <= args.clients * BOOKS_PER_CLIENT:
        parser.error(f"--books must be more than {BOOKS_PER_CLIENT} per client")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when clean, 1 on errors or a failed server, 2 when a tool is missing."""
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (Debian/Ubuntu: `sudo apt-get install wrk`; macOS: `brew install wrk`)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not GUNICORN.exists():
        print(f"gunicorn is not installed next to {sys.executable}: install requirements.txt", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    files = (catalogue_file(args.books), members_file(args.members))
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    began, (_, stolen) = time.monotonic(), machine_cpu_seconds()
    runs = []
    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: {args.books} books, {args.members} members", file=sys.stderr)
            log_copy = RESULTS_DIR / f"circulation-{stamp}-run{run + 1}-server.log"
            runs.append(one_run(run, args, wrk, files, log_copy))
            for name, measured in runs[-1]["measured"].items():
                print(f"  {name}: {measured['req_per_s']:.0f} req/s, p50 {measured['p50_ms']:.1f} ms, "
                      f"non-2xx {measured['non_2xx']}", file=sys.stderr)  # fmt: skip
    except (ServerError, WrkError, OSError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    steal = (machine_cpu_seconds()[1] - stolen) / ((time.monotonic() - began) * (os.cpu_count() or 1))
    rows = summarize_runs(runs)
    warnings = [w for run in runs for w in run["warnings"]] + scenario_warnings(rows)
    short = [run for run in runs if run["during_reads"]["open_loans"] < run["loans_lent"]]
    if short:
        warnings.append(f"fewer open loans than lent in run(s) {[run['run'] for run in short]}")
    report = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "duration_s": args.duration, "read_duration_s": args.read_duration, "runs": args.runs,
            "clients": args.clients, "books_per_client": BOOKS_PER_CLIENT, "read_clients": READ_CLIENTS,
            "lenders": LENDERS, "sign_ins": SIGN_INS, "loans": args.loans, "max_loans": MAX_LOANS,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version},
        "dataset": {"books": args.books, "members": args.members},
        "workers": runs[0]["workers"],
        "steal": steal,
        "rows": rows,
        "warnings": warnings,
        "runs": runs,
    }  # fmt: skip
    print(markdown(report, args), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"circulation-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {out.relative_to(ROOT)}")
    return 1 if any(row["non_2xx"] or row["socket_errors"] for row in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
