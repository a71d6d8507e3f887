"""Benchmark of library_api on PostgreSQL: two app servers (gunicorn as the Procfile starts it) on one
database, driven by wrk through both at once, with the scenarios of bench/run.py.

For each size: the synthetic catalogue of bench/run.py is written as a data directory and copied
into a fresh database with ``flask migrate-data --to`` (timed), then two servers are started on it
and every scenario runs as two wrk processes at once, one per server, each with half the
connections. Reported per scenario: req/s of both together, and p50/p99 latency (the worse server's).

Usage: ``python bench/postgres.py --sizes 100000,1000000`` (needs ``wrk`` and PostgreSQL: a server
given with ``--url postgresql://.../postgres`` on which databases may be created, or else a
throwaway cluster is started as the tests do, with ``initdb``/``pg_ctl``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import run as base  # noqa: E402
from tests import postgres as cluster  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


def start_server(url: str, cache: Path, workers: int) -> tuple[int, subprocess.Popen]:
    port = base.free_port()
    env = {
        **os.environ,
        "LIBRARY_DATABASE_URL": url,
        "LIBRARY_DATA_DIR": str(cache),
        "LIBRARY_SEED_FILE": "",
        "LIBRARY_SECRET_KEY": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": str(workers),
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "library_api:create_app()"]
    log = open(cache.parent / f"gunicorn-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return port, process


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 900) -> None:
    from tests.servers import wait_until_healthy

    wait_until_healthy(port, process, timeout)


def token(url: str) -> str:
    from library import auth, members
    from library.records import COLLECTIONS
    from storage.postgres import PgStore

    store = PgStore(url, COLLECTIONS)
    person = store.update(
        lambda txn: members.create(
            txn,
            {"email": f"bench-{time.monotonic_ns()}@example.org", "first_name": "B", "last_name": "B"},
            "2026-01-01T00:00:00Z",
            None,
            "librarian",
        )
    )
    library = store.update(auth.ensure_library)
    store.close()
    return auth.issue_token(SECRET.encode(), person, 86400, library)


def measure_scenario(
    wrk: str,
    bearer: str,
    ports: list[int],
    scenario: base.Scenario,
    facts: base.Facts,
    duration: int,
    warmup: int,
    runs: int,
) -> dict:
    """Drive each of ``ports`` at once with its own wrk (4 connections), after a warm-up: ``runs``
    times, reporting the median run (by req/s) of both together, with the worse server's latency."""
    results = []
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        # Warm up first (not measured): each worker's first request of a kind builds its
        # structures (the writer index, the search index: seconds at a million books).
        warm = [
            pool.submit(base.run_wrk, wrk, f"http://127.0.0.1:{port}", bearer, scenario, facts, 1, warmup, 1, 4)
            for port in ports
        ]
        for future in warm:
            future.result()
        for n in range(runs):
            futures = [
                pool.submit(
                    base.run_wrk, wrk, f"http://127.0.0.1:{port}", bearer, scenario, facts,
                    2 + n * len(ports) + i, duration, 1, 4,
                )
                for i, port in enumerate(ports)
            ]  # fmt: skip
            done = [f.result() for f in futures]
            results.append(
                {
                    "req_per_s": round(sum(r["req_per_s"] for r in done)),
                    "p50_ms": round(max(r["p50_ms"] for r in done), 2),
                    "p99_ms": round(max(r["p99_ms"] for r in done), 2),
                    "non_2xx": sum(r["non_2xx"] for r in done),
                    "socket_errors": sum(r["socket_errors"] for r in done),
                }
            )
    results.sort(key=lambda r: r["req_per_s"])
    return {**results[len(results) // 2], "runs": [r["req_per_s"] for r in results]}


def measure(
    size: int,
    server_url: str,
    workers: int,
    duration: int,
    warmup: int,
    folder: Path,
    scenarios: list[str],
    runs: int = 1,
    file_store: bool = False,
    file_workers: int = 2,
) -> dict:
    catalogue = base.catalogue_file(size)
    facts = base.facts_of(catalogue)
    data = folder / f"data-{size}"
    data.mkdir(parents=True)
    shutil.copy(catalogue, data / "books.json")
    name = f"bench_{size}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "LIBRARY_DATA_DIR": str(data), "LIBRARY_SEED_FILE": "", "LIBRARY_SECRET_KEY": SECRET}
    env.pop("LIBRARY_DATABASE_URL", None)
    env.pop("DATABASE_URL", None)
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "library_api", "migrate-data", "--to", url],
        cwd=ROOT, env=env, check=True, stdout=sys.stderr,  # stdout is the results' JSON
    )  # fmt: skip
    migrated = time.monotonic() - began
    servers = []
    result: dict = {"size": size, "migrate_data_s": round(migrated, 1), "scenarios": {}}
    try:
        began = time.monotonic()
        for n in range(2):
            cache = folder / f"cache-{size}-{n}"
            cache.mkdir()
            servers.append(start_server(url, cache, workers))
        for port, process in servers:
            wait_healthy(port, process)
        result["start_s"] = round(time.monotonic() - began, 1)
        bearer = token(url)
        wrk = shutil.which("wrk")
        assert wrk, "needs wrk (apt-get install wrk)"
        chosen = [s for s in base.SCENARIOS if s.name in scenarios]
        files = None
        if file_store:  # the file store on the same catalogue, measured in turn with PostgreSQL
            files = base.Server(catalogue, file_workers)
            files.__enter__()
        try:
            for scenario in chosen:
                ports = [port for port, _ in servers]
                row = {
                    "workers": workers,
                    **measure_scenario(wrk, bearer, ports, scenario, facts, duration, warmup, runs),
                }
                result["scenarios"][scenario.name] = row
                if files is not None:
                    row["file_store"] = {
                        "workers": file_workers,
                        **measure_scenario(
                            wrk, files.token, [files.port, files.port], scenario, facts, duration, warmup, runs
                        ),
                    }
                if not row["req_per_s"]:
                    for log in sorted(folder.glob("gunicorn-*.log")):
                        print(log.read_text()[-2000:], file=sys.stderr)
                print(size, scenario.name, row, file=sys.stderr, flush=True)
        finally:
            if files is not None:
                files.__exit__(None, None, None)
    finally:
        for _, process in servers:
            process.terminate()
        for _, process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return result


SCENARIOS = (
    "list page 1",
    "page 50 by title",
    "genre",
    "genre+author",
    "q search",
    "get by id",
    "create",
    "update",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--url", default=os.environ.get("LIBRARY_TEST_DATABASE_URL", ""))
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gunicorn workers of each of the two servers (two servers of one worker: as many processes as the "
        "file store's two workers, on a machine that runs both servers, the database and wrk)",
    )
    parser.add_argument("--file-workers", type=int, default=2, help="gunicorn workers of the file store's one server")
    parser.add_argument(
        "--workers-1m", type=int, default=1, help="workers of each server at a million books (each holds the catalogue)"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--warmup", type=int, default=8, help="seconds of each scenario run first, not measured")
    parser.add_argument(
        "--warmup-1m",
        type=int,
        default=30,
        help="the same at a million books, where each worker's first search builds its search index (8 s of CPU)",
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs per scenario; the median is reported")
    parser.add_argument(
        "--file-store",
        action="store_true",
        help="also measure the file store (one server, same workers and connections) on the same catalogue, "
        "scenario by scenario with PostgreSQL, below a million books",
    )
    args = parser.parse_args()
    server_url = args.url or cluster.server()
    results = []
    with tempfile.TemporaryDirectory(prefix="library-bench-pg-") as folder:
        for size in (int(s) for s in args.sizes.split(",")):
            workers = args.workers if size < 1_000_000 else args.workers_1m
            results.append(
                measure(
                    size,
                    server_url,
                    workers,
                    args.duration,
                    args.warmup if size < 1_000_000 else args.warmup_1m,
                    Path(folder),
                    args.scenarios.split(","),
                    args.runs,
                    args.file_store and size < 1_000_000,
                    args.file_workers,
                )  # fmt: skip
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
